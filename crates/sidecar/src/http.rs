//! The server side of HTTP/1.1, just enough for the API: request line, headers, a
//! `content-length` body, keep-alive. Envoy's HTTP client (the filter's long-poll) keeps its
//! connections open, so keep-alive matters.

use std::io::{self, BufRead, Read, Write};

/// Largest request head accepted, counted as bytes arrive.
pub const MAX_HEAD: usize = 16 << 10;
/// Largest request body accepted: commands take a small JSON object at most.
pub const MAX_BODY: usize = 64 << 10;
/// A request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// Query parameters, percent-decoded.
    pub query: Vec<(String, String)>,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Whether the connection closes after the answer.
    pub close: bool,
    /// The body (at most [`MAX_BODY`] bytes).
    pub body: Vec<u8>,
}

impl Request {
    /// First value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// First value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers besides `content-length` and `connection`.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with a content type.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
        }
    }

    /// JSON of `value`.
    pub fn json(status: u16, value: &impl serde::Serialize) -> Response {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        Response::new(status, "application/json", body)
    }

    /// `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": message }))
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Why a request could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Answer this status and message, then close the connection.
    Refuse(u16, String),
    /// The connection broke, or went quiet before a request began: close without an answer.
    Io(io::Error),
}

fn bad(why: impl Into<String>) -> ReadError {
    ReadError::Refuse(400, why.into())
}

/// At most 64 characters of client text, escaped, for an error message.
pub fn excerpt(b: &[u8]) -> String {
    let t = String::from_utf8_lossy(b);
    let mut s: String = t.chars().take(64).flat_map(char::escape_default).collect();
    if t.chars().count() > 64 {
        s.push('…');
    }
    s
}

