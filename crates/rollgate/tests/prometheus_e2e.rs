//! The controller's analysis (`serve --kubernetes --prometheus URL`) against a real Prometheus
//! scraping a real Envoy running the filter: the instant query
//! ([`rollgate::kube::prometheus::query`]) reads the filter's canary counters back, and the
//! engine's [`measure`] passes a healthy canary and fails it, with its figures, once it answers
//! 500. Needs `/usr/bin/prometheus` (`make prometheus`): fails, never skips, without it.

use std::thread;
use std::time::{Duration, Instant};

use rollgate::kube::prometheus;
use rollgate::rollout::analysis::{measure, CanaryCounters};
use rollgate::rollout::plan::{AnalysisPlan, MetricKind, MetricPlan};
use rollgate::rollout::{AnalysisStatus, Timestamp, Verdict};
use rollgate_e2e::{Load, Stack, CANARY};
use rollout_support::{Sidecar, TempDir, SEED};

mod prometheus_support;
mod rollout_support;

use prometheus_support::Prometheus;

/// Every policy's traffic goes to the canary.
const POLICY: &str = r#"{"name":"flask","variants":{"stable":"k8s-flask","canary":"k8s-flask-canary","dev":"k8s-flask-dev"},"default":"canary"}"#;

/// What the controller's analysis reads through Prometheus.
trait Analysis {
    fn canary(&self) -> CanaryCounters;
    fn wait_reading(
        &self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&CanaryCounters) -> bool,
    ) -> CanaryCounters;
    fn measure_since(&self, plan: &AnalysisPlan, base: &CanaryCounters, min: f64)
        -> AnalysisStatus;
}

impl Analysis for Prometheus {
    /// The canary's counters, as the controller reads them through Prometheus.
    fn canary(&self) -> CanaryCounters {
        rollgate::rollout::client::block_on(prometheus::query(&self.url, "flask"))
            .unwrap_or_else(|e| panic!("no runtime: {e}"))
            .unwrap_or_else(|e| panic!("query: {e}\n{}", self.log()))
            .canary("flask", "canary")
    }

    /// Waits for the first reading satisfying `ok`, for at most `timeout`.
    fn wait_reading(
        &self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&CanaryCounters) -> bool,
    ) -> CanaryCounters {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.canary();
            if ok(&c) {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?} (last reading {c:?})\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// One measurement as the controller takes it: the canary's traffic since `base` once at
    /// least `min` more responses were scraped, judged against `plan`.
    fn measure_since(
        &self,
        plan: &AnalysisPlan,
        base: &CanaryCounters,
        min: f64,
    ) -> AnalysisStatus {
        let now = self.wait_reading(
            &format!("{min} more canary responses in Prometheus"),
            Duration::from_secs(15),
            |c| c.since(base).is_some_and(|d| d.responses() >= min),
        );
        let delta = now.since(base).expect("counters only go up");
        measure(plan, &delta, Timestamp::now())
    }
}

fn plan() -> AnalysisPlan {
    AnalysisPlan {
        interval_ms: 1000,
        failure_limit: 0,
        min_requests: 20,
        metrics: vec![
            MetricPlan {
                name: "success-rate".into(),
                kind: MetricKind::SuccessRate,
                min: Some(0.95),
                max: None,
            },
            MetricPlan {
                name: "latency-p99".into(),
                kind: MetricKind::Latency(0.99),
                min: None,
                max: Some(1000.0),
            },
        ],
    }
}

fn success_rate(m: &AnalysisStatus) -> f64 {
    assert_eq!(m.figures[0].metric, "success-rate");
    m.figures[0]
        .value
        .unwrap_or_else(|| panic!("no success rate: {}", m.summary()))
}

#[test]
fn prometheus_scraping_envoy_passes_a_healthy_canary_and_fails_it_once_it_answers_500() {
    let _serial = rollgate_e2e::timing_lock();
    let started = Instant::now();
    let s = Stack::start(POLICY);
    let prom = Prometheus::start(s.envoy.admin_port());
    println!("prometheus ready {:?} after the start", started.elapsed());
    // 4 connections, one request each per 20 ms: about 200 requests/s, all to the canary.
    let load = Load::start(
        s.envoy.port(),
        "pro.coding",
        "/",
        4,
        Duration::from_millis(20),
    );
    let plan = plan();

    // (a) Healthy: once Prometheus has scraped canary traffic, the next interval passes.
    let base = prom.wait_reading(
        "canary responses in Prometheus",
        Duration::from_secs(15),
        |c| c.responses() > 0.0,
    );
    let healthy = prom.measure_since(&plan, &base, 100.0);
    println!("healthy canary: {}", healthy.summary());
    assert_eq!(healthy.verdict, Verdict::Passed, "{}", healthy.summary());
    assert!(success_rate(&healthy) >= 0.99, "{}", healthy.summary());
    assert!(healthy.requests >= 100, "{}", healthy.summary());

    // (b) The canary answers 500: from the first scrape that shows a 5xx, the next interval
    // fails, its figures showing the drop.
    let before = prom.canary();
    s.upstream(CANARY).set_status(500);
    let failing_since = Instant::now();
    let base = prom.wait_reading("a canary 5xx in Prometheus", Duration::from_secs(15), |c| {
        c.classes[4] > before.classes[4]
    });
    let failing = prom.measure_since(&plan, &base, 100.0);
    println!(
        "failing canary: {} ({:?} after the 500s began)",
        failing.summary(),
        failing_since.elapsed()
    );
    assert_eq!(failing.verdict, Verdict::Failed, "{}", failing.summary());
    assert!(!failing.figures[0].passed, "{}", failing.summary());
    let rate = success_rate(&failing);
    assert!(
        rate < 0.5,
        "success rate {rate} did not drop: {}",
        failing.summary()
    );
    assert!(failing.requests >= 100, "{}", failing.summary());

    // The load saw the same thing Prometheus did.
    let samples = load.stop();
    assert!(samples.iter().any(|x| x.status == 200));
    assert!(samples.iter().any(|x| x.status == 500));
    println!("took {:?}", started.elapsed());
}

