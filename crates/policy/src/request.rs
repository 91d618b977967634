//! A borrowed, read-only view of one request: what rules and sticky keys read.
//!
//! Built once per request from the header map as the proxy serializes it, so matching never
//! calls back into the host and never copies a header.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::fmt;
use std::net::IpAddr;

/// One request as the matcher sees it. Header names are compared case-insensitively; values
/// are raw bytes because clients may send anything.
#[derive(Default)]
pub struct Request<'a> {
    headers: Vec<(&'a [u8], &'a [u8])>,
    authority: &'a [u8],
    path: &'a [u8],
    query: &'a [u8],
    method: &'a [u8],
    client: OnceCell<Option<IpAddr>>,
    routing_path: OnceCell<Option<Cow<'a, [u8]>>>,
    client_loader: Option<&'a dyn Fn() -> Option<IpAddr>>,
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("headers", &self.headers)
            .field("client", &self.client)
            .finish()
    }
}

impl<'a> Request<'a> {
    /// Builds the view from header pairs (HTTP/2-style pseudo-headers `:authority`, `:path`,
    /// `:method` included, as Envoy presents them) and, when known, the client address.
    pub fn new(headers: Vec<(&'a [u8], &'a [u8])>, client_addr: Option<IpAddr>) -> Self {
        let req = Self::lazy(headers, None);
        let _ = req.client.set(client_addr);
        req
    }

    /// Like [`Request::new`], but the client address is asked of `loader` only if a rule or a
    /// sticky key needs it: in the proxy that is a host call we skip when we can.
    pub fn lazy(
        headers: Vec<(&'a [u8], &'a [u8])>,
        loader: Option<&'a dyn Fn() -> Option<IpAddr>>,
    ) -> Self {
        let mut req = Request {
            headers,
            client_loader: loader,
            ..Default::default()
        };
        let mut host: &[u8] = &[];
        for &(k, v) in &req.headers {
            match k {
                b":authority" => req.authority = v,
                b":path" => req.path = v,
                b":method" => req.method = v,
                _ if k.eq_ignore_ascii_case(b"host") => host = v,
                _ => {}
            }
        }
        if req.authority.is_empty() {
            req.authority = host;
        }
        if let Some(q) = req.path.iter().position(|&b| b == b'?') {
            let (p, rest) = req.path.split_at(q);
            req.path = p;
            req.query = rest.get(1..).unwrap_or(&[]);
        }
        // A fragment is never sent by conforming clients; ignore it if one is.
        if let Some(f) = req.query.iter().position(|&b| b == b'#') {
            req.query = req.query.get(..f).unwrap_or(&[]);
        }
        req
    }

    /// Parses the proxy-wasm serialized header map (`u32 n; n×(u32 klen, u32 vlen);
    /// n×(key \0 value \0)`, little-endian) without copying. Malformed input yields no headers,
    /// as Envoy itself treats malformed maps.
    pub fn parse_header_map(bytes: &'a [u8]) -> Vec<(&'a [u8], &'a [u8])> {
        fn u32_at(b: &[u8], at: usize) -> Option<usize> {
            let word: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
            Some(u32::from_le_bytes(word) as usize)
        }
        let parse = || -> Option<Vec<(&'a [u8], &'a [u8])>> {
            let n = u32_at(bytes, 0)?;
            let mut out = Vec::with_capacity(n.min(256));
            let mut data = 4usize.checked_add(n.checked_mul(8)?)?;
            for i in 0..n {
                let klen = u32_at(bytes, 4 + i * 8)?;
                let vlen = u32_at(bytes, 8 + i * 8)?;
                // Each key and value is followed by a NUL; a map without them is malformed.
                let k = bytes.get(data..data.checked_add(klen)?)?;
                data += klen;
                (*bytes.get(data)? == 0).then_some(())?;
                data += 1;
                let v = bytes.get(data..data.checked_add(vlen)?)?;
                data += vlen;
                (*bytes.get(data)? == 0).then_some(())?;
                data += 1;
                out.push((k, v));
            }
            Some(out)
        };
        parse().unwrap_or_default()
    }

    /// The client's address (Envoy's `source.address`), if known.
    pub fn client_addr(&self) -> Option<IpAddr> {
        *self
            .client
            .get_or_init(|| self.client_loader.and_then(|load| load()))
    }

