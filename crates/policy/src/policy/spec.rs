//! The policy as users, the CLI and the controller write it (JSON). Field names are the
//! contract shared by Envoy's `configuration`, Istio's `pluginConfig` and the controller.
//!
//! Each field is declared once, in the table below (`spec_types!`): its key, type, default,
//! whether it is required and when serialization leaves it out. From that one line come the
//! struct field, the filter's decoder arm (`policy::decode`, also behind these types'
//! `Deserialize`: unknown fields are refused, absent ones take the defaults written here),
//! `Serialize` (for the CLI and the controller only) and `FIELDS`, which the Rollout's
//! camelCase mirror (`rollgate-rollout`'s `parts.rs`) is tested against. Fields are listed in
//! the order errors name them ("expected one of …"), which is also the serialized order.

use std::collections::BTreeMap;

/// Header the filter writes the chosen upstream cluster into, unless the policy says otherwise.
pub const DEFAULT_CLUSTER_HEADER: &str = "x-rollgate-cluster";
/// Header the filter writes the chosen variant into, unless the policy says otherwise.
pub const DEFAULT_VARIANT_HEADER: &str = "x-rollgate-variant";

fn is_false(b: &bool) -> bool {
    !*b
}

/// Shared-data slots of a rate limit unless it says otherwise.
const DEFAULT_SLOTS: u32 = 65_536;

fn is_default_slots(n: &u32) -> bool {
    *n == DEFAULT_SLOTS
}

/// A rate limit's default scope.
pub const SCOPE_LOCAL: &str = "local";

fn is_local(s: &String) -> bool {
    s == SCOPE_LOCAL
}

/// Largest request body a mirror copies unless it says otherwise (64 KiB).
pub const DEFAULT_MIRROR_MAX_BODY: u32 = 64 << 10;
/// Mirrors one worker keeps in flight unless the mirror says otherwise.
pub const DEFAULT_MIRROR_MAX_IN_FLIGHT: u32 = 50;
/// What a mirror appends to the copy's host, as Envoy's own request mirror does.
pub const DEFAULT_MIRROR_HOST_SUFFIX: &str = "-shadow";
/// How long a mirror copy may take unless the mirror says otherwise.
pub const DEFAULT_MIRROR_TIMEOUT: &str = "5s";

fn is_default_max_body(n: &u32) -> bool {
    *n == DEFAULT_MIRROR_MAX_BODY
}

fn is_default_max_in_flight(n: &u32) -> bool {
    *n == DEFAULT_MIRROR_MAX_IN_FLIGHT
}

fn is_default_host_suffix(s: &String) -> bool {
    s == DEFAULT_MIRROR_HOST_SUFFIX
}