#[test]
fn prometheus_scrapes_the_sidecars_metrics() {
    let dir = TempDir::new("prometheus");
    dir.write("flask.yaml", SEED);
    let s = Sidecar::start(&dir.0, &[]);
    assert_eq!(s.get("/v1/policies/flask").status, 200);
    let port: u16 = s.url().rsplit(':').next().unwrap().parse().unwrap();
    let prom = Prometheus::scraping(port, "/metrics");
    // A scrape that does not parse leaves `up` at 0 and stores nothing.
    let deadline = Instant::now() + Duration::from_secs(20);
    while prom.instant("up").first().map(|(_, v)| v.as_str()) != Some("1") {
        assert!(
            Instant::now() < deadline,
            "the sidecar was not scraped: {:?}\n{}",
            prom.instant("up"),
            prom.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    let steps = prom.instant("rollgate_rollout_steps");
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert_eq!(steps[0].0["rollout"], "flask", "{steps:?}");
    assert_eq!(steps[0].1, "6", "{steps:?}");
    let answers = prom.instant("rollgate_policy_answers_total");
    assert_eq!(answers.len(), 4, "one series per code: {answers:?}");
    assert!(
        answers.iter().any(|(l, v)| l["code"] == "200" && v == "1"),
        "{answers:?}"
    );
    let phases = prom.instant("rollgate_rollout_phase");
    assert_eq!(phases.len(), 4, "{phases:?}");
}

/// `serve --kubernetes --prometheus URL` and Rollouts with `acknowledge`: which policy version
/// each gateway serves, as the controller reads it from a real Prometheus scraping two real
/// Envoys whose filter runs a numbered policy. A gateway that stops being scraped does not
/// vanish (Prometheus ends its series at once): it reads as unreachable, so a step never goes
/// on without it.
#[test]
fn prometheus_tells_the_controller_each_gateways_policy_version() {
    use rollgate_e2e::{Envoy, EnvoyOptions};

    let _serial = rollgate_e2e::timing_lock();
    let policy = |v: u64| {
        format!(
            r#"{{"name":"flask","variants":{{"stable":"k8s-flask"}},"default":"stable","version":{v}}}"#
        )
    };
    let mut a = Some(Envoy::start(&EnvoyOptions::new(policy(4))).unwrap());
    let b = Envoy::start(&EnvoyOptions::new(policy(5))).unwrap();
    let ports = [a.as_ref().unwrap().admin_port(), b.admin_port()];
    let prom = Prometheus::with(
        &[
            ("gw-a", ports[0], "/stats/prometheus"),
            ("gw-b", ports[1], "/stats/prometheus"),
        ],
        &[],
    );
    let read = || -> Vec<String> {
        let readings =
            rollgate::rollout::client::block_on(prometheus::gateways(&prom.url, "flask"))
                .unwrap()
                .unwrap_or_else(|e| panic!("{e}\n{}", prom.log()));
        rollgate::rollout::gateways::versions(&readings, "flask")
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    let (ga, gb) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
    );
    let mut want = vec![format!("{ga} on v4"), format!("{gb} on v5")];
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(20);
    while read() != want {
        assert!(Instant::now() < deadline, "{:?}\n{}", read(), prom.log());
        thread::sleep(Duration::from_millis(200));
    }
    // Gateway a goes away: a failed scrape, and its series ends.
    drop(a.take());
    let mut want = vec![format!("{ga} unreachable"), format!("{gb} on v5")];
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(20);
    while read() != want {
        assert!(Instant::now() < deadline, "{:?}\n{}", read(), prom.log());
        thread::sleep(Duration::from_millis(200));
    }
    // Not summed away either: the gauge query is per gateway.
    let now = prom.instant("rollgate_flask_policy_version");
    assert_eq!(now.len(), 1, "{now:?}");
}
