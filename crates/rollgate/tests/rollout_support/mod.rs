//! Shared by the sidecar's integration tests: temp directories, an in-process `serve` with
//! its log captured, raw HTTP, and fake Envoy admin and webhook servers.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rollgate::rollout::client::{self, HttpResponse};
use rollgate::serve::{self, Config, Server};

/// The seed's Rollout.
pub const SEED: &str = include_str!("../../../../examples/rollout.yaml");

/// The seed with a 1 s analysis interval, `failureLimit: 1` and `minRequests: 5`.
pub fn seed_fast() -> String {
    SEED.replace("interval: 10s", "interval: 1s")
        .replace("failureLimit: 2", "failureLimit: 1")
        .replace("minRequests: 20", "minRequests: 5")
}

/// The seed with its `strategy:` replaced (YAML indented by 2 under `strategy:`).
pub fn seed_with_strategy(strategy: &str) -> String {
    let head = SEED.split("  strategy:\n").next().unwrap();
    format!("{head}  strategy:\n{strategy}")
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new empty directory.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rollgate-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// The path of `name` inside.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `name` atomically (temp file + rename), as editors and `kubectl` tooling do.
    pub fn write(&self, name: &str, text: &str) {
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.path(name)).unwrap();
    }

    /// Reads `name`.
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An in-process sidecar with its log lines kept.
pub struct Sidecar {
    pub server: Server,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Sidecar {
    /// Serves `dir` on a free port with fast scans; `admins` are Envoy admin URLs.
    pub fn start(dir: &Path, admins: &[String]) -> Sidecar {
        Sidecar::start_on(dir, admins, "127.0.0.1:0")
    }

    /// Same, on `listen`.
    pub fn start_on(dir: &Path, admins: &[String], listen: &str) -> Sidecar {
        Sidecar::start_with(dir, admins, |c| c.listen = listen.to_string())
    }

    /// Same, with `configure` changing the configuration last.
    pub fn start_with(
        dir: &Path,
        admins: &[String],
        configure: impl FnOnce(&mut Config),
    ) -> Sidecar {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let mut config = Config::new(dir);
        config.listen = "127.0.0.1:0".to_string();
        config.envoy_admin = admins.to_vec();
        config.scan_interval = Duration::from_millis(100);
        config.scrape_interval = Duration::from_millis(200);
        config.log = Some(Arc::new(move |line: &str| {
            sink.lock().unwrap().push(line.to_string());
        }));
        configure(&mut config);
        let server = serve::start(config).unwrap();
        Sidecar { server, log }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> HttpResponse {
        client::request(
            "GET",
            &format!("{}{path}", self.url()),
            None,
            Duration::from_secs(70),
        )
        .unwrap()
    }

    /// `POST path`.
    pub fn post(&self, path: &str) -> HttpResponse {
        client::request(
            "POST",
            &format!("{}{path}", self.url()),
            None,
            Duration::from_secs(10),
        )
        .unwrap()
    }

    /// `GET /v1/rollouts/NAME` as JSON.
    pub fn rollout(&self, name: &str) -> serde_json::Value {
        let r = self.get(&format!("/v1/rollouts/{name}"));
        assert_eq!(r.status, 200, "{}", r.text());
        serde_json::from_slice(&r.body).unwrap()
    }

    /// Whether some log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

/// Polls `f` every 20 ms until it holds; panics with `what` after `timeout`.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return start.elapsed();
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A tiny HTTP server answering every request with `answer(method, path, body)`, in chunked
/// encoding when asked (as Envoy's admin does).
pub struct FakeServer {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<(String, String, String)>>>,
}

impl FakeServer {
    /// Starts it.
    pub fn start(
        chunked: bool,
        answer: impl Fn(&str, &str, &str) -> (u16, String) + Send + Sync + 'static,
    ) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (seen, answer) = (requests.clone(), Arc::new(answer));
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (seen, answer) = (seen.clone(), answer.clone());
                thread::spawn(move || {
                    let _ = handle(stream, chunked, &seen, &*answer);
                });
            }
        });
        FakeServer { port, requests }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Reads one HTTP/1.1 message from `r`: its start line (trimmed) and its `content-length`
/// body. A malformed `content-length` is an error.
pub fn read_message(r: &mut impl BufRead) -> std::io::Result<(String, Vec<u8>)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut length = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        if h.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            if n.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{h:?}: {e}"))
                })?;
            }
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body)?;
    Ok((line.trim().to_string(), body))
}

