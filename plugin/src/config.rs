//! The filter's configuration: a policy, a `source` to fetch policies from, or both (the
//! policy then serves until the first fetch succeeds).
//!
//! ```json
//! {"source": {"cluster": "rollgate", "path": "/v1/policies/flask", "poll": "1s"}}
//! ```

use serde::{Deserialize, Serialize};

use crate::duration::parse_duration;
use crate::policy::{parse_spec_value, Policy, PolicyError, PolicyErrors};

/// Where the filter long-polls for its policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Envoy cluster of the rollgate sidecar.
    pub cluster: String,
    /// Path of the policy, e.g. `/v1/policies/flask`.
    pub path: String,
    /// Base delay between attempts after a failure (doubling up to 30 s).
    #[serde(default = "default_poll")]
    pub poll: String,
    /// How long the sidecar may hold a poll open before answering 304.
    #[serde(default = "default_wait")]
    pub wait: String,
    /// `:authority` of the poll; defaults to the cluster name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

fn default_poll() -> String {
    "1s".to_string()
}

fn default_wait() -> String {
    "20s".to_string()
}

/// A validated [`SourceSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Envoy cluster of the sidecar.
    pub cluster: String,
    /// Path of the policy.
    pub path: String,
    /// `:authority` of the poll.
    pub authority: String,
    /// Back-off base.
    pub poll_ns: u64,
    /// Long-poll wait, as sent (`wait=`).
    pub wait: String,
    /// Long-poll wait.
    pub wait_ns: u64,
    /// Shared-data key prefix for the published policy and the fetch lease.
    pub key_prefix: String,
    /// Name used in stats: the path's last segment.
    pub stat_name: String,
}

/// A parsed configuration.
#[derive(Debug)]
pub struct Config {
    /// Where to fetch policies, if anywhere.
    pub source: Option<Source>,
    /// The policy to start with, if given.
    pub policy: Option<Policy>,
}

fn err(path: &str, message: impl Into<String>) -> PolicyErrors {
    PolicyErrors(vec![PolicyError {
        path: path.to_string(),
        message: message.into(),
    }])
}

/// Parses the filter configuration: `source`, a policy, or both.
pub fn parse_config(json: &[u8]) -> Result<Config, PolicyErrors> {
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| err("", e.to_string()))?;
    let serde_json::Value::Object(mut map) = value else {
        return Err(err("", "the configuration must be a JSON object"));
    };
    let source = match map.remove("source") {
        None => None,
        Some(v) => Some(compile_source(v)?),
    };
    let policy = if map.is_empty() && source.is_some() {
        None
    } else {
        Some(Policy::compile(parse_spec_value(
            serde_json::Value::Object(map),
        )?)?)
    };
    Ok(Config { source, policy })
}

fn compile_source(v: serde_json::Value) -> Result<Source, PolicyErrors> {
    let spec: SourceSpec = serde_path_to_error::deserialize(v).map_err(|e| {
        let inner = e.path().to_string();
        let path = if inner == "." {
            "source".to_string()
        } else {
            format!("source.{inner}")
        };
        err(&path, e.into_inner().to_string())
    })?;
    let mut errs = Vec::new();
    let mut push = |path: &str, m: String| {
        errs.push(PolicyError {
            path: path.into(),
            message: m,
        })
    };
    if spec.cluster.is_empty() {
        push(
            "source.cluster",
            "must name the sidecar's Envoy cluster".into(),
        );
    }
    if !spec.path.starts_with('/') || spec.path.contains(['?', '#']) {
        push(
            "source.path",
            format!(
                "must be a path starting with '/' and without a query, got '{}'",
                spec.path
            ),
        );
    }
    let mut duration = |field: &str, text: &str| match parse_duration(text) {
        Ok(0) => {
            push(field, "must be longer than 0".into());
            0
        }
        Ok(ns) => ns,
        Err(e) => {
            push(field, e);
            0
        }
    };
    let poll_ns = duration("source.poll", &spec.poll);
    let wait_ns = duration("source.wait", &spec.wait);
    if !errs.is_empty() {
        return Err(PolicyErrors(errs));
    }
    let stat_name = spec
        .path
        .rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or("policy");
    Ok(Source {
        authority: spec
            .authority
            .clone()
            .unwrap_or_else(|| spec.cluster.clone()),
        key_prefix: format!("rollgate/src/{}{}/", spec.cluster, spec.path),
        stat_name: crate::stats::sanitize(stat_name),
        cluster: spec.cluster,
        path: spec.path,
        poll_ns,
        wait: spec.wait,
        wait_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_only_policy_only_and_both() {
        let c = parse_config(
            br#"{"source":{"cluster":"rollgate","path":"/v1/policies/flask","poll":"1s"}}"#,
        )
        .unwrap();
        let s = c.source.unwrap();
        assert!(c.policy.is_none());
        assert_eq!(
            (s.authority.as_str(), s.wait_ns, s.poll_ns),
            ("rollgate", 20_000_000_000, 1_000_000_000)
        );
        assert_eq!(s.key_prefix, "rollgate/src/rollgate/v1/policies/flask/");
        assert_eq!(s.stat_name, "flask");
        let c = parse_config(br#"{"name":"f","variants":{"a":"ca"}}"#).unwrap();
        assert!(c.source.is_none() && c.policy.is_some());
        let c = parse_config(
            br#"{"name":"f","variants":{"a":"ca"},"source":{"cluster":"c","path":"/p"}}"#,
        )
        .unwrap();
        assert!(c.source.is_some() && c.policy.is_some());
    }

    #[test]
    fn errors_name_fields() {
        let e = |j: &str| parse_config(j.as_bytes()).unwrap_err().to_string();
        assert_eq!(
            e(r#"{"source":{"cluster":"c","path":"p"}}"#),
            "source.path: must be a path starting with '/' and without a query, got 'p'"
        );
        assert!(e(r#"{"source":{"cluster":"c","path":"/p","pol":"1s"}}"#)
            .starts_with("source.pol: unknown field `pol`"));
        assert!(e(r#"{"source":{"path":"/p"}}"#).starts_with("source: missing field `cluster`"));
        assert_eq!(
            e(r#"{"source":{"cluster":"c","path":"/p","wait":"0s"}}"#),
            "source.wait: must be longer than 0"
        );
        assert_eq!(e("[1]"), "the configuration must be a JSON object");
        // A starting policy beside the source is validated as usual.
        assert_eq!(
            e(
                r#"{"source":{"cluster":"c","path":"/p"},"name":"f","variants":{"a":"ca"},"default":"b"}"#
            ),
            "default: unknown variant 'b' (known: a)"
        );
    }
}
