//! The policy's parts inside a Rollout, in camelCase, and their conversion to the filter's
//! own spec types ([`rollgate_policy::policy::spec`]).
//!
//! Field for field the same as the policy JSON (README: "The policy", "Rate limits",
//! "Circuit breakers"), whose one declaration is the table in the policy's `spec.rs`; only the
//! spelling differs (`checkPeriod` for `check_period`), and a test holds the two to the same
//! fields. Defaults are not repeated here: an absent field takes the filter's own default, so
//! the rendered policy means what the same policy without the field would mean.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_value::Value;

use rollgate_policy::policy::spec as p;

fn is_false(b: &bool) -> bool {
    !*b
}

/// Traefik's `ruleSyntax`: which matchers a `match` is read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RuleSyntax {
    /// Traefik v3's matchers.
    #[serde(rename = "v3")]
    V3,
    /// Traefik v2's matchers.
    #[serde(rename = "v2")]
    V2,
}

impl RuleSyntax {
    /// As the policy spells it.
    pub fn name(self) -> &'static str {
        match self {
            RuleSyntax::V3 => "v3",
            RuleSyntax::V2 => "v2",
        }
    }
}

/// A fixed route: tried before the rollout's routes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    /// Traefik rule; absent: every request.
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// `v3` or `v2` for this `match` (default: the rollout's `ruleSyntax`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_syntax: Option<RuleSyntax>,
    /// Send matching requests to this variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Or split them (sticky, weights in percent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Vec<Split>>,
    /// The split's user key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    /// Variant for the part of the split no weight covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Also copy a share of the matching requests to a variant (shadow traffic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
}

/// Shadow traffic of a fixed route, as the policy's `routes[].mirror`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    /// The variant the copies go to.
    pub variant: String,
    /// Percent of the route's requests copied.
    #[schemars(range(min = 0, max = 100))]
    pub percent: f64,
    /// Largest request body copied, in bytes (default 65536).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<u32>,
    /// Copies one gateway worker keeps in flight (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Appended to the copy's host (default `-shadow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_suffix: Option<String>,
    /// How long a copy may take (default `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Also compare response bodies of at most this many bytes (default: not compared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare_body: Option<u32>,
}

/// One share of a fixed split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Split {
    /// The variant.
    pub variant: String,
    /// Percent of users.
    #[schemars(range(min = 0, max = 100))]
    pub weight: f64,
}

/// A split's user key: exactly one of `header`, `cookie`, `query`, `sourceIp`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sticky {
    /// From this request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// From this cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// From this query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// From the client address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<SourceIp>,
    /// Hash salt (default: the rollout's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// Give keyless clients a random id in this cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assign_cookie: Option<String>,
}

/// How a sticky key finds the client address.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceIp {
    /// The n-th `X-Forwarded-For` entry from the right.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xff_depth: Option<u32>,
}

/// A token-bucket rate limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// Unique name (stats, state).
    pub name: String,
    /// Rule selecting the requests it applies to; absent: all.
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// `v3` or `v2` for this `match` (default: the rollout's `ruleSyntax`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_syntax: Option<RuleSyntax>,
    /// Tokens per `period`.
    pub average: f64,
    /// Refill period (default `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// Bucket size (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// The key (default: client address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<LimitSource>,
    /// Send `X-RateLimit-*` on admitted responses too.
    #[serde(default, skip_serializing_if = "is_false")]
    pub headers: bool,
    /// Memory bound in shared-data slots (default 65,536).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    /// `local` (default) or `global`: one fixed window shared by every gateway, counted by
    /// the rate-limit service in `service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The rate-limit service of a global limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<LimitService>,
    /// Count what it would refuse, admit it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub shadow: bool,
}

/// The rate-limit service of a global limit (Envoy's RLS v3).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitService {
    /// Envoy cluster of the service (HTTP/2).
    pub cluster: String,
    /// The RLS domain (default: the policy's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// How long a request may wait for the answer (default `20ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// `allow` (default) or `deny` when the service fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<String>,
}

