//! TCP mode: Envoy with the filter as a network filter (`envoy.filters.network.wasm`) in front
//! of `tcp_proxy`, and [`TcpUpstream`], an in-process echo server that counts what it accepts.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::config::yaml_quote;

/// An echo server on `127.0.0.1`: every accepted connection gets its bytes back until EOF.
pub struct TcpUpstream {
    port: u16,
    accepted: Arc<AtomicU64>,
    open: Arc<AtomicU64>,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl TcpUpstream {
    /// Starts listening on a free loopback port.
    pub fn start() -> TcpUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind tcp upstream");
        let port = listener.local_addr().expect("local addr").port();
        let accepted = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicU64::new(0));
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, o, p, s) = (accepted.clone(), open.clone(), peak.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                let now_open = o.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now_open, Ordering::SeqCst);
                let o = o.clone();
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = conn.shutdown(Shutdown::Both);
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        TcpUpstream {
            port,
            accepted,
            open,
            peak,
            stop,
        }
    }

    /// The most connections open at once so far (the server's `Max_used_connections`).
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections accepted and not yet closed.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for TcpUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// The bootstrap for TCP mode: one listener on `127.0.0.1:0` whose chain is the filter (as a
/// network filter, running `policy`) then `tcp_proxy` to cluster `db` at `upstream_port`.
pub fn render_tcp(policy: &str, wasm: &Path, upstream_port: u16) -> String {
    render_tcp_with(policy, wasm, upstream_port, "FAIL_CLOSED")
}

/// [`render_tcp`] with another `failure_policy` (`FAIL_RELOAD`: a dead VM is replaced).
pub fn render_tcp_with(policy: &str, wasm: &Path, upstream_port: u16, failure: &str) -> String {
    format!(
        r#"admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 0 }}
static_resources:
  listeners:
  - name: rollgate_tcp
    address:
      socket_address: {{ address: 127.0.0.1, port_value: 0 }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.wasm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm
          config:
            name: rollgate
            root_id: rollgate
            configuration:
              "@type": type.googleapis.com/google.protobuf.StringValue
              value: {policy}
            vm_config:
              runtime: envoy.wasm.runtime.v8
              code:
                local:
                  filename: {wasm}
            failure_policy: {failure}
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: db
          cluster: db
  clusters:
  - name: db
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: db
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {upstream_port} }}
"#,
        policy = yaml_quote(policy),
        wasm = yaml_quote(&wasm.to_string_lossy()),
    )
}

/// Closes `s` with a reset (`SO_LINGER` 0) instead of a FIN: a client killed abruptly.
pub fn reset(s: TcpStream) {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Linger {
        on: i32,
        secs: i32,
    }
    extern "C" {
        fn setsockopt(fd: i32, level: i32, name: i32, value: *const Linger, len: u32) -> i32;
    }
    const SOL_SOCKET: i32 = 1;
    const SO_LINGER: i32 = 13;
    let l = Linger { on: 1, secs: 0 };
    // SAFETY: a valid socket descriptor and a `struct linger` of the size passed.
    let rc = unsafe {
        setsockopt(
            s.as_raw_fd(),
            SOL_SOCKET,
            SO_LINGER,
            &l,
            std::mem::size_of::<Linger>() as u32,
        )
    };
    assert_eq!(rc, 0, "setsockopt(SO_LINGER)");
    drop(s);
}

/// What a connection through the proxy came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Our bytes came back: connected through to the upstream.
    Echoed,
    /// Closed (EOF or reset) without an answer.
    Closed,
    /// Nothing within the timeout: neither admitted nor refused.
    Hung,
}

/// Connects to `port`, sends a line and waits up to `timeout` for its echo. Returns the stream
/// (kept open when echoed) and its fate.
pub fn connect_through(port: u16, timeout: Duration) -> (TcpStream, Fate) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to envoy");
    s.set_read_timeout(Some(timeout)).expect("read timeout");
    let fate = match s.write_all(b"ping\n") {
        Err(_) => Fate::Closed,
        Ok(()) => {
            let mut buf = [0u8; 5];
            let mut got = 0;
            loop {
                match s.read(&mut buf[got..]) {
                    Ok(0) => break Fate::Closed,
                    Ok(n) => {
                        got += n;
                        if got == buf.len() {
                            break Fate::Echoed;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        break Fate::Hung
                    }
                    Err(_) => break Fate::Closed,
                }
            }
        }
    };
    (s, fate)
}