    /// The host the client asked for (`:authority`, else `Host`), port removed.
    pub fn host(&self) -> &'a [u8] {
        strip_port(self.authority)
    }

    /// The path without the query string.
    pub fn path(&self) -> &'a [u8] {
        self.path
    }

    /// The raw `:authority` (else `Host`), port included.
    pub fn authority(&self) -> &'a [u8] {
        self.authority
    }

    /// The authority's host part as gorilla/mux's `parseHost` finds it (case kept).
    pub fn authority_host(&self) -> &'a [u8] {
        go_split_host(self.authority)
    }

    /// The host as Traefik's request decorator canonicalises it (`GetCanonicalHost`): port
    /// removed as Go's `net.SplitHostPort` does, spaces trimmed, lower-cased.
    // traefik pkg/middlewares/requestdecorator/request_decorator.go:39,50 and
    // pkg/types/domains.go:56 (v3.7, fd5a576df2)
    pub fn canonical_host(&self) -> Cow<'a, [u8]> {
        let host = trim(go_split_host(self.authority));
        if host.iter().any(u8::is_ascii_uppercase) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        }
    }

    /// The path Traefik routes on: the escaped path with every `%XX` decoded except the
    /// reserved characters of RFC 3986 (and `%` itself), written in upper-case hex; `None`
    /// when a `%` is not followed by two more bytes (Traefik answers 400, no rule matches).
    // traefik pkg/muxer/http/mux.go:102-176 (v3.7, fd5a576df2)
    pub fn routing_path(&self) -> Option<&[u8]> {
        self.routing_path
            .get_or_init(|| routing_path(self.path))
            .as_deref()
    }

    /// The raw query string (after `?`), without decoding.
    pub fn query(&self) -> &'a [u8] {
        self.query
    }

    /// The request method.
    pub fn method(&self) -> &'a [u8] {
        self.method
    }

    /// Every value of the header `name` (lower-case ASCII expected), in order.
    pub fn header_values<'s>(&'s self, name: &'s [u8]) -> impl Iterator<Item = &'a [u8]> + 's {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|&(_, v)| v)
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.header_values(name).next()
    }

    /// Every cookie value named `name`, across all `Cookie` headers.
    pub fn cookie_values<'s>(&'s self, name: &'s [u8]) -> impl Iterator<Item = &'a [u8]> + 's {
        self.header_values(b"cookie").flat_map(move |h| {
            h.split(|&b| b == b';').filter_map(move |pair| {
                let pair = trim(pair);
                let eq = pair.iter().position(|&b| b == b'=')?;
                let (k, v) = pair.split_at(eq);
                (trim(k) == name).then(|| strip_quotes(trim(v.get(1..).unwrap_or(&[]))))
            })
        })
    }

    /// Every decoded value of query parameter `key`, in order.
    pub fn query_values<'s>(&'s self, key: &'s str) -> impl Iterator<Item = Cow<'a, [u8]>> + 's {
        self.query.split(|&b| b == b'&').filter_map(move |pair| {
            if pair.is_empty() {
                return None;
            }
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(eq) => (pair.get(..eq)?, pair.get(eq + 1..)?),
                None => (pair, &[][..]),
            };
            (percent_decode(k).as_ref() == key.as_bytes()).then(|| percent_decode(v))
        })
    }
}

/// `%XX` forms Traefik keeps encoded in the routing path (`reservedCharacters`, upper-case
/// hex only: `%2f` is decoded).
const RESERVED_ESCAPES: [&[u8; 3]; 19] = [
    b"%3A", b"%2F", b"%3F", b"%23", b"%5B", b"%5D", b"%40", b"%21", b"%24", b"%26", b"%27", b"%28",
    b"%29", b"%2A", b"%2B", b"%2C", b"%3B", b"%3D", b"%25",
];

fn routing_path(path: &[u8]) -> Option<Cow<'_, [u8]>> {
    if !path.contains(&b'%') {
        return Some(Cow::Borrowed(path));
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = path.get(i) {
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let code = path.get(i..i + 3)?;
        if RESERVED_ESCAPES.iter().any(|r| r[..] == *code) {
            out.extend_from_slice(code);
        } else {
            // Go's url.PathUnescape refuses a malformed escape; so does the routing path.
            let (h, l) = (hex(*code.get(1)?)?, hex(*code.get(2)?)?);
            out.push(h << 4 | l);
        }
        i += 3;
    }
    Some(Cow::Owned(out))
}

/// The host part as Traefik's `parseHost` finds it: no `:` means no port; `[v6]:port` and
/// `host:port` split; a `[v6]` alone loses its brackets; anything else is kept whole.
fn go_split_host(addr: &[u8]) -> &[u8] {
    if !addr.contains(&b':') {
        return addr;
    }
    if let [b'[', inner @ ..] = addr {
        if let Some(end) = inner.iter().position(|&b| b == b']') {
            let host = inner.get(..end).unwrap_or(&[]);
            match inner.get(end + 1..) {
                Some([]) => return host,
                Some([b':', ..]) => return host,
                _ => return addr,
            }
        }
        return addr;
    }
    match addr.iter().rposition(|&b| b == b':') {
        Some(c) => {
            let host = addr.get(..c).unwrap_or(addr);
            if host.contains(&b':') {
                addr
            } else {
                host
            }
        }
        None => addr,
    }
}

