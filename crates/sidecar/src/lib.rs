//! `rollgate serve --dir DIR`: the sidecar that walks the Rollouts in a directory and pushes
//! their policies to every gateway. It drives the engine of `rollgate-rollout` and links no
//! wasm runtime.
//!
//! Threads (std only): an acceptor with one thread per connection ([`api`] over [`http`]);
//! a control loop that re-reads the directory ([`watch`]) and ticks timed pauses; the
//! analysis loop reading the gateways' stats ([`scrape`], judged by
//! [`rollgate_rollout::judge`]); one thread per webhook call ([`rollgate_rollout::webhook`]). All of them change rollouts only through [`registry::Shared::apply`],
//! under one lock, held only to read and swap state: parsing, validating and compiling run
//! outside it, so no file or policy, however large, stalls the API. Long-polls wait on its
//! condition variable and answer within milliseconds of a new version.

pub mod api;
pub mod auth;
pub mod exposition;
pub mod files;
pub mod http;
pub mod metrics;
pub mod registry;
pub mod scrape;
pub mod tls;
pub mod watch;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use registry::{Logger, Shared, State};

use rollgate_rollout::{Event, Timestamp};

/// Default `--listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8181";
/// A client that does not take an answer within this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one client may hold of the server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once; one more is answered 503 and closed. Each costs a
    /// thread and two descriptors: 256 stay far below a default `ulimit -n` of 1024
    /// (before, without a cap, about 340 idle connections exhausted it and every endpoint
    /// was reset).
    pub max_connections: usize,
    /// A request head (and its body) must arrive within this long of its first byte, or of
    /// the connection's opening (408, then close): slow clients cannot hold threads.
    pub head_timeout: Duration,
    /// A kept-alive connection idle this long between requests is closed (clients
    /// reconnect; Envoy's long-poll sends its next request at once).
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
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
    let log = config.log.clone();
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        changed: Condvar::new(),
        admins: Mutex::new(config.envoy_admin.clone()),
        config,
        metrics: metrics::Metrics::default(),
        log,
    });
    watch::scan(&shared);
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
    let conns = Arc::new(Mutex::new(HashMap::new()));
    let mut threads = Vec::new();
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        thread::Builder::new().name(name.to_string()).spawn(f)
    };
    let (s, c) = (shared.clone(), conns.clone());
    let results = [
        spawn(
            "rollgate-accept",
            Box::new(move || accept(&s, &listener, &c, tls.as_ref())),
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

/// Counts a connection being served until dropped (also when its thread never starts).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept(
    shared: &Arc<Shared>,
    listener: &TcpListener,
    conns: &Arc<Mutex<HashMap<u64, TcpStream>>>,
    tls: Option<&Arc<rustls::ServerConfig>>,
) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let active = Arc::new(AtomicUsize::new(0));
    let max = shared.config.limits.max_connections;
    let mut last_error: Option<Instant> = None;
    for stream in listener.incoming() {
        if shared.lock().stopping {
            return;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors or memory: pause instead of spinning on the error, and
                // say so once a minute rather than once per attempt.
                if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    shared.log(&format!("accepting a connection failed: {e}"));
                    last_error = Some(Instant::now());
                }
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.load(Ordering::SeqCst) >= max {
            shared.metrics.refused_connections.inc();
            refuse_busy(stream, max);
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(active.clone());
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = stream.try_clone() {
            conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, clone);
        }
        let (shared, conns2, tls) = (shared.clone(), conns.clone(), tls.cloned());
        let spawned = thread::Builder::new()
            .name("rollgate-conn".into())
            .spawn(move || {
                let _slot = slot;
                serve_connection(&shared, stream, tls);
                conns2.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            });
        if spawned.is_err() {
            // Out of threads: the connection (and its slot) went with the closure.
            conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        }
    }
}

