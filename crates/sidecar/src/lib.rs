//! `rollgate serve --dir DIR`: the sidecar that walks the Rollouts in a directory and pushes
//! their policies to every gateway. It runs the driver of `rollgate-rollout`
//! ([`rollgate_rollout::driver`], the controller's too) over each rollout file as a store
//! ([`store::DirStore`]) and links no wasm runtime.
//!
//! The API ([`api`]) is served by hyper on a current-thread tokio runtime of its own thread
//! ([`conn`], [`http`]); its long-polls are futures that wake on
//! [`registry::Shared::changed`] and answer within milliseconds of a new version, every other
//! answer runs on the runtime's blocking threads (a command may compile a large policy). The
//! same runtime makes the driver's webhook calls and notifications. Threads besides: a
//! control loop that re-reads the directory ([`watch`]) and ticks the rollouts (timed pauses,
//! webhook answers); the analysis loop reading the gateways' stats ([`scrape`], judged by
//! [`rollgate_rollout::judge`]). All of them change rollouts only through
//! [`registry::Shared::apply`], one pass of the driver, which holds the state's lock only to
//! load an entry and to commit onto it: parsing, validating and compiling run outside it,
//! so no file or policy, however large, stalls the API.

pub mod api;
pub mod auth;
pub mod conn;
pub mod dashboard;
pub mod exposition;
pub mod files;
pub mod http;
pub mod metrics;
pub mod registry;
pub mod scrape;
pub mod store;
pub mod tls;
pub mod traffic;
pub mod watch;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use registry::{Logger, Shared, State};

use rollgate_rollout::{Event, Timestamp};

/// Default `--listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8181";

/// What one client may hold of the server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once; one more is answered 503 and closed. Each costs a
    /// descriptor and a task: 256 stay far below a default `ulimit -n` of 1024 (before,
    /// without a cap, about 340 idle connections exhausted it and every endpoint was
    /// reset).
    pub max_connections: usize,
    /// A request head (and its body) must arrive within this long of its first byte, or of
    /// the connection's opening (408, then close): slow clients cannot hold connections.
    pub head_timeout: Duration,
    /// A kept-alive connection idle this long between requests is closed (clients
    /// reconnect; Envoy's long-poll sends its next request at once).
    pub idle_timeout: Duration,
    /// A client that does not take an answer for this long is dropped.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
        }
    }
}
/// Default `--vanished-grace`: long enough for an editor, a `git checkout` or a move out and
/// back; short enough that a deleted rollout stops being served soon.
pub const DEFAULT_VANISHED_GRACE: Duration = Duration::from_secs(300);

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
    /// The bearer token commands must carry; required to listen beyond loopback.
    pub token: Option<auth::Token>,
    /// Connection cap and timeouts.
    pub limits: Limits,
    /// `(certificate chain, private key)` PEM files: serve HTTPS instead of HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
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
            token: None,
            limits: Limits::default(),
            tls: None,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("dir", &self.dir)
            .field("listen", &self.listen)
            .field("envoy_admin", &self.envoy_admin)
            .field("token", &self.token)
            .field("limits", &self.limits)
            .field("tls", &self.tls)
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
    /// A non-loopback `--listen` without a token would let anyone who reaches it drive
    /// releases.
    #[error(
        "--listen {0}: not a loopback address, and no token: anyone who can reach it could \
         promote and abort; give --token-file PATH or $ROLLGATE_TOKEN (or listen on 127.0.0.1)"
    )]
    NoToken(String),
    /// The TLS certificate or key cannot be used.
    #[error("{0}")]
    Tls(String),
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
    /// Tells the API's accept loop and connections to stop.
    stop: tokio::sync::watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

