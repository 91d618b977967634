//! [`Client`]: a tiny keep-alive HTTP/1.1 client that sends raw-byte header values.

use std::io::{self, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::http::{self, Unframed};

/// How long a request may take before the client gives up (Envoy answers in milliseconds;
/// this only bounds a hung test).
const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// A response: status, headers (lower-cased names, raw values, wire order) and body.
#[derive(Clone, Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers in wire order, names lower-cased, values as received.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// First value of header `name` (ASCII case-insensitive), as bytes.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        http::find_header(&self.headers, name)
    }

    /// First value of header `name` as a string (lossy for non-UTF-8 values).
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The body as a string (lossy for non-UTF-8 bytes).
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP/1.1 client bound to `127.0.0.1:<port>` that reuses one connection across requests
/// and transparently reconnects (once per request) when the server closed it.
///
/// Header values are byte slices, so tests can send values that are not UTF-8.
pub struct Client {
    addr: SocketAddr,
    conn: Option<Conn>,
}

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    /// A client for `127.0.0.1:port`. Connects lazily on the first request.
    pub fn new(port: u16) -> Client {
        Client {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            conn: None,
        }
    }

    /// `GET path` with `Host: authority` and the extra `headers`. Panics on I/O errors.
    pub fn get(&mut self, authority: &str, path: &str, headers: &[(&str, &[u8])]) -> Response {
        self.request("GET", authority, path, headers, b"")
            .unwrap_or_else(|e| panic!("GET http://{authority}{path} via {}: {e}", self.addr))
    }

    /// Sends one request and reads the response. A non-empty `body` gets a `content-length`.
    ///
    /// If a reused keep-alive connection turns out to be closed (write fails, or the server
    /// closes it before answering), the request is retried once on a fresh connection.
    pub fn request(
        &mut self,
        method: &str,
        authority: &str,
        path: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
    ) -> io::Result<Response> {
        let reused = self.conn.is_some();
        match self.send(method, authority, path, headers, body) {
            Ok(Some(resp)) => Ok(resp),
            Ok(None) if reused => self.retry(method, authority, path, headers, body),
            Err(e) if reused && is_stale_connection(&e) => {
                self.retry(method, authority, path, headers, body)
            }
            Ok(None) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed a fresh connection without answering",
            )),
            Err(e) => Err(e),
        }
    }

    /// The local address of the current connection, if one is open (tests keyed on the client
    /// address can use it).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.conn.as_ref().and_then(|c| c.writer.local_addr().ok())
    }

    /// Closes the current connection; the next request opens a new one.
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    fn retry(
        &mut self,
        method: &str,
        authority: &str,
        path: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
    ) -> io::Result<Response> {
        self.conn = None;
        self.send(method, authority, path, headers, body)?
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed a fresh connection without answering",
                )
            })
    }

    /// One attempt. `Ok(None)`: the server closed the connection before any response byte.
    fn send(
        &mut self,
        method: &str,
        authority: &str,
        path: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
    ) -> io::Result<Option<Response>> {
        let result = self.send_inner(method, authority, path, headers, body);
        if !matches!(result, Ok(Some(_))) {
            self.conn = None;
        }
        result
    }

    fn send_inner(
        &mut self,
        method: &str,
        authority: &str,
        path: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
    ) -> io::Result<Option<Response>> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(connect(self.addr)?),
        };
        let length = body.len().to_string();
        let mut all: Vec<(&str, &[u8])> = vec![("host", authority.as_bytes())];
        all.extend_from_slice(headers);
        if !body.is_empty() {
            all.push(("content-length", length.as_bytes()));
        }
        let start_line = format!("{method} {path} HTTP/1.1");
        http::write_message(&mut conn.writer, &start_line, &all, body)?;
        let Some(head) = http::read_head(&mut conn.reader)? else {
            return Ok(None);
        };
        let status = parse_status(&head.start_line)?;
        let body = if method.eq_ignore_ascii_case("HEAD")
            || (100..200).contains(&status)
            || status == 204
            || status == 304
        {
            Vec::new()
        } else {
            http::read_body(&mut conn.reader, &head, Unframed::UntilEof)?
        };
        if head.wants_close() {
            self.conn = None;
        }
        Ok(Some(Response {
            status,
            headers: head.headers,
            body,
        }))
    }
}

fn connect(addr: SocketAddr) -> io::Result<Conn> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(Conn {
        writer: stream.try_clone()?,
        reader: BufReader::new(stream),
    })
}

fn parse_status(start_line: &str) -> io::Result<u16> {
    let mut parts = start_line.split_whitespace();
    match (parts.next(), parts.next().and_then(|s| s.parse().ok())) {
        (Some(v), Some(status)) if v.starts_with("HTTP/1.") => Ok(status),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad status line {start_line:?}"),
        )),
    }
}

fn is_stale_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Upstream;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::thread;

    #[test]
    fn talks_to_the_upstream_and_reuses_the_connection() {
        let up = Upstream::start("alpha");
        let mut c = Client::new(up.port());
        let r = c.get(
            "x",
            "/",
            &[("x-rollgate-variant", b"v\xff"), ("x-other", b"1")],
        );
        assert_eq!((r.status, r.body_str().as_str()), (200, "alpha"));
        assert_eq!(r.header("x-upstream"), Some(&b"alpha"[..]));
        assert_eq!(r.header("x-echo-x-rollgate-variant"), Some(&b"v\xff"[..]));
        assert_eq!(r.header("x-echo-x-other"), None);
        let first = c.local_addr();
        up.set_status(503);
        up.set_delay(Duration::from_millis(30));
        let r = c.request("POST", "x", "/", &[], b"body").unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(c.local_addr(), first, "connection not reused");
        // `connection: close` is honoured, and the next request reconnects.
        let r = c.get("x", "/", &[("connection", b"close")]);
        assert_eq!(r.status, 503);
        assert_eq!(c.local_addr(), None);
        assert_eq!(c.get("x", "/", &[]).status, 503);
        assert_eq!(up.requests(), 4);
    }

    #[test]
    fn reconnects_when_the_server_silently_closed() {
        // Answers one request per connection (chunked), then closes without saying so.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            for (n, stream) in listener.incoming().take(3).enumerate() {
                let stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 2 {
                    line.clear();
                }
                let body = format!("conn-{n}");
                let msg = format!(
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                    body.len()
                );
                let mut w = stream;
                std::io::Write::write_all(&mut w, msg.as_bytes()).unwrap();
                let _ = w.shutdown(std::net::Shutdown::Both);
            }
        });
        let mut c = Client::new(port);
        assert_eq!(c.get("x", "/", &[]).body_str(), "conn-0");
        thread::sleep(Duration::from_millis(50));
        assert_eq!(c.get("x", "/", &[]).body_str(), "conn-1");
        assert_eq!(c.get("x", "/", &[]).body_str(), "conn-2");
    }
}
