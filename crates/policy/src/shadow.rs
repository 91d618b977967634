//! Shadow traffic (`routes[].mirror`): what a copy of a request holds, and the bounded book
//! that follows each copy from its request to its answer and joins that answer with the
//! primary's status for the same request.
//!
//! The filter owns the proxy-wasm side: it reads the request (headers at once, the body chunk
//! by chunk as it passes), sends each finished copy with `dispatch_http_call` from its root
//! context (which outlives the request, so an answer slower than the primary's still arrives)
//! and reports statuses here. Everything here is plain Rust, tested natively.
//!
//! Bounds: a worker has at most `max_in_flight` copies between their request and their answer
//! (each holds at most `max_body` bytes of body); beyond it a copy is dropped and counted. An
//! answered copy waits for its primary's status without its body, at most until its deadline
//! (`timeout` and a second after it was sent); the book never holds more than
//! [`MAX_ENTRIES`] entries, dropping the oldest first.

use crate::pipeline::Host;
use crate::policy::{Mirror, Policy};
use crate::stats::class_index;

/// Request header that marks a copy, so the variant can tell shadow traffic from users'.
pub const SHADOW_HEADER: &str = "x-rollgate-shadow";

/// Headers of this prefix are the filter's own: never copied.
const INTERNAL_PREFIX: &[u8] = b"x-rollgate-";

/// How long past its timeout a copy's entry is kept: Envoy answers a timed-out call itself at
/// the timeout, so by then every answer has arrived.
const SLACK_NS: u64 = 1_000_000_000;

/// Entries one book holds at most (copies in flight and answered copies waiting for their
/// primary's status).
pub const MAX_ENTRIES: usize = 4096;

/// How often the book looks for expired entries.
const SWEEP_EVERY_NS: u64 = 100_000_000;

/// Metric ids of one variant's shadow traffic (0: not defined).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShadowIds {
    /// Counter: copies sent.
    pub requests: u32,
    /// Counters: the copies' answers by class.
    pub classes: [u32; 5],
    /// Counter: copies whose answer class differs from the primary's.
    pub mismatch: u32,
    /// Histogram: milliseconds from sending a copy to its answer.
    pub latency_ms: u32,
    /// Counter: requests chosen for mirroring but not copied (body over `max_body`, or a header
    /// that cannot be copied as it is).
    pub skipped: u32,
    /// Counter: copies dropped (`max_in_flight` reached, or the proxy refused the call).
    pub dropped: u32,
    /// Counter: copies that got no answer (reset, connection failure without a status).
    pub failed: u32,
    /// Counter: copies whose body was compared with the primary's.
    pub body_compared: u32,
    /// Counter: of those, bodies that differed.
    pub body_mismatch: u32,
}

/// Hashes a response body as it passes, chunk by chunk, up to a limit: bodies are compared by
/// hash so neither is held. std's SipHash (`DefaultHasher::new()` has fixed keys) streams
/// across `write` calls and is already in the filter for its maps: no code added for it.
#[derive(Debug, Clone, Default)]
pub struct BodyHash {
    hasher: std::hash::DefaultHasher,
    len: usize,
}

impl BodyHash {
    /// Adds the next chunk.
    pub fn add(&mut self, chunk: &[u8]) {
        use std::hash::Hasher;
        self.len = self.len.saturating_add(chunk.len());
        self.hasher.write(chunk);
    }

    /// Bytes seen so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The hash, or `None` when the body had more than `limit` bytes (not compared).
    pub fn finish(&self, limit: usize) -> Option<u64> {
        use std::hash::Hasher;
        (self.len <= limit).then(|| self.hasher.finish())
    }
}

/// The copy's `:authority`: `suffix` before the port, or at the end without one, as Envoy's
/// request mirror rewrites it.
pub fn shadow_authority(host: &str, suffix: &str) -> String {
    match host.split_once(':') {
        Some((name, port)) if !name.is_empty() && !port.is_empty() && !port.contains(':') => {
            format!("{name}{suffix}:{port}")
        }
        _ => format!("{host}{suffix}"),
    }
}

/// The headers of a copy of the request whose headers are `pairs` (as Envoy serializes them):
/// every header but the filter's own (`x-rollgate-*`, the policy's cluster and variant headers)
/// and the framing (`content-length`, which the proxy sets from the copied body), with
/// [`SHADOW_HEADER`] added and the authority suffixed. `None` when a header that would be
/// copied is not UTF-8: proxy-wasm's call API takes text, and a copy that differs from the
/// request would compare nothing.
pub fn copy_headers(
    pairs: &[(&[u8], &[u8])],
    policy: &Policy,
    mirror: &Mirror,
) -> Option<Vec<(String, String)>> {
    let own = |k: &[u8]| {
        k.starts_with(INTERNAL_PREFIX)
            || (!policy.cluster_header.is_empty() && k == policy.cluster_header.as_bytes())
            || (!policy.variant_header.is_empty() && k == policy.variant_header.as_bytes())
    };
    let mut out = Vec::with_capacity(pairs.len() + 1);
    for &(k, v) in pairs {
        if own(k) || k == b"content-length" {
            continue;
        }
        let (k, v) = (std::str::from_utf8(k).ok()?, std::str::from_utf8(v).ok()?);
        let v = if k == ":authority" {
            shadow_authority(v, &mirror.host_suffix)
        } else {
            v.to_string()
        };
        out.push((k.to_string(), v));
    }
    out.push((SHADOW_HEADER.to_string(), "1".to_string()));
    Some(out)
}

