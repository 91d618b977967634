//! One request's data path, as plain Rust: rate limits, the routing decision, breakers and
//! the request-header plan on the way in; response accounting and the response-header plan
//! on the way back. The wasm glue (`rollgate-filter`'s `http.rs`) reads the headers, calls
//! [`Exchange::on_request`] and [`Exchange::on_response`], and carries out what they return;
//! native tests drive the same code against a fake [`Host`].

use std::cell::RefCell;
use std::net::IpAddr;

use crate::breaker::{Admission, Local, UPSTREAM_FAILURE_FLAGS};
use crate::policy::Policy;
use crate::ratelimit::global::{GlobalCache, Local as GlobalLocal};
use crate::ratelimit::{Global, Leases, RateLimit, Verdict};
use crate::request::Request;
use crate::rls::{self, Answer};
use crate::stats::class_index;
use crate::store::SharedStore;

/// What the pipeline asks of the proxy besides the request itself. Each method is one host
/// call in the filter; the pipeline calls them only when the request needs them.
pub trait Host: SharedStore {
    /// The clock, in nanoseconds since the Unix epoch (0 if unavailable).
    fn now_ns(&self) -> u64;
    /// The downstream client's address.
    fn client_addr(&self) -> Option<IpAddr>;
    /// Envoy's `response.flags` bitmask (0 when unknown).
    fn response_flags(&self) -> u64;
    /// Adds `n` to counter or gauge `id` (0: no such metric).
    fn increment(&self, id: u32, n: i64);
    /// Records `value` in histogram or gauge `id` (0: no such metric).
    fn record(&self, id: u32, value: u64);
}

/// Metric ids of one variant.
#[derive(Debug, Clone, Default)]
pub struct VariantIds {
    pub requests: u32,
    pub classes: [u32; 5],
    pub network_errors: u32,
    pub latency_ms: u32,
}

/// Metric ids of one breaker.
#[derive(Debug, Clone, Default)]
pub struct BreakerIds {
    pub state: u32,
    pub trips: u32,
    pub fallback: u32,
}

/// Metric ids of one rate limit's shadow refusals and rate-limit service calls (0 where the
/// limit has no such thing).
#[derive(Debug, Clone, Default)]
pub struct LimitIds {
    pub shadow_limited: u32,
    pub rls_ok: u32,
    pub rls_over_limit: u32,
    pub rls_unavailable: u32,
    pub rls_timeout: u32,
    pub rls_invalid: u32,
}

/// Why a rate-limit service gave no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RlsFailure {
    /// No connection, a refused call, or a gRPC error status.
    Unavailable,
    /// No answer within the limit's `timeout`.
    Timeout,
    /// An answer that is not a valid `RateLimitResponse`.
    Invalid,
}

/// One worker's compiled policy with its metric ids and its own breaker views and leases.
pub struct Worker {
    pub policy: Policy,
    pub variants: Vec<VariantIds>,
    pub rate_limited: Vec<u32>,
    /// Per rate limit.
    pub limit_ids: Vec<LimitIds>,
    /// This worker's state of each global limit (unused for local ones).
    pub globals: RefCell<Vec<GlobalCache>>,
    pub breaker_ids: Vec<BreakerIds>,
    /// This worker's view of each breaker (state seen, counts not yet shared).
    pub breakers: RefCell<Vec<Local>>,
    /// This worker's token leases, per rate limit.
    pub leases: RefCell<Vec<Leases>>,
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan<'w> {
    /// Answer it ourselves.
    Reply {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: &'static str,
    },
    /// Send it on after these request-header changes, in order: `Some` sets, `None` removes.
    Forward(Vec<(&'w str, Option<&'w str>)>),
    /// Hold the request and ask a rate-limit service (`rls::SERVICE`/`rls::METHOD` on
    /// `cluster`) with `message`; hand the outcome to [`Exchange::on_rls_answer`], then call
    /// [`Exchange::on_request`] again, which goes on from the limit that asked.
    Ask {
        cluster: &'w str,
        message: Vec<u8>,
        timeout_ms: u64,
    },
}

