//! `rollgate serve --dir DIR`: the sidecar that walks the Rollouts in a directory and pushes
//! their policies to every gateway.
//!
//! Threads (std only): an acceptor with one thread per connection ([`api`] over [`http`]);
//! a control loop that re-reads the directory ([`watch`]) and ticks timed pauses; the
//! analysis loop reading the gateways' stats ([`scrape`]); one thread per webhook call
//! ([`webhook`]). All of them change rollouts only through [`registry::Shared::apply`],
//! under one lock, held only to read and swap state: parsing, validating and compiling run
//! outside it, so no file or policy, however large, stalls the API. Long-polls wait on its
//! condition variable and answer within milliseconds of a new version.

pub mod api;
pub mod client;
pub mod files;
pub mod http;
pub mod metrics;
pub mod registry;
pub mod scrape;
pub mod watch;
pub mod webhook;

use std::collections::HashMap;
use std::io::BufReader;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use registry::{Logger, Shared, State};

use crate::rollout::{Event, Timestamp};

/// Default `--listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8181";
/// Default `--vanished-grace`: long enough for an editor, a `git checkout` or a move out and
/// back; short enough that a deleted rollout stops being served soon.
pub const DEFAULT_VANISHED_GRACE: Duration = Duration::from_secs(300);
/// A connection idle this long between requests is closed (clients reconnect).
const IDLE: Duration = Duration::from_secs(300);

/// How to run the sidecar.
#[derive(Clone)]
pub struct Config {
    /// The directory of Rollout files.
    pub dir: PathBuf,
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Envoy admin base URLs (`http://127.0.0.1:9901`) to read stats from.
    pub envoy_admin: Vec<String>,
    /// How often the directory is re-read and timed pauses checked.
    pub scan_interval: Duration,
    /// How often the gateways' stats are read (breaker trips are seen this fast).
    pub scrape_interval: Duration,
    /// How long a rollout whose file vanished keeps its status (and its policy served):
    /// a file moved out and back within it continues where it was. Zero deletes at once.
    pub vanished_grace: Duration,
    /// Where log lines go (standard error if `None`).
    pub log: Option<Logger>,
}

impl Config {
    /// Defaults for `dir`: listen on [`DEFAULT_LISTEN`], re-read every 500 ms, read stats
    /// every second, keep a vanished rollout [`DEFAULT_VANISHED_GRACE`], log to standard
    /// error.
    pub fn new(dir: impl Into<PathBuf>) -> Config {
        Config {
            dir: dir.into(),
            listen: DEFAULT_LISTEN.to_string(),
            envoy_admin: Vec::new(),
            scan_interval: Duration::from_millis(500),
            scrape_interval: Duration::from_secs(1),
            vanished_grace: DEFAULT_VANISHED_GRACE,
            log: None,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("dir", &self.dir)
            .field("listen", &self.listen)
            .field("envoy_admin", &self.envoy_admin)
            .field("vanished_grace", &self.vanished_grace)
            .finish_non_exhaustive()
    }
}

/// Why the sidecar cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// `--dir` is not a readable directory.
    #[error("--dir {0}: not a directory")]
    NotADirectory(PathBuf),
    /// An `--envoy-admin` URL is malformed.
    #[error("--envoy-admin {0}")]
    BadAdmin(String),
    /// Binding the listen address failed.
    #[error("--listen {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A running sidecar. Stops on [`Server::stop`] or drop.
pub struct Server {
    shared: Arc<Shared>,
    addr: SocketAddr,
    conns: Arc<Mutex<HashMap<u64, TcpStream>>>,
    threads: Vec<JoinHandle<()>>,
}

/// Starts the sidecar: loads the directory (so the API answers from the first request),
/// then serves.
pub fn start(config: Config) -> Result<Server, ServeError> {
    if !config.dir.is_dir() {
        return Err(ServeError::NotADirectory(config.dir.clone()));
    }
    for a in &config.envoy_admin {
        crate::rollout::url::HttpUrl::parse(a).map_err(ServeError::BadAdmin)?;
    }
    let listener = TcpListener::bind(&config.listen).map_err(|source| ServeError::Listen {
        addr: config.listen.clone(),
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: config.listen.clone(),
        source,
    })?;
    let log = config.log.clone().unwrap_or_else(|| {
        Arc::new(|line: &str| eprintln!("{} rollgate: {line}", Timestamp::now()))
    });
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        changed: Condvar::new(),
        admins: Mutex::new(config.envoy_admin.clone()),
        config,
        metrics: metrics::Metrics::default(),
        log,
    });
    watch::scan(&shared);
    shared.log(&format!(
        "serving {} on http://{addr}{}",
        shared.config.dir.display(),
        if shared.config.envoy_admin.is_empty() {
            " (no --envoy-admin: analysis and breaker checks are off)".to_string()
        } else {
            format!(
                ", reading stats of {}",
                shared.config.envoy_admin.join(", ")
            )
        }
    ));
    let conns = Arc::new(Mutex::new(HashMap::new()));
    let mut threads = Vec::new();
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        thread::Builder::new().name(name.to_string()).spawn(f)
    };
    let (s, c) = (shared.clone(), conns.clone());
    let results = [
        spawn(
            "rollgate-accept",
            Box::new(move || accept(&s, &listener, &c)),
        ),
        spawn("rollgate-control", {
            let s = shared.clone();
            Box::new(move || control(&s))
        }),
        spawn("rollgate-analysis", {
            let s = shared.clone();
            Box::new(move || scrape::run(&s))
        }),
    ];
    let mut server = Server {
        shared,
        addr,
        conns,
        threads: Vec::new(),
    };
    for r in results {
        match r {
            Ok(t) => threads.push(t),
            Err(source) => {
                server.threads = threads;
                server.stop();
                return Err(ServeError::Listen {
                    addr: addr.to_string(),
                    source,
                });
            }
        }
    }
    server.threads = threads;
    Ok(server)
}

