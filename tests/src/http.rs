//! Just enough HTTP/1.1 framing for the client and the upstream: a message head, then a body
//! delimited by `content-length`, `transfer-encoding: chunked`, or the end of the connection.
//!
//! Header names are lower-cased; header values stay raw bytes so tests can send and observe
//! values that are not UTF-8.

use std::io::{self, BufRead, Write};

/// Largest message head accepted, so a confused peer cannot make us buffer forever.
const MAX_HEAD: usize = 256 * 1024;

/// Header list of a message: lower-cased names, raw values, in wire order.
pub type Headers = Vec<(String, Vec<u8>)>;

/// The start line and headers of a request or response.
pub(crate) struct Head {
    /// `GET / HTTP/1.1` or `HTTP/1.1 200 OK`, without the line ending.
    pub start_line: String,
    /// Headers in wire order.
    pub headers: Headers,
}

impl Head {
    /// First value of header `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }

    /// Whether the peer asked to close the connection after this message.
    pub fn wants_close(&self) -> bool {
        self.headers.iter().any(|(n, v)| {
            n == "connection"
                && v.split(|b| *b == b',')
                    .any(|t| trim(t).eq_ignore_ascii_case(b"close"))
        })
    }

    /// Whether the body uses chunked transfer coding.
    fn chunked(&self) -> bool {
        self.headers.iter().any(|(n, v)| {
            n == "transfer-encoding"
                && v.split(|b| *b == b',')
                    .any(|t| trim(t).eq_ignore_ascii_case(b"chunked"))
        })
    }

    /// The declared `content-length`, if any.
    fn content_length(&self) -> io::Result<Option<usize>> {
        match self.header("content-length") {
            None => Ok(None),
            Some(v) => std::str::from_utf8(trim(v))
                .ok()
                .and_then(|s| s.parse().ok())
                .map(Some)
                .ok_or_else(|| invalid("bad content-length")),
        }
    }
}

/// First value of header `name` (ASCII case-insensitive) in `headers`.
pub(crate) fn find_header<'a>(headers: &'a Headers, name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// Reads a message head. `Ok(None)` means the peer closed the connection cleanly before
/// sending any byte of a new message (the normal end of a keep-alive connection).
pub(crate) fn read_head<R: BufRead>(r: &mut R) -> io::Result<Option<Head>> {
    let mut total = 0usize;
    let mut start_line: Option<String> = None;
    let mut headers = Headers::new();
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 {
            if start_line.is_none() && total == 0 {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside a message head",
            ));
        }
        total += n;
        if total > MAX_HEAD {
            return Err(invalid("message head too large"));
        }
        let line = strip_eol(&line);
        match &start_line {
            None if line.is_empty() => {} // tolerate stray CRLF between messages (RFC 9112 2.2)
            None => start_line = Some(String::from_utf8_lossy(line).into_owned()),
            Some(_) if line.is_empty() => break,
            Some(_) => {
                let colon = line
                    .iter()
                    .position(|b| *b == b':')
                    .ok_or_else(|| invalid("header line without ':'"))?;
                let (name, value) = line.split_at(colon);
                let name = String::from_utf8_lossy(name).to_ascii_lowercase();
                headers.push((name, trim(&value[1..]).to_vec()));
            }
        }
    }
    Ok(Some(Head {
        start_line: start_line.unwrap_or_default(),
        headers,
    }))
}

/// How the end of a body is found when neither `content-length` nor chunked coding says so.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unframed {
    /// Requests: no body.
    Empty,
    /// Responses: the body runs until the peer closes the connection.
    UntilEof,
}

/// Reads the body that follows `head`.
pub(crate) fn read_body<R: BufRead>(
    r: &mut R,
    head: &Head,
    unframed: Unframed,
) -> io::Result<Vec<u8>> {
    if head.chunked() {
        return read_chunked(r);
    }
    if let Some(len) = head.content_length()? {
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        return Ok(body);
    }
    let mut body = Vec::new();
    if unframed == Unframed::UntilEof {
        r.read_to_end(&mut body)?;
    }
    Ok(body)
}

/// Reads a chunked body, discarding chunk extensions and trailers.
fn read_chunked<R: BufRead>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside a chunked body",
            ));
        }
        let line = strip_eol(&line);
        let size_part = line.split(|b| *b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(trim(size_part))
            .ok()
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or_else(|| invalid("bad chunk size"))?;
        if size == 0 {
            // Trailer section: lines until an empty one.
            loop {
                let mut t = Vec::new();
                if r.read_until(b'\n', &mut t)? == 0 || strip_eol(&t).is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let mut crlf = Vec::new();
        r.read_until(b'\n', &mut crlf)?;
    }
}

/// Writes a head (start line + headers + blank line) and the body in one buffer.
pub(crate) fn write_message<W: Write>(
    w: &mut W,
    start_line: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> io::Result<()> {
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(start_line.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    w.write_all(&out)?;
    w.flush()
}

fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &v[start..end]
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Read};

    #[test]
    fn parses_head_and_chunked_body() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A:  v\xff \r\n\r\n\
                    3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-trailer: t\r\n\r\nrest";
        let mut r = Cursor::new(&raw[..]);
        let head = read_head(&mut r).unwrap().unwrap();
        assert_eq!(head.start_line, "HTTP/1.1 200 OK");
        assert_eq!(head.header("x-a"), Some(&b"v\xff"[..]));
        assert_eq!(
            read_body(&mut r, &head, Unframed::UntilEof).unwrap(),
            b"abcde"
        );
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"rest");
    }

    #[test]
    fn content_length_and_eof() {
        let raw =
            b"POST / HTTP/1.1\r\ncontent-length: 3\r\nconnection: keep-alive, Close\r\n\r\nxyz";
        let mut r = Cursor::new(&raw[..]);
        let head = read_head(&mut r).unwrap().unwrap();
        assert!(head.wants_close());
        assert_eq!(read_body(&mut r, &head, Unframed::Empty).unwrap(), b"xyz");
        assert!(read_head(&mut r).unwrap().is_none());
    }
}
