//! The controller's analysis (`serve --kubernetes --prometheus URL`) against a real Prometheus
//! scraping a real Envoy running the filter: the instant query
//! ([`rollgate::kube::prometheus::query`]) reads the filter's canary counters back, and the
//! engine's [`measure`] passes a healthy canary and fails it, with its figures, once it answers
//! 500. Needs `/usr/bin/prometheus` (`make prometheus`): fails, never skips, without it.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rollgate::kube::prometheus;
use rollgate::rollout::analysis::{measure, CanaryCounters};
use rollgate::rollout::client;
use rollgate::rollout::plan::{AnalysisPlan, MetricKind, MetricPlan};
use rollgate::rollout::{AnalysisStatus, Timestamp, Verdict};
use rollgate_e2e::{Load, Stack, CANARY};
use rollout_support::{Sidecar, TempDir, SEED};

mod rollout_support;

/// Every policy's traffic goes to the canary.
const POLICY: &str = r#"{"name":"flask","variants":{"stable":"k8s-flask","canary":"k8s-flask-canary","dev":"k8s-flask-dev"},"default":"canary"}"#;

/// The Prometheus binary: `ROLLGATE_PROMETHEUS`, else `prometheus` on the PATH or in
/// `/usr/bin`. Panics, naming `make prometheus`, when there is none.
fn prometheus_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ROLLGATE_PROMETHEUS") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "\n*** no prometheus binary (PATH, /usr/bin): run `make prometheus` \
             (installs Debian's prometheus), or set ROLLGATE_PROMETHEUS ***\n"
        )
    })
}

/// A Prometheus child scraping one Envoy admin every second; killed and its data removed on
/// drop (a failing test included).
struct Prometheus {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Prometheus {
    fn start(envoy_admin_port: u16) -> Prometheus {
        Prometheus::scraping(envoy_admin_port, "/stats/prometheus")
    }

    /// A Prometheus scraping `path` on `127.0.0.1:port` every second.
    fn scraping(port: u16, path: &str) -> Prometheus {
        let bin = prometheus_bin();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "rollgate-prometheus-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(dir.join("data")).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: envoy\n    scrape_interval: 1s\n    \
             scrape_timeout: 1s\n    metrics_path: {path}\n    \
             static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        );
        fs::write(dir.join("prometheus.yml"), config).unwrap();
        // A free port: bound, read and released just before Prometheus binds it.
        let listen = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(&bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{listen}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                let _ = fs::remove_dir_all(&dir);
                panic!("starting {}: {e} (run `make prometheus`)", bin.display())
            });
        let mut p = Prometheus {
            child,
            dir,
            url: format!("http://127.0.0.1:{listen}"),
        };
        p.wait_ready(Duration::from_secs(20));
        p
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            let ready = client::request(
                "GET",
                &format!("{}/-/ready", self.url),
                None,
                Duration::from_secs(1),
            );
            if matches!(ready, Ok(r) if r.status == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after {timeout:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The samples of an instant query without special characters: labels and value.
    fn instant(&self, query: &str) -> Vec<(serde_json::Value, String)> {
        let r = client::request(
            "GET",
            &format!("{}/api/v1/query?query={query}", self.url),
            None,
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("query {query}: {e}\n{}", self.log()));
        let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(answer["status"], "success", "{answer}");
        answer["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["metric"].clone(),
                    x["value"][1].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// The canary's counters, as the controller reads them through Prometheus.
    fn canary(&self) -> CanaryCounters {
        prometheus::query(&self.url, "flask")
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

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
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