/// A finished copy, waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// The book's id of the copy.
    pub id: u64,
    /// The mirror variant's cluster.
    pub cluster: String,
    /// From [`copy_headers`].
    pub headers: Vec<(String, String)>,
    /// The request body (at most the mirror's `max_body`).
    pub body: Vec<u8>,
    /// The call's timeout.
    pub timeout_ns: u64,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    /// The call carrying the copy, once sent.
    token: Option<u32>,
    ids: ShadowIds,
    timeout_ns: u64,
    deadline_ns: u64,
    sent_ns: u64,
    /// The primary's status, once its response headers passed.
    primary: Option<u16>,
    /// The copy's answer, once it came: its status (`None`: no answer).
    shadow: Option<Option<u16>>,
    /// Largest body compared (0: bodies are not compared).
    compare_body: usize,
    /// The primary's body hash, once its body ended (`None` inside: not comparable).
    primary_body: Option<Option<u64>>,
    /// The copy's body hash, with its answer (`None`: not comparable).
    shadow_body: Option<u64>,
    /// Counted in `in_flight` (until answered, skipped, dropped or evicted).
    holds: bool,
}

/// One worker's copies, from their request to their answer.
///
/// Plain vectors, not maps: entries are few (`max_in_flight`, and answered copies for a
/// moment), ids only grow so `entries` stays sorted by id, and map types would add their
/// code to the filter's `.wasm` for no measurable gain.
#[derive(Debug, Default)]
pub struct Book {
    entries: Vec<Entry>,
    ready: Vec<Copy>,
    in_flight: u32,
    next_id: u64,
    next_sweep_ns: u64,
}

