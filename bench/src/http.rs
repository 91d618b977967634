//! Just enough HTTP/1.1 for the checks around the measurements: admin GETs, and a keep-alive
//! connection that replays the request mix and reads which upstream answered.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// One response: status and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// A keep-alive connection to `127.0.0.1:port`.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Conn {
    /// Connects.
    pub fn open(port: u16) -> Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends `GET path` with `Host: host` and `headers`, and reads the response. Only
    /// `Content-Length` bodies are understood (Envoy and nginx send nothing else here).
    pub fn get(&mut self, host: &str, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.stream.write_all(req.as_bytes())?;
        self.read_response()
    }

    fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed mid-response");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn read_response(&mut self) -> Result<Response> {
        let head_end = self.until(b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse::<u16>().ok())
            .with_context(|| format!("bad status line in {head:?}"))?;
        let mut length = None;
        let mut chunked = false;
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse::<usize>().ok();
                } else if k.trim().eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.trim().eq_ignore_ascii_case("chunked");
                }
            }
        }
        self.buf.drain(..head_end + 4);
        let body = match (length, chunked) {
            (_, true) => self.read_chunked()?,
            (Some(n), false) => self.take(n)?,
            (None, false) => bail!("neither content-length nor chunked in {head:?}"),
        };
        Ok(Response { status, body })
    }

    /// Reads until `needle` is buffered; returns its offset.
    fn until(&mut self, needle: &[u8]) -> Result<usize> {
        loop {
            if let Some(i) = find(&self.buf, needle) {
                return Ok(i);
            }
            self.fill()?;
        }
    }

    /// Takes the next `n` bytes.
    fn take(&mut self, n: usize) -> Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    fn read_chunked(&mut self) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let eol = self.until(b"\r\n")?;
            let line = String::from_utf8_lossy(&self.buf[..eol]).to_string();
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .with_context(|| format!("bad chunk size {line:?}"))?;
            self.buf.drain(..eol + 2);
            if size == 0 {
                // No trailers expected: the final CRLF.
                self.take(2)?;
                return Ok(body);
            }
            body.extend(self.take(size)?);
            self.take(2)?;
        }
    }
}

/// `GET path` on `127.0.0.1:port` on a fresh connection: status and body as text.
pub fn get_text(port: u16, path: &str) -> Result<(u16, String)> {
    let mut c = Conn::open(port)?;
    let r = c.get("127.0.0.1", path, &[])?;
    Ok((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}
