//! One request through the filter: rate limits, the routing decision, breakers, then the
//! response's statistics.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

use super::host::{
    client_addr, increment, now_ns, record, request_header_bytes, response_flags, response_status,
    EnvoyStore,
};
use super::Runtime;
use crate::breaker::{Admission, UPSTREAM_FAILURE_FLAGS};
use crate::ratelimit::Verdict;
use crate::request::Request;
use crate::stats::class_index;

pub(crate) struct Filter {
    context_id: u32,
    rt: Option<Rc<Runtime>>,
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
}

fn limit_headers(v: &Verdict) -> [(&'static str, String); 3] {
    [
        ("x-ratelimit-limit", v.limit.to_string()),
        ("x-ratelimit-remaining", v.remaining.to_string()),
        ("x-ratelimit-reset", v.reset_secs.to_string()),
    ]
}

impl Filter {
    pub(crate) fn new(context_id: u32, rt: Option<Rc<Runtime>>) -> Filter {
        Filter {
            context_id,
            rt,
            variant: None,
            set_cookie: None,
            start_ns: 0,
            watched: Vec::new(),
            limit_headers: None,
            local_reply: false,
        }
    }

    /// A random-enough id for `assign_cookie`: not a secret, only a stable bucket key.
    fn new_id(&self) -> String {
        let mut x = now_ns() ^ (u64::from(self.context_id) << 32) ^ 0x9e37_79b9_7f4a_7c15;
        // splitmix64 finaliser.
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        format!("{:016x}", x ^ (x >> 31))
    }

    fn reply(&mut self, status: u32, headers: Vec<(&str, &str)>, body: &str) -> Action {
        self.local_reply = true;
        self.send_http_response(status, headers, Some(body.as_bytes()));
        Action::Pause
    }

    fn refuse_rate_limited(&mut self, v: &Verdict) -> Action {
        let retry = v.retry_after_secs.to_string();
        let extra = limit_headers(v);
        let mut headers = vec![("retry-after", retry.as_str())];
        headers.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
        self.reply(429, headers, "Too Many Requests")
    }
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        // Test builds only (`make wasm-test-trap`): a request that kills the VM serving it.
        #[cfg(feature = "test-trap")]
        if let Ok(Some(_)) =
            hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-rollgate-test-trap")
        {
            core::arch::wasm32::unreachable();
        }
        let Some(rt) = self.rt.clone() else {
            return Action::Continue;
        };
        let policy = &rt.policy;
        let raw = request_header_bytes();
        let pairs = Request::parse_header_map(&raw);
        let (ch, vh) = (
            policy.cluster_header.as_bytes(),
            policy.variant_header.as_bytes(),
        );
        // An empty name means the policy does not use that header.
        let spoofed = pairs
            .iter()
            .any(|(k, _)| (!ch.is_empty() && *k == ch) || (!vh.is_empty() && *k == vh));
        let loader = client_addr;
        let req = Request::lazy(pairs, Some(&loader));
        let needs_clock = !policy.rate_limits.is_empty() || !policy.breakers.is_empty();
        self.start_ns = if needs_clock { now_ns() } else { 0 };

        for (i, limit) in policy.rate_limits.iter().enumerate() {
            if !limit.applies(&req) {
                continue;
            }
            let key = limit.key_fingerprint(&req);
            let v = match rt.leases.borrow_mut().get_mut(i) {
                Some(leases) => limit.check_leased(&EnvoyStore, leases, key, self.start_ns),
                None => limit.check(&EnvoyStore, key, self.start_ns),
            };
            if !v.admitted {
                increment(rt.rate_limited.get(i).copied().unwrap_or(0), 1);
                return self.refuse_rate_limited(&v);
            }
            if limit.headers && self.limit_headers.is_none_or(|t| v.remaining < t.remaining) {
                self.limit_headers = Some(v);
            }
        }

        let decision = policy.decide(&req, &mut || self.new_id());
        let mut variant = decision.index;
        if let Some((name, id)) = decision.set_cookie {
            self.set_cookie = Some(format!(
                "{name}={id}; Path=/; Max-Age=31536000; SameSite=Lax"
            ));
        }
        drop(req);

        if variant.is_some() && !policy.breakers.is_empty() {
            let mut locals = rt.breakers.borrow_mut();
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
                        increment(rt.breaker_ids.get(i).map_or(0, |ids| ids.fallback), 1);
                        match b.fallback_variant {
                            Some(f) => variant = Some(f),
                            None => {
                                drop(locals);
                                let body = if b.response_code == 503 {
                                    "Service Unavailable"
                                } else {
                                    "circuit breaker open"
                                };
                                return self.reply(u32::from(b.response_code), vec![], body);
                            }
                        }
                        break;
                    }
                }
            }
        }

        let chosen = variant.and_then(|i| policy.variants.get(i));
        // Each header is written (or removed, when forged and nothing is chosen) once: a
        // header write is among the dearest host calls. Envoy re-matches the route after any
        // request-header change by a filter of ABI 0.2.1 (which the SDK declares), so the
        // cluster header takes effect without a `clear_route_cache` call (Envoy 1.33 only
        // stopped clearing for ABIs above 0.2.1; the Envoy routing tests hold us to it).
        for (name, value) in [
            (&policy.cluster_header, chosen.map(|v| v.cluster.as_str())),
            (&policy.variant_header, chosen.map(|v| v.name.as_str())),
        ] {
            match value {
                _ if name.is_empty() => {}
                Some(value) => self.set_http_request_header(name, Some(value)),
                // Never let a client pick its own variant.
                None if spoofed => {
                    let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
                }
                None => {}
            }
        }
        self.variant = variant;
        if let Some(ids) = variant.and_then(|i| rt.variants.get(i)) {
            increment(ids.requests, 1);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(rt) = self.rt.clone() else {
            return Action::Continue;
        };
        if self.local_reply {
            return Action::Continue;
        }
        if let Some(ids) = self.variant.and_then(|i| rt.variants.get(i)) {
            let status = response_status();
            let now = now_ns();
            let start = if self.start_ns == 0 {
                now
            } else {
                self.start_ns
            };
            let latency_us = now.saturating_sub(start) / 1_000;
            // Envoy answers 503 itself when the upstream fails; its flags tell those apart.
            let network_error = matches!(status, 502 | 504)
                || (status == 503 && response_flags() & UPSTREAM_FAILURE_FLAGS != 0);
            increment(
                class_index(status)
                    .and_then(|c| ids.classes.get(c))
                    .copied()
                    .unwrap_or(0),
                1,
            );
            if network_error {
                increment(ids.network_errors, 1);
            }
            record(ids.latency_ms, latency_us / 1_000);
            if !self.watched.is_empty() {
                let mut locals = rt.breakers.borrow_mut();
                for &(i, generation) in &self.watched {
                    if let (Some(b), Some(l)) = (rt.policy.breakers.get(i), locals.get_mut(i)) {
                        b.record(
                            l,
                            &EnvoyStore,
                            now,
                            generation,
                            status,
                            latency_us,
                            network_error,
                        );
                    }
                }
            }
        }
        if let Some(v) = self.limit_headers.take() {
            for (k, value) in limit_headers(&v) {
                self.set_http_response_header(k, Some(&value));
            }
        }
        if let Some(cookie) = self.set_cookie.take() {
            self.add_http_response_header("set-cookie", &cookie);
        }
        if rt.policy.spec.expose_variant {
            if let Some(v) = self.variant.and_then(|i| rt.policy.variants.get(i)) {
                self.set_http_response_header(&rt.policy.variant_header, Some(&v.name));
            }
        }
        Action::Continue
    }
}
