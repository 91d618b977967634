//! The filter's configuration: a policy, a `source` to fetch policies from, or both (the
//! policy then serves until the first fetch succeeds).
//!
//! ```json
//! {"source": {"cluster": "rollgate", "path": "/v1/policies/flask", "poll": "1s"}}
//! ```

use crate::duration::parse_duration;
use crate::limits::MAX_NAME_BYTES;
use crate::policy::spec::SourceSpec;
use crate::policy::{parse_spec, Policy, PolicyError, PolicyErrors};

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

/// The one acceptance function for a filter configuration (`source`, a policy, or both): the
/// filter's `on_configure`, `rollgate validate` and `rollgate try` all call it, so what one
/// accepts every other accepts. Policies the filter fetches go through
/// [`crate::policy::accept_policy`], the same parser, limits and compiler without `source`.
pub fn accept_config(json: &[u8]) -> Result<Config, PolicyErrors> {
    let mut spec = parse_spec(json)?;
    let source = spec.source.take().map(compile_source);
    let only_source = source.is_some() && spec.name.is_empty() && spec.variants.is_empty();
    let policy = (!only_source).then(|| Policy::compile(spec));
    match (source.transpose(), policy.transpose()) {
        (Ok(source), Ok(policy)) => Ok(Config { source, policy }),
        (Err(a), Err(b)) => Err(a.and(b)),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// [`accept_config`], by its older name.
pub fn parse_config(json: &[u8]) -> Result<Config, PolicyErrors> {
    accept_config(json)
}

fn compile_source(spec: SourceSpec) -> Result<Source, PolicyErrors> {
    let mut errs = Vec::new();
    let mut push = |path: &str, m: String| {
        errs.push(PolicyError {
            path: path.into(),
            message: m,
        })
    };
    for (field, value) in [
        ("source.cluster", Some(&spec.cluster)),
        ("source.authority", spec.authority.as_ref()),
    ] {
        match value {
            Some(v) if v.len() > MAX_NAME_BYTES => push(
                field,
                format!(
                    "may be at most {MAX_NAME_BYTES} bytes, this one is {}",
                    v.len()
                ),
            ),
            _ => {}
        }
    }
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
                crate::excerpt::excerpt(&spec.path)
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
    fn a_bad_source_is_refused_whole_and_beside_policy_errors() {
        let e = accept_config(
            br#"{"source":{"cluster":"","path":"x","poll":"0s","wait":"bogus"},"name":"f","variants":{"a":"ca"},"default":"b"}"#,
        )
        .unwrap_err();
        let lines: Vec<String> = e.0.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "source.cluster: must name the sidecar's Envoy cluster",
                "source.path: must be a path starting with '/' and without a query, got 'x'",
                "source.poll: must be longer than 0",
                "source.wait: invalid duration 'bogus': expected a number like 100ms, 1s, 2m",
                "default: unknown variant 'b' (known: a)",
            ]
        );
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
