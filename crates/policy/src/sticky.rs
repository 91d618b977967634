//! Sticky buckets: which of 10,000 buckets a user falls in, and where the user key comes from.
//!
//! `bucket = murmur3_x86_32("<salt>:<key>", 0) % 10000`. Split variants own consecutive bucket
//! ranges in list order, so raising a weight only moves users *into* that variant, and every
//! worker, replica and restart computes the same answer.

use std::io::Write;
use std::net::IpAddr;

use crate::murmur3::murmur3_x86_32_parts;
use crate::request::Request;

/// Number of buckets; a weight of `w` percent owns `w × 100` of them.
pub const BUCKETS: u32 = 10_000;

/// The bucket of `key` under `salt`.
pub fn bucket(salt: &[u8], key: &[u8]) -> u32 {
    murmur3_x86_32_parts(&[salt, b":", key], 0) % BUCKETS
}

/// Where a split reads its user key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A request header (lower-case name).
    Header(Box<[u8]>),
    /// A cookie.
    Cookie(Box<[u8]>),
    /// A query parameter.
    Query(String),
    /// The client address: Envoy's `source.address`, or the n-th entry from the right of
    /// `X-Forwarded-For` when `xff_depth` is set.
    SourceIp {
        /// 1 = rightmost `X-Forwarded-For` entry.
        xff_depth: Option<u32>,
        /// Mask IPv6 addresses to this prefix, so one client's /64 is one key.
        ipv6_prefix: Option<u8>,
    },
    /// The requested host, lower-cased.
    Host,
}

/// The text of a client address, formatted on the stack (no allocation per request).
pub struct AddrText {
    buf: [u8; 48],
    len: usize,
}

impl AddrText {
    /// Formats `ip` the way `Display` does.
    pub fn new(ip: IpAddr) -> Self {
        let mut buf = [0u8; 48];
        let len = {
            let mut w = &mut buf[..];
            // An IPv6 address is at most 45 characters: it always fits.
            let _ = write!(w, "{ip}");
            48 - w.len()
        };
        AddrText { buf, len }
    }

    /// The formatted address.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

/// A user key as found in the request.
pub enum Key<'a> {
    /// Borrowed from the request.
    Borrowed(&'a [u8]),
    /// Decoded (query) or formatted (address) on the way.
    Owned(std::borrow::Cow<'a, [u8]>),
    /// A client address.
    Addr(AddrText),
}

impl Key<'_> {
    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Borrowed(b) => b,
            Key::Owned(c) => c,
            Key::Addr(a) => a.as_bytes(),
        }
    }
}

/// The client address as the policy defines it: `X-Forwarded-For` at `xff_depth` when set and
/// present, else the connection's source address; IPv6 masked to `ipv6_prefix` when set.
pub fn client_key<'a>(
    req: &Request<'a>,
    xff_depth: Option<u32>,
    ipv6_prefix: Option<u8>,
) -> Option<Key<'a>> {
    let masked = |ip: IpAddr| match (ip.to_canonical(), ipv6_prefix) {
        (IpAddr::V6(v6), Some(p)) if p < 128 => {
            let mask = if p == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(p))
            };
            IpAddr::V6((u128::from(v6) & mask).into())
        }
        (ip, _) => ip,
    };
    if let Some(depth) = xff_depth.filter(|d| *d > 0) {
        // All X-Forwarded-For headers form one list, in order.
        let mut entries: Vec<&'a [u8]> = Vec::new();
        for v in req.header_values(b"x-forwarded-for") {
            entries.extend(v.split(|&b| b == b',').map(trim).filter(|e| !e.is_empty()));
        }
        if let Some(e) = entries
            .len()
            .checked_sub(depth as usize)
            .and_then(|i| entries.get(i))
        {
            let parsed = std::str::from_utf8(e)
                .ok()
                .and_then(|t| t.parse::<IpAddr>().ok());
            return Some(match (parsed, ipv6_prefix) {
                (Some(ip), Some(_)) => Key::Addr(AddrText::new(masked(ip))),
                _ => Key::Borrowed(e),
            });
        }
    }
    req.client_addr()
        .map(|ip| Key::Addr(AddrText::new(masked(ip))))
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    s.get(start..end).unwrap_or(&[])
}

