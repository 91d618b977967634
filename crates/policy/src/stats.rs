//! Names of the Envoy stats the filter exports, derived once from the policy.
//!
//! Envoy puts custom Wasm stats in the `wasmcustom` namespace and drops that prefix from
//! `/stats` and `/stats/prometheus`, where dots become underscores:
//! `rollgate.flask.variant.canary.rq_total` → `rollgate_flask_variant_canary_rq_total`.
//! The kind (`variant`, `ratelimit`, `breaker`) always stands between the policy and the
//! object name, so names never collide and a `stats_tags` regex can turn them into labels.

use crate::policy::Policy;

/// Response classes counted per variant: `rs_1xx` … `rs_5xx`.
pub const CLASSES: [&str; 5] = ["rs_1xx", "rs_2xx", "rs_3xx", "rs_4xx", "rs_5xx"];

/// Keeps a name safe inside a dotted stat name.
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Stats of one variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariantStats {
    /// Counter: requests routed to the variant.
    pub requests: String,
    /// Counters: responses by class, indexed by `status / 100 - 1`.
    pub classes: [String; 5],
    /// Counter: network errors (502, 504, upstream failures).
    pub network_errors: String,
    /// Histogram: milliseconds from request headers to response headers.
    pub latency_ms: String,
    /// When some route mirrors to the variant: its shadow traffic.
    pub shadow: Option<ShadowStats>,
}

/// Stats of a variant's shadow traffic (`routes[].mirror`, see [`crate::shadow`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowStats {
    /// Counter: copies sent.
    pub requests: String,
    /// Counters: the copies' answers by class, `shadow_rs_1xx` … `shadow_rs_5xx`.
    pub classes: [String; 5],
    /// Counter: copies whose answer class differs from the primary's.
    pub mismatch: String,
    /// Histogram: milliseconds from sending a copy to its answer.
    pub latency_ms: String,
    /// Counter: chosen requests not copied (body over `max_body`, a header not UTF-8).
    pub skipped: String,
    /// Counter: copies dropped (`max_in_flight` reached, or the call refused).
    pub dropped: String,
    /// Counter: copies without an answer (reset).
    pub failed: String,
    /// Counter: copies whose response body was compared with the primary's (both at most
    /// `compare_body` bytes).
    pub body_compared: String,
    /// Counter: of those, bodies that differed.
    pub body_mismatch: String,
}

/// Stats of one breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerStats {
    /// Gauge: 0 closed, 1 open, 2 recovering.
    pub state: String,
    /// Counter: times it opened.
    pub trips: String,
    /// Counter: requests refused or sent to the fallback variant.
    pub fallback: String,
}

/// Stats of a policy's connection limits (network filter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpStats {
    /// Gauge: connections admitted and not yet closed, all workers.
    pub active: String,
    /// Counter: connections refused by `in_flight`.
    pub refused_in_flight: String,
    /// Counter: connections refused by `allow`.
    pub refused_allow: String,
    /// Counter: connections refused by `rate`.
    pub refused_rate: String,
}

/// Counters of one rate limit besides `limited`; `None` where the limit has no such thing
/// (shadow refusals need `shadow`, service calls need `scope: global`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LimitStats {
    /// Requests the limit would have refused, admitted in shadow mode.
    pub shadow_limited: Option<String>,
    /// Service answers: OK, OVER_LIMIT; failures: unavailable, timed out, invalid answer.
    pub rls: Option<[String; 5]>,
}

/// Every stat name of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatNames {
    /// Per variant, in the policy's variant order.
    pub variants: Vec<VariantStats>,
    /// Per rate limit: counter of refused requests.
    pub rate_limited: Vec<String>,
    /// Per rate limit: its other counters.
    pub limits: Vec<LimitStats>,
    /// Per breaker.
    pub breakers: Vec<BreakerStats>,
    /// When the policy has `tcp`.
    pub tcp: Option<TcpStats>,
}

