//! Rate limits: one token bucket per key for the whole proxy, kept in shared data so every
//! worker draws from the same bucket.
//!
//! Memory is bounded: a limit owns `slots` shared-data keys (`<prefix><slot>`), a key's slot is
//! its fingerprint modulo `slots`. A slot whose bucket has refilled to full is idle and goes to
//! whichever key arrives; two *active* keys in one slot share its bucket (both are limited
//! together) until one goes idle. Writes use compare-and-swap, so two workers never both spend
//! the same token. The filter goes through per-worker [`Leases`]: a worker takes a few tokens
//! of a large bucket at once, which keeps most requests off shared data.

mod bucket;
pub mod global;
pub mod lease;

pub use bucket::{BucketState, Rate};
pub use lease::{lease_size, Leases};

use crate::request::Request;
use crate::rule::Matcher;
use crate::sticky::{client_key, KeySource};
use crate::store::{SharedStore, StoreError};

/// How often a write may lose the compare-and-swap race before the request is let through.
const MAX_CAS_ATTEMPTS: usize = 16;

/// A compiled rate limit.
#[derive(Debug, Clone)]
pub struct RateLimit {
    /// The limit's name (stats, keys).
    pub name: String,
    /// Which requests it applies to; `None` means all.
    pub matcher: Option<Matcher>,
    /// Refill rate and capacity.
    pub rate: Rate,
    /// Capacity, as configured.
    pub burst: u64,
    /// Where the key comes from; a request without it is keyed by its client address.
    pub source: KeySource,
    /// Also send `X-RateLimit-*` on admitted responses.
    pub headers: bool,
    /// Number of shared-data slots.
    pub slots: u32,
    /// Fingerprint of rate, burst, source and slots: state survives only an unchanged limit.
    pub config: u32,
    /// Shared-data key prefix (`rollgate/<policy>/rl/<name>/`).
    pub key_prefix: String,
    /// Counted by a rate-limit service for every gateway, not in shared data.
    pub global: Option<Global>,
    /// Count what it would refuse, admit it.
    pub shadow: bool,
}

/// A limit every gateway shares: `max` requests per fixed window of `window_secs`, counted by
/// a service speaking Envoy's RLS v3 (see [`crate::rls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    /// Envoy cluster of the service.
    pub cluster: String,
    /// RLS domain.
    pub domain: String,
    /// How long a request waits for the answer.
    pub timeout_ms: u64,
    /// Refuse (500) rather than admit when the service fails.
    pub deny: bool,
    /// Requests per window.
    pub max: u64,
    /// The window.
    pub window_secs: u64,
}

/// What a limit said about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the request may pass.
    pub admitted: bool,
    /// `X-RateLimit-Limit`: the bucket's capacity.
    pub limit: u64,
    /// `X-RateLimit-Remaining`: whole tokens left.
    pub remaining: u64,
    /// `X-RateLimit-Reset`: seconds until the bucket is full again.
    pub reset_secs: u64,
    /// `Retry-After` when refused: seconds until one token is back (at least 1).
    pub retry_after_secs: u64,
}

/// What one attempt on the shared bucket came to.
enum Take {
    /// `taken` tokens are ours; the bucket keeps `left`.
    Took { taken: u64, left: f64 },
    /// Not even one token: the bucket has `tokens`.
    Refused { tokens: f64 },
    /// The store failed us; admitted uncounted.
    FailOpen { left: f64 },
}

/// The fingerprint a client address (its text) is keyed by, as for `client_ip` keys.
pub fn ip_fingerprint(addr: &[u8]) -> u64 {
    fingerprint(b'i', addr)
}

