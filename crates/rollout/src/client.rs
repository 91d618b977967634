//! The HTTP client of the CLI, the analysis (Envoy admin, Prometheus) and webhook steps:
//! hyper 1 over tokio, one request per connection (`connection: close`), `https://` through
//! rustls with the ring provider. [`send`] and [`fetch`] are the request as a future (the
//! controller awaits them); [`request`] and [`request_with`] run it to completion for the
//! threads that call it (the sidecar's analysis and webhook threads, the CLI).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{timeout_at, Instant};

use crate::url::HttpUrl;

/// Largest response body accepted (Envoy's full stats are a few hundred KB).
const MAX_BODY: usize = 64 << 20;

/// Why a request failed before an HTTP status was received.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http(s)://host[:port]/path`.
    #[error("{0}")]
    Url(String),
    /// Connecting (or the TLS handshake) failed: nothing was sent.
    #[error("{url}: {source}")]
    Io {
        /// The URL.
        url: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The request was sent, then the answer did not come (timeout, reset, closed): the
    /// server may or may not have acted on it.
    #[error("{url}: request sent, no answer: {source}")]
    NoAnswer {
        /// The URL.
        url: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The answer was not HTTP as we know it.
    #[error("{url}: bad response: {why}")]
    Protocol {
        /// The URL.
        url: String,
        /// What was wrong.
        why: String,
    },
}

/// A response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The TLS configuration trusting the system's certificate authorities (`SSL_CERT_FILE`
/// and `SSL_CERT_DIR` override them), for `https://` webhooks and Prometheus. Loaded once.
pub fn system_roots() -> Result<Arc<rustls::ClientConfig>, String> {
    static ROOTS: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "https: no trusted certificate authority found on this system{}",
                    found
                        .errors
                        .first()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ));
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

/// Sends `method url` with an optional JSON `body`, giving up after `timeout` in total; an
/// `https://` URL is trusted through the system's certificate authorities. Blocking
/// ([`block_on`]); [`fetch`] is the future.
pub fn request(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<HttpResponse, ClientError> {
    block_on(fetch(method, url, body, timeout)).unwrap_or_else(|source| {
        Err(ClientError::Io {
            url: url.to_string(),
            source,
        })
    })
}

/// [`request`] as a future: what webhooks, the analysis and Prometheus queries send.
pub async fn fetch(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<HttpResponse, ClientError> {
    let tls = match url.starts_with("https://") {
        true => Some(system_roots().map_err(ClientError::Url)?),
        false => None,
    };
    send(method, url, &[], body, timeout, tls.as_ref()).await
}

/// [`request`] with extra `headers`, and for an `https://` URL the TLS configuration to
/// trust the server with (none: an `https://` URL is refused, never sent in clear).
/// Blocking ([`block_on`]); [`send`] is the future.
pub fn request_with(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<HttpResponse, ClientError> {
    block_on(send(method, url, headers, body, timeout, tls)).unwrap_or_else(|source| {
        Err(ClientError::Io {
            url: url.to_string(),
            source,
        })
    })
}

/// Runs `work` to completion for a thread that is not async (the sidecar's analysis and
/// webhook threads, the CLI): on a current-thread runtime of its own, made for the call,
/// on this thread, or on a helper thread when this one already runs a runtime (which
/// cannot be blocked in). An error only when no runtime or thread could be made.
pub fn block_on<F>(work: F) -> std::io::Result<F::Output>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    let run = move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(work))
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(run)
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the client thread failed")))
        })
    } else {
        run()
    }
}

/// The request as a future: [`request_with`] without blocking.
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<HttpResponse, ClientError> {
    let parsed = HttpUrl::parse(url).map_err(ClientError::Url)?;
    let tls = match (parsed.https, tls) {
        (false, _) => None,
        (true, Some(config)) => Some(config.clone()),
        (true, None) => {
            return Err(ClientError::Url(format!(
                "'{url}': https needs the CA to trust (--ca PATH or $ROLLGATE_CA)"
            )))
        }
    };
    let not_sent = |source| ClientError::Io {
        url: url.to_string(),
        source,
    };
    let req = build(method, &parsed, headers, body).map_err(not_sent)?;
    let deadline = Instant::now() + timeout;
    let timed_out = || std::io::Error::from(std::io::ErrorKind::TimedOut);
    let tcp = timeout_at(
        deadline,
        tokio::net::TcpStream::connect((parsed.host.as_str(), parsed.port)),
    )
    .await
    .map_err(|_| not_sent(timed_out()))?
    .map_err(not_sent)?;
    let _ = tcp.set_nodelay(true);
    let sent = match tls {
        None => exchange(tcp, req, deadline).await,
        // The handshake (and the server's certificate check) comes first: a failure there
        // means nothing was sent.
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(parsed.host.clone())
                .map_err(|e| ClientError::Url(format!("'{url}': {e}")))?;
            let stream = timeout_at(
                deadline,
                tokio_rustls::TlsConnector::from(config).connect(name, tcp),
            )
            .await
            .map_err(|_| not_sent(timed_out()))?
            .map_err(not_sent)?;
            exchange(stream, req, deadline).await
        }
    };
    // From here on the server may have acted: failures say so.
    let (parts, body) = sent.map_err(|e| match e {
        Failure::Parse(why) => ClientError::Protocol {
            url: url.to_string(),
            why,
        },
        Failure::Io(source) => ClientError::NoAnswer {
            url: url.to_string(),
            source,
        },
    })?;
    Ok(HttpResponse {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    })
}

