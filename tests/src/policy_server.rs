//! A stand-in for the rollgate sidecar's policy endpoint, speaking the filter's long-poll
//! contract: `GET <path>?version=N&wait=D` answers 200 with the policy and
//! `x-rollgate-version` as soon as its version is above N, else 304 after the wait.
//! It lets the filter's fetching be tested in Envoy without the real sidecar.

use std::io::BufReader;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::http;

struct State {
    version: u64,
    policy: String,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stopping: AtomicBool,
    polls: AtomicU64,
    conns: Mutex<Vec<TcpStream>>,
}

/// The fake policy server; stops on drop (open polls are cut, as if the sidecar died).
pub struct PolicyServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<thread::JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PolicyServer {
    /// Starts on 127.0.0.1 with no policy (version 0: polls wait).
    pub fn start() -> PolicyServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind policy server");
        let addr = listener.local_addr().expect("policy server address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                version: 0,
                policy: String::new(),
            }),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            polls: AtomicU64::new(0),
            conns: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let acceptor = thread::spawn(move || {
            for stream in listener.incoming() {
                if s.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                if let Ok(c) = stream.try_clone() {
                    lock(&s.conns).push(c);
                }
                let s = s.clone();
                thread::spawn(move || serve(stream, &s));
            }
        });
        PolicyServer {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The port Envoy's `rollgate` cluster should point at.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Serves `policy` as the next version, waking open polls; returns that version.
    pub fn publish(&self, policy: &str) -> u64 {
        let mut st = lock(&self.shared.state);
        st.version += 1;
        st.policy = policy.to_string();
        self.shared.changed.notify_all();
        st.version
    }

    /// Polls received so far.
    pub fn polls(&self) -> u64 {
        self.shared.polls.load(Ordering::SeqCst)
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for c in lock(&self.shared.conns).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn query_param<'a>(target: &'a str, key: &str) -> Option<&'a str> {
    let (_, q) = target.split_once('?')?;
    q.split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn wait_of(text: &str) -> Duration {
    let ms = text.strip_suffix("ms").and_then(|n| n.parse().ok());
    let s = text
        .strip_suffix('s')
        .and_then(|n| n.parse::<u64>().ok())
        .map(|s| s * 1000);
    Duration::from_millis(ms.or(s).unwrap_or(20_000).min(60_000))
}

fn serve(stream: TcpStream, s: &Shared) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    while let Ok(Some(head)) = http::read_head(&mut reader) {
        s.polls.fetch_add(1, Ordering::SeqCst);
        let target = head.start_line.split(' ').nth(1).unwrap_or("/").to_string();
        let have: u64 = query_param(&target, "version")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let deadline = Instant::now() + wait_of(query_param(&target, "wait").unwrap_or("20s"));
        let mut st = lock(&s.state);
        while st.version <= have && !s.stopping.load(Ordering::SeqCst) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            st = s
                .changed
                .wait_timeout(st, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        if s.stopping.load(Ordering::SeqCst) {
            return;
        }
        let version = st.version.to_string();
        let (status, body) = if st.version > have {
            ("HTTP/1.1 200 OK", st.policy.clone())
        } else {
            ("HTTP/1.1 304 Not Modified", String::new())
        };
        drop(st);
        let length = body.len().to_string();
        let headers: [(&str, &[u8]); 2] = [
            ("x-rollgate-version", version.as_bytes()),
            ("content-length", length.as_bytes()),
        ];
        if http::write_message(&mut writer, status, &headers, body.as_bytes()).is_err() {
            return;
        }
    }
}
