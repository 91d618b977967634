//! The sidecar's analysis and webhooks against fake gateways and jobs: a healthy canary
//! passes, a failing one is aborted with its figures, a canary breaker trip aborts, a
//! gateway that cannot be read aborts nothing (a step waits for it), webhook answers decide
//! their step, and a step's analysis counts only the traffic after every gateway serves its
//! policy.

mod rollout_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rollout_support::{
    seed_fast, seed_with_strategy, wait_until, FakeAdmin, FakeServer, Sidecar, TempDir,
};

const WAIT: Duration = Duration::from_secs(10);

/// Adds `ok` good and `errors` failed canary responses every 100 ms until dropped.
struct Traffic(Arc<AtomicBool>);

impl Traffic {
    fn start(admin: &FakeAdmin, ok: f64, errors: f64) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, stats) = (stop.clone(), admin.stats.clone());
        thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                {
                    let mut s = stats.lock().unwrap();
                    s.ok += ok;
                    s.errors += errors;
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        Traffic(stop)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn phase(s: &Sidecar) -> String {
    s.rollout("flask")["status"]["phase"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn healthy_canary_passes_failing_canary_is_aborted_with_its_figures() {
    let admin = FakeAdmin::start();
    let dir = TempDir::new("analysis");
    dir.write("flask.yaml", &seed_fast());
    let s = Sidecar::start(&dir.0, &[admin.server.url()]);
    assert_eq!(s.post("/v1/rollouts/flask/promote").status, 200);

    let healthy = Traffic::start(&admin, 10.0, 0.0);
    wait_until("a passed measurement", WAIT, || {
        s.rollout("flask")["status"]["analysis"]["verdict"] == "Passed"
    });
    let v = s.rollout("flask");
    let fig = &v["status"]["analysis"]["figures"];
    assert_eq!(fig[0]["metric"], "success-rate");
    assert_eq!(fig[0]["value"], 1.0);
    assert_eq!(fig[1]["metric"], "latency-p99");
    assert!(fig[1]["value"].as_f64().unwrap() <= 5.0);
    assert_eq!(v["status"]["phase"], "Paused");
    drop(healthy);

    // Half the canary's answers are 5xx: failureLimit 1, so the second failed measurement
    // aborts, within two 1 s intervals (plus the 200 ms reading cadence).
    let failing = Traffic::start(&admin, 10.0, 10.0);
    let started = Instant::now();
    wait_until("the abort", WAIT, || phase(&s) == "Aborted");
    let took = started.elapsed();
    drop(failing);
    println!("aborted {took:?} after the canary started failing");
    assert!(took < Duration::from_secs(4), "aborted after {took:?}");
    let v = s.rollout("flask");
    let message = v["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("aborted at step 4/6: analysis failed 2 times (failureLimit 1): success-rate 0.5 < min 0.99, latency-p99"),
        "{message}"
    );
    assert!(
        message.ends_with("all traffic is back on stable"),
        "{message}"
    );
    assert_eq!(v["status"]["canaryWeight"], 0.0);
    assert!(v["status"]["headerRoute"].is_null());
    // The policy served now sends everyone to stable.
    let p = rollgate_policy::policy::Policy::from_json(&s.get("/v1/policies/flask").body).unwrap();
    assert_eq!(p.spec.routes.len(), 2, "no header route");
    assert_eq!(p.spec.routes[1].split.as_ref().unwrap()[0].weight, 0.0);
    let m = s.get("/metrics").text();
    assert!(
        m.contains("rollgate_analysis_measurements_total{verdict=\"failed\"} 2"),
        "{m}"
    );
    assert!(
        s.logged("flask: analysis failed: success-rate 0.5 < min 0.99"),
        "{}",
        s.log_text()
    );

    // Retry starts over (a new attempt: the old failures do not count).
    assert_eq!(s.post("/v1/rollouts/flask/retry").status, 200);
    let v = s.rollout("flask");
    assert_eq!(
        (
            v["status"]["phase"].as_str(),
            v["status"]["failedAnalyses"].as_u64()
        ),
        (Some("Paused"), Some(0))
    );
}

#[test]
fn too_little_traffic_is_inconclusive() {
    let admin = FakeAdmin::start();
    let dir = TempDir::new("quiet");
    dir.write("flask.yaml", &seed_fast());
    let s = Sidecar::start(&dir.0, &[admin.server.url()]);
    // One failed response per interval is below minRequests (5).
    let _trickle = Traffic::start(&admin, 0.0, 0.05);
    wait_until("an inconclusive measurement", WAIT, || {
        s.rollout("flask")["status"]["analysis"]["verdict"] == "Inconclusive"
    });
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(phase(&s), "Paused");
    assert_eq!(s.rollout("flask")["status"]["failedAnalyses"], 0);
}

#[test]
fn a_canary_breaker_trip_aborts() {
    let admin = FakeAdmin::start();
    let dir = TempDir::new("breaker");
    dir.write("flask.yaml", &seed_fast());
    let s = Sidecar::start(&dir.0, &[admin.server.url()]);
    for _ in 0..2 {
        assert_eq!(s.post("/v1/rollouts/flask/promote").status, 200);
    }
    assert_eq!(s.rollout("flask")["status"]["canaryWeight"], 100.0);
    // Let the sidecar read the counter once before it moves.
    wait_until("a first reading", WAIT, || {
        s.get("/metrics")
            .text()
            .contains("rollgate_scrapes_total 2")
    });
    admin.stats.lock().unwrap().trips = 1.0;
    wait_until("the abort", WAIT, || phase(&s) == "Aborted");
    let v = s.rollout("flask");
    assert_eq!(
        v["status"]["message"],
        "aborted at step 6/6: circuit breaker 'canary-latency' on the canary opened (1 trip); \
         all traffic is back on stable"
    );
    assert_eq!(v["status"]["canaryWeight"], 0.0);
}

#[test]
fn an_unreadable_gateway_aborts_nothing() {
    let admin = FakeAdmin::start();
    admin.status.store(503, Ordering::SeqCst);
    let dir = TempDir::new("unreadable");
    dir.write("flask.yaml", &seed_fast());
    let s = Sidecar::start(
        &dir.0,
        &[admin.server.url(), "http://127.0.0.1:9".to_string()],
    );
    wait_until("the error to be logged", WAIT, || {
        s.logged("analysis: cannot read stats: http://127.0.0.1:")
    });
    // Gateways that cannot be read serve nothing anyone can see: the step that changes the
    // policy waits for them, naming them, and nothing aborts.
    assert_eq!(s.post("/v1/rollouts/flask/promote").status, 200);
    thread::sleep(Duration::from_millis(1500));
    let st = s.rollout("flask")["status"].clone();
    assert_eq!(st["phase"], "Progressing", "{st}");
    assert_eq!(
        st["message"],
        format!(
            "step 3/6: 0/2 gateways on v2; {} unreachable, 127.0.0.1:9 unreachable",
            admin.server.url().replace("http://", "")
        )
    );
    assert!(st["analysis"].is_null());
    let m = s.get("/metrics").text();
    assert!(!m.contains("rollgate_scrape_errors_total 0\n"), "{m}");
    // Logged once, not once per reading.
    let lines = s
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("cannot read stats"))
        .count();
    assert_eq!(lines, 1, "{}", s.log_text());
}

#[test]
fn analysis_counts_only_traffic_after_every_gateway_serves_the_step() {
    let admin = FakeAdmin::start();
    admin.stats.lock().unwrap().version = Some(1);
    let dir = TempDir::new("ack-analysis");
    dir.write(
        "flask.yaml",
        &seed_with_strategy(
            "    steps:
      - pause: {}
      - setWeight: 50
      - pause: {}
    analysis:
      interval: 1s
      minRequests: 5
      metrics: [{ name: success-rate, min: 0.99 }]
",
        ),
    );
    let s = Sidecar::start(&dir.0, &[admin.server.url()]);
    let on = |version: u64| {
        move |s: &Sidecar| s.rollout("flask")["status"]["gateways"][0]["version"] == version
    };
    wait_until("the gateway listed on v1", WAIT, || on(1)(&s));
    assert_eq!(s.post("/v1/rollouts/flask/promote").status, 200);
    // The gateway still serves v1, whose canary answers fail: 2.5 s of it, measured by the
    // judge's 1 s intervals, and none of it counts.
    let failing = Traffic::start(&admin, 0.0, 10.0);
    thread::sleep(Duration::from_millis(2500));
    drop(failing);
    thread::sleep(Duration::from_millis(200));
    let st = s.rollout("flask")["status"].clone();
    assert_eq!(
        (st["phase"].as_str(), st["currentStep"].as_u64()),
        (Some("Progressing"), Some(1)),
        "{st}"
    );
    assert!(st["analysis"].is_null(), "{st}");
    // It serves v2, and from then on the canary answers well: the step completes and the
    // first measurement (from the first reading after that) passes. Had its interval begun
    // at a reading taken while the gateway was on v1, it would hold up to 1 s of failures.
    let healthy = Traffic::start(&admin, 10.0, 0.0);
    admin.stats.lock().unwrap().version = Some(2);
    wait_until("a measurement", WAIT, || {
        !s.rollout("flask")["status"]["analysis"].is_null()
    });
    drop(healthy);
    let st = s.rollout("flask")["status"].clone();
    assert_eq!(st["analysis"]["verdict"], "Passed", "{st}");
    assert_eq!(
        (st["phase"].as_str(), st["currentStep"].as_u64()),
        (Some("Paused"), Some(2)),
        "{st}"
    );
    assert!(s.logged("flask: step 2/3 applied: all 1 gateways on v2"));
}

#[test]
fn a_new_rollouts_first_step_waits_for_the_gateways() {
    // The gateway fetches flask's policy before there is one: its gauge reads 0.
    let admin = FakeAdmin::start();
    admin.stats.lock().unwrap().version = Some(0);
    let dir = TempDir::new("ack-new");
    let s = Sidecar::start(&dir.0, &[admin.server.url()]);
    wait_until("a first reading", WAIT, || {
        s.get("/metrics")
            .text()
            .contains("rollgate_scrapes_total 1")
    });
    dir.write(
        "flask.yaml",
        &seed_with_strategy("    steps:\n      - setWeight: 10\n      - pause: {}\n"),
    );
    wait_until("the rollout", WAIT, || {
        s.get("/v1/rollouts/flask").status == 200
    });
    let st = s.rollout("flask")["status"].clone();
    assert_eq!(
        (st["phase"].as_str(), st["currentStep"].as_u64()),
        (Some("Progressing"), Some(0)),
        "{st}"
    );
    let gateway = admin.server.url().replace("http://", "");
    wait_until("the lag to be named", WAIT, || {
        s.rollout("flask")["status"]["message"]
            == format!("step 1/2: 0/1 gateways on v1; {gateway} serving no policy")
    });
    admin.stats.lock().unwrap().version = Some(1);
    wait_until("the step to complete", WAIT, || phase(&s) == "Paused");
}

fn webhook_rollout(url: &str, timeout: &str) -> String {
    seed_with_strategy(&format!(
        "    steps:
      - setWeight: 10
      - webhook: {{ url: \"{url}\", timeout: {timeout} }}
      - setWeight: 20
      - pause: {{}}
"
    ))
}

#[test]
fn a_webhook_answering_2xx_goes_on() {
    let job = FakeServer::start(false, |_, _, _| (204, String::new()));
    let dir = TempDir::new("hook-ok");
    dir.write(
        "flask.yaml",
        &webhook_rollout(&format!("{}/migrate", job.url()), "5s"),
    );
    let s = Sidecar::start(&dir.0, &[]);
    wait_until("the step after the webhook", WAIT, || {
        s.rollout("flask")["status"]["canaryWeight"] == 20.0
    });
    assert_eq!(phase(&s), "Paused");
    let calls = job.requests.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    let (method, path, body) = &calls[0];
    assert_eq!((method.as_str(), path.as_str()), ("POST", "/migrate"));
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["rollout"], "flask");
    assert_eq!(body["step"], 1);
    assert_eq!(body["status"]["canaryWeight"], 10.0);
    assert!(s.logged("flask: webhook http://127.0.0.1:"));
}

/// A file that renames its rollout starts a new one: its webhook step is called again, not
/// answered by the call the old rollout made at the same attempt and step.
#[test]
fn a_renamed_rollout_calls_its_webhook_again() {
    let job = FakeServer::start(false, |_, _, _| (204, String::new()));
    let dir = TempDir::new("hook-rename");
    let yaml = webhook_rollout(&format!("{}/migrate", job.url()), "5s");
    dir.write("flask.yaml", &yaml);
    let s = Sidecar::start(&dir.0, &[]);
    wait_until("the step after the webhook", WAIT, || {
        s.rollout("flask")["status"]["canaryWeight"] == 20.0
    });
    assert_eq!(job.requests.lock().unwrap().len(), 1);
    dir.write(
        "flask.yaml",
        &yaml.replacen("  name: flask\n", "  name: flask-v2\n", 1),
    );
    wait_until("the renamed rollout past its webhook", WAIT, || {
        let r = s.get("/v1/rollouts/flask-v2");
        r.status == 200
            && serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["status"]
                ["canaryWeight"]
                == 20.0
    });
    let calls = job.requests.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let body: serde_json::Value = serde_json::from_str(&calls[1].2).unwrap();
    assert_eq!(body["rollout"], "flask-v2");
}

#[test]
fn a_webhook_failing_aborts() {
    let job = FakeServer::start(false, |_, _, _| (500, "migration failed".into()));
    let dir = TempDir::new("hook-500");
    dir.write("flask.yaml", &webhook_rollout(&job.url(), "5s"));
    let s = Sidecar::start(&dir.0, &[]);
    wait_until("the abort", WAIT, || phase(&s) == "Aborted");
    let m = s.rollout("flask")["status"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        m.contains(&format!("webhook {} answered 500", job.url())),
        "{m}"
    );

    // Nobody listening.
    let dir = TempDir::new("hook-down");
    dir.write("flask.yaml", &webhook_rollout("http://127.0.0.1:9/x", "5s"));
    let s = Sidecar::start(&dir.0, &[]);
    wait_until("the abort", WAIT, || phase(&s) == "Aborted");
    let m = s.rollout("flask")["status"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(m.contains("webhook http://127.0.0.1:9/x failed: "), "{m}");

    // Too slow.
    let slow = FakeServer::start(false, |_, _, _| {
        thread::sleep(Duration::from_secs(3));
        (200, String::new())
    });
    let dir = TempDir::new("hook-slow");
    dir.write("flask.yaml", &webhook_rollout(&slow.url(), "300ms"));
    let s = Sidecar::start(&dir.0, &[]);
    let took = wait_until("the abort", WAIT, || phase(&s) == "Aborted");
    assert!(took < Duration::from_secs(3), "gave up after {took:?}");
}
