//! [`Upstream`]: an in-process HTTP/1.1 server standing in for one variant's backend.

use std::collections::HashMap;
use std::io::{self, BufReader};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::http::{self, Unframed};

/// Prefix of the filter's internal headers; the upstream echoes every request header with it.
pub const INTERNAL_HEADER_PREFIX: &str = "x-rollgate-";

/// Prefix the upstream puts before an echoed internal header's name (`x-echo-x-rollgate-variant`).
pub const ECHO_PREFIX: &str = "x-echo-";

/// One request as the upstream received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The method.
    pub method: String,
    /// The request target (path and query).
    pub target: String,
    /// The header fields in the order they arrived (names lowercased).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// An HTTP/1.1 server on `127.0.0.1:<ephemeral>` that answers every request with
/// status [`set_status`](Upstream::set_status) (200 by default), body = its name,
/// `x-upstream: <name>`, and `x-echo-<h>: <value>` for each request header `h` starting with
/// `x-rollgate-`.
///
/// One thread per connection, keep-alive, request bodies framed by `content-length` or chunked
/// coding are read and discarded. Stops (and closes every open connection) on drop.
pub struct Upstream {
    name: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// State shared by the acceptor, the connection threads and the [`Upstream`] handle.
struct Shared {
    name: String,
    delay_ms: AtomicU64,
    status: AtomicU16,
    /// The response body, when not the name.
    body: Mutex<Option<Vec<u8>>>,
    requests: AtomicU64,
    stopping: AtomicBool,
    /// The requests received, as they arrived (head and body), for tests that compare what
    /// two proxies forwarded.
    received: Mutex<Vec<Received>>,
    /// Clones of the open connections, so drop can shut them down.
    conns: Mutex<HashMap<u64, TcpStream>>,
}

impl Upstream {
    /// Starts an upstream named `name` on an ephemeral loopback port.
    pub fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream listener");
        let addr = listener.local_addr().expect("upstream local_addr");
        let shared = Arc::new(Shared {
            name: name.to_string(),
            delay_ms: AtomicU64::new(0),
            status: AtomicU16::new(200),
            body: Mutex::new(None),
            requests: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            received: Mutex::new(Vec::new()),
            conns: Mutex::new(HashMap::new()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("upstream-{name}"))
                .spawn(move || accept_loop(&listener, &shared))
                .expect("spawn upstream acceptor")
        };
        Upstream {
            name: name.to_string(),
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The name given at start: the response body and the `x-upstream` header value.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port the upstream listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Delays every later response by `delay` (applied after the request is read).
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.shared.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Answers every later request with `status` instead of 200.
    pub fn set_status(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    /// Answers every later request with `body` instead of the name.
    pub fn set_body(&self, body: &[u8]) {
        *lock(&self.shared.body) = Some(body.to_vec());
    }

    /// Every request received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.received).clone()
    }

    /// Number of requests received so far (counted before each is answered).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the acceptor blocked in accept(); it sees `stopping` and returns.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        for conn in conns.values() {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut next_id = 0u64;
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        next_id += 1;
        let id = next_id;
        if let Ok(clone) = stream.try_clone() {
            lock(&shared.conns).insert(id, clone);
        }
        let shared = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name(format!("upstream-{}-{id}", shared.name))
            .spawn(move || {
                let _ = serve_connection(stream, &shared);
                lock(&shared.conns).remove(&id);
            });
        if spawned.is_err() {
            // Out of threads: drop the connection; the client sees a reset.
            continue;
        }
    }
}

fn serve_connection(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(head) = http::read_head(&mut reader)? {
        let body = http::read_body(&mut reader, &head, Unframed::Empty)?;
        let mut start = head.start_line.split(' ');
        lock(&shared.received).push(Received {
            method: start.next().unwrap_or_default().to_string(),
            target: start.next().unwrap_or_default().to_string(),
            headers: head.headers.clone(),
            body,
        });
        // Counted before answering, so whoever reads the response sees it counted.
        shared.requests.fetch_add(1, Ordering::SeqCst);
        let delay = shared.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            thread::sleep(Duration::from_millis(delay));
        }
        let status = shared.status.load(Ordering::SeqCst);
        let echoed: Vec<(String, &[u8])> = head
            .headers
            .iter()
            .filter(|(n, _)| n.starts_with(INTERNAL_HEADER_PREFIX))
            .map(|(n, v)| (format!("{ECHO_PREFIX}{n}"), v.as_slice()))
            .collect();
        let custom = lock(&shared.body).clone();
        let body = custom.as_deref().unwrap_or(shared.name.as_bytes());
        let length = body.len().to_string();
        let close = head.wants_close();
        let mut headers: Vec<(&str, &[u8])> = vec![
            ("content-type", b"text/plain"),
            ("content-length", length.as_bytes()),
            ("x-upstream", shared.name.as_bytes()),
        ];
        headers.extend(echoed.iter().map(|(n, v)| (n.as_str(), *v)));
        if close {
            headers.push(("connection", b"close"));
        }
        let start_line = format!("HTTP/1.1 {status} {}", reason(status));
        http::write_message(&mut writer, &start_line, &headers, body)?;
        if close {
            break;
        }
    }
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