/// A rate limit's key: exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitSource {
    /// This header's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// This cookie's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// This query parameter's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The requested host (`{}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Empty>,
    /// The client address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<ClientIp>,
}

/// An empty object (`host: {}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// How a rate limit finds the client address.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientIp {
    /// The n-th `X-Forwarded-For` entry from the right.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xff_depth: Option<u32>,
    /// Mask IPv6 clients to this prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_prefix: Option<u8>,
}

/// A circuit breaker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Unique name (stats, state).
    pub name: String,
    /// Guard only this variant's traffic (the canary's, to protect a release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// When to open, e.g. `LatencyAtQuantileMS(50.0) > 100`.
    pub expression: String,
    /// How often the expression is checked (default `100ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_period: Option<String>,
    /// Time open (default `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_duration: Option<String>,
    /// Recovery ramp (default `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_duration: Option<String>,
    /// Statistics window (default `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Status while open unless `fallbackVariant` (default 503).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_code: Option<u16>,
    /// While open, route to this variant instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_variant: Option<String>,
}

/// Connection limits for the gateway's network filter (`envoy.filters.network.wasm` in front
/// of `tcp_proxy`), as the policy's `tcp`: rendered into a policy of their own,
/// `<rollout>-tcp` ([`render_tcp`](crate::render::render_tcp)), the same at every step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tcp {
    /// Source CIDRs allowed to connect (Traefik's `ipAllowList`), IPv4 or IPv6; absent:
    /// every source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    /// Simultaneous connections (Traefik's `InFlightConn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<InFlight>,
    /// New connections per source address, a token bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<TcpRate>,
}

/// Caps on open connections; at least one of the two.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InFlight {
    /// Most open connections from one source address (Traefik's `amount`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub per_source: Option<u32>,
    /// Most open connections in all (every Envoy worker of a gateway together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub total: Option<u32>,
}

/// New connections per source address: `average` per `period`, at most `burst` at once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRate {
    /// Tokens added per `period`.
    pub average: f64,
    /// Refill period (default `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// Bucket capacity (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

/// A Rollout part as the policy's own type: its serialized form with every key in snake_case,
/// read by the filter's decoder. No field is copied by hand, an absent one takes the filter's
/// default, and `mirrors_the_policy_table` below checks that both sides have the same fields.
/// Through `serde_value` (already linked by kube) rather than `serde_json::Value`, which
/// would turn a NaN into `null`: the policy's compiler is what refuses a NaN, with its path.
fn to_policy<T: DeserializeOwned>(part: &impl Serialize) -> T {
    serde_value::to_value(part)
        .map_err(|e| e.to_string())
        .and_then(|v| T::deserialize(snake_case_keys(v)).map_err(|e| e.to_string()))
        // A bug, not a matter of input: every part has the policy's fields
        // (`mirrors_the_policy_table`) and any value of them converts
        // (`any_value_of_a_part_converts`, `every_field_is_carried`).
        .unwrap_or_else(|e| panic!("a Rollout part the policy does not read: {e}"))
}

fn snake_case_keys(v: Value) -> Value {
    match v {
        Value::Map(members) => Value::Map(
            members
                .into_iter()
                .map(|(k, v)| {
                    let k = match k {
                        Value::String(k) => Value::String(snake_case(&k)),
                        k => k,
                    };
                    (k, snake_case_keys(v))
                })
                .collect(),
        ),
        Value::Seq(items) => Value::Seq(items.into_iter().map(snake_case_keys).collect()),
        Value::Option(Some(v)) => Value::Option(Some(Box::new(snake_case_keys(*v)))),
        v => v,
    }
}

/// `checkPeriod` → `check_period`: the inverse of serde's `rename_all = "camelCase"`.
fn snake_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

impl Route {
    /// The route in the policy's terms.
    pub fn to_policy(&self) -> p::RouteSpec {
        to_policy(self)
    }
}

impl Sticky {
    /// The sticky key in the policy's terms.
    pub fn to_policy(&self) -> p::StickySpec {
        to_policy(self)
    }
}

impl RateLimit {
    /// The limit in the policy's terms.
    pub fn to_policy(&self) -> p::RateLimitSpec {
        to_policy(self)
    }
}

