//! The policy: its JSON form ([`spec`]), validation and compilation ([`accept_policy`]),
//! and the per-request decision ([`Policy::decide`]).

mod breakers;
mod check;
mod compile;
mod decode;
mod errors;
mod json;
mod limits;
pub(crate) mod number;
pub mod spec;
#[cfg(test)]
mod tests;

pub use compile::parse_spec;
pub use errors::{PolicyError, PolicyErrors};
pub use spec::PolicySpec;

/// The one acceptance function for a policy (no `source`): the policies the filter fetches,
/// and what the sidecar and the controller serve (they run it on the JSON they are about to
/// serve). Parsing and compiling stay within [`crate::limits`]; every problem names its JSON
/// path, and for rules and expressions the column. The filter's configuration goes through
/// [`crate::config::accept_config`], the same core plus `source`.
pub fn accept_policy(json: &[u8]) -> Result<Policy, PolicyErrors> {
    Policy::compile(parse_spec(json)?)
}

use crate::breaker::Breaker;
use crate::ratelimit::RateLimit;
use crate::request::Request;
use crate::rule::Matcher;
use crate::sticky::{bucket, client_key, KeySource};

/// A variant and the upstream cluster it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// Variant name (`stable`, `canary`, …).
    pub name: String,
    /// Envoy cluster name.
    pub cluster: String,
}

/// A validated, compiled policy. Immutable: built once per configuration, read by requests.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The specification it was compiled from.
    pub spec: PolicySpec,
    /// Variants, in name order.
    pub variants: Vec<Variant>,
    /// Index of the default variant.
    pub default: Option<usize>,
    /// Lower-case name of the header carrying the cluster.
    pub cluster_header: String,
    /// Lower-case name of the header carrying the variant.
    pub variant_header: String,
    /// Rate limits, in policy order.
    pub rate_limits: Vec<RateLimit>,
    /// Circuit breakers, in policy order.
    pub breakers: Vec<Breaker>,
    /// Connection limits (network filter).
    pub tcp: Option<crate::tcp::TcpLimits>,
    routes: Vec<Route>,
}

#[derive(Debug, Clone)]
struct Route {
    matcher: Option<Matcher>,
    action: Action,
    mirror: Option<Mirror>,
}

/// A route's shadow traffic, compiled (`routes[].mirror`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// Index of the variant copies go to.
    pub variant: usize,
    /// Buckets (of [`crate::sticky::BUCKETS`]) mirrored: `percent × 100`.
    pub buckets: u32,
    /// Largest body copied, in bytes.
    pub max_body: usize,
    /// Copies in flight on one worker beyond which copies are dropped.
    pub max_in_flight: u32,
    /// Appended to the copy's host.
    pub host_suffix: String,
    /// How long a copy may take, in nanoseconds.
    pub timeout_ns: u64,
    /// Largest response body compared by hash (0: bodies are not compared).
    pub compare_body: usize,
}

#[derive(Debug, Clone)]
enum Action {
    Variant(usize),
    Split(Split),
}

#[derive(Debug, Clone)]
struct Split {
    /// (end bucket exclusive, variant), ascending.
    ranges: Vec<(u32, usize)>,
    default: Option<usize>,
    sticky: Sticky,
}

#[derive(Debug, Clone)]
struct Sticky {
    key: KeySource,
    salt: Box<[u8]>,
    assign_cookie: Option<String>,
}

/// What the filter does with one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision<'p> {
    /// The chosen variant; `None` lets the request pass untouched.
    pub variant: Option<&'p Variant>,
    /// Its index in the policy's `variants` (per-variant stats and breakers are indexed).
    pub index: Option<usize>,
    /// Index of the route that decided, if any.
    pub route: Option<usize>,
    /// The sticky bucket, for split routes.
    pub bucket: Option<u32>,
    /// A cookie to set on the response: (name, freshly assigned id).
    pub set_cookie: Option<(&'p str, String)>,
}

/// Seed of the mirror's hash of a split bucket: independent of the split, so that the users
/// copied are not the ones a split already sends to the canary.
const MIRROR_SEED: u32 = 0x6d69_7272;

impl Mirror {
    /// Whether a request is copied: by its split `bucket` when the route has one (a user is
    /// mirrored consistently), else by `random`.
    pub fn selects(&self, bucket: Option<u32>, random: u64) -> bool {
        let b = match bucket {
            Some(b) => {
                crate::murmur3::murmur3_x86_32(&b.to_le_bytes(), MIRROR_SEED)
                    % crate::sticky::BUCKETS
            }
            None => (random % u64::from(crate::sticky::BUCKETS)) as u32,
        };
        b < self.buckets
    }
}

impl Policy {
    /// The mirror of route `route`, if it has one.
    pub fn mirror(&self, route: usize) -> Option<&Mirror> {
        self.routes.get(route).and_then(|r| r.mirror.as_ref())
    }

    /// Every route's mirror, in route order.
    pub fn mirrors(&self) -> impl Iterator<Item = &Mirror> {
        self.routes.iter().filter_map(|r| r.mirror.as_ref())
    }

    /// A connection-limit policy with nothing to route (`tcp` and no variants): it runs only in
    /// a network filter, and a filter's kind is fixed by its configuration.
    pub fn network_only(&self) -> bool {
        self.tcp.is_some() && self.variants.is_empty()
    }

    /// Decides the variant of `req`. `new_id` is called only when a split route assigns a
    /// cookie to a client without a key.
    pub fn decide<'p>(
        &'p self,
        req: &Request<'_>,
        new_id: &mut dyn FnMut() -> String,
    ) -> Decision<'p> {
        let variant = |i: Option<usize>| {
            let i = i.filter(|&i| i < self.variants.len());
            (i.and_then(|i| self.variants.get(i)), i)
        };
        for (i, route) in self.routes.iter().enumerate() {
            if !route.matcher.as_ref().is_none_or(|m| m.matches(req)) {
                continue;
            }
            let mut d = Decision {
                route: Some(i),
                ..Decision::default()
            };
            match &route.action {
                Action::Variant(v) => (d.variant, d.index) = variant(Some(*v)),
                Action::Split(split) => {
                    let fallback = split.default.or(self.default);
                    let b = split.bucket(req, new_id, &mut d.set_cookie);
                    d.bucket = b;
                    let chosen = b.and_then(|b| split.ranges.iter().find(|(end, _)| b < *end));
                    (d.variant, d.index) = variant(chosen.map(|(_, v)| *v).or(fallback));
                }
            }
            return d;
        }
        let (variant, index) = variant(self.default);
        Decision {
            variant,
            index,
            ..Decision::default()
        }
    }
}

impl Split {
    fn bucket<'p>(
        &'p self,
        req: &Request<'_>,
        new_id: &mut dyn FnMut() -> String,
        set_cookie: &mut Option<(&'p str, String)>,
    ) -> Option<u32> {
        let salt = &self.sticky.salt;
        if let Some(key) = self.sticky.key.extract(req) {
            return Some(bucket(salt, key.as_bytes()));
        }
        if let Some(name) = &self.sticky.assign_cookie {
            if let Some(id) = req.cookie_values(name.as_bytes()).find(|v| !v.is_empty()) {
                return Some(bucket(salt, id));
            }
            let id = new_id();
            let b = bucket(salt, id.as_bytes());
            *set_cookie = Some((name.as_str(), id));
            return Some(b);
        }
        // Without a key, the client address keeps a user on one side for as long as it lasts.
        client_key(req, None, None).map(|k| bucket(salt, k.as_bytes()))
    }
}
