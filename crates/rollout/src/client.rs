//! A small blocking HTTP/1.1 client over std: one request per connection
//! (`connection: close`), `content-length` or chunked responses, `https://` through rustls
//! with a given CA. What the CLI, the analysis
//! (Envoy admin) and webhook steps need, without an async runtime.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::url::HttpUrl;

/// Largest response body accepted (Envoy's full stats are a few hundred KB).
const MAX_BODY: usize = 64 << 20;

/// Why a request failed before an HTTP status was received.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://host[:port]/path`.
    #[error("{0}")]
    Url(String),
    /// Connecting, sending or receiving failed.
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

/// Sends `method url` with an optional JSON `body`, giving up after `timeout` in total.
pub fn request(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<HttpResponse, ClientError> {
    request_with(method, url, &[], body, timeout, None)
}

/// A duplex byte stream: a socket, or TLS over one.
trait Duplex: Read + Write {}
impl<T: Read + Write> Duplex for T {}

/// [`request`] with extra `headers` (names and values without line breaks), and for an
/// `https://` URL the TLS configuration to trust the server with.
pub fn request_with(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<HttpResponse, ClientError> {
    let parsed = HttpUrl::parse_with_tls(url).map_err(ClientError::Url)?;
    let tls = match (parsed.https, tls) {
        (false, _) => None,
        (true, Some(config)) => Some(config),
        (true, None) => {
            return Err(ClientError::Url(format!(
                "'{url}': https needs the CA to trust (--ca PATH or $ROLLGATE_CA)"
            )))
        }
    };
    let io = |source| ClientError::Io {
        url: url.to_string(),
        source,
    };
    let deadline = Instant::now() + timeout;
    let addr = (parsed.host.as_str(), parsed.port)
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| io(std::io::Error::other("no address")))?;
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_millis(1))
    };
    stream.set_write_timeout(Some(left())).map_err(io)?;
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nhost: {}\r\nuser-agent: rollgate\r\nconnection: close\r\n",
        parsed.path,
        parsed.authority()
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            b.len()
        ));
    } else if method != "GET" {
        head.push_str("content-length: 0\r\n");
    }
    head.push_str("\r\n");
    let mut conn: Box<dyn Duplex + '_> = match tls {
        None => Box::new(&stream),
        // The handshake (and the server's certificate check) runs inside the first write:
        // a failure there means nothing was sent.
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(parsed.host.clone())
                .map_err(|e| ClientError::Url(format!("'{url}': {e}")))?;
            let c = rustls::ClientConnection::new(config.clone(), name)
                .map_err(|e| io(std::io::Error::other(e)))?;
            Box::new(rustls::StreamOwned::new(c, &stream))
        }
    };
    conn.write_all(head.as_bytes()).map_err(io)?;
    if let Some(b) = body {
        conn.write_all(b).map_err(io)?;
    }
    conn.flush().map_err(io)?;
    // From here on the server may have acted: failures say so.
    let io = |source| ClientError::NoAnswer {
        url: url.to_string(),
        source,
    };
    let mut reader = BufReader::new(conn);
    let mut read_line = |what: &str| -> Result<String, ClientError> {
        stream.set_read_timeout(Some(left())).map_err(io)?;
        let mut line = String::new();
        let n = reader.read_line(&mut line).map_err(io)?;
        if n == 0 {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("connection closed before the {what}"),
            )));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    };
    let bad = |why: String| ClientError::Protocol {
        url: url.to_string(),
        why,
    };
    let status_line = read_line("status line")?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| bad(format!("status line '{status_line}'")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line("end of the headers")?;
        if line.is_empty() {
            break;
        }
        let (n, v) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("header line '{line}'")))?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut resp = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    if method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(resp);
    }
    stream.set_read_timeout(Some(left())).map_err(io)?;
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
    let length = resp.header("content-length").map(str::parse::<usize>);
    resp.body = match (chunked, length) {
        (true, _) => read_chunked(&mut reader, &stream, &left).map_err(|e| match e {
            Err(why) => bad(why),
            Ok(e) => io(e),
        })?,
        (false, Some(Ok(n))) if n <= MAX_BODY => {
            let mut b = vec![0; n];
            reader.read_exact(&mut b).map_err(io)?;
            b
        }
        (false, Some(_)) => return Err(bad("invalid or huge content-length".into())),
        (false, None) => {
            let mut b = Vec::new();
            (&mut reader)
                .take(MAX_BODY as u64)
                .read_to_end(&mut b)
                .map_err(io)?;
            b
        }
    };
    Ok(resp)
}

/// De-chunks a body. `Err(Ok(io))` for I/O errors, `Err(Err(why))` for framing errors.
fn read_chunked(
    reader: &mut impl BufRead,
    stream: &TcpStream,
    left: &dyn Fn() -> Duration,
) -> Result<Vec<u8>, Result<std::io::Error, String>> {
    let mut body = Vec::new();
    loop {
        stream.set_read_timeout(Some(left())).map_err(Ok)?;
        let mut line = String::new();
        reader.read_line(&mut line).map_err(Ok)?;
        let size_text = line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| Err(format!("chunk size '{}'", line.trim())))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let mut t = String::new();
                if reader.read_line(&mut t).map_err(Ok)? == 0 || t.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(Err("body too large".into()));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).map_err(Ok)?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf).map_err(Ok)?;
    }
}