impl Server {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the Envoy admin URLs the analysis reads (gateways come and go; a test learns
    /// its Envoy's admin port only after pointing that Envoy at this server).
    pub fn set_envoy_admin(&self, urls: Vec<String>) -> Result<(), ServeError> {
        for a in &urls {
            crate::rollout::url::HttpUrl::parse(a).map_err(ServeError::BadAdmin)?;
        }
        self.shared
            .log(&format!("reading stats of {}", urls.join(", ")));
        *self.shared.admins.lock().unwrap_or_else(|e| e.into_inner()) = urls;
        Ok(())
    }

    /// Blocks until the server stops (it only does when stopped from another thread).
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Stops serving: answers pending long-polls, closes connections, joins the threads.
    pub fn stop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.changed.notify_all();
        // Wake the acceptor blocked in accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|e| e.into_inner()));
        for c in conns.values() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept(
    shared: &Arc<Shared>,
    listener: &TcpListener,
    conns: &Arc<Mutex<HashMap<u64, TcpStream>>>,
) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    for stream in listener.incoming() {
        if shared.lock().stopping {
            return;
        }
        let Ok(stream) = stream else { continue };
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = stream.try_clone() {
            conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, clone);
        }
        let (shared, conns) = (shared.clone(), conns.clone());
        let spawned = thread::Builder::new()
            .name("rollgate-conn".into())
            .spawn(move || {
                serve_connection(&shared, stream);
                conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            });
        // Out of threads: the connection is dropped and the client retries.
        drop(spawned);
    }
}

fn serve_connection(shared: &Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IDLE));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let req = match http::read_request(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let resp = http::Response::error(400, &e.to_string());
                let _ = http::write_response(&mut writer, &resp, true);
                return;
            }
        };
        let resp = api::handle(shared, &req);
        let close = req.close || shared.lock().stopping;
        if http::write_response(&mut writer, &resp, close).is_err() || close {
            return;
        }
    }
}

/// Re-reads the directory and ticks the rollouts (timed pauses) until the server stops.
fn control(shared: &Arc<Shared>) {
    let tick = Duration::from_millis(100).min(shared.config.scan_interval);
    let mut since_scan = Duration::ZERO;
    loop {
        thread::sleep(tick);
        since_scan += tick;
        if shared.lock().stopping {
            return;
        }
        if since_scan >= shared.config.scan_interval {
            since_scan = Duration::ZERO;
            watch::scan(shared);
        }
        let keys: Vec<PathBuf> = shared.lock().entries.keys().cloned().collect();
        for key in keys {
            // Not a command: ticks are never refused.
            let _ = shared.apply(&key, Event::Tick, Timestamp::now());
        }
    }
}