/// A response-header change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp<'w> {
    Set(&'w str, String),
    Add(&'w str, String),
}

/// One request's state between its request and its response.
#[derive(Debug, Default)]
pub struct Exchange {
    context_id: u32,
    /// Index of the chosen variant, for the response phase.
    variant: Option<usize>,
    set_cookie: Option<String>,
    start_ns: u64,
    /// Breakers whose scope this request passed through, with their generation then: its
    /// response counts for them.
    watched: Vec<(usize, u32)>,
    /// The tightest verdict of limits asking for `X-RateLimit-*` on admitted responses.
    limit_headers: Option<Verdict>,
    /// We answered ourselves: nothing to count on the way back.
    local_reply: bool,
    /// The route whose mirror chose this request for a copy.
    mirror: Option<usize>,
    /// The first rate limit still to check (a global limit's ask resumes there).
    next_limit: usize,
    /// The global limit that asked, for which key, how many hits, and what came back.
    asked: Option<Asked>,
}

#[derive(Debug)]
struct Asked {
    limit: usize,
    key: u64,
    hits: u64,
    outcome: Option<Result<Answer, RlsFailure>>,
}

/// What a global limit says about a request.
enum GlobalStep<'w> {
    Verdict(Verdict),
    Ask(Plan<'w>),
    /// The service failed and the limit's `failure_mode` is `deny`.
    Deny,
}

fn global_verdict(g: &Global, admitted: bool, remaining: u64, reset_ms: u64) -> Verdict {
    let reset_secs = if reset_ms == 0 {
        g.window_secs
    } else {
        reset_ms.div_ceil(1000)
    };
    Verdict {
        admitted,
        limit: g.max,
        remaining: if admitted { remaining } else { 0 },
        reset_secs,
        retry_after_secs: if admitted { 0 } else { reset_secs.max(1) },
    }
}

fn limit_headers(v: &Verdict) -> [(&'static str, String); 3] {
    [
        ("x-ratelimit-limit", v.limit.to_string()),
        ("x-ratelimit-remaining", v.remaining.to_string()),
        ("x-ratelimit-reset", v.reset_secs.to_string()),
    ]
}

impl Exchange {
    /// The state of request `context_id` (it seeds assigned cookie ids).
    pub fn new(context_id: u32) -> Exchange {
        Exchange {
            context_id,
            ..Exchange::default()
        }
    }

    /// The chosen variant's index, once [`Exchange::on_request`] forwarded the request.
    pub fn variant(&self) -> Option<usize> {
        self.variant
    }

    /// The route whose mirror chose this request for a copy, once [`Exchange::on_request`]
    /// forwarded it (see [`crate::shadow`]).
    pub fn mirror(&self) -> Option<usize> {
        self.mirror
    }

    /// Random enough for ids and shares: not a secret.
    fn random(&self, host: &impl Host) -> u64 {
        let mut x = host.now_ns() ^ (u64::from(self.context_id) << 32) ^ 0x9e37_79b9_7f4a_7c15;
        // splitmix64 finaliser.
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    /// A random-enough id for `assign_cookie`: not a secret, only a stable bucket key.
    fn new_id(&self, host: &impl Host) -> String {
        format!("{:016x}", self.random(host))
    }

    fn reply<'w>(
        &mut self,
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: &'static str,
    ) -> Plan<'w> {
        self.local_reply = true;
        Plan::Reply {
            status,
            headers,
            body,
        }
    }

    /// Rate limits, the decision and the breakers for request `headers` (as Envoy serializes
    /// the pairs, borrowed); the client address is asked of `host` only if a rule needs it.
    pub fn on_request<'w>(
        &mut self,
        w: &'w Worker,
        pairs: Vec<(&[u8], &[u8])>,
        host: &impl Host,
    ) -> Plan<'w> {
        let policy = &w.policy;
        let (ch, vh) = (
            policy.cluster_header.as_bytes(),
            policy.variant_header.as_bytes(),
        );
        // An empty name means the policy does not use that header.
        let spoofed = pairs
            .iter()
            .any(|(k, _)| (!ch.is_empty() && *k == ch) || (!vh.is_empty() && *k == vh));
        let loader = || host.client_addr();
        let req = Request::lazy(pairs, Some(&loader));
        let needs_clock = !policy.rate_limits.is_empty() || !policy.breakers.is_empty();
        self.start_ns = if needs_clock { host.now_ns() } else { 0 };

        for (i, limit) in policy.rate_limits.iter().enumerate().skip(self.next_limit) {
            if !limit.applies(&req) {
                continue;
            }
            let key = limit.key_fingerprint(&req);
            let v = match &limit.global {
                Some(g) => match self.global(w, i, limit, g, key, host) {
                    GlobalStep::Verdict(v) => v,
                    GlobalStep::Ask(plan) => {
                        self.next_limit = i;
                        return plan;
                    }
                    GlobalStep::Deny => return self.reply(500, vec![], ""),
                },
                None => match w.leases.borrow_mut().get_mut(i) {
                    Some(leases) => limit.check_leased(host, leases, key, self.start_ns),
                    None => limit.check(host, key, self.start_ns),
                },
            };
            if !v.admitted && limit.shadow {
                host.increment(w.limit_ids.get(i).map_or(0, |ids| ids.shadow_limited), 1);
                continue;
            }
            if !v.admitted {
                host.increment(w.rate_limited.get(i).copied().unwrap_or(0), 1);
                let mut headers = vec![("retry-after", v.retry_after_secs.to_string())];
                headers.extend(limit_headers(&v));
                return self.reply(429, headers, "Too Many Requests");
            }
            if limit.headers && self.limit_headers.is_none_or(|t| v.remaining < t.remaining) {
                self.limit_headers = Some(v);
            }
        }

        self.next_limit = policy.rate_limits.len();
        let decision = policy.decide(&req, &mut || self.new_id(host));
        let mut variant = decision.index;
        if let Some((name, id)) = decision.set_cookie {
            self.set_cookie = Some(format!(
                "{name}={id}; Path=/; Max-Age=31536000; SameSite=Lax"
            ));
        }
        drop(req);

        if variant.is_some() && !policy.breakers.is_empty() {
            let mut locals = w.breakers.borrow_mut();
            for (i, b) in policy.breakers.iter().enumerate() {
                if b.variant.is_some() && b.variant != variant {
                    continue;
                }
                let Some(local) = locals.get_mut(i) else {
                    continue;
                };
                match b.admit(local, self.start_ns) {
                    Admission::Pass => self.watched.push((i, local.generation())),
                    Admission::Fallback => {
                        host.increment(w.breaker_ids.get(i).map_or(0, |ids| ids.fallback), 1);
                        match b.fallback_variant {
                            Some(f) => variant = Some(f),
                            None => {
                                let body = if b.response_code == 503 {
                                    "Service Unavailable"
                                } else {
                                    "circuit breaker open"
                                };
                                return self.reply(b.response_code, vec![], body);
                            }
                        }
                        break;
                    }
                }
            }
        }

        let chosen = variant.and_then(|i| policy.variants.get(i));
        // Each header is written (or removed, when forged and nothing is chosen) once: a
        // header write is among the dearest host calls.
        let mut changes = Vec::with_capacity(2);
        // `route_default`: Envoy's route already sends a request without the cluster header
        // to the default's cluster, so that write is saved (a forged header is still removed).
        let routed_by_envoy =
            policy.spec.route_default && variant.is_some() && variant == policy.default;
        for (name, value) in [
            (
                &policy.cluster_header,
                chosen
                    .filter(|_| !routed_by_envoy)
                    .map(|v| v.cluster.as_str()),
            ),
            (&policy.variant_header, chosen.map(|v| v.name.as_str())),
        ] {
            match value {
                _ if name.is_empty() => {}
                Some(value) => changes.push((name.as_str(), Some(value))),
                // Never let a client pick its own variant.
                None if spoofed => changes.push((name.as_str(), None)),
                None => {}
            }
        }
        self.variant = variant;
        if let Some(ids) = variant.and_then(|i| w.variants.get(i)) {
            host.increment(ids.requests, 1);
        }
        // A request already going to the mirror's variant (its share of a split, a breaker's
        // fallback) would only be compared with itself.
        self.mirror = decision.route.filter(|&r| {
            policy.mirror(r).is_some_and(|m| {
                let random = match decision.bucket {
                    Some(_) => 0,
                    None => self.random(host),
                };
                variant != Some(m.variant) && m.selects(decision.bucket, random)
            })
        });
        Plan::Forward(changes)
    }

    /// What the rate-limit service answered to the [`Plan::Ask`] this request returned:
    /// the message bytes, or why there are none. Call [`Exchange::on_request`] next.
    pub fn on_rls_answer(&mut self, answer: Result<&[u8], RlsFailure>) {
        if let Some(a) = self.asked.as_mut() {
            a.outcome =
                Some(answer.and_then(|b| rls::decode_answer(b).map_err(|_| RlsFailure::Invalid)));
        }
    }

    /// Global limit `i` (`limit`, `g`) for `key`: from this worker's cache, from the answer
    /// to its ask, or a new ask.
    fn global<'w>(
        &mut self,
        w: &'w Worker,
        i: usize,
        limit: &'w RateLimit,
        g: &'w Global,
        key: u64,
        host: &impl Host,
    ) -> GlobalStep<'w> {
        let ids = w.limit_ids.get(i).cloned().unwrap_or_default();
        let now = host.now_ns();
        let mut caches = w.globals.borrow_mut();
        let Some(cache) = caches.get_mut(i) else {
            return GlobalStep::Verdict(global_verdict(g, true, 0, 0));
        };
        let local = match self.asked.take() {
            Some(a) if a.limit == i && a.key == key => match a.outcome {
                Some(Ok(answer)) => {
                    let id = if answer.over_limit {
                        ids.rls_over_limit
                    } else {
                        ids.rls_ok
                    };
                    host.increment(id, 1);
                    cache.record(key, a.hits, answer, now)
                }
                failure => {
                    let id = match failure {
                        Some(Err(RlsFailure::Timeout)) => ids.rls_timeout,
                        Some(Err(RlsFailure::Invalid)) => ids.rls_invalid,
                        _ => ids.rls_unavailable,
                    };
                    host.increment(id, 1);
                    // An ask ahead fails with hits still held: the request takes one of
                    // them, whatever the failure mode (the service counted it).
                    match cache.take_held(key, now) {
                        Some(admitted) => admitted,
                        None if g.deny => return GlobalStep::Deny,
                        None => return GlobalStep::Verdict(global_verdict(g, true, 0, 0)),
                    }
                }
            },
            _ => cache.spend(key, now, g.timeout_ms.saturating_mul(1_000_000)),
        };
        match local {
            GlobalLocal::Admitted {
                remaining,
                reset_ms,
            } => GlobalStep::Verdict(global_verdict(g, true, remaining, reset_ms)),
            GlobalLocal::Over { reset_ms } => {
                GlobalStep::Verdict(global_verdict(g, false, 0, reset_ms))
            }
            GlobalLocal::Ask { hits } => {
                self.asked = Some(Asked {
                    limit: i,
                    key,
                    hits,
                    outcome: None,
                });
                let hits = u32::try_from(hits).unwrap_or(1);
                GlobalStep::Ask(Plan::Ask {
                    cluster: &g.cluster,
                    message: rls::encode_request(&g.domain, &limit.name, &hex(key), hits),
                    timeout_ms: g.timeout_ms,
                })
            }
        }
    }

    /// Counts the response (`status`, 0 when unknown) for its variant and breakers, and says
    /// which response headers to write. `status` is read only when there is a variant to count.
    pub fn on_response<'w>(
        &mut self,
        w: &'w Worker,
        status: impl FnOnce() -> u16,
        host: &impl Host,
    ) -> Vec<HeaderOp<'w>> {
        let mut ops = Vec::new();
        if self.local_reply {
            return ops;
        }
        if let Some(ids) = self.variant.and_then(|i| w.variants.get(i)) {
            let status = status();
            let now = host.now_ns();
            let start = if self.start_ns == 0 {
                now
            } else {
                self.start_ns
            };
            let latency_us = now.saturating_sub(start) / 1_000;
            // Envoy answers 503 itself when the upstream fails; its flags tell those apart.
            let network_error = matches!(status, 502 | 504)
                || (status == 503 && host.response_flags() & UPSTREAM_FAILURE_FLAGS != 0);
            host.increment(
                class_index(status)
                    .and_then(|c| ids.classes.get(c))
                    .copied()
                    .unwrap_or(0),
                1,
            );
            if network_error {
                host.increment(ids.network_errors, 1);
            }
            host.record(ids.latency_ms, latency_us / 1_000);
            if !self.watched.is_empty() {
                let mut locals = w.breakers.borrow_mut();
                for &(i, generation) in &self.watched {
                    if let (Some(b), Some(l)) = (w.policy.breakers.get(i), locals.get_mut(i)) {
                        b.record(l, host, now, generation, status, latency_us, network_error);
                    }
                }
            }
        }
        if let Some(v) = self.limit_headers.take() {
            ops.extend(limit_headers(&v).map(|(k, v)| HeaderOp::Set(k, v)));
        }
        if let Some(cookie) = self.set_cookie.take() {
            ops.push(HeaderOp::Add("set-cookie", cookie));
        }
        if w.policy.spec.expose_variant {
            if let Some(v) = self.variant.and_then(|i| w.policy.variants.get(i)) {
                ops.push(HeaderOp::Set(&w.policy.variant_header, v.name.clone()));
            }
        }
        ops
    }
}

/// A key fingerprint as the service sees it: 16 hex digits (the raw key, which may be a
/// header's value, never leaves the gateway).
fn hex(key: u64) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    (0..16)
        .rev()
        .map(|i| char::from(DIGITS[((key >> (i * 4)) & 0xf) as usize]))
        .collect()
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