impl Book {
    /// Copies between their request and their answer.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Entries held (in flight, or answered and waiting for their primary).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the book holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Opens a copy of a request chosen by `mirror`, or drops it (counted) when the worker
    /// already has `max_in_flight` copies in flight.
    pub fn start(
        &mut self,
        mirror: &Mirror,
        ids: &ShadowIds,
        now: u64,
        host: &impl Host,
    ) -> Option<u64> {
        self.sweep(now);
        if self.in_flight >= mirror.max_in_flight {
            // Full: a slot may have expired since the last sweep.
            self.expire(now);
        }
        if self.in_flight >= mirror.max_in_flight {
            host.increment(ids.dropped, 1);
            return None;
        }
        if self.entries.len() >= MAX_ENTRIES {
            // The oldest entries are answered copies waiting for a primary that is very late.
            if let Some(oldest) = self.entries.first().map(|e| e.id) {
                self.remove(oldest);
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.in_flight += 1;
        self.entries.push(Entry {
            id,
            token: None,
            ids: ids.clone(),
            timeout_ns: mirror.timeout_ns,
            deadline_ns: now
                .saturating_add(mirror.timeout_ns)
                .saturating_add(SLACK_NS),
            sent_ns: 0,
            primary: None,
            shadow: None,
            compare_body: mirror.compare_body,
            primary_body: None,
            shadow_body: None,
            holds: true,
        });
        Some(id)
    }

    /// The request turned out not copyable (body over `max_body`, a header not UTF-8): counted.
    pub fn skip(&mut self, id: u64, host: &impl Host) {
        if let Some(e) = self.remove(id) {
            host.increment(e.ids.skipped, 1);
        }
    }

    /// The request ended before its copy was finished (reset): forgotten, not counted.
    pub fn abandon(&mut self, id: u64) {
        self.remove(id);
    }

    /// A finished copy, to be sent. True when it is the only one waiting: the sender must be
    /// woken (later ones find it awake).
    pub fn ready(&mut self, copy: Copy) -> bool {
        if self.find(copy.id).is_none() {
            return false;
        }
        self.ready.push(copy);
        self.ready.len() == 1
    }

    /// The next copy to send.
    pub fn take_ready(&mut self) -> Option<Copy> {
        while !self.ready.is_empty() {
            let c = self.ready.remove(0);
            if self.find(c.id).is_some() {
                return Some(c);
            }
        }
        None
    }

    /// Copy `id` was sent as call `token`.
    pub fn sent(&mut self, id: u64, token: u32, now: u64, host: &impl Host) {
        let Some(e) = self.find(id).and_then(|i| self.entries.get_mut(i)) else {
            return;
        };
        host.increment(e.ids.requests, 1);
        e.sent_ns = now;
        e.deadline_ns = now.saturating_add(e.timeout_ns).saturating_add(SLACK_NS);
        e.token = Some(token);
    }

    /// The proxy refused to send copy `id`: dropped, counted.
    pub fn not_sent(&mut self, id: u64, host: &impl Host) {
        if let Some(e) = self.remove(id) {
            host.increment(e.ids.dropped, 1);
        }
    }

    /// Whether call `token` is one of this book's copies.
    pub fn owns(&self, token: u32) -> bool {
        self.entries.iter().any(|e| e.token == Some(token))
    }

    /// The largest body compared for copy `id`, 0 when its bodies are not compared (or it is
    /// gone): the filter hashes the primary's body only when this is not 0.
    pub fn compare_body(&self, id: u64) -> usize {
        self.find(id)
            .and_then(|i| self.entries.get(i))
            .map_or(0, |e| e.compare_body)
    }

    /// The same for the copy sent as call `token`.
    pub fn compare_body_of_call(&self, token: u32) -> usize {
        self.entries
            .iter()
            .find(|e| e.token == Some(token))
            .map_or(0, |e| e.compare_body)
    }

    /// The primary's status for the request of copy `id` (0: none).
    pub fn primary(&mut self, id: u64, status: u16, host: &impl Host) {
        let Some(e) = self.find(id).and_then(|i| self.entries.get_mut(i)) else {
            return;
        };
        e.primary = Some(status);
        self.join_if_complete(id, host);
    }

    /// The primary's body ended: its hash, `None` when it was over `compare_body` or did not
    /// end (the stream was reset): then it is not compared.
    pub fn primary_body(&mut self, id: u64, hash: Option<u64>, host: &impl Host) {
        let Some(e) = self.find(id).and_then(|i| self.entries.get_mut(i)) else {
            return;
        };
        e.primary_body = Some(hash);
        self.join_if_complete(id, host);
    }

    /// The answer to call `token`: its status, `None` when there was none (reset), and its
    /// body's hash when bodies are compared (`None`: over the limit, or not compared). Counted
    /// for the copy's variant; compared once the primary's status (and body, when compared) is
    /// known too. False when the token is not (or no longer) this book's.
    pub fn answer(
        &mut self,
        token: u32,
        status: Option<u16>,
        body: Option<u64>,
        now: u64,
        host: &impl Host,
    ) -> bool {
        let Some(e) = self.entries.iter_mut().find(|e| e.token == Some(token)) else {
            return false;
        };
        e.token = None;
        e.shadow_body = body;
        let id = e.id;
        let class = status.and_then(class_index);
        match class.and_then(|c| e.ids.classes.get(c)) {
            Some(&metric) => host.increment(metric, 1),
            None => host.increment(e.ids.failed, 1),
        }
        host.record(e.ids.latency_ms, now.saturating_sub(e.sent_ns) / 1_000_000);
        e.shadow = Some(status);
        if e.holds {
            e.holds = false;
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        self.join_if_complete(id, host);
        self.sweep(now);
        true
    }

    /// Once both statuses (and, when compared, the primary's body) are known: counts a
    /// mismatch of classes and of bodies, and forgets the copy.
    fn join_if_complete(&mut self, id: u64, host: &impl Host) {
        let complete = self
            .find(id)
            .and_then(|i| self.entries.get(i))
            .is_some_and(|e| {
                e.primary.is_some()
                    && e.shadow.is_some()
                    && (e.compare_body == 0 || e.primary_body.is_some())
            });
        if !complete {
            return;
        }
        if let Some(e) = self.remove(id) {
            let primary = e.primary.and_then(class_index);
            let shadow = e.shadow.flatten().and_then(class_index);
            if primary != shadow {
                host.increment(e.ids.mismatch, 1);
            }
            // A copy without an answer has no body to compare: it counts as failed already.
            if let (Some(Some(p)), Some(s), Some(Some(_))) =
                (e.primary_body, e.shadow_body, e.shadow)
            {
                host.increment(e.ids.body_compared, 1);
                if p != s {
                    host.increment(e.ids.body_mismatch, 1);
                }
            }
        }
    }

    /// Forgets entries past their deadline (their answer or primary never came); at most every
    /// 100 ms.
    pub fn sweep(&mut self, now: u64) {
        if now >= self.next_sweep_ns {
            self.expire(now);
        }
    }

    fn expire(&mut self, now: u64) {
        self.next_sweep_ns = now.saturating_add(SWEEP_EVERY_NS);
        let before = self.entries.len();
        self.entries.retain(|e| e.deadline_ns >= now);
        if self.entries.len() != before {
            self.in_flight = self.entries.iter().filter(|e| e.holds).count() as u32;
        }
    }

    /// Index of entry `id` (entries are in id order).
    fn find(&self, id: u64) -> Option<usize> {
        self.entries.binary_search_by_key(&id, |e| e.id).ok()
    }

    /// Removes entry `id`, and with it its token: a late answer is then no longer the book's.
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.entries.remove(self.find(id)?);
        if e.holds {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        Some(e)
    }
}

#[cfg(test)]
#[path = "shadow_tests.rs"]
mod tests;