impl CircuitBreaker {
    /// The breaker in the policy's terms.
    pub fn to_policy(&self) -> p::BreakerSpec {
        to_policy(self)
    }
}

impl Tcp {
    /// The connection limits in the policy's terms.
    pub fn to_policy(&self) -> p::TcpSpec {
        to_policy(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// A Rollout part's fields, from the schema its CRD is generated from, in snake_case.
    fn fields<T: JsonSchema>() -> BTreeSet<String> {
        let schema = schemars::schema_for!(T);
        let properties = schema.get("properties").and_then(|p| p.as_object());
        properties
            .map(|p| p.keys().map(|k| snake_case(k)).collect())
            .unwrap_or_default()
    }

    fn same_fields<T: JsonSchema>(policy: &[&str]) {
        let policy: BTreeSet<String> = policy.iter().map(|f| f.to_string()).collect();
        assert_eq!(fields::<T>(), policy, "{}", std::any::type_name::<T>());
    }

    #[test]
    fn mirrors_the_policy_table() {
        same_fields::<Route>(p::RouteSpec::FIELDS);
        same_fields::<Mirror>(p::MirrorSpec::FIELDS);
        same_fields::<Split>(p::SplitSpec::FIELDS);
        same_fields::<Sticky>(p::StickySpec::FIELDS);
        same_fields::<SourceIp>(p::SourceIpSpec::FIELDS);
        same_fields::<RateLimit>(p::RateLimitSpec::FIELDS);
        same_fields::<LimitSource>(p::LimitSourceSpec::FIELDS);
        same_fields::<LimitService>(p::LimitServiceSpec::FIELDS);
        same_fields::<Empty>(p::Empty::FIELDS);
        same_fields::<ClientIp>(p::ClientIpSpec::FIELDS);
        same_fields::<CircuitBreaker>(p::BreakerSpec::FIELDS);
        same_fields::<Tcp>(p::TcpSpec::FIELDS);
        same_fields::<InFlight>(p::InFlightSpec::FIELDS);
        same_fields::<TcpRate>(p::TcpRateSpec::FIELDS);
        // The check can fail: a field the policy has and the Rollout lacks.
        let mut more = p::SourceIpSpec::FIELDS.to_vec();
        more.push("ipv6_prefix");
        let missing = std::panic::catch_unwind(|| same_fields::<SourceIp>(&more));
        assert!(missing.is_err());
    }

    #[test]
    fn any_value_of_a_part_converts() {
        // `to_policy` cannot fail on input: a NaN reaches the policy's compiler, which refuses
        // it with its path (serde_json's Value would make it `null`), and every integer field
        // is as wide on the policy's side (the largest values convert).
        let l = RateLimit {
            name: "api".into(),
            average: f64::NAN,
            burst: Some(u64::MAX),
            slots: Some(u32::MAX),
            source: Some(LimitSource {
                client_ip: Some(ClientIp {
                    xff_depth: Some(u32::MAX),
                    ipv6_prefix: Some(u8::MAX),
                }),
                ..LimitSource::default()
            }),
            ..RateLimit::default()
        }
        .to_policy();
        assert!(l.average.is_nan());
        assert_eq!((l.burst, l.slots), (Some(u64::MAX), u32::MAX));
        let r = Route {
            split: Some(vec![Split {
                variant: "canary".into(),
                weight: f64::NEG_INFINITY,
            }]),
            sticky: Some(Sticky {
                source_ip: Some(SourceIp {
                    xff_depth: Some(u32::MAX),
                }),
                ..Sticky::default()
            }),
            ..Route::default()
        }
        .to_policy();
        assert_eq!(r.split.map(|s| s[0].weight), Some(f64::NEG_INFINITY));
        let b = CircuitBreaker {
            response_code: Some(u16::MAX),
            ..CircuitBreaker::default()
        }
        .to_policy();
        assert_eq!(b.response_code, u16::MAX);
    }

    #[test]
    fn absent_fields_take_the_filters_defaults() {
        let l = RateLimit {
            name: "api".into(),
            average: 5.0,
            ..RateLimit::default()
        }
        .to_policy();
        assert_eq!(
            serde_json::to_string(&l).unwrap(),
            r#"{"name":"api","average":5.0,"period":"1s"}"#
        );
        let b = CircuitBreaker {
            name: "b".into(),
            expression: "NetworkErrorRatio() > 0.5".into(),
            ..CircuitBreaker::default()
        }
        .to_policy();
        assert_eq!(b.check_period, "100ms");
        assert_eq!(b.window, "10s");
        assert_eq!(b.response_code, 503);
    }

    #[test]
    fn every_field_is_carried() {
        let yaml = r#"
name: api
match: "PathPrefix(`/api`)"
ruleSyntax: v3
average: 500
period: 2s
burst: 1000
source: { clientIp: { xffDepth: 1, ipv6Prefix: 64 } }
headers: true
slots: 1024
"#;
        let l: RateLimit = serde_yaml::from_str(yaml).unwrap();
        let json = serde_json::to_value(l.to_policy()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name":"api","match":"PathPrefix(`/api`)","rule_syntax":"v3",
                "average":500.0,
                "period":"2s","burst":1000,"source":{"client_ip":{"xff_depth":1,"ipv6_prefix":64}},
                "headers":true,"slots":1024})
        );
        let yaml = r#"
name: lat
variant: canary
expression: "LatencyAtQuantileMS(50.0) > 100"
checkPeriod: 50ms
fallbackDuration: 3s
recoveryDuration: 4s
window: 5s
responseCode: 429
fallbackVariant: stable
"#;
        let b: CircuitBreaker = serde_yaml::from_str(yaml).unwrap();
        let json = serde_json::to_value(b.to_policy()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name":"lat","variant":"canary",
                "expression":"LatencyAtQuantileMS(50.0) > 100","check_period":"50ms",
                "fallback_duration":"3s","recovery_duration":"4s","window":"5s",
                "response_code":429,"fallback_variant":"stable"})
        );
        let yaml = r#"
