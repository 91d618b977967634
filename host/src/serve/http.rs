//! The server side of HTTP/1.1, just enough for the API: request line, headers, a
//! `content-length` body, keep-alive. Envoy's HTTP client (the filter's long-poll) keeps its
//! connections open, so keep-alive matters.

use std::io::{self, BufRead, Read, Write};

// Errors are answered to the client and may be logged: they quote at most a short, escaped
// excerpt of what was sent (fuzzing found a 400 answer echoing a 16 KB request line).
use rollgate_plugin::excerpt::excerpt;

/// Largest request head accepted.
const MAX_HEAD: usize = 16 << 10;
/// Largest request body accepted (the API takes none worth mentioning).
const MAX_BODY: usize = 1 << 20;

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
}

impl Request {
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

fn bad(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
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

/// Reads one request; `Ok(None)` when the client closed the connection between requests.
/// The body, if any, is read and dropped: no endpoint takes one.
pub fn read_request(r: &mut impl BufRead) -> io::Result<Option<Request>> {
    let mut head_len = 0;
    let mut line = String::new();
    // Tolerate empty lines before a request (RFC 9112 §2.2).
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        head_len += line.len();
        if !line.trim().is_empty() {
            break;
        }
        if head_len > MAX_HEAD {
            return Err(bad("request head too large"));
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(format!("bad request line '{}'", excerpt(line.trim()))));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("unsupported version '{}'", excerpt(version))));
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
    };
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("connection closed inside the request head"));
        }
        head_len += line.len();
        if head_len > MAX_HEAD {
            return Err(bad("request head too large"));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (n, v) = l
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header line '{}'", excerpt(l))))?;
        req.headers
            .push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    if let Some(c) = header("connection") {
        let c = c.to_ascii_lowercase();
        if c.contains("close") {
            req.close = true;
        } else if c.contains("keep-alive") {
            req.close = false;
        }
    }
    if header("transfer-encoding").is_some() {
        return Err(bad("chunked request bodies are not supported"));
    }
    if let Some(len) = header("content-length") {
        let n: usize = len
            .parse()
            .map_err(|_| bad(format!("bad content-length '{}'", excerpt(&len))))?;
        if n > MAX_BODY {
            return Err(bad("request body too large"));
        }
        io::copy(&mut r.take(n as u64), &mut io::sink())?;
    }
    Ok(Some(req))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
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
            assert!(read_request(&mut BufReader::new(raw)).is_err());
        }
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
