//! The policy's parts inside a Rollout, in camelCase, and their conversion to the filter's
//! own spec types ([`rollgate_policy::policy::spec`]).
//!
//! Field for field the same as the policy JSON (README: "The policy", "Rate limits",
//! "Circuit breakers"); only the spelling differs (`checkPeriod` for `check_period`).
//! Defaults are not repeated here: an absent field takes the filter's own serde default, so
//! the rendered policy means what the same policy without the field would mean.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

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

/// The filter's defaults for a type, from its own serde defaults applied to the required
/// fields alone. Building the filter's types this way (not with struct literals) also keeps
/// this crate compiling when the filter adds optional fields.
pub(crate) fn defaults<T: DeserializeOwned>(required: &str) -> T {
    // The JSON is a constant holding exactly the required fields; a failure here is a bug
    // caught by the unit tests below, not a matter of input.
    serde_json::from_str(required).expect("the filter accepts its required fields alone")
}

fn set<T: Clone>(target: &mut T, value: &Option<T>) {
    if let Some(v) = value {
        *target = v.clone();
    }
}

impl Route {
    /// The route in the policy's terms.
    pub fn to_policy(&self) -> p::RouteSpec {
        let mut r: p::RouteSpec = defaults("{}");
        r.rule = self.rule.clone();
        r.rule_syntax = self.rule_syntax.map(|s| s.name().to_string());
        r.variant = self.variant.clone();
        r.split = self.split.as_ref().map(|s| {
            s.iter()
                .map(|s| p::SplitSpec {
                    variant: s.variant.clone(),
                    weight: s.weight,
                })
                .collect()
        });
        r.sticky = self.sticky.as_ref().map(Sticky::to_policy);
        r.default = self.default.clone();
        r
    }
}

impl Sticky {
    /// The sticky key in the policy's terms.
    pub fn to_policy(&self) -> p::StickySpec {
        // Struct literals on purpose: a field the filter adds fails to compile here until
        // the Rollout carries it too.
        p::StickySpec {
            header: self.header.clone(),
            cookie: self.cookie.clone(),
            query: self.query.clone(),
            source_ip: self.source_ip.as_ref().map(|s| p::SourceIpSpec {
                xff_depth: s.xff_depth,
            }),
            salt: self.salt.clone(),
            assign_cookie: self.assign_cookie.clone(),
        }
    }
}

impl RateLimit {
    /// The limit in the policy's terms.
    pub fn to_policy(&self) -> p::RateLimitSpec {
        let mut l: p::RateLimitSpec = defaults(r#"{"name":"","average":0}"#);
        l.name = self.name.clone();
        l.rule = self.rule.clone();
        l.rule_syntax = self.rule_syntax.map(|s| s.name().to_string());
        l.average = self.average;
        set(&mut l.period, &self.period);
        l.burst = self.burst;
        l.source = self.source.as_ref().map(|s| p::LimitSourceSpec {
            header: s.header.clone(),
            cookie: s.cookie.clone(),
            query: s.query.clone(),
            host: s.host.as_ref().map(|_| p::Empty {}),
            client_ip: s.client_ip.as_ref().map(|c| p::ClientIpSpec {
                xff_depth: c.xff_depth,
                ipv6_prefix: c.ipv6_prefix,
            }),
        });
        l.headers = self.headers;
        set(&mut l.slots, &self.slots);
        l
    }
}

impl CircuitBreaker {
    /// The breaker in the policy's terms.
    pub fn to_policy(&self) -> p::BreakerSpec {
        let mut b: p::BreakerSpec = defaults(r#"{"name":"","expression":""}"#);
        b.name = self.name.clone();
        b.variant = self.variant.clone();
        b.expression = self.expression.clone();
        set(&mut b.check_period, &self.check_period);
        set(&mut b.fallback_duration, &self.fallback_duration);
        set(&mut b.recovery_duration, &self.recovery_duration);
        set(&mut b.window, &self.window);
        set(&mut b.response_code, &self.response_code);
        b.fallback_variant = self.fallback_variant.clone();
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
