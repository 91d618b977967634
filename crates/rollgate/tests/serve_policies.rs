//! `GET /v1/policies/NAME`: the long-poll the filter uses, against an in-process sidecar.

mod rollout_support;

use std::thread;
use std::time::{Duration, Instant};

use rollgate_policy::policy::Policy;
use rollout_support::{Sidecar, TempDir, SEED};

fn started() -> (TempDir, Sidecar) {
    let dir = TempDir::new("poll");
    dir.write("flask.yaml", SEED);
    let sidecar = Sidecar::start(&dir.0, &[]);
    (dir, sidecar)
}

#[test]
fn newer_version_answers_at_once_with_the_policy() {
    let (_dir, s) = started();
    let t = Instant::now();
    let r = s.get("/v1/policies/flask?version=0&wait=20s");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-rollgate-version"), Some("1"));
    assert_eq!(r.header("etag"), Some("\"1\""));
    assert_eq!(r.header("content-type"), Some("application/json"));
    // Exactly the policy JSON, which the filter's compiler accepts: the seed's header route
    // on, weight 0.
    let p = Policy::from_json(&r.body).unwrap();
    assert_eq!(p.spec.name, "flask");
    assert_eq!(p.spec.routes.len(), 3);
    assert_eq!(
        p.spec.routes[1].rule.as_deref(),
        Some("Host(`pro.coding`) && Headers(`location`, `shenzhen`)")
    );
    assert_eq!(p.spec.routes[2].split.as_ref().unwrap()[0].weight, 0.0);
    // No version at all is version 0.
    assert_eq!(s.get("/v1/policies/flask").status, 200);
}

#[test]
fn current_version_waits_then_answers_304() {
    let (_dir, s) = started();
    let t = Instant::now();
    let r = s.get("/v1/policies/flask?version=1&wait=300ms");
    let took = t.elapsed();
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("x-rollgate-version"), Some("1"));
    assert!(
        took >= Duration::from_millis(300),
        "answered early: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "answered late: {took:?}");
}

#[test]
fn a_gateway_ahead_of_the_sidecar_gets_the_current_policy_renumbered_after_its_own() {
    // A sidecar that lost its status file counts from 1 again while the gateways still run
    // v9 of the previous one: they must not wait for v10 to come round.
    let (dir, s) = started();
    let t = Instant::now();
    let r = s.get("/v1/policies/flask?version=9&wait=20s");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "held {:?}",
        t.elapsed()
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-rollgate-version"), Some("10"));
    assert_eq!(Policy::from_json(&r.body).unwrap().spec.name, "flask");
    assert!(s.logged("a gateway runs policy v9"), "{}", s.log_text());
    // The new numbering is the sidecar's own from now on, persisted in its status file.
    assert_eq!(
        s.get("/v1/policies/flask?version=10&wait=100ms").status,
        304
    );
    assert_eq!(
        s.get("/v1/policies/flask?version=0")
            .header("x-rollgate-version"),
        Some("10")
    );
    let status: serde_json::Value = serde_json::from_str(&dir.read("flask.status.json")).unwrap();
    assert_eq!(
        status.to_string().matches("\"policyVersion\":10").count(),
        1,
        "{status}"
    );
}

#[test]
fn a_new_version_wakes_a_waiting_poll_within_milliseconds() {
    let (_dir, s) = started();
    let url = s.url();
    let poll = thread::spawn(move || {
        let r = rollgate::rollout::client::request(
            "GET",
            &format!("{url}/v1/policies/flask?version=1&wait=20s"),
            None,
            Duration::from_secs(30),
        )
        .unwrap();
        (Instant::now(), r)
    });
    // Let the poll arrive and wait.
    rollout_support::wait_until("the poll to wait", Duration::from_secs(5), || {
        s.get("/metrics")
            .text()
            .contains("rollgate_policy_polls_waiting 1")
    });
    let promoted = Instant::now();
    assert_eq!(s.post("/v1/rollouts/flask/promote").status, 200);
    let (answered, r) = poll.join().unwrap();
    let latency = answered.duration_since(promoted);
    println!("woke {latency:?} after the promote");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-rollgate-version"), Some("2"));
    assert!(
        latency < Duration::from_millis(500),
        "woke after {latency:?}"
    );
    let p = Policy::from_json(&r.body).unwrap();
    assert_eq!(p.spec.routes[2].split.as_ref().unwrap()[0].weight, 50.0);
}

