//! The policy as users, the CLI and the controller write it (JSON). Field names are the
//! contract shared by Envoy's `configuration`, Istio's `pluginConfig` and the controller.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Header the filter writes the chosen upstream cluster into, unless the policy says otherwise.
pub const DEFAULT_CLUSTER_HEADER: &str = "x-rollgate-cluster";
/// Header the filter writes the chosen variant into, unless the policy says otherwise.
pub const DEFAULT_VARIANT_HEADER: &str = "x-rollgate-variant";

fn default_cluster_header() -> String {
    DEFAULT_CLUSTER_HEADER.to_string()
}

fn default_variant_header() -> String {
    DEFAULT_VARIANT_HEADER.to_string()
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A whole policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// The service's name; the default salt of sticky buckets.
    pub name: String,
    /// Variant name → upstream cluster name.
    pub variants: BTreeMap<String, String>,
    /// Variant for requests no route decides; without it they pass untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Tried in order; the first whose `match` holds decides.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// Request header that carries the chosen cluster to Envoy's router (`cluster_header`).
    #[serde(default = "default_cluster_header")]
    pub cluster_header: String,
    /// Request header that carries the chosen variant (Istio VirtualService header match).
    #[serde(default = "default_variant_header")]
    pub variant_header: String,
    /// Also return the variant header on the response.
    #[serde(default, skip_serializing_if = "is_false")]
    pub expose_variant: bool,
}

/// One route: a rule and what to do when it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Traefik rule; absent means every request.
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Send every matching request to this variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Sticky weighted split; the remainder goes to `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Vec<SplitSpec>>,
    /// Where a split's key comes from (default: the client address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickySpec>,
    /// Variant for the part of a split no weight covers (else the policy's `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// One share of a split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// The variant.
    pub variant: String,
    /// Percent of users, 0–100, at most two decimals.
    pub weight: f64,
}

/// The sticky key of a split: exactly one of `header`, `cookie`, `query`, `source_ip`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickySpec {
    /// Key from this request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Key from this cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Key from this query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Key from the client address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<SourceIpSpec>,
    /// Hash salt; defaults to the policy name. Changing it reshuffles every user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// When the key is missing, give the client a random id in this cookie and bucket on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assign_cookie: Option<String>,
}

/// How the client address is found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceIpSpec {
    /// Take the n-th address from the right of `X-Forwarded-For` (1 = rightmost), as
    /// Traefik's `ipStrategy.depth`; without it, Envoy's `source.address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xff_depth: Option<u32>,
}