/// Removes `:port` from an authority; keeps IPv6 literals' brackets off too.
fn strip_port(authority: &[u8]) -> &[u8] {
    if authority.first() == Some(&b'[') {
        if let Some(end) = authority.iter().position(|&b| b == b']') {
            return authority.get(1..end).unwrap_or(authority);
        }
        return authority;
    }
    match authority.iter().rposition(|&b| b == b':') {
        Some(c)
            if authority
                .get(c + 1..)
                .is_some_and(|p| p.iter().all(u8::is_ascii_digit)) =>
        {
            authority.get(..c).unwrap_or(authority)
        }
        _ => authority,
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

fn strip_quotes(s: &[u8]) -> &[u8] {
    match s {
        [b'"', inner @ .., b'"'] => inner,
        _ => s,
    }
}

/// Form decoding as Go's `url.ParseQuery` does it: `+` is a space, `%XX` a byte; a malformed
/// escape is kept literally. Allocates only when there is something to decode.
pub fn percent_decode(s: &[u8]) -> Cow<'_, [u8]> {
    if !s.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => match (
                s.get(i + 1).and_then(|&h| hex(h)),
                s.get(i + 2).and_then(|&l| hex(l)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            _ => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend((k.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend(*k);
            out.push(0);
            out.extend(*v);
            out.push(0);
        }
        out
    }

    #[test]
    fn header_map_round_trip_and_malformed() {
        let pairs: Vec<(&[u8], &[u8])> =
            vec![(b":path", b"/a?b=c"), (b"x", b""), (b"y", b"\xff\x00z")];
        let bytes = serialize(&pairs);
        assert_eq!(Request::parse_header_map(&bytes), pairs);
        assert!(Request::parse_header_map(&[]).is_empty());
        assert!(Request::parse_header_map(&[0]).is_empty());
        for cut in 1..bytes.len() {
            // Truncated maps never panic and never return garbage pairs.
            let parsed = Request::parse_header_map(&bytes[..cut]);
            assert!(parsed.is_empty(), "cut at {cut}");
        }
        let mut huge = bytes.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Request::parse_header_map(&huge).is_empty());
    }

    #[test]
    fn pseudo_headers_host_path_query() {
        let r = Request::new(
            vec![
                (b":authority", b"Pro.Coding:8080"),
                (b":path", b"/api/v1?x=1&y=%41+b#frag"),
                (b":method", b"GET"),
            ],
            None,
        );
        assert_eq!(r.host(), b"Pro.Coding");
        assert_eq!(r.path(), b"/api/v1");
        assert_eq!(r.query(), b"x=1&y=%41+b");
        assert_eq!(r.method(), b"GET");
        assert_eq!(
            r.query_values("y").collect::<Vec<_>>(),
            vec![Cow::<[u8]>::Owned(b"A b".to_vec())]
        );
        assert_eq!(r.query_values("z").count(), 0);
        let r = Request::new(vec![(b"Host", b"[::1]:80")], None);
        assert_eq!(r.host(), b"::1");
        let r = Request::new(vec![(b"host", b"example.com")], None);
        assert_eq!(r.host(), b"example.com");
    }

    #[test]
    fn cookies() {
        let r = Request::new(
            vec![
                (b"cookie", b"a=1; uid=\"u-1\" ; b"),
                (b"cookie", b"uid=u-2;c=\xff"),
            ],
            None,
        );
        assert_eq!(
            r.cookie_values(b"uid").collect::<Vec<_>>(),
            vec![&b"u-1"[..], b"u-2"]
        );
        assert_eq!(
            r.cookie_values(b"c").collect::<Vec<_>>(),
            vec![&b"\xff"[..]]
        );
        assert_eq!(r.cookie_values(b"b").count(), 0);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(&*percent_decode(b"a%2Fb%zz%4"), b"a/b%zz%4");
        assert!(matches!(percent_decode(b"plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn canonical_host_as_traefik_parses_it() {
        // traefik pkg/middlewares/requestdecorator/request_decorator.go:50-65 (net.SplitHostPort,
        // brackets dropped) and pkg/types/domains.go:56 (trimmed, lower-cased), fd5a576df2
        let host = |a: &str| {
            let req = Request::new(vec![(&b":authority"[..], a.as_bytes())], None);
            String::from_utf8(req.canonical_host().into_owned()).unwrap()
        };
        assert_eq!(host("Example.COM:8443"), "example.com");
        assert_eq!(host("example.com."), "example.com.");
        assert_eq!(host("[::1]:80"), "::1");
        assert_eq!(host("[::1]"), "::1");
        assert_eq!(host("::1"), "::1");
        assert_eq!(host("a:b"), "a");
        assert_eq!(host(" a "), "a");
    }

    #[test]
    fn routing_path_decodes_all_but_reserved_escapes() {
        // traefik pkg/muxer/http/mux_test.go:676-712 (TestRoutingPath), fd5a576df2
        let path = |p: &str| {
            let req = Request::new(vec![(&b":path"[..], p.as_bytes())], None);
            req.routing_path()
                .map(|r| String::from_utf8_lossy(r).into_owned())
        };
        assert_eq!(path("/foo%20bar").as_deref(), Some("/foo bar"));
        assert_eq!(path("/foo%2Fbar").as_deref(), Some("/foo%2Fbar"));
        assert_eq!(
            path("/foo%20bar%2Fbaz%23qux?x=%20").as_deref(),
            Some("/foo bar%2Fbaz%23qux")
        );
        assert_eq!(path("/%2f%25").as_deref(), Some("//%25"));
        assert_eq!(path("/x%"), None);
        assert_eq!(path("/x%4"), None);
        assert_eq!(path("/x%zz"), None);
    }
}
