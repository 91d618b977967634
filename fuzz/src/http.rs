//! The `http` target: the sidecar's connection layer ([`rollgate_sidecar::conn::serve_io`],
//! hyper under the sidecar's limits) fed one client's bytes in memory, with a handler that
//! records what reached it. Properties: every answer is framed HTTP/1.1; the connection ends
//! soon after the client's last byte; a head that never completes is refused after at most
//! [`HEAD_BUDGET`] bytes; what reaches the handler has a method and clean header names; an
//! error answer stays short (never an echo of the input).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rollgate_sidecar::conn::{serve_io, Serving};
use rollgate_sidecar::http::{Request, Response};
use rollgate_sidecar::Limits;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

use crate::targets::{excerpt, MAX_ERROR_CHARS};
use crate::{api, pending};

/// Head limit of the sidecar (16 KiB) plus a read buffer's worth of slack.
pub const HEAD_BUDGET: usize = (16 << 10) + (8 << 10);

/// What the server did with one client's bytes.
pub struct Served {
    /// Everything it wrote.
    pub answer: Vec<u8>,
    /// How many of the client's bytes it read.
    pub read: usize,
    /// The requests that reached the handler.
    pub requests: Vec<Request>,
}

/// The server's end of the stream, counting what the server reads.
struct Counted {
    inner: DuplexStream,
    read: Arc<Mutex<usize>>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        *self.read.lock().unwrap_or_else(|e| e.into_inner()) += buf.filled().len() - before;
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Sends `input` to a connection of the sidecar's server and reads until it closes.
pub fn serve(input: &[u8]) -> Result<Served, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("no runtime: {e}"))?;
    rt.block_on(async {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let serving = Arc::new(Serving {
            handler: Arc::new({
                let seen = seen.clone();
                move |req: Request| {
                    let seen = seen.clone();
                    Box::pin(async move {
                        seen.lock().unwrap_or_else(|e| e.into_inner()).push(req);
                        Response::new(200, "text/plain", "ok\n")
                    })
                }
            }),
            limits: Limits {
                head_timeout: Duration::from_secs(2),
                idle_timeout: Duration::from_secs(2),
                ..Limits::default()
            },
            tls: None,
            log: Arc::new(|_| {}),
            refused: Arc::new(|| {}),
            stopping: Arc::new(|| false),
        });
        let (client, server) = tokio::io::duplex(64 << 10);
        let read = Arc::new(Mutex::new(0));
        let server = Counted {
            inner: server,
            read: read.clone(),
        };
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let deadline = tokio::time::Instant::now() + serving.limits.head_timeout;
        let served =
            tokio::spawn(async move { serve_io(server, &serving, deadline, stopped).await });
        let (mut rx, mut tx) = tokio::io::split(client);
        let send = async {
            // The server may close early (a refused head): what it answered still counts.
            let _ = tx.write_all(input).await;
            let _ = tx.shutdown().await;
        };
        let mut answer = Vec::new();
        let receive = rx.read_to_end(&mut answer);
        let within = tokio::time::timeout(api::ANSWER_WITHIN, async {
            let ((), r) = tokio::join!(send, receive);
            r
        })
        .await;
        match within {
            Err(_) => {
                return Err(format!(
                    "the server neither answered nor closed within {:?} of the client's last \
                     byte; it had sent {} bytes",
                    api::ANSWER_WITHIN,
                    answer.len()
                ))
            }
            Ok(Err(e)) => return Err(format!("reading the answer: {e}")),
            Ok(Ok(_)) => {}
        }
        let _ = served.await;
        let read = *read.lock().unwrap_or_else(|e| e.into_inner());
        let requests = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(Served {
            answer,
            read,
            requests,
        })
    })
}

/// The target's check.
pub fn check(input: &[u8]) -> Result<String, String> {
    let served = serve(input)?;
    let codes = api::responses(&served.answer)?;
    for req in &served.requests {
        if req.method.is_empty() {
            return Err(format!("a request without a method: {req:?}"));
        }
        if let Some((n, _)) = req.headers.iter().find(|(n, _)| n.contains([':', '\n'])) {
            return Err(format!("a header name with ':' or a newline: {n:?}"));
        }
    }
    if pending::HEAD_LIMIT_AS_BYTES_ARRIVE
        && served.requests.is_empty()
        && served.read > HEAD_BUDGET
    {
        return Err(format!(
            "the server read {} bytes without a whole head; the head limit is 16 KiB",
            served.read
        ));
    }
    if served.answer.len() > (served.requests.len() + 1) * (MAX_ERROR_CHARS + 512) {
        return Err(format!(
            "{} bytes of answers to {} requests: {:?}",
            served.answer.len(),
            served.requests.len(),
            excerpt(&String::from_utf8_lossy(&served.answer), 200)
        ));
    }
    let sig: Vec<String> = served
        .requests
        .iter()
        .map(|r| format!("{} {}", r.method.len().min(5), r.query.len().min(3)))
        .chain(codes.iter().map(|c| c.to_string()))
        .collect();
    Ok(sig.join(" / "))
}