/// Answers a connection over the cap with a 503 and closes it, on the acceptor's thread
/// without waiting for the client.
fn refuse_busy(stream: TcpStream, max: usize) {
    let resp = http::Response::error(
        503,
        &format!("too many connections ({max} open); retry shortly"),
    )
    .with_header("retry-after", "1");
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let mut w = &stream;
    let _ = http::write_response(&mut w, &resp, true);
    // What the client already sent is read and dropped, so closing does not reset the
    // connection before the client reads the 503.
    if stream.set_nonblocking(true).is_ok() {
        let mut sink = [0u8; 4096];
        let mut r = &stream;
        for _ in 0..4 {
            if !matches!(std::io::Read::read(&mut r, &mut sink), Ok(n) if n > 0) {
                break;
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

/// A socket whose reads give up at a deadline for the whole request, not per read (a client
/// sending one byte every few seconds cannot hold a thread forever).
struct Timed {
    sock: TcpStream,
    deadline: Option<Instant>,
}

impl std::io::Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let timeout = match self.deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
                Some(left)
            }
        };
        self.sock.set_read_timeout(timeout)?;
        self.sock.read(buf)
    }
}

impl std::io::Write for Timed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sock.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.sock.flush()
    }
}

/// A connection whose request reads give up at a deadline.
trait Conn: Read + Write {
    fn set_deadline(&mut self, deadline: Option<Instant>);
    /// Ends the connection cleanly before it is dropped.
    fn finish(&mut self) {}
}

impl Conn for Timed {
    fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }
}

impl Conn for rustls::StreamOwned<rustls::ServerConnection, Timed> {
    fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.sock.deadline = deadline;
    }
    /// `close_notify`, so a client reading to the end can tell the end from a truncation.
    fn finish(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush();
    }
}

fn serve_connection(shared: &Arc<Shared>, sock: TcpStream, tls: Option<Arc<rustls::ServerConfig>>) {
    let _ = sock.set_nodelay(true);
    let _ = sock.set_write_timeout(Some(WRITE_TIMEOUT));
    let timed = Timed {
        sock,
        deadline: None,
    };
    match tls {
        None => serve_on(shared, timed),
        // The handshake runs inside the first read, under the head timeout.
        Some(config) => match rustls::ServerConnection::new(config) {
            Ok(c) => serve_on(shared, rustls::StreamOwned::new(c, timed)),
            Err(e) => shared.log(&format!("TLS: {e}")),
        },
    }
}

fn serve_on(shared: &Arc<Shared>, conn: impl Conn) {
    let mut conn = BufReader::new(conn);
    serve_requests(shared, &mut conn);
    conn.get_mut().finish();
}

fn serve_requests(shared: &Arc<Shared>, conn: &mut BufReader<impl Conn>) {
    let limits = &shared.config.limits;
    let opened = Instant::now();
    let mut first = true;
    loop {
        // A new connection has the head timeout from its opening; a kept-alive one may
        // idle, then has the head timeout from the request's first byte.
        conn.get_mut().set_deadline(Some(if first {
            opened + limits.head_timeout
        } else {
            Instant::now() + limits.idle_timeout
        }));
        match conn.fill_buf() {
            Ok(b) if !b.is_empty() => {}
            _ => return,
        }
        if !first {
            conn.get_mut()
                .set_deadline(Some(Instant::now() + limits.head_timeout));
        }
        first = false;
        let req = match http::read_request(conn) {
            Ok(Some(r)) => r,
            Ok(None) | Err(http::ReadError::Io(_)) => return,
            Err(http::ReadError::Refuse(status, why)) => {
                conn.get_mut().set_deadline(None);
                let resp = http::Response::error(status, &why);
                let _ = http::write_response(conn.get_mut(), &resp, true);
                return;
            }
        };
        conn.get_mut().set_deadline(None);
        let resp = api::handle(shared, &req);
        let close = req.close || shared.lock().stopping;
        if http::write_response(conn.get_mut(), &resp, close).is_err() || close {
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
