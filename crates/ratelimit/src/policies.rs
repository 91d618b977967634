//! Which global limits exist: read from the same policies the gateways serve.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Uri;
use rollgate_policy::limits::MAX_POLICY_BYTES;
use rollgate_policy::policy::{accept_policy, Policy};

/// One global limit as Limitador counts it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LimitDef {
    /// The RLS domain the gateways send.
    pub domain: String,
    /// The limit's name (the `limit` descriptor entry).
    pub name: String,
    /// Requests per window.
    pub max: u64,
    /// The fixed window.
    pub window_secs: u64,
}

impl LimitDef {
    /// Limitador's namespace for this limit: one per (domain, name).
    pub fn namespace(&self) -> String {
        format!("{}/{}", self.domain, self.name)
    }
}

/// Every `scope: global` limit of `policy`.
pub fn global_limits(policy: &Policy) -> Vec<LimitDef> {
    policy
        .rate_limits
        .iter()
        .filter_map(|l| {
            let g = l.global.as_ref()?;
            Some(LimitDef {
                domain: g.domain.clone(),
                name: l.name.clone(),
                max: g.max,
                window_secs: g.window_secs,
            })
        })
        .collect()
}

/// Where a policy is read from.
#[derive(Debug, Clone)]
pub enum PolicySource {
    /// A policy JSON file.
    File(PathBuf),
    /// `http://host:port/v1/policies/NAME` of a sidecar (read endpoints need no token).
    Url(Uri),
}

impl PolicySource {
    /// `http://…` is a URL, anything else a file path.
    pub fn parse(s: &str) -> Result<PolicySource, String> {
        if s.starts_with("http://") {
            let uri: Uri = s.parse().map_err(|e| format!("'{s}' is not a URL: {e}"))?;
            if uri.host().is_none() {
                return Err(format!("'{s}' has no host"));
            }
            Ok(PolicySource::Url(uri))
        } else if s.contains("://") {
            Err(format!(
                "'{s}': only http:// URLs (the sidecar's) or file paths"
            ))
        } else {
            Ok(PolicySource::File(PathBuf::from(s)))
        }
    }

    /// The policy's global limits. Errors name the source and what is wrong, never its
    /// contents.
    pub async fn limits(&self) -> Result<Vec<LimitDef>, String> {
        let bytes = match self {
            PolicySource::File(path) => {
                let meta = tokio::fs::metadata(path)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if meta.len() > MAX_POLICY_BYTES as u64 {
                    return Err(format!(
                        "{}: larger than {MAX_POLICY_BYTES} bytes",
                        path.display()
                    ));
                }
                tokio::fs::read(path)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?
            }
            PolicySource::Url(uri) => fetch(uri).await?,
        };
        let policy = accept_policy(&bytes).map_err(|e| format!("{}: {e}", self.name()))?;
        Ok(global_limits(&policy))
    }

    fn name(&self) -> String {
        match self {
            PolicySource::File(p) => p.display().to_string(),
            PolicySource::Url(u) => u.to_string(),
        }
    }
}

/// GET `uri` over HTTP/1 with a 5 s deadline and a size bound.
async fn fetch(uri: &Uri) -> Result<Vec<u8>, String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{uri}: {what}: {e}");
    let host = uri.host().unwrap_or("127.0.0.1");
    let port = uri.port_u16().unwrap_or(80);
    let work = async {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| fail("connect", &e))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .map_err(|e| fail("handshake", &e))?;
        tokio::spawn(conn);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, host)
            .body(Empty::new())
            .map_err(|e| fail("request", &e))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| fail("request", &e))?;
        if !resp.status().is_success() {
            return Err(format!("{uri}: answered {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_POLICY_BYTES)
            .collect()
            .await
            .map_err(|e| fail("body", &e))?;
        Ok(body.to_bytes().to_vec())
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .map_err(|_| format!("{uri}: no answer within 5 s"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_limits_come_from_the_policy_and_local_ones_are_left_out() {
        let policy = accept_policy(
            br#"{"name": "shop", "variants": {"s": "s"}, "rate_limits": [
              {"name": "api", "scope": "global", "average": 180, "period": "3s",
               "service": {"cluster": "rls"}},
              {"name": "login", "scope": "global", "average": 5, "period": "1m",
               "service": {"cluster": "rls", "domain": "auth"}},
              {"name": "local", "average": 10}]}"#,
        )
        .unwrap();
        assert_eq!(
            global_limits(&policy),
            [
                LimitDef {
                    domain: "shop".into(),
                    name: "api".into(),
                    max: 180,
                    window_secs: 3
                },
                LimitDef {
                    domain: "auth".into(),
                    name: "login".into(),
                    max: 5,
                    window_secs: 60
                }
            ]
        );
    }

    #[test]
    fn sources_are_files_or_http_urls() {
        assert!(matches!(
            PolicySource::parse("/etc/p.json"),
            Ok(PolicySource::File(_))
        ));
        assert!(matches!(
            PolicySource::parse("http://127.0.0.1:8181/v1/policies/shop"),
            Ok(PolicySource::Url(_))
        ));
        let e = PolicySource::parse("https://x/p").unwrap_err();
        assert!(e.contains("only http://"), "{e}");
    }
}