/// Starts the sidecar: loads the directory (so the API answers from the first request),
/// then serves.
pub fn start(config: Config) -> Result<Server, ServeError> {
    if !config.dir.is_dir() {
        return Err(ServeError::NotADirectory(config.dir.clone()));
    }
    for a in &config.envoy_admin {
        rollgate_rollout::url::HttpUrl::parse(a).map_err(ServeError::BadAdmin)?;
    }
    let tls = match &config.tls {
        Some((cert, key)) => Some(tls::server_config(cert, key).map_err(ServeError::Tls)?),
        None => None,
    };
    let listener = TcpListener::bind(&config.listen).map_err(|source| ServeError::Listen {
        addr: config.listen.clone(),
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: config.listen.clone(),
        source,
    })?;
    if !addr.ip().is_loopback() && config.token.is_none() {
        return Err(ServeError::NoToken(config.listen.clone()));
    }
    let listen_error = |source| ServeError::Listen {
        addr: addr.to_string(),
        source,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(listen_error)?;
    let log = config.log.clone();
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        changed: registry::Wake::default(),
        admins: Mutex::new(config.envoy_admin.clone()),
        readings: Mutex::default(),
        config,
        metrics: metrics::Metrics::default(),
        log,
        traffic: Mutex::default(),
        driver: rollgate_rollout::driver::Driver::default(),
        runtime: runtime.handle().clone(),
    });
    // Passes block on the runtime's handle, which a thread inside another runtime may not:
    // the first scan runs on a thread of its own (a caller may be async).
    thread::scope(|s| {
        let _ = s.spawn(|| watch::scan(&shared)).join();
    });
    if !addr.ip().is_loopback() && tls.is_none() {
        shared.log(
            "warning: listening beyond loopback without TLS: the token travels in clear text \
             (give --tls-cert and --tls-key, or keep traffic on a trusted network)",
        );
    }
    shared.log(&format!(
        "serving {} on {}://{addr}{}",
        shared.config.dir.display(),
        if tls.is_some() { "https" } else { "http" },
        if shared.config.envoy_admin.is_empty() {
            " (no --envoy-admin: analysis and breaker checks are off)".to_string()
        } else {
            format!(
                ", reading stats of {}",
                shared.config.envoy_admin.join(", ")
            )
        }
    ));
    let listener = {
        let _in_runtime = runtime.enter();
        listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
            .map_err(listen_error)?
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let serving = Arc::new(serving(&shared, tls));
    let mut server = Server {
        shared: shared.clone(),
        addr,
        stop,
        threads: Vec::new(),
    };
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        thread::Builder::new().name(name.to_string()).spawn(f)
    };
    // One runtime: the API, the control and analysis loops, the webhook calls and the
    // notifications are its tasks; the thread serves until every loop has seen the stop.
    let (control, analysis) = (
        runtime.spawn(control(shared.clone())),
        runtime.spawn(scrape::run(shared.clone())),
    );
    let results = [spawn(
        "rollgate-http",
        Box::new(move || {
            runtime.block_on(async move {
                conn::accept(listener, serving, stopped).await;
                let _ = control.await;
                let _ = analysis.await;
            })
        }),
    )];
    for r in results {
        match r {
            Ok(t) => server.threads.push(t),
            Err(source) => {
                server.stop();
                return Err(listen_error(source));
            }
        }
    }
    Ok(server)
}

/// What the API's connections need of the sidecar.
fn serving(shared: &Arc<Shared>, tls: Option<Arc<rustls::ServerConfig>>) -> conn::Serving {
    let (s1, s2, s3, s4) = (
        shared.clone(),
        shared.clone(),
        shared.clone(),
        shared.clone(),
    );
    conn::Serving {
        handler: Arc::new(move |req| {
            let shared = s1.clone();
            Box::pin(async move { api::handle(&shared, req).await })
        }),
        limits: shared.config.limits.clone(),
        tls: tls.map(tokio_rustls::TlsAcceptor::from),
        log: Arc::new(move |line| s2.log(line)),
        refused: Arc::new(move || {
            s3.metrics.refused_connections.inc();
        }),
        stopping: Arc::new(move || s4.lock().stopping),
    }
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
            rollgate_rollout::url::HttpUrl::parse(a).map_err(ServeError::BadAdmin)?;
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
        self.stop.send_replace(true);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Re-reads the directory and ticks the rollouts (timed pauses, webhook answers) until the
/// server stops: a task of the API's runtime, whose work (reading files, compiling policies)
/// runs on its blocking threads.
async fn control(shared: Arc<Shared>) {
    let tick = Duration::from_millis(100).min(shared.config.scan_interval);
    let mut since_scan = Duration::ZERO;
    loop {
        tokio::time::sleep(tick).await;
        since_scan += tick;
        if shared.lock().stopping {
            return;
        }
        let scan = since_scan >= shared.config.scan_interval;
        if scan {
            since_scan = Duration::ZERO;
        }
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if scan {
                watch::scan(&s);
            }
            let keys: Vec<PathBuf> = s.lock().entries.keys().cloned().collect();
            for key in keys {
                // Not a command: ticks are never refused.
                let _ = s.apply(&key, Event::Tick, Timestamp::now());
            }
        })
        .await;
    }
}