/// 64-bit FNV-1a: the key's fingerprint (and slot, modulo the slot count).
fn fingerprint(kind: u8, key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in std::iter::once(&kind).chain(key) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl RateLimit {
    /// Whether this limit applies to `req`.
    pub fn applies(&self, req: &Request<'_>) -> bool {
        self.matcher.as_ref().is_none_or(|m| m.matches(req))
    }

    /// The fingerprint of the request's key; without the key, of its client address, so
    /// keyless requests share a bucket only with their own client's. Requests with neither
    /// (no key and no known address) all share the one bucket of the empty address.
    pub fn key_fingerprint(&self, req: &Request<'_>) -> u64 {
        if let Some(k) = self.source.extract(req) {
            let kind = match self.source {
                KeySource::Header(_) => b'h',
                KeySource::Cookie(_) => b'c',
                KeySource::Query(_) => b'q',
                KeySource::Host => b'H',
                KeySource::SourceIp { .. } => b'i',
            };
            return fingerprint(kind, k.as_bytes());
        }
        let (depth, prefix) = match self.source {
            KeySource::SourceIp {
                xff_depth,
                ipv6_prefix,
            } => (xff_depth, ipv6_prefix),
            _ => (None, None),
        };
        match client_key(req, depth, prefix) {
            Some(k) => fingerprint(b'i', k.as_bytes()),
            None => fingerprint(b'i', b""),
        }
    }

    /// The shared-data key of the slot holding `key_fp`.
    pub fn slot_key(&self, key_fp: u64) -> String {
        let slot = key_fp % u64::from(self.slots.max(1));
        let mut k = String::with_capacity(self.key_prefix.len() + 6);
        k.push_str(&self.key_prefix);
        k.push_str(itoa(slot).as_str());
        k
    }

    /// Takes one token for `key_fp` at `now_ns` from the shared bucket, or says when to retry.
    /// Exact: every admission is one compare-and-swap.
    pub fn check(&self, store: &dyn SharedStore, key_fp: u64, now_ns: u64) -> Verdict {
        match self.take(store, key_fp, now_ns, 1) {
            Take::Took { left, .. } | Take::FailOpen { left } => self.verdict(true, left),
            Take::Refused { tokens } => self.verdict(false, tokens),
        }
    }

    /// Like [`RateLimit::check`], but through this worker's `leases`: a request first spends a
    /// token the worker already holds for its key; otherwise the worker takes up to
    /// [`lease_size`] tokens in one compare-and-swap and keeps the rest (see [`lease`] for
    /// the bound on exactness).
    pub fn check_leased(
        &self,
        store: &dyn SharedStore,
        leases: &mut Leases,
        key_fp: u64,
        now_ns: u64,
    ) -> Verdict {
        let want = lease_size(self.burst);
        if want <= 1 {
            return self.check(store, key_fp, now_ns);
        }
        if let Some(left) = leases.spend(key_fp) {
            return self.verdict(true, left);
        }
        match self.take(store, key_fp, now_ns, want) {
            Take::Took { taken, left } => {
                leases.keep(key_fp, taken - 1, left);
                self.verdict(true, left + (taken - 1) as f64)
            }
            Take::FailOpen { left } => self.verdict(true, left),
            Take::Refused { tokens } => self.verdict(false, tokens),
        }
    }

    /// Takes between 1 and `want` whole tokens for `key_fp` at `now_ns` from the shared bucket.
    fn take(&self, store: &dyn SharedStore, key_fp: u64, now_ns: u64, want: u64) -> Take {
        let slot = self.slot_key(key_fp);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let current = store.get(&slot);
            let cas = current.as_ref().map_or(0, |(_, cas)| *cas);
            let state = current
                .and_then(|(v, _)| BucketState::decode(&v))
                .filter(|s| s.config == self.config);
            let (tokens, owner) = match state {
                None => (self.rate.burst, key_fp),
                Some(s) => {
                    let tokens = self.rate.refill(s.tokens, s.last_ns, now_ns);
                    if s.key != key_fp && tokens >= self.rate.burst {
                        // An idle slot: the newcomer takes it with a full bucket.
                        (self.rate.burst, key_fp)
                    } else {
                        (tokens, s.key)
                    }
                }
            };
            if tokens < 1.0 {
                // Refusing changes nothing worth writing: refill is a function of time.
                return Take::Refused { tokens };
            }
            let taken = (tokens.floor() as u64).clamp(1, want.max(1));
            let left = tokens - taken as f64;
            let next = BucketState {
                config: self.config,
                key: owner,
                tokens: left,
                last_ns: now_ns,
            };
            match store.set(&slot, &next.encode(), cas) {
                Ok(()) => return Take::Took { taken, left },
                Err(StoreError::CasMismatch) => continue,
                Err(StoreError::Failed) => break,
            }
        }
        // The store is unusable or hopelessly contended: fail open, like Envoy's own limiter
        // when its backend errs, rather than refuse traffic we cannot account for.
        Take::FailOpen {
            left: self.rate.burst - 1.0,
        }
    }

    fn verdict(&self, admitted: bool, tokens: f64) -> Verdict {
        Verdict {
            admitted,
            limit: self.burst,
            remaining: tokens.max(0.0).floor() as u64,
            reset_secs: self.rate.secs_until(tokens, self.rate.burst),
            retry_after_secs: if admitted {
                0
            } else {
                self.rate.secs_until(tokens, 1.0)
            },
        }
    }
}

/// Decimal digits of `n` without going through `fmt`.
fn itoa(mut n: u64) -> String {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        if let Some(d) = buf.get_mut(i) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    buf.get(i..)
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