type Answer = dyn Fn(&str, &str, &str) -> (u16, String) + Send + Sync;

fn handle(
    stream: TcpStream,
    chunked: bool,
    seen: &Mutex<Vec<(String, String, String)>>,
    answer: &Answer,
) -> std::io::Result<()> {
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    let (line, body) = read_message(&mut r)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let body = String::from_utf8_lossy(&body).into_owned();
    let (status, text) = answer(&method, &path, &body);
    seen.lock().unwrap().push((method, path, body));
    let mut out = format!("HTTP/1.1 {status} X\r\nconnection: close\r\n");
    if chunked {
        out.push_str("transfer-encoding: chunked\r\n\r\n");
        for piece in text.as_bytes().chunks(100) {
            out.push_str(&format!("{:x}\r\n", piece.len()));
            out.push_str(std::str::from_utf8(piece).unwrap_or(""));
            out.push_str("\r\n");
        }
        out.push_str("0\r\n\r\n");
    } else {
        out.push_str(&format!("content-length: {}\r\n\r\n{text}", text.len()));
    }
    w.write_all(out.as_bytes())
}

/// Counters of a fake gateway, served as Envoy's `/stats/prometheus` would show them.
#[derive(Default)]
pub struct FakeStats {
    pub ok: f64,
    pub errors: f64,
    pub trips: f64,
    /// The policy version the gateway reports serving (no gauge while `None`).
    pub version: Option<u64>,
}

/// A fake Envoy admin endpoint for policy `flask` whose counters the test moves.
pub struct FakeAdmin {
    pub server: FakeServer,
    pub stats: Arc<Mutex<FakeStats>>,
    pub status: Arc<AtomicU16>,
}

impl FakeAdmin {
    /// Starts it (chunked answers, like Envoy).
    pub fn start() -> FakeAdmin {
        let stats = Arc::new(Mutex::new(FakeStats::default()));
        let status = Arc::new(AtomicU16::new(200));
        let (s, code) = (stats.clone(), status.clone());
        let server = FakeServer::start(true, move |_, path, _| {
            assert_eq!(path, "/stats/prometheus");
            let s = s.lock().unwrap();
            let total = s.ok + s.errors;
            let version = s
                .version
                .map(|v| format!("rollgate_flask_policy_version{{}} {v}\n"))
                .unwrap_or_default();
            let text = version
                + &format!(
                    "# TYPE envoy_server_live gauge\nenvoy_server_live{{}} 1\n\
                 # TYPE rollgate_flask_variant_canary_rq_total counter\n\
                 rollgate_flask_variant_canary_rq_total{{}} {total}\n\
                 rollgate_flask_variant_canary_rs_2xx{{}} {}\n\
                 rollgate_flask_variant_canary_rs_5xx{{}} {}\n\
                 rollgate_flask_variant_canary_rs_network_error{{}} 0\n\
                 rollgate_flask_breaker_canary_latency_state{{}} 0\n\
                 rollgate_flask_breaker_canary_latency_trips{{}} {}\n\
                 # TYPE rollgate_flask_variant_canary_latency_ms histogram\n\
                 rollgate_flask_variant_canary_latency_ms_bucket{{le=\"5\"}} {total}\n\
                 rollgate_flask_variant_canary_latency_ms_bucket{{le=\"+Inf\"}} {total}\n\
                 rollgate_flask_variant_canary_latency_ms_sum{{}} 0\n\
                 rollgate_flask_variant_canary_latency_ms_count{{}} {total}\n",
                    s.ok, s.errors, s.trips
                );
            (code.load(Ordering::SeqCst), text)
        });
        FakeAdmin {
            server,
            stats,
            status,
        }
    }

    /// Adds responses: `ok` 2xx and `errors` 5xx.
    pub fn add(&self, ok: f64, errors: f64) {
        let mut s = self.stats.lock().unwrap();
        s.ok += ok;
        s.errors += errors;
    }
}
