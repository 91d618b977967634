//! `http://host[:port]/path?query` URLs: what webhooks, `--server` and `--envoy-admin` take.
//! Plain HTTP only: the sidecar talks to its gateways' admin ports and jobs beside it.

use std::fmt;

use super::excerpt::excerpt;

/// A parsed `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (80 if not given).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses `http://host[:port][/path][?query]`.
    pub fn parse(url: &str) -> Result<HttpUrl, String> {
        let quoted = excerpt(url);
        // The URL goes into a request line and a `Host` header as it is: CR/LF would inject
        // headers, a space split the request line. Only visible ASCII (RFC 3986 needs no more;
        // other characters are percent-encoded).
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
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            if url.starts_with("https://") {
                format!("'{quoted}': only http:// is supported")
            } else {
                format!("'{quoted}': expected http://host[:port]/path")
            }
        })?;
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        if path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(format!("'{quoted}': the path must not contain spaces"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, tail) = v6
                .split_once(']')
                .ok_or_else(|| format!("'{quoted}': unclosed '['"))?;
            (h, tail.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() || host.contains('@') {
            return Err(format!("'{quoted}': missing host"));
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("'{quoted}': invalid port '{}'", excerpt(p)))?,
        };
        Ok(HttpUrl {
            host: host.to_string(),
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

    /// The same server with another path.
    pub fn with_path(&self, path: &str) -> HttpUrl {
        HttpUrl {
            path: path.to_string(),
            ..self.clone()
        }
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path)
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
    }

    #[test]
    fn refuses_what_we_cannot_speak() {
        assert!(HttpUrl::parse("https://x/")
            .unwrap_err()
            .contains("only http://"));
        assert!(HttpUrl::parse("x:80").is_err());
        assert!(HttpUrl::parse("http://:80/").is_err());
        assert!(HttpUrl::parse("http://h:0/").is_err());
        assert!(HttpUrl::parse("http://h:99999/").is_err());
        assert!(HttpUrl::parse("http://h/a b").is_err());
    }
}