impl KeySource {
    /// The key in this request, if it carries one (an empty value counts as missing).
    pub fn extract<'a>(&self, req: &Request<'a>) -> Option<Key<'a>> {
        let key = match self {
            KeySource::Header(name) => req.header(name).map(Key::Borrowed),
            KeySource::Cookie(name) => req.cookie_values(name).next().map(Key::Borrowed),
            KeySource::Query(name) => req.query_values(name).next().map(Key::Owned),
            KeySource::SourceIp {
                xff_depth,
                ipv6_prefix,
            } => client_key(req, *xff_depth, *ipv6_prefix),
            KeySource::Host => {
                let host = req.host();
                Some(if host.iter().any(u8::is_ascii_uppercase) {
                    Key::Owned(std::borrow::Cow::Owned(host.to_ascii_lowercase()))
                } else {
                    Key::Borrowed(host)
                })
            }
        };
        key.filter(|k| !k.as_bytes().is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_is_murmur_of_salt_colon_key_mod_10000() {
        let expected = crate::murmur3::murmur3_x86_32(b"flask:user-1", 0) % 10_000;
        assert_eq!(bucket(b"flask", b"user-1"), expected);
        // Different salts shuffle users independently.
        let same = (0..1000).filter(|i| {
            let k = format!("u{i}");
            bucket(b"a", k.as_bytes()) == bucket(b"b", k.as_bytes())
        });
        assert!(same.count() < 10);
    }

    #[test]
    fn buckets_are_uniform() {
        let n = 100_000;
        let mut below = 0;
        for i in 0..n {
            if bucket(b"flask", format!("user-{i}").as_bytes()) < 5000 {
                below += 1;
            }
        }
        let share = below as f64 / n as f64;
        assert!((share - 0.5).abs() < 0.01, "share {share}");
    }

    #[test]
    fn keys_from_each_source() {
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":path", b"/?uid=q%201"),
            (b"x-user-id", b"h1"),
            (b"cookie", b"uid=c1"),
            (b"x-forwarded-for", b"1.1.1.1, 2.2.2.2"),
            (b"x-forwarded-for", b"3.3.3.3"),
            (b"x-empty", b""),
        ];
        let req = Request::new(headers, Some("10.0.0.9".parse().unwrap()));
        let k = |s: KeySource| s.extract(&req).map(|k| k.as_bytes().to_vec());
        let ip = |xff_depth| KeySource::SourceIp {
            xff_depth,
            ipv6_prefix: None,
        };
        assert_eq!(k(KeySource::Host), None, "no host: no key");
        assert_eq!(
            k(KeySource::Header(b"x-user-id".as_slice().into())),
            Some(b"h1".to_vec())
        );
        assert_eq!(k(KeySource::Header(b"x-none".as_slice().into())), None);
        assert_eq!(k(KeySource::Header(b"x-empty".as_slice().into())), None);
        assert_eq!(
            k(KeySource::Cookie(b"uid".as_slice().into())),
            Some(b"c1".to_vec())
        );
        assert_eq!(k(KeySource::Query("uid".into())), Some(b"q 1".to_vec()));
        assert_eq!(k(ip(None)), Some(b"10.0.0.9".to_vec()));
        assert_eq!(k(ip(Some(1))), Some(b"3.3.3.3".to_vec()));
        assert_eq!(k(ip(Some(3))), Some(b"1.1.1.1".to_vec()));
        // Deeper than the list: fall back to the connection's address.
        assert_eq!(k(ip(Some(4))), Some(b"10.0.0.9".to_vec()));
    }

    #[test]
    fn ipv6_prefix_masks_v6_only_and_host_is_lowercased() {
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":authority", b"API.Example.com:443"),
            (b"x-forwarded-for", b"2001:db8:1:2:3:4:5:6, 10.1.1.1"),
        ];
        let req = Request::new(headers, Some("2001:db8:aa:bb:cc:dd:ee:ff".parse().unwrap()));
        let k = |s: KeySource| s.extract(&req).map(|k| k.as_bytes().to_vec());
        let masked = |xff_depth| KeySource::SourceIp {
            xff_depth,
            ipv6_prefix: Some(64),
        };
        assert_eq!(k(masked(None)), Some(b"2001:db8:aa:bb::".to_vec()));
        assert_eq!(k(masked(Some(2))), Some(b"2001:db8:1:2::".to_vec()));
        assert_eq!(
            k(masked(Some(1))),
            Some(b"10.1.1.1".to_vec()),
            "v4 is never masked"
        );
        assert_eq!(k(KeySource::Host), Some(b"api.example.com".to_vec()));
    }

    #[test]
    fn addr_text_formats_v4_and_longest_v6() {
        assert_eq!(
            AddrText::new("10.0.0.1".parse().unwrap()).as_bytes(),
            b"10.0.0.1"
        );
        let v6 = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
            .parse()
            .unwrap();
        assert_eq!(AddrText::new(v6).as_bytes(), v6.to_string().as_bytes());
    }
}
