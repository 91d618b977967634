//! `http(s)://host[:port]/path?query` URLs: what webhooks, `--server`, `--envoy-admin` and
//! `--prometheus` take. The `url` crate parses; this module keeps rollgate's rules on top of
//! it: visible ASCII only (with the position of the first other character), the scheme
//! written out as `http://` or `https://` (every client has TLS, [`crate::client`]), a host,
//! no user information, a port above 0.

use std::fmt;

use super::excerpt::excerpt;

/// A parsed `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Whether the scheme is `https`.
    pub https: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (80, or 443 for `https`, if not given).
    pub port: u16,
    /// Path and query, starting with `/` (a fragment is never sent, so it is dropped).
    pub path: String,
}

impl HttpUrl {
    /// Parses `http(s)://host[:port][/path][?query]`.
    pub fn parse(url: &str) -> Result<HttpUrl, String> {
        let quoted = excerpt(url);
        // The URL goes into a request line and a `Host` header: CR/LF would inject headers, a
        // space split the request line. The `url` crate would drop tabs and newlines and
        // encode the rest silently; a URL that needs that is refused, saying where.
        if let Some((i, c)) = url.chars().enumerate().find(|(_, c)| !c.is_ascii_graphic()) {
            return Err(format!(
                "character {} of '{quoted}' is {}: a URL is visible ASCII only \
                 (percent-encode the rest)",
                i + 1,
                match c {
                    ' ' => "a space".to_string(),
                    c if c.is_control() => format!("the control character {}", c.escape_debug()),
                    c => format!("'{c}', not ASCII"),
                }
            ));
        }
        // Written out: `url` also reads `http:host` and `http:\\host` as `http://host/`.
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "'{quoted}': expected http://host[:port]/path or https://…"
            ));
        }
        let u = url::Url::parse(url).map_err(|e| format!("'{quoted}': {e}"))?;
        if !u.username().is_empty() || u.password().is_some() {
            return Err(format!("'{quoted}': user information is not supported"));
        }
        let host = match u.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => return Err(format!("'{quoted}': missing host")),
        };
        let port = u
            .port_or_known_default()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("'{quoted}': invalid port 0"))?;
        let path = match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        };
        Ok(HttpUrl {
            https: u.scheme() == "https",
            host,
            port,
            path,
        })
    }

    /// `host:port` as the `Host` header and socket address want it.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_we_use() {
        let u = HttpUrl::parse("http://127.0.0.1:8181").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8181, "/")
        );
        let u = HttpUrl::parse("http://jobs/migrate?db=main").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("jobs", 80, "/migrate?db=main")
        );
        let u = HttpUrl::parse("http://[::1]:9901/stats").unwrap();
        assert_eq!(u.authority(), "[::1]:9901");
        assert_eq!(u.to_string(), "http://[::1]:9901/stats");
        assert_eq!(
            HttpUrl::parse("http://h?x=1").unwrap().path,
            "/?x=1".to_string()
        );
        let u = HttpUrl::parse("https://[::1]/x").unwrap();
        assert_eq!((u.https, u.authority()), (true, "[::1]:443".to_string()));
        assert_eq!(HttpUrl::parse("https://h:8443/").unwrap().port, 8443);
    }

    #[test]
    fn refuses_what_we_cannot_speak() {
        assert!(HttpUrl::parse("ftp://x/")
            .unwrap_err()
            .contains("expected http://"));
        assert!(HttpUrl::parse("x:80").is_err());
        assert!(HttpUrl::parse("http://:80/").is_err());
        assert!(HttpUrl::parse("http://h:0/").is_err());
        assert!(HttpUrl::parse("http://h:99999/").is_err());
        assert!(HttpUrl::parse("http://h/a b").is_err());
        assert!(HttpUrl::parse("http:h/x").is_err());
        assert!(HttpUrl::parse("http://user@h/x").is_err());
    }

    #[test]
    fn refuses_authorities_the_hand_written_parser_misread() {
        // Before the `url` crate: `h:80:90` became host `h:80` (sent as `[h:80]:90`), the
        // text after `[::1]` was dropped, and a percent-encoded space stayed in the host.
        for bad in ["http://h:80:90/x", "http://[::1]x:80/", "http://h%20x/"] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