match: "Host(`a`)"
ruleSyntax: v2
split: [{ variant: canary, weight: 10 }]
sticky: { sourceIp: { xffDepth: 2 }, salt: s, assignCookie: uid }
default: stable
"#;
        let r: Route = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(
            serde_json::to_value(r.to_policy()).unwrap(),
            serde_json::json!({"match":"Host(`a`)","rule_syntax":"v2",
                "split":[{"variant":"canary","weight":10.0}],
                "sticky":{"source_ip":{"xff_depth":2},"salt":"s","assign_cookie":"uid"},
                "default":"stable"})
        );
        let yaml = r#"
variant: stable
mirror: { variant: canary, percent: 12.5, maxBody: 1024, maxInFlight: 7, hostSuffix: "", timeout: 2s, compareBody: 512 }
"#;
        let r: Route = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(
            serde_json::to_value(r.to_policy()).unwrap(),
            serde_json::json!({"variant":"stable","mirror":{"variant":"canary","percent":12.5,
                "max_body":1024,"max_in_flight":7,"host_suffix":"","timeout":"2s","compare_body":512}})
        );
        let yaml = r#"
allow: ["10.0.0.0/8", "::1/128"]
inFlight: { perSource: 20, total: 200 }
rate: { average: 50, period: 2s, burst: 20 }
"#;
        let t: Tcp = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(
            serde_json::to_value(t.to_policy()).unwrap(),
            serde_json::json!({"allow":["10.0.0.0/8","::1/128"],
                "in_flight":{"per_source":20,"total":200},
                "rate":{"average":50.0,"period":"2s","burst":20}})
        );
        // Absent parts stay absent; an absent period takes the filter's default.
        let t: Tcp = serde_yaml::from_str("rate: { average: 5 }").unwrap();
        assert_eq!(
            serde_json::to_string(&t.to_policy()).unwrap(),
            r#"{"rate":{"average":5.0,"period":"1s"}}"#
        );
        assert_eq!(
            serde_json::to_string(&Tcp::default().to_policy()).unwrap(),
            "{}"
        );
    }
}
