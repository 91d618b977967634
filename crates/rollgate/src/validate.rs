//! `rollgate validate`: checks a filter configuration (a policy, a `source`, or both) natively,
//! without Envoy or wasm, with the filter's own acceptance function: what it accepts the
//! filter accepts, and the other way round.

use rollgate_policy::config::accept_config;
use rollgate_policy::policy::PolicyErrors;

/// Validates a filter configuration; `Ok` carries a one-line summary of what it would do.
pub fn validate(json: &[u8]) -> Result<String, PolicyErrors> {
    let c = accept_config(json)?;
    let policy = c.policy.map(|p| {
        if p.variants.is_empty() {
            return format!("policy '{}': {}", p.spec.name, tcp_summary(&p));
        }
        let tcp = if p.tcp.is_some() {
            format!("; {}", tcp_summary(&p))
        } else {
            String::new()
        };
        format!(
            "policy '{}': {} variants, {} routes, default {}",
            p.spec.name,
            p.variants.len(),
            p.spec.routes.len(),
            p.spec
                .default
                .as_deref()
                .unwrap_or("(none: unmatched requests pass untouched)"),
        ) + &tcp
    });
    let source = c.source.map(|s| {
        format!(
            "fetches policies from cluster '{}', path {}",
            s.cluster, s.path
        )
    });
    Ok(match (policy, source) {
        (Some(p), Some(s)) => format!("ok: {p}; {s}"),
        (Some(p), None) => format!("ok: {p}"),
        (None, Some(s)) => format!("ok: {s} (no starting policy)"),
        (None, None) => "ok".to_string(),
    })
}

/// What a policy's `tcp` section does, in one phrase.
fn tcp_summary(p: &rollgate_policy::policy::Policy) -> String {
    let Some(t) = &p.spec.tcp else {
        return String::new();
    };
    let mut parts = Vec::new();
    if let Some(a) = &t.allow {
        parts.push(format!("allow {}", a.join(", ")));
    }
    if let Some(f) = &t.in_flight {
        let cap = |n: Option<u32>| n.map_or_else(|| "no cap".to_string(), |n| n.to_string());
        parts.push(format!(
            "in_flight {} per source, {} in all",
            cap(f.per_source),
            cap(f.total)
        ));
    }
    if let Some(r) = &t.rate {
        parts.push(format!(
            "rate {} per {}, burst {}",
            r.average,
            r.period,
            r.burst.unwrap_or(1)
        ));
    }
    if parts.is_empty() {
        parts.push("no limits".into());
    }
    let mode = if p.variants.is_empty() {
        "TCP connection limits (runs as a network filter)"
    } else {
        "TCP limits (used only by a TCP-only policy, one without variants)"
    };
    format!("{mode}: {}", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_good_and_lists_every_error() {
        let ok = validate(br#"{"name":"f","variants":{"a":"ca"},"default":"a"}"#).unwrap();
        assert_eq!(ok, "ok: policy 'f': 1 variants, 0 routes, default a");
        let err = validate(br#"{"name":"f","variants":{"a":"ca"},"default":"b","routes":[{}]}"#)
            .unwrap_err();
        assert_eq!(err.0.len(), 2);
        assert_eq!(
            err.0[0].to_string(),
            "default: unknown variant 'b' (known: a)"
        );
    }

    #[test]
    fn a_source_alone_or_beside_a_policy() {
        assert_eq!(
            validate(br#"{"source":{"cluster":"rollgate","path":"/v1/policies/flask"}}"#).unwrap(),
            "ok: fetches policies from cluster 'rollgate', path /v1/policies/flask \
             (no starting policy)"
        );
        assert_eq!(
            validate(br#"{"name":"f","variants":{"a":"ca"},"source":{"cluster":"c","path":"/p"}}"#)
                .unwrap(),
            "ok: policy 'f': 1 variants, 0 routes, default (none: unmatched requests pass \
             untouched); fetches policies from cluster 'c', path /p"
        );
    }
}