fn is_default_mirror_timeout(s: &String) -> bool {
    s == DEFAULT_MIRROR_TIMEOUT
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Declares spec types from one line per field:
/// `name [as "key"]: Type [= default] [, omit if predicate];`. A field without a default is
/// required; the key is the field's name unless given. Generates the struct, `Default` (the
/// defaults, required fields empty), `FIELDS`, the decoder, `Deserialize` through it, and
/// `Serialize` (a field is left out when its predicate holds).
macro_rules! spec_types {
    (@key $field:ident) => { stringify!($field) };
    (@key $field:ident $key:literal) => { $key };
    (@default) => { Default::default() };
    (@default $default:expr) => { $default };
    (@required) => { true };
    (@required $default:expr) => { false };
    (@omit $value:expr) => { false };
    (@omit $value:expr, $omit:expr) => { ($omit)(&$value) };
    ($(
        $(#[doc = $doc:literal])*
        #[derive($($derive:ident),*)]
        pub struct $name:ident {
            $(
                $(#[doc = $fdoc:literal])*
                $field:ident $(as $key:literal)? : $ty:ty $(= $default:expr)? $(, omit if $omit:expr)?;
            )*
        }
    )*) => {$(
        $(#[doc = $doc])*
        #[derive($($derive),*)]
        pub struct $name {
            $($(#[doc = $fdoc])* pub $field: $ty,)*
        }

        impl $name {
            /// The JSON keys, in declaration order.
            pub const FIELDS: &'static [&'static str] = &[$(spec_types!(@key $field $($key)?)),*];
        }

        // `decode::object` marks the fields it has seen in a `u32`.
        const _: () = assert!($name::FIELDS.len() <= 32);

        impl Default for $name {
            fn default() -> Self {
                $name {
                    $($field: spec_types!(@default $($default)?),)*
                }
            }
        }

        impl super::decode::Decode for $name {
            #[allow(unused_mut, unused_variables)]
            fn decode(v: &super::json::Json, path: &str, errs: &mut super::errors::Errors) -> Self {
                let mut out = <$name as Default>::default();
                let required: &[bool] = &[$(spec_types!(@required $($default)?)),*];
                super::decode::object(v, path, Self::FIELDS, required, errs, &mut |key, v, at, errs| {
                    $(if key == spec_types!(@key $field $($key)?) {
                        out.$field = super::decode::Decode::decode(v, at, errs);
                    })*
                });
                out
            }
        }

        /// Through `Json` and the filter's decoder: the CLI and the
        /// controller read policies exactly as the filter does. Generic over the format, so
        /// never instantiated in the filter itself.
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = super::json::Json::deserialize(d)?;
                super::decode::run(&v).map_err(serde::de::Error::custom)
            }
        }

        impl serde::Serialize for $name {
            #[allow(unused_mut)]
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeStruct;
                let len = 0 $(+ usize::from(!spec_types!(@omit self.$field $(, $omit)?)))*;
                let mut out = s.serialize_struct(stringify!($name), len)?;
                $(
                    let key = spec_types!(@key $field $($key)?);
                    if spec_types!(@omit self.$field $(, $omit)?) {
                        out.skip_field(key)?;
                    } else {
                        out.serialize_field(key, &self.$field)?;
                    }
                )*
                out.end()
            }
        }
    )*};
}

spec_types! {
    /// A whole policy.
    #[derive(Debug, Clone, PartialEq)]
    pub struct PolicySpec {
        /// The service's name; the default salt of sticky buckets. Required, except in a filter
        /// configuration that only gives `source`.
        name: String = String::new();
        /// Variant name → upstream cluster name (at least one, except beside `source` alone).
        variants: BTreeMap<String, String> = BTreeMap::new();
        /// Variant for requests no route decides; without it they pass untouched.
        default: Option<String> = None, omit if Option::is_none;
        /// Tried in order; the first whose `match` holds decides. Default: none.
        routes: Vec<RouteSpec> = Vec::new();
        /// Request header that carries the chosen cluster to Envoy's router (`cluster_header`).
        /// Default [`DEFAULT_CLUSTER_HEADER`]; empty means the filter does not write it (Istio
        /// routes on the variant header alone).
        cluster_header: String = DEFAULT_CLUSTER_HEADER.to_string();
        /// Request header that carries the chosen variant (Istio VirtualService header match).
        /// Default [`DEFAULT_VARIANT_HEADER`]; empty means the filter does not write it (plain
        /// Envoy routes on the cluster header alone). Not both may be empty.
        variant_header: String = DEFAULT_VARIANT_HEADER.to_string();
        /// Also return the variant header on the response (needs a non-empty `variant_header`).
        expose_variant: bool = false, omit if is_false;
        /// Token-bucket limits; every one that applies must admit a request.
        rate_limits: Vec<RateLimitSpec> = Vec::new(), omit if Vec::is_empty;
        /// Circuit breakers, checked in order after routing.
        circuit_breakers: Vec<BreakerSpec> = Vec::new(), omit if Vec::is_empty;
        /// Where the filter fetches newer policies (only in the filter's own configuration).
        source: Option<SourceSpec> = None, omit if Option::is_none;
        /// Traefik's `ruleSyntax` for every `match` of the policy: `v3` or `v2`. Absent: each
        /// rule is read as v3 when it is valid v3, else as v2.
        rule_syntax: Option<String> = None, omit if Option::is_none;
        /// Connection limits when the filter runs as a network filter in front of Envoy's
        /// `tcp_proxy` (a policy with `tcp` and no `variants`). Absent: no TCP limits.
        tcp: Option<TcpSpec> = None, omit if Option::is_none;
        /// The number the controller gave this policy (the Rollout's `status.policyVersion`).
        /// A filter whose own configuration it is (Istio's `pluginConfig`, no `source`)
        /// reports it as the gauge `rollgate.<name>.policy.version`, as it reports a fetched
        /// policy's version, so the controller can tell which gateways serve it. Absent: no
        /// gauge. Written only for Rollouts with `acknowledge` (filters before this field
        /// refuse it).
        version: Option<u64> = None, omit if Option::is_none;
        /// Envoy's route already sends a request without the cluster header to the default
        /// variant's cluster (the shipped Envoy config's fallback route, or a VirtualService
        /// whose default route is the stable subset): the filter then writes no cluster header
        /// for requests decided for `default`, and only removes a forged one. Needs `default`
        /// and a non-empty `cluster_header`. Absent: the header is written for every variant.
        route_default: bool = false, omit if is_false;
    }

    /// Connection limits (`envoy.filters.network.wasm`); each part is optional.
    #[derive(Debug, Clone, PartialEq)]
    pub struct TcpSpec {
        /// Source CIDRs allowed to connect (Traefik's `ipAllowList`); absent: every source.
        allow: Option<Vec<String>> = None, omit if Option::is_none;
        /// Simultaneous connections (Traefik's `InFlightConn`).
        in_flight: Option<InFlightSpec> = None, omit if Option::is_none;
        /// New connections per source, a token bucket.
        rate: Option<TcpRateSpec> = None, omit if Option::is_none;
    }

    /// Caps on open connections; at least one of the two.
    #[derive(Debug, Clone, PartialEq)]
    pub struct InFlightSpec {
        /// Most open connections from one source address (Traefik's `amount`).
        per_source: Option<u32> = None, omit if Option::is_none;
        /// Most open connections in all.
        total: Option<u32> = None, omit if Option::is_none;
    }

    /// New connections per source address: `average` per `period`, at most `burst` at once.
    #[derive(Debug, Clone, PartialEq)]
    pub struct TcpRateSpec {
        /// Tokens added per `period`.
        average: f64;
        /// Refill period. Default `1s`.
        period: String = "1s".to_string();
        /// Bucket capacity (default 1).
        burst: Option<u64> = None, omit if Option::is_none;
    }

    /// Where the filter long-polls for its policy.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct SourceSpec {
        /// Envoy cluster of the rollgate sidecar.
        cluster: String;
        /// Path of the policy, e.g. `/v1/policies/flask`.
        path: String;
        /// Base delay between attempts after a failure (doubling up to 30 s). Default `1s`.
        poll: String = "1s".to_string();
        /// How long the sidecar may hold a poll open before answering 304. Default `20s`.
        wait: String = "20s".to_string();
        /// `:authority` of the poll; defaults to the cluster name.
        authority: Option<String> = None, omit if Option::is_none;
    }

    /// One route: a rule and what to do when it holds.
    #[derive(Debug, Clone, PartialEq)]
    pub struct RouteSpec {
        /// Traefik rule; absent means every request.
        rule as "match": Option<String> = None, omit if Option::is_none;
        /// Send every matching request to this variant.
        variant: Option<String> = None, omit if Option::is_none;
        /// Sticky weighted split; the remainder goes to `default`.
        split: Option<Vec<SplitSpec>> = None, omit if Option::is_none;
        /// Where a split's key comes from (default: the client address).
        sticky: Option<StickySpec> = None, omit if Option::is_none;
        /// Variant for the part of a split no weight covers (else the policy's `default`).
        default: Option<String> = None, omit if Option::is_none;
        /// `v3` or `v2` for this `match`; absent: the policy's `rule_syntax`.
        rule_syntax: Option<String> = None, omit if Option::is_none;
        /// Also send a share of the matching requests to a variant, answers compared and
        /// discarded (shadow traffic).
        mirror: Option<MirrorSpec> = None, omit if Option::is_none;
    }

    /// Shadow traffic: a copy of `percent` of a route's requests goes to `variant` too; the
    /// client's answer comes from the route's own variant alone.
    #[derive(Debug, Clone, PartialEq)]
    pub struct MirrorSpec {
        /// The variant the copies go to.
        variant: String;
        /// Percent of the route's requests copied, 0–100, at most two decimals; sticky by the
        /// route's key when it is a split.
        percent: f64;
        /// Largest request body copied, in bytes; a larger request is not mirrored. Default
        /// 64 KiB.
        max_body: u32 = DEFAULT_MIRROR_MAX_BODY, omit if is_default_max_body;
        /// Copies one worker keeps in flight; beyond it copies are dropped. Default 50.
        max_in_flight: u32 = DEFAULT_MIRROR_MAX_IN_FLIGHT, omit if is_default_max_in_flight;
        /// Appended to the copy's host (before a port), as Envoy's request mirror does.
        /// Default `-shadow`; empty: the host as sent.
        host_suffix: String = DEFAULT_MIRROR_HOST_SUFFIX.to_string(), omit if is_default_host_suffix;
        /// How long a copy may take before it counts as failed. Default `5s`.
        timeout: String = DEFAULT_MIRROR_TIMEOUT.to_string(), omit if is_default_mirror_timeout;
        /// Also compare response bodies of at most this many bytes (the primary's and the
        /// copy's, by hash): `shadow_body_compared`, `shadow_body_mismatch`. Default 0: off.
        compare_body: u32 = 0, omit if is_zero;
    }

    /// One share of a split.
    #[derive(Debug, Clone, PartialEq)]
    pub struct SplitSpec {
        /// The variant.
        variant: String;
        /// Percent of users, 0–100, at most two decimals.
        weight: f64;
    }

    /// The sticky key of a split: exactly one of `header`, `cookie`, `query`, `source_ip`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct StickySpec {
        /// Key from this request header.
        header: Option<String> = None, omit if Option::is_none;
        /// Key from this cookie.
        cookie: Option<String> = None, omit if Option::is_none;
        /// Key from this query parameter.
        query: Option<String> = None, omit if Option::is_none;
        /// Key from the client address.
        source_ip: Option<SourceIpSpec> = None, omit if Option::is_none;
        /// Hash salt; defaults to the policy name. Changing it reshuffles every user.
        salt: Option<String> = None, omit if Option::is_none;
        /// When the key is missing, give the client a random id in this cookie and bucket on it.
        assign_cookie: Option<String> = None, omit if Option::is_none;
    }

    /// How the client address is found.
    #[derive(Debug, Clone, PartialEq)]
    pub struct SourceIpSpec {
        /// Take the n-th address from the right of `X-Forwarded-For` (1 = rightmost), as
        /// Traefik's `ipStrategy.depth`; without it, Envoy's `source.address`.
        xff_depth: Option<u32> = None, omit if Option::is_none;
    }

    /// A token-bucket rate limit (Traefik's `rateLimit` meaning of `average`, `period`, `burst`).
    #[derive(Debug, Clone, PartialEq)]
    pub struct RateLimitSpec {
        /// Unique name: stats and limiter state are keyed by it.
        name: String;
        /// Tokens added per `period`.
        average: f64;
        /// Traefik rule selecting the requests it applies to; absent means all.
        rule as "match": Option<String> = None, omit if Option::is_none;
        /// Refill period, e.g. `1s`, `1m`. Default `1s`.
        period: String = "1s".to_string();
        /// Bucket capacity: the most requests let through at once (default 1, as in Traefik).
        burst: Option<u64> = None, omit if Option::is_none;
        /// Where the key comes from (default: the client address).
        source: Option<LimitSourceSpec> = None, omit if Option::is_none;
        /// Send `X-RateLimit-*` on admitted responses too (refusals always carry them).
        headers: bool = false, omit if is_false;
        /// Shared-data slots: the bound on memory however many keys arrive. Default 65536.
        slots: u32 = DEFAULT_SLOTS, omit if is_default_slots;
        /// `v3` or `v2` for this `match`; absent: the policy's `rule_syntax`.
        rule_syntax: Option<String> = None, omit if Option::is_none;
        /// `local` (default: one token bucket per Envoy, in shared data) or `global` (a fixed
        /// window of `average` per `period` shared by every gateway, counted by a rate-limit
        /// service speaking Envoy's RLS v3; needs `service`, takes no `burst` or `slots`).
        scope: String = SCOPE_LOCAL.to_string(), omit if is_local;
        /// The rate-limit service a `global` limit asks.
        service: Option<LimitServiceSpec> = None, omit if Option::is_none;
        /// Count and log what the limit would refuse, but admit it (envoyproxy/ratelimit's
        /// and Envoy's local limit's `shadow_mode`).
        shadow: bool = false, omit if is_false;
    }

    /// The rate-limit service of a global limit (Envoy's RLS v3, `ShouldRateLimit`).
    #[derive(Debug, Clone, PartialEq)]
    pub struct LimitServiceSpec {
        /// Envoy cluster of the service (HTTP/2).
        cluster: String;
        /// The RLS `domain`; default: the policy's name.
        domain: Option<String> = None, omit if Option::is_none;
        /// How long a request may wait for the answer. Default `20ms`.
        timeout: String = "20ms".to_string();
        /// `allow` (default, as Envoy's rate-limit filter) or `deny` (answer 500) when the
        /// service is down, slow or answers garbage.
        failure_mode: String = "allow".to_string();
    }

    /// A rate limit's key: exactly one field.
    #[derive(Debug, Clone, PartialEq)]
    pub struct LimitSourceSpec {
        /// This request header's value.
        header: Option<String> = None, omit if Option::is_none;
        /// This cookie's value.
        cookie: Option<String> = None, omit if Option::is_none;
        /// This query parameter's value.
        query: Option<String> = None, omit if Option::is_none;
        /// The requested host (`{}`).
        host: Option<Empty> = None, omit if Option::is_none;
        /// The client address.
        client_ip: Option<ClientIpSpec> = None, omit if Option::is_none;
    }

    /// An empty object, for options that take no settings (`"host": {}`).
    #[derive(Debug, Clone, PartialEq)]
    pub struct Empty {}

    /// How a rate limit finds the client address.
    #[derive(Debug, Clone, PartialEq)]
    pub struct ClientIpSpec {
        /// The n-th `X-Forwarded-For` entry from the right (1 = rightmost) instead of
        /// `source.address`, as Traefik's `ipStrategy.depth`.
        xff_depth: Option<u32> = None, omit if Option::is_none;
        /// Mask IPv6 addresses to this prefix length (e.g. 64), as Traefik's `ipv6Subnet`.
        ipv6_prefix: Option<u8> = None, omit if Option::is_none;
    }

    /// A circuit breaker (Traefik's `circuitBreaker`, with its gaps closed).
    #[derive(Debug, Clone, PartialEq)]
    pub struct BreakerSpec {
        /// Unique name: stats and state are keyed by it.
        name: String;
        /// When to open, e.g. `LatencyAtQuantileMS(50.0) > 100 || NetworkErrorRatio() > 0.3`.
        expression: String;
        /// Watch and guard only this variant's traffic; absent means all of the policy's.
        variant: Option<String> = None, omit if Option::is_none;
        /// How often the expression is checked (also without traffic). Default `100ms`.
        check_period: String = "100ms".to_string();
        /// How long it stays open. Default `10s`.
        fallback_duration: String = "10s".to_string();
        /// How long the let-through share takes to ramp from 0 to 100 % after opening. Default
        /// `10s`.
        recovery_duration: String = "10s".to_string();
        /// The rolling statistics window (ten buckets). Default `10s`.
        window: String = "10s".to_string();
        /// Status sent while open, unless `fallback_variant` is given. Default 503.
        response_code: u16 = 503;
        /// While open, route to this variant instead of refusing.
        fallback_variant: Option<String> = None, omit if Option::is_none;
    }
}