#[test]
fn many_waiting_polls_all_wake() {
    let (_dir, s) = started();
    let polls: Vec<_> = (0..8)
        .map(|_| {
            let url = s.url();
            thread::spawn(move || {
                rollgate::rollout::client::request(
                    "GET",
                    &format!("{url}/v1/policies/flask?version=1&wait=20s"),
                    None,
                    Duration::from_secs(30),
                )
                .unwrap()
            })
        })
        .collect();
    rollout_support::wait_until("the polls to wait", Duration::from_secs(5), || {
        s.get("/metrics")
            .text()
            .contains("rollgate_policy_polls_waiting 8")
    });
    assert_eq!(s.post("/v1/rollouts/flask/promote").status, 200);
    for p in polls {
        assert_eq!(p.join().unwrap().header("x-rollgate-version"), Some("2"));
    }
}

#[test]
fn unknown_names_and_bad_parameters() {
    let (_dir, s) = started();
    // Unknown names are held for the wait (the rollout may be about to appear), then 404.
    let t = Instant::now();
    let r = s.get("/v1/policies/nope?version=0&wait=200ms");
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert_eq!(r.status, 404);
    assert!(r.text().contains("no policy named 'nope'"));
    let r = s.get("/v1/policies/flask?version=x");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("version: expected a whole number"));
    let r = s.get("/v1/policies/flask?version=1&wait=soon");
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("wait: invalid duration 'soon'"),
        "{}",
        r.text()
    );
    assert_eq!(s.post("/v1/policies/flask").status, 405);
    assert_eq!(s.get("/nothing").status, 404);
    let metrics = s.get("/metrics").text();
    assert!(
        metrics.contains("rollgate_policy_answers_total{code=\"404\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rollgate_policy_answers_total{code=\"400\"} 2"),
        "{metrics}"
    );
}

#[test]
fn keep_alive_connections_serve_request_after_request() {
    use std::io::{BufReader, Write};
    let (_dir, s) = started();
    let mut conn = std::net::TcpStream::connect(s.server.addr()).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    for version in [0, 0, 0] {
        write!(
            conn,
            "GET /v1/policies/flask?version={version} HTTP/1.1\r\nhost: rollgate\r\n\r\n"
        )
        .unwrap();
        let (line, body) = rollout_support::read_message(&mut reader).unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        Policy::from_json(&body).unwrap();
    }
}

#[test]
fn health_and_metrics() {
    let (_dir, s) = started();
    let r = s.get("/healthz");
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    let m = s.get("/metrics").text();
    for line in [
        "rollgate_rollout_policy_version{rollout=\"flask\"} 1",
        "rollgate_rollout_canary_weight{rollout=\"flask\"} 0",
        "rollgate_rollout_step{rollout=\"flask\"} 1",
        "rollgate_rollout_steps{rollout=\"flask\"} 6",
        "rollgate_rollout_phase{rollout=\"flask\",phase=\"Paused\"} 1",
        "rollgate_rollout_phase{rollout=\"flask\",phase=\"Aborted\"} 0",
        "rollgate_rollout_invalid{rollout=\"flask\"} 0",
        "# TYPE rollgate_policy_answers_total counter",
    ] {
        assert!(m.contains(line), "missing {line:?} in\n{m}");
    }
}

#[test]
fn a_poll_for_a_rollout_not_yet_written_gets_it_when_it_appears() {
    let dir = TempDir::new("early");
    let s = Sidecar::start(&dir.0, &[]);
    let url = s.url();
    let poll = thread::spawn(move || {
        rollgate::rollout::client::request(
            "GET",
            &format!("{url}/v1/policies/flask?version=0&wait=20s"),
            None,
            Duration::from_secs(30),
        )
        .unwrap()
    });
    rollout_support::wait_until("the poll to wait", Duration::from_secs(5), || {
        s.get("/metrics")
            .text()
            .contains("rollgate_policy_polls_waiting 1")
    });
    let written = Instant::now();
    dir.write("flask.yaml", SEED);
    let r = poll.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-rollgate-version"), Some("1"));
    // Within a directory scan (100 ms here) and then milliseconds.
    assert!(
        written.elapsed() < Duration::from_secs(2),
        "{:?}",
        written.elapsed()
    );
}