fn decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads one line of the head into `buf`, taking at most `budget` bytes from the stream, so
/// a line that never ends costs [`MAX_HEAD`] bytes, not what the client sends (before: the
/// limit was checked once a line ended; a 300 MB line without a newline took 300 MB).
/// Returns the bytes read, 0 at the end of the stream.
fn head_line(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    budget: &mut usize,
    started: bool,
) -> Result<usize, ReadError> {
    buf.clear();
    let n = match (&mut *r).take(*budget as u64 + 1).read_until(b'\n', buf) {
        Ok(n) => n,
        Err(e) if timed_out(&e) && (started || !buf.is_empty()) => {
            return Err(ReadError::Refuse(
                408,
                "the request head did not arrive in time".into(),
            ))
        }
        Err(e) => return Err(ReadError::Io(e)),
    };
    if n > *budget {
        return Err(ReadError::Refuse(
            431,
            format!("request head larger than {MAX_HEAD} bytes"),
        ));
    }
    *budget -= n;
    if n > 0 && buf.last() != Some(&b'\n') {
        return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(n)
}

/// Reads one request; `Ok(None)` when the client closed the connection between requests.
/// The head is bounded by [`MAX_HEAD`] as it arrives, the body by [`MAX_BODY`]; a timeout
/// of the underlying stream in the middle of a request is a 408.
pub fn read_request(r: &mut impl BufRead) -> Result<Option<Request>, ReadError> {
    let mut budget = MAX_HEAD;
    let mut buf = Vec::new();
    let mut started = false;
    // Tolerate empty lines before a request (RFC 9112 §2.2).
    loop {
        if head_line(r, &mut buf, &mut budget, started)? == 0 {
            if started {
                return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            return Ok(None);
        }
        started = true;
        if !buf.trim_ascii().is_empty() {
            break;
        }
    }
    let line = std::str::from_utf8(&buf)
        .map_err(|_| bad(format!("request line is not UTF-8: '{}'", excerpt(&buf))))?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(format!(
            "bad request line '{}'",
            excerpt(line.trim().as_bytes())
        )));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!(
            "unsupported version '{}'",
            excerpt(version.as_bytes())
        )));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut req = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect(),
        headers: Vec::new(),
        close: version == "HTTP/1.0",
        body: Vec::new(),
    };
    loop {
        if head_line(r, &mut buf, &mut budget, true)? == 0 {
            return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        let l = std::str::from_utf8(&buf)
            .map_err(|_| bad(format!("header line is not UTF-8: '{}'", excerpt(&buf))))?
            .trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (n, v) = l
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header line '{}'", excerpt(l.as_bytes()))))?;
        req.headers
            .push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    if let Some(c) = req.header("connection") {
        let c = c.to_ascii_lowercase();
        if c.contains("close") {
            req.close = true;
        } else if c.contains("keep-alive") {
            req.close = false;
        }
    }
    if req.header("transfer-encoding").is_some() {
        return Err(bad("chunked request bodies are not supported"));
    }
    if let Some(len) = req.header("content-length") {
        let n: usize = len
            .parse()
            .map_err(|_| bad(format!("bad content-length '{}'", excerpt(len.as_bytes()))))?;
        if n > MAX_BODY {
            return Err(ReadError::Refuse(
                413,
                format!("request body larger than {MAX_BODY} bytes"),
            ));
        }
        let mut body = Vec::with_capacity(n);
        match (&mut *r).take(n as u64).read_to_end(&mut body) {
            Ok(got) if got == n => req.body = body,
            Ok(_) => return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into())),
            Err(e) if timed_out(&e) => {
                return Err(ReadError::Refuse(
                    408,
                    "the request body did not arrive in time".into(),
                ))
            }
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    Ok(Some(req))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Writes `resp`; `close` adds `connection: close`.
pub fn write_response(w: &mut impl Write, resp: &Response, close: bool) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (n, v) in &resp.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n", resp.body.len()));
    if close {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&resp.body);
    w.write_all(&out)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    #[test]
    fn reads_requests_back_to_back() {
        let raw = b"GET /v1/policies/flask?version=3&wait=500ms HTTP/1.1\r\nHost: rollgate\r\n\r\n\
POST /v1/rollouts/flask/promote HTTP/1.1\r\ncontent-length: 2\r\nConnection: close\r\n\r\n{}";
        let mut r = BufReader::new(&raw[..]);
        let a = read_request(&mut r).unwrap().unwrap();
        assert_eq!(
            (a.method.as_str(), a.path.as_str()),
            ("GET", "/v1/policies/flask")
        );
        assert_eq!(a.param("version"), Some("3"));
        assert_eq!(a.param("wait"), Some("500ms"));
        assert!(!a.close);
        let b = read_request(&mut r).unwrap().unwrap();
        assert_eq!(b.path, "/v1/rollouts/flask/promote");
        assert_eq!(b.body, b"{}");
        assert!(b.close);
        assert!(read_request(&mut r).unwrap().is_none());
    }

    #[test]
    fn refuses_garbage() {
        for raw in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET / SPDY/3\r\n\r\n",
            b"GET / HTTP/1.1\r\nno-colon\r\n\r\n",
        ] {
            assert!(matches!(
                read_request(&mut BufReader::new(raw)),
                Err(ReadError::Refuse(400, _))
            ));
        }
    }

    #[test]
    fn a_head_that_never_ends_is_cut_at_the_limit() {
        // An endless request line: the reader stops after MAX_HEAD + 1 bytes.
        let mut endless = BufReader::new(io::repeat(b'a'));
        match read_request(&mut endless) {
            Err(ReadError::Refuse(431, m)) => assert!(m.contains("16384"), "{m}"),
            other => panic!("{other:?}"),
        }
        let long_header = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "b".repeat(MAX_HEAD));
        assert!(matches!(
            read_request(&mut BufReader::new(long_header.as_bytes())),
            Err(ReadError::Refuse(431, _))
        ));
        let big_body = format!(
            "POST / HTTP/1.1\r\ncontent-length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert!(matches!(
            read_request(&mut BufReader::new(big_body.as_bytes())),
            Err(ReadError::Refuse(413, _))
        ));
    }

    #[test]
    fn decodes_queries() {
        assert_eq!(decode("a%20b+c%2"), "a b c%2");
        assert_eq!(decode("%5Erollgate"), "^rollgate");
    }

    #[test]
    fn writes_framed_responses() {
        let mut out = Vec::new();
        let r = Response::new(304, "text/plain", "").with_header("x-rollgate-version", "4");
        write_response(&mut out, &r, true).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 304 Not Modified\r\ncontent-type: text/plain\r\nx-rollgate-version: 4\r\n\
             content-length: 0\r\nconnection: close\r\n\r\n"
        );
    }
}