fn build(
    method: &str,
    url: &HttpUrl,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<http::Request<Full<Bytes>>> {
    let invalid = |e: http::Error| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let mut req = http::Request::builder()
        .method(method)
        .uri(url.path.as_str())
        .header(http::header::HOST, url.authority())
        .header(http::header::USER_AGENT, "rollgate")
        .header(http::header::CONNECTION, "close");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    if body.is_some() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    req.body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))
        .map_err(invalid)
}

enum Failure {
    Parse(String),
    Io(std::io::Error),
}

/// Sends `req` on `io` and reads the answer, whole, until `deadline`.
async fn exchange<T>(
    io: T,
    req: http::Request<Full<Bytes>>,
    deadline: Instant,
) -> Result<(http::response::Parts, Bytes), Failure>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let from_hyper = |e: hyper::Error| {
        if e.is_parse() || e.is_parse_status() {
            Failure::Parse(e.to_string())
        } else {
            Failure::Io(std::io::Error::other(e))
        }
    };
    let work = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(from_hyper)?;
        let answer = async {
            let resp = sender.send_request(req).await.map_err(from_hyper)?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| match e.downcast::<hyper::Error>() {
                    Ok(e) => from_hyper(*e),
                    // The only other error is the limit's.
                    Err(_) => Failure::Parse(format!("body larger than {MAX_BODY} bytes")),
                })?
                .to_bytes();
            Ok((parts, body))
        };
        // The connection is driven here, not spawned: nothing outlives the call.
        tokio::pin!(answer, conn);
        let mut conn_done = false;
        loop {
            tokio::select! {
                r = &mut answer => break r,
                c = &mut conn, if !conn_done => {
                    c.map_err(from_hyper)?;
                    conn_done = true;
                }
            }
        }
    };
    timeout_at(deadline, work)
        .await
        .unwrap_or_else(|_| Err(Failure::Io(std::io::ErrorKind::TimedOut.into())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A server answering each connection's request with `answer`, once.
    fn serve_once(answer: &'static [u8]) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut c, _)) = l.accept() {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf);
                let _ = c.write_all(answer);
            }
        });
        format!("http://{addr}/x")
    }

    #[test]
    fn reads_chunked_and_sized_answers() {
        let url = serve_once(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nX-A: b\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        );
        let r = request("GET", &url, None, Duration::from_secs(5)).unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "abcde"));
        assert_eq!(r.header("x-a"), Some("b"));
        let url = serve_once(b"HTTP/1.1 409 Conflict\r\ncontent-length: 2\r\n\r\nno");
        let r = request("POST", &url, Some(b"{}"), Duration::from_secs(5)).unwrap();
        assert_eq!((r.status, r.text().as_str()), (409, "no"));
    }

    #[test]
    fn tells_unsent_from_unanswered() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", l.local_addr().unwrap());
        drop(l);
        let e = request("POST", &url, None, Duration::from_secs(2)).unwrap_err();
        assert!(matches!(e, ClientError::Io { .. }), "{e}");
        // Accepts, reads, never answers.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", l.local_addr().unwrap());
        std::thread::spawn(move || {
            let (c, _) = l.accept().unwrap();
            std::thread::sleep(Duration::from_secs(5));
            drop(c);
        });
        let e = request("POST", &url, None, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, ClientError::NoAnswer { .. }), "{e}");
        let e = request(
            "GET",
            &serve_once(b"SPDY/3 200\r\n\r\n"),
            None,
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(matches!(e, ClientError::Protocol { .. }), "{e}");
    }

    #[test]
    fn https_needs_a_trust_and_works_from_inside_a_runtime() {
        let e =
            request_with("GET", "https://h/", &[], None, Duration::from_secs(1), None).unwrap_err();
        assert!(e.to_string().contains("--ca"), "{e}");
        // A caller that is itself on a runtime (the controller) is not refused.
        let url = serve_once(b"HTTP/1.1 204 No Content\r\n\r\n");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let r = rt.block_on(async { request("GET", &url, None, Duration::from_secs(5)) });
        assert_eq!(r.unwrap().status, 204);
    }

    fn pem(name: &str) -> Vec<u8> {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../rollgate/tests/rollout_support/tls"
        );
        std::fs::read(format!("{dir}/{name}")).unwrap()
    }

    #[test]
    fn speaks_https_with_the_given_trust() {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = || Arc::new(rustls::crypto::ring::default_provider());
        let chain = CertificateDer::pem_slice_iter(&pem("cert.pem"))
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(&pem("key.pem")).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let conn = rustls::ServerConnection::new(Arc::new(server.clone())).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, c);
                let mut buf = [0u8; 4096];
                if tls.read(&mut buf).is_ok() {
                    let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecret");
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
            }
        });
        let trust = |ca: &str| {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&pem(ca)) {
                roots.add(c.unwrap()).unwrap();
            }
            Arc::new(
                rustls::ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        };
        let url = format!("https://localhost:{port}/x");
        let t = Duration::from_secs(5);
        let r = request_with("GET", &url, &[], None, t, Some(&trust("ca.pem"))).unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "secret"));
        // Another authority's certificate: refused before anything is sent.
        let e = request_with("GET", &url, &[], None, t, Some(&trust("other-ca.pem"))).unwrap_err();
        assert!(matches!(e, ClientError::Io { .. }), "{e}");
        assert!(
            e.to_string().to_ascii_lowercase().contains("certificate"),
            "{e}"
        );
    }
}