impl StatNames {
    /// Names for `policy`.
    pub fn new(policy: &Policy) -> StatNames {
        let p = format!("rollgate.{}", sanitize(&policy.spec.name));
        let variants = policy
            .variants
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let base = format!("{p}.variant.{}", sanitize(&v.name));
                let shadow = policy
                    .mirrors()
                    .any(|m| m.variant == i)
                    .then(|| ShadowStats {
                        requests: format!("{base}.shadow_rq_total"),
                        classes: CLASSES.map(|c| format!("{base}.shadow_{c}")),
                        mismatch: format!("{base}.shadow_mismatch"),
                        latency_ms: format!("{base}.shadow_latency_ms"),
                        skipped: format!("{base}.shadow_skipped"),
                        dropped: format!("{base}.shadow_dropped"),
                        failed: format!("{base}.shadow_failed"),
                        body_compared: format!("{base}.shadow_body_compared"),
                        body_mismatch: format!("{base}.shadow_body_mismatch"),
                    });
                VariantStats {
                    requests: format!("{base}.rq_total"),
                    classes: CLASSES.map(|c| format!("{base}.{c}")),
                    network_errors: format!("{base}.rs_network_error"),
                    latency_ms: format!("{base}.latency_ms"),
                    shadow,
                }
            })
            .collect();
        let rate_limited = policy
            .rate_limits
            .iter()
            .map(|l| format!("{p}.ratelimit.{}.limited", l.name))
            .collect();
        let limits = policy
            .rate_limits
            .iter()
            .map(|l| {
                let base = format!("{p}.ratelimit.{}", l.name);
                LimitStats {
                    shadow_limited: l.shadow.then(|| format!("{base}.shadow_limited")),
                    rls: l.global.as_ref().map(|_| {
                        ["ok", "over_limit", "unavailable", "timeout", "invalid"]
                            .map(|k| format!("{base}.rls_{k}"))
                    }),
                }
            })
            .collect();
        let breakers = policy
            .breakers
            .iter()
            .map(|b| {
                let base = format!("{p}.breaker.{}", b.name);
                BreakerStats {
                    state: format!("{base}.state"),
                    trips: format!("{base}.trips"),
                    fallback: format!("{base}.fallback"),
                }
            })
            .collect();
        let tcp = policy.tcp.as_ref().map(|_| TcpStats {
            active: format!("{p}.tcp.active"),
            refused_in_flight: format!("{p}.tcp.refused_in_flight"),
            refused_allow: format!("{p}.tcp.refused_allow"),
            refused_rate: format!("{p}.tcp.refused_rate"),
        });
        StatNames {
            variants,
            rate_limited,
            limits,
            breakers,
            tcp,
        }
    }
}

/// Index into [`VariantStats::classes`] for a status, if it is a valid HTTP status.
pub fn class_index(status: u16) -> Option<usize> {
    (100..600)
        .contains(&status)
        .then(|| usize::from(status / 100 - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_scheme() {
        let json = r#"{"name":"flask.app","variants":{"stable":"s","canary v2":"c"},"default":"stable",
            "rate_limits":[{"name":"api","average":5}],
            "circuit_breakers":[{"name":"lat","expression":"NetworkErrorRatio() > 0.5"}]}"#;
        let names = StatNames::new(&Policy::from_json(json.as_bytes()).unwrap());
        assert_eq!(
            names.variants[0].requests,
            "rollgate.flask_app.variant.canary_v2.rq_total"
        );
        assert_eq!(
            names.variants[1].classes[1],
            "rollgate.flask_app.variant.stable.rs_2xx"
        );
        assert_eq!(
            names.variants[1].latency_ms,
            "rollgate.flask_app.variant.stable.latency_ms"
        );
        assert_eq!(
            names.rate_limited,
            ["rollgate.flask_app.ratelimit.api.limited"]
        );
        assert_eq!(
            names.breakers[0].state,
            "rollgate.flask_app.breaker.lat.state"
        );
    }

    #[test]
    fn shadow_names_only_for_mirrored_variants() {
        let json = r#"{"name":"flask","variants":{"stable":"s","canary":"c"},"default":"stable",
            "routes":[{"variant":"stable","mirror":{"variant":"canary","percent":5}}]}"#;
        let names = StatNames::new(&Policy::from_json(json.as_bytes()).unwrap());
        let canary = names.variants[0].shadow.as_ref().unwrap();
        assert_eq!(
            canary.requests,
            "rollgate.flask.variant.canary.shadow_rq_total"
        );
        assert_eq!(
            canary.classes[4],
            "rollgate.flask.variant.canary.shadow_rs_5xx"
        );
        assert_eq!(
            canary.mismatch,
            "rollgate.flask.variant.canary.shadow_mismatch"
        );
        assert_eq!(
            canary.latency_ms,
            "rollgate.flask.variant.canary.shadow_latency_ms"
        );
        assert_eq!(
            canary.skipped,
            "rollgate.flask.variant.canary.shadow_skipped"
        );
        assert_eq!(
            canary.dropped,
            "rollgate.flask.variant.canary.shadow_dropped"
        );
        assert_eq!(names.variants[1].shadow, None);
    }

    #[test]
    fn tcp_names() {
        let p = Policy::from_json(br#"{"name":"db","tcp":{"allow":["::1/128"]}}"#).unwrap();
        let t = StatNames::new(&p).tcp.unwrap();
        assert_eq!(t.active, "rollgate.db.tcp.active");
        assert_eq!(t.refused_in_flight, "rollgate.db.tcp.refused_in_flight");
    }

    #[test]
    fn classes() {
        assert_eq!(class_index(200), Some(1));
        assert_eq!(class_index(599), Some(4));
        assert_eq!(class_index(99), None);
        assert_eq!(class_index(600), None);
    }
}
