//! The API's connections, served by hyper's HTTP/1.1 server on the sidecar's tokio runtime:
//! at most [`Limits::max_connections`] at once (one more is answered 503 and closed), TLS
//! through tokio-rustls, and the time limits hyper leaves to its user (`Deadlines`, below): a
//! request head must arrive whole within the head timeout (408, then close), a kept-alive
//! connection idles at most the idle timeout, a client that takes no answer is dropped.
//! hyper bounds the head's size ([`MAX_HEAD`]), [`crate::http`] the body's.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::http::{read_request, ReadError, Request, Response, MAX_HEAD};
use crate::Limits;

/// What answers a request.
pub type Handler =
    Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

/// What the server does besides answering: log, count refused connections, stop.
pub struct Serving {
    /// Answers requests.
    pub handler: Handler,
    /// Caps and timeouts.
    pub limits: Limits,
    /// TLS, if the API speaks HTTPS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Called with a line to log.
    pub log: Arc<dyn Fn(&str) + Send + Sync>,
    /// Called when a connection is refused for the cap.
    pub refused: Arc<dyn Fn() + Send + Sync>,
    /// Whether the server stops: answers end with `connection: close`.
    pub stopping: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// Accepts and serves connections until `stop` turns true; then lets open exchanges end
/// (a pending long-poll answers at once when the server stops) for a few seconds.
pub async fn accept(listener: TcpListener, serving: Arc<Serving>, mut stop: watch::Receiver<bool>) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let mut last_error: Option<Instant> = None;
    let max = serving.limits.max_connections;
    loop {
        let accepted = tokio::select! {
            _ = stopped(&mut stop) => break,
            a = listener.accept() => a,
        };
        // Finished connections leave the set (it would otherwise grow with every one).
        while tasks.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors or memory: pause instead of spinning on the error, and
                // say so once a minute rather than once per attempt.
                if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    (serving.log)(&format!("accepting a connection failed: {e}"));
                    last_error = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if active.load(Ordering::SeqCst) >= max {
            (serving.refused)();
            tasks.spawn(refuse_busy(stream, max));
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(active.clone());
        let (serving, stop) = (serving.clone(), stop.clone());
        tasks.spawn(async move {
            let _slot = slot;
            serve(stream, &serving, stop).await;
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
}

/// Returns once the server stops (or its `Server` is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: dropped here, not held by the caller.
    let _ = stop.wait_for(|s| *s).await.is_ok();
}

/// Counts a connection being served until dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answers a connection over the cap with a 503 and closes it, without waiting for the
/// client to send anything.
async fn refuse_busy(stream: TcpStream, max: usize) {
    let body = serde_json::to_vec_pretty(&serde_json::json!({
        "error": format!("too many connections ({max} open); retry shortly")
    }))
    .unwrap_or_default();
    // hyper answers requests; this connection gets no request read, so its answer is
    // written here, to the fresh socket's empty send buffer.
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len() + 1
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out.push(b'\n');
    let _ = tokio::time::timeout(Duration::from_millis(100), stream.writable()).await;
    let _ = stream.try_write(&out);
    // What the client already sent is read and dropped, so closing does not reset the
    // connection before the client reads the 503.
    let mut sink = [0u8; 4096];
    for _ in 0..4 {
        if !matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
    if let Ok(s) = stream.into_std() {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
}

async fn serve(stream: TcpStream, serving: &Arc<Serving>, stop: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let limits = &serving.limits;
    // A new connection has the head timeout from its opening, TLS handshake included.
    let deadline = Instant::now() + limits.head_timeout;
    match &serving.tls {
        None => serve_io(stream, serving, deadline, stop).await,
        Some(acceptor) => {
            // A client that cannot complete a handshake in time gets nothing to read.
            let handshake = tokio::time::timeout_at(deadline, acceptor.accept(stream)).await;
            if let Ok(Ok(tls)) = handshake {
                serve_io(tls, serving, deadline, stop).await;
            }
        }
    }
}

/// Serves one connection's byte stream (`deadline`: its first head's), until the client
/// leaves, a limit ends it or `stop` turns true. Public for the fuzzer, which feeds it bytes
/// in memory.
pub async fn serve_io<T>(
    io: T,
    serving: &Arc<Serving>,
    deadline: Instant,
    mut stop: watch::Receiver<bool>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let phase = Arc::new(Mutex::new(Phase::Head(deadline)));
    let io = Deadlines::new(io, phase.clone(), &serving.limits);
    let svc = {
        let serving = serving.clone();
        hyper::service::service_fn(move |req| {
            let (serving, phase) = (serving.clone(), phase.clone());
            async move { exchange(req, &serving, &phase).await }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD)
        // Ours, for the whole head from its first byte, with a 408 ([`Deadlines`]).
        .header_read_timeout(None)
        // A client may shut its side down once it has sent its request and still get the
        // answer (the hand-written server allowed it; hyper's default closes at once).
        .half_close(true)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopped(&mut stop) => {
            // Idle connections close now; an exchange under way ends first.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}

async fn exchange(
    req: hyper::Request<hyper::body::Incoming>,
    serving: &Serving,
    phase: &Mutex<Phase>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, hyper::Error> {
    let head_deadline = {
        let mut p = phase.lock().unwrap_or_else(|e| e.into_inner());
        let d = match *p {
            Phase::Head(d) => d,
            _ => Instant::now() + serving.limits.head_timeout,
        };
        *p = Phase::Busy;
        d
    };
    let resp = match read_request(req, head_deadline).await {
        Ok(req) => {
            let resp = (serving.handler)(req).await;
            match (serving.stopping)() {
                true => resp.with_header("connection", "close"),
                false => resp,
            }
        }
        Err(ReadError::Refuse(resp)) => resp.with_header("connection", "close"),
        Err(ReadError::Io(e)) => return Err(e),
    };
    *phase.lock().unwrap_or_else(|e| e.into_inner()) =
        Phase::Idle(Instant::now() + serving.limits.idle_timeout);
    Ok(resp.into_hyper())
}

/// Where a connection is: reading a head (until the deadline), answering, or idle between
/// requests (until the deadline).
#[derive(Debug, Clone, Copy)]
enum Phase {
    Head(Instant),
    Busy,
    Idle(Instant),
}

/// The connection's byte stream under the phase's deadline: a read that would wait past it
/// fails (a head gets a 408 written first), and a write or flush the client does not take
/// within the write timeout fails.
struct Deadlines<T> {
    io: T,
    phase: Arc<Mutex<Phase>>,
    head_timeout: Duration,
    write_timeout: Duration,
    read_timer: Pin<Box<Sleep>>,
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl<T> Deadlines<T> {
    fn new(io: T, phase: Arc<Mutex<Phase>>, limits: &Limits) -> Deadlines<T> {
        Deadlines {
            io,
            phase,
            head_timeout: limits.head_timeout,
            write_timeout: limits.write_timeout,
            read_timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            write_timer: None,
        }
    }

    /// `progress` of a write, flush or shutdown; an error once it has waited the write
    /// timeout in all.
    fn stall<R>(
        &mut self,
        cx: &mut Context<'_>,
        progress: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match progress {
            Poll::Ready(r) => {
                self.write_timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.write_timeout;
                let timer = self
                    .write_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
            }
        }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The answer to a head that did not arrive in time; hyper has nothing to answer yet.
fn timed_out_answer() -> Vec<u8> {
    let resp = Response::error(408, "the request head did not arrive in time");
    let mut out = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        resp.body.len()
    )
    .into_bytes();
    out.extend_from_slice(&resp.body);
    out
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Deadlines<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let mut p = this.phase();
                // The first byte of the next request starts its head's clock.
                if buf.filled().len() > before && matches!(*p, Phase::Idle(_)) {
                    *p = Phase::Head(Instant::now() + this.head_timeout);
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        let phase = *this.phase();
        let (deadline, in_head) = match phase {
            Phase::Busy => return Poll::Pending,
            Phase::Head(d) => (d, true),
            Phase::Idle(d) => (d, false),
        };
        if this.read_timer.deadline() != deadline {
            this.read_timer.as_mut().reset(deadline);
        }
        ready!(this.read_timer.as_mut().poll(cx));
        if in_head {
            // Best effort: the answer fits an empty send buffer; a client that takes
            // nothing gets nothing.
            let answer = timed_out_answer();
            if let Poll::Ready(Ok(n)) = Pin::new(&mut this.io).poll_write(cx, &answer) {
                if n == answer.len() {
                    let _ = Pin::new(&mut this.io).poll_flush(cx);
                    let _ = Pin::new(&mut this.io).poll_shutdown(cx);
                }
            }
        }
        Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Deadlines<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let progress = Pin::new(&mut self.io).poll_write(cx, buf);
        self.stall(cx, progress)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // TLS takes a write into its buffer at once; the stall shows in the flush.
        let progress = Pin::new(&mut self.io).poll_flush(cx);
        self.stall(cx, progress)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let progress = Pin::new(&mut self.io).poll_shutdown(cx);
        self.stall(cx, progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// The size of `/big`'s answer: more than the sockets buffer.
    const BIG: usize = 64 << 20;

    /// A server whose handler echoes the method, path and body.
    fn echo(
        limits: Limits,
    ) -> (
        std::net::SocketAddr,
        watch::Sender<bool>,
        std::thread::JoinHandle<()>,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        let serving = Arc::new(Serving {
            handler: Arc::new(|req: Request| {
                Box::pin(async move {
                    // Long enough for the client's end to arrive while the answer is pending.
                    if req.path == "/slow" {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    if req.path == "/big" {
                        return Response::new(200, "text/plain", vec![b'x'; BIG]);
                    }
                    let text = format!(
                        "{} {} {}",
                        req.method,
                        req.path,
                        String::from_utf8_lossy(&req.body)
                    );
                    Response::new(200, "text/plain", text)
                })
            }),
            limits,
            tls: None,
            log: Arc::new(|_| {}),
            refused: Arc::new(|| {}),
            stopping: Arc::new(|| false),
        });
        let t = std::thread::spawn(move || {
            rt.block_on(async move {
                let l = TcpListener::from_std(std_listener).unwrap();
                accept(l, serving, rx).await
            })
        });
        (addr, tx, t)
    }

    fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(request);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn reads_requests_back_to_back() {
        let (addr, stop, t) = echo(Limits::default());
        let out = raw(
            addr,
            b"GET /v1/policies/flask?version=3 HTTP/1.1\r\nHost: rollgate\r\n\r\n\
POST /v1/rollouts/flask/promote HTTP/1.1\r\ncontent-length: 2\r\nConnection: close\r\n\r\n{}",
        );
        let first = out.find("GET /v1/policies/flask ").expect(&out);
        let second = out.find("POST /v1/rollouts/flask/promote {}").expect(&out);
        assert!(first < second, "{out}");
        assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
        stop.send_replace(true);
        t.join().unwrap();
    }

    #[test]
    fn refuses_garbage_and_heads_beyond_the_limit() {
        let (addr, stop, t) = echo(Limits::default());
        for req in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET / SPDY/3\r\n\r\n",
            b"GET / HTTP/1.1\r\nno-colon\r\n\r\n",
        ] {
            let out = raw(addr, req);
            assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        }
        let long_header = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "b".repeat(MAX_HEAD));
        let out = raw(addr, long_header.as_bytes());
        assert!(out.starts_with("HTTP/1.1 431"), "{out}");
        let big_body = format!(
            "POST / HTTP/1.1\r\ncontent-length: {}\r\n\r\n",
            crate::http::MAX_BODY + 1
        );
        let out = raw(addr, big_body.as_bytes());
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
        assert!(out.contains("65536"), "{out}");
        stop.send_replace(true);
        t.join().unwrap();
    }

    #[test]
    fn a_body_that_does_not_arrive_is_a_408() {
        let (addr, stop, t) = echo(Limits {
            head_timeout: Duration::from_millis(300),
            ..Limits::default()
        });
        let out = raw(addr, b"POST / HTTP/1.1\r\ncontent-length: 10\r\n\r\nabc");
        assert!(out.starts_with("HTTP/1.1 408"), "{out}");
        assert!(out.contains("body did not arrive in time"), "{out}");
        stop.send_replace(true);
        t.join().unwrap();
    }

    #[test]
    fn a_client_that_half_closes_still_gets_its_answer() {
        let (addr, stop, t) = echo(Limits::default());
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\n\r\n").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        stop.send_replace(true);
        t.join().unwrap();
    }

    #[test]
    fn slow_heads_get_a_408_and_idle_connections_close_silently() {
        let (addr, stop, t) = echo(Limits {
            head_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(600),
            ..Limits::default()
        });
        let started = std::time::Instant::now();
        let out = raw(addr, b"GET / HTTP/1.1\r\nhost: x\r\n");
        assert!(out.starts_with("HTTP/1.1 408"), "{out}");
        assert!(started.elapsed() >= Duration::from_millis(250));
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        let idle = std::time::Instant::now();
        assert_eq!(s.read(&mut buf).unwrap(), 0, "closed without an answer");
        assert!(
            idle.elapsed() >= Duration::from_millis(500),
            "{:?}",
            idle.elapsed()
        );
        stop.send_replace(true);
        t.join().unwrap();
    }

    #[test]
    fn a_client_that_takes_no_answer_is_dropped() {
        let (addr, stop, t) = echo(Limits {
            write_timeout: Duration::from_millis(300),
            ..Limits::default()
        });
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\n\r\n").unwrap();
        // Not reading: the answer fills both sockets' buffers, then the server gives up.
        std::thread::sleep(Duration::from_millis(1500));
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(out.starts_with(b"HTTP/1.1 200"));
        assert!(out.len() < BIG, "{} bytes: the whole answer", out.len());
        stop.send_replace(true);
        t.join().unwrap();
    }
}
