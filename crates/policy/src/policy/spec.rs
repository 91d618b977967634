//! The policy as users, the CLI and the controller write it (JSON). Field names are the
//! contract shared by Envoy's `configuration`, Istio's `pluginConfig` and the controller.
//!
//! Reading is the filter's own decoder (`policy::decode`, also behind these types'
//! `Deserialize`): unknown fields are refused and absent ones take the defaults documented
//! here. Writing is serde's derived `Serialize`, used by the CLI and the controller only.

use std::collections::BTreeMap;

use serde::Serialize;

/// Header the filter writes the chosen upstream cluster into, unless the policy says otherwise.
pub const DEFAULT_CLUSTER_HEADER: &str = "x-rollgate-cluster";
/// Header the filter writes the chosen variant into, unless the policy says otherwise.
pub const DEFAULT_VARIANT_HEADER: &str = "x-rollgate-variant";

fn is_false(b: &bool) -> bool {
    !*b
}

/// A whole policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicySpec {
    /// The service's name; the default salt of sticky buckets. Required, except in a filter
    /// configuration that only gives `source`.
    pub name: String,
    /// Variant name → upstream cluster name (at least one, except beside `source` alone).
    pub variants: BTreeMap<String, String>,
    /// Variant for requests no route decides; without it they pass untouched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Tried in order; the first whose `match` holds decides. Default: none.
    pub routes: Vec<RouteSpec>,
    /// Request header that carries the chosen cluster to Envoy's router (`cluster_header`).
    /// Default [`DEFAULT_CLUSTER_HEADER`]; empty means the filter does not write it (Istio
    /// routes on the variant header alone).
    pub cluster_header: String,
    /// Request header that carries the chosen variant (Istio VirtualService header match).
    /// Default [`DEFAULT_VARIANT_HEADER`]; empty means the filter does not write it (plain
    /// Envoy routes on the cluster header alone). Not both may be empty.
    pub variant_header: String,
    /// Also return the variant header on the response (needs a non-empty `variant_header`).
    #[serde(skip_serializing_if = "is_false")]
    pub expose_variant: bool,
    /// Token-bucket limits; every one that applies must admit a request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitSpec>,
    /// Circuit breakers, checked in order after routing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub circuit_breakers: Vec<BreakerSpec>,
    /// Where the filter fetches newer policies (only in the filter's own configuration).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceSpec>,
    /// Traefik's `ruleSyntax` for every `match` of the policy: `v3` or `v2`. Absent: each
    /// rule is read as v3 when it is valid v3, else as v2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_syntax: Option<String>,
}

/// Where the filter long-polls for its policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceSpec {
    /// Envoy cluster of the rollgate sidecar.
    pub cluster: String,
    /// Path of the policy, e.g. `/v1/policies/flask`.
    pub path: String,
    /// Base delay between attempts after a failure (doubling up to 30 s). Default `1s`.
    pub poll: String,
    /// How long the sidecar may hold a poll open before answering 304. Default `20s`.
    pub wait: String,
    /// `:authority` of the poll; defaults to the cluster name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

pub(super) fn default_poll() -> String {
    "1s".to_string()
}

pub(super) fn default_wait() -> String {
    "20s".to_string()
}

pub(super) fn default_period() -> String {
    "1s".to_string()
}

pub(super) fn default_slots() -> u32 {
    65_536
}

fn is_default_slots(n: &u32) -> bool {
    *n == default_slots()
}

/// A token-bucket rate limit (Traefik's `rateLimit` meaning of `average`, `period`, `burst`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateLimitSpec {
    /// Unique name: stats and limiter state are keyed by it.
    pub name: String,
    /// Traefik rule selecting the requests it applies to; absent means all.
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// `v3` or `v2` for this `match`; absent: the policy's `rule_syntax`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_syntax: Option<String>,
    /// Tokens added per `period`.
    pub average: f64,
    /// Refill period, e.g. `1s`, `1m`. Default `1s`.
    pub period: String,
    /// Bucket capacity: the most requests let through at once (default 1, as in Traefik).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// Where the key comes from (default: the client address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<LimitSourceSpec>,
    /// Send `X-RateLimit-*` on admitted responses too (refusals always carry them).
    #[serde(skip_serializing_if = "is_false")]
    pub headers: bool,
    /// Shared-data slots: the bound on memory however many keys arrive. Default 65536.
    #[serde(skip_serializing_if = "is_default_slots")]
    pub slots: u32,
}

/// A rate limit's key: exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LimitSourceSpec {
    /// This request header's value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// This cookie's value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// This query parameter's value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The requested host (`{}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<Empty>,
    /// The client address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<ClientIpSpec>,
}

/// An empty object, for options that take no settings (`"host": {}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Empty {}

/// How a rate limit finds the client address.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClientIpSpec {
    /// The n-th `X-Forwarded-For` entry from the right (1 = rightmost) instead of
    /// `source.address`, as Traefik's `ipStrategy.depth`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xff_depth: Option<u32>,
    /// Mask IPv6 addresses to this prefix length (e.g. 64), as Traefik's `ipv6Subnet`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6_prefix: Option<u8>,
}

pub(super) fn default_check_period() -> String {
    "100ms".to_string()
}

pub(super) fn default_ten_seconds() -> String {
    "10s".to_string()
}

pub(super) fn default_response_code() -> u16 {
    503
}

/// A circuit breaker (Traefik's `circuitBreaker`, with its gaps closed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakerSpec {
    /// Unique name: stats and state are keyed by it.
    pub name: String,
    /// Watch and guard only this variant's traffic; absent means all of the policy's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// When to open, e.g. `LatencyAtQuantileMS(50.0) > 100 || NetworkErrorRatio() > 0.3`.
    pub expression: String,
    /// How often the expression is checked (also without traffic). Default `100ms`.
    pub check_period: String,
    /// How long it stays open. Default `10s`.
    pub fallback_duration: String,
    /// How long the let-through share takes to ramp from 0 to 100 % after opening. Default
    /// `10s`.
    pub recovery_duration: String,
    /// The rolling statistics window (ten buckets). Default `10s`.
    pub window: String,
    /// Status sent while open, unless `fallback_variant` is given. Default 503.
    pub response_code: u16,
    /// While open, route to this variant instead of refusing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_variant: Option<String>,
}

/// One route: a rule and what to do when it holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteSpec {
    /// Traefik rule; absent means every request.
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// `v3` or `v2` for this `match`; absent: the policy's `rule_syntax`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_syntax: Option<String>,
    /// Send every matching request to this variant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Sticky weighted split; the remainder goes to `default`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<Vec<SplitSpec>>,
    /// Where a split's key comes from (default: the client address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickySpec>,
    /// Variant for the part of a split no weight covers (else the policy's `default`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// One share of a split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitSpec {
    /// The variant.
    pub variant: String,
    /// Percent of users, 0–100, at most two decimals.
    pub weight: f64,
}

/// The sticky key of a split: exactly one of `header`, `cookie`, `query`, `source_ip`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StickySpec {
    /// Key from this request header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Key from this cookie.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Key from this query parameter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Key from the client address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<SourceIpSpec>,
    /// Hash salt; defaults to the policy name. Changing it reshuffles every user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// When the key is missing, give the client a random id in this cookie and bucket on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assign_cookie: Option<String>,
}

/// How the client address is found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SourceIpSpec {
    /// Take the n-th address from the right of `X-Forwarded-For` (1 = rightmost), as
    /// Traefik's `ipStrategy.depth`; without it, Envoy's `source.address`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xff_depth: Option<u32>,
}
