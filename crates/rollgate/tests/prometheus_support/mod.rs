//! A real Prometheus for tests, started on a free loopback port with its own data
//! directory, scraping the given targets every second and evaluating the given rule files
//! every second; killed and its data removed on drop (a failing test included). Needs
//! `/usr/bin/prometheus` (`make prometheus`): fails, never skips, without it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rollgate::rollout::client;

/// The Prometheus binary: `ROLLGATE_PROMETHEUS`, else `prometheus` on the PATH or in
/// `/usr/bin`. Panics, naming `make prometheus`, when there is none.
pub fn prometheus_bin() -> PathBuf {
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

/// A Prometheus child.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    /// Its base URL.
    pub url: String,
}

impl Prometheus {
    /// A Prometheus scraping one Envoy admin's `/stats/prometheus`.
    #[allow(dead_code)]
    pub fn start(envoy_admin_port: u16) -> Prometheus {
        Prometheus::scraping(envoy_admin_port, "/stats/prometheus")
    }

    /// A Prometheus scraping `path` on `127.0.0.1:port` every second.
    #[allow(dead_code)]
    pub fn scraping(port: u16, path: &str) -> Prometheus {
        Prometheus::with(&[("envoy", port, path)], &[])
    }

    /// A Prometheus scraping each `(job, port, path)` on 127.0.0.1 every second and evaluating
    /// `rules` (files) every second.
    pub fn with(targets: &[(&str, u16, &str)], rules: &[&Path]) -> Prometheus {
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
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, port, path) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    \
                 metrics_path: {path}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
            ));
        }
        if !rules.is_empty() {
            config.push_str("rule_files:\n");
            for r in rules {
                config.push_str(&format!("  - {}\n", r.display()));
            }
        }
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

    /// Its log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The answer to an instant query: `Err` with Prometheus's error when it fails.
    #[allow(dead_code)]
    pub fn try_instant(&self, query: &str) -> Result<Vec<(serde_json::Value, String)>, String> {
        let r = client::request(
            "GET",
            &format!("{}/api/v1/query?query={}", self.url, encode(query)),
            None,
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("query {query}: {e}\n{}", self.log()));
        let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        if answer["status"] != "success" {
            return Err(answer.to_string());
        }
        Ok(answer["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["metric"].clone(),
                    x["value"][1].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }

    /// The samples of an instant query: labels and value.
    pub fn instant(&self, query: &str) -> Vec<(serde_json::Value, String)> {
        let r = client::request(
            "GET",
            &format!("{}/api/v1/query?query={}", self.url, encode(query)),
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
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A query string's bytes as a URL query value (RFC 3986 unreserved kept).
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
