//! Connection limits for the filter running as a network filter (`envoy.filters.network.wasm`
//! in front of `tcp_proxy`): source CIDRs allowed, simultaneous connections per source and in
//! all, and a token bucket of new connections per source.
//!
//! Open connections are counted in shared data so every worker sees them. A count key holds
//! one entry per worker VM: (worker id, its open connections, when it last wrote). Admission
//! sums the live entries and adds one to its own by compare-and-swap; a close takes it back.
//! Envoy does not always deliver the close (envoy #13806), and a VM that dies takes its closes
//! with it; so each worker rewrites its entries on the tick from the connections it really
//! holds, and an entry nobody rewrote for `stale_ns` is ignored and dropped by the next writer:
//! a limit can never leak shut.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::ratelimit::RateLimit;
use crate::store::SharedStore;

/// How often a write may lose the compare-and-swap race before the connection is let through
/// uncounted (fail open, as the rate limiter).
const MAX_CAS_ATTEMPTS: usize = 16;

/// How often a worker rewrites its counts.
pub const REFRESH_NS: u64 = 1_000_000_000;

/// An entry older than this belongs to a worker that stopped rewriting it: a VM gone.
pub const STALE_NS: u64 = 5 * REFRESH_NS;

/// A source network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `::1/128`, or a bare address (a /32 or /128). Host bits set below
    /// the prefix are an error: `10.0.0.1/8` is more likely a typo than a network.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("'{}' is not an IP address", crate::excerpt::excerpt(ip)))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => {
                    return Err(format!(
                        "prefix length '{}' must be 0 to {max}",
                        crate::excerpt::excerpt(p)
                    ))
                }
            },
        };
        let c = Cidr { addr, prefix };
        if bits(addr) & !mask(prefix, max) != 0 {
            return Err(format!(
                "'{}' has host bits set below /{prefix}",
                crate::excerpt::excerpt(text)
            ));
        }
        Ok(c)
    }

    /// Whether `ip` is in this network; an IPv4-mapped IPv6 address counts as its IPv4 one.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let max = if ip.is_ipv4() { 32 } else { 128 };
        bits(ip) & mask(self.prefix, max) == bits(self.addr)
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn mask(prefix: u8, max: u8) -> u128 {
    let all = if max == 32 {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    };
    match u32::from(max - prefix.min(max)) {
        128 => 0,
        shift => (all >> shift) << shift,
    }
}

/// Compiled connection limits.
#[derive(Debug, Clone)]
pub struct TcpLimits {
    /// Allowed source networks; `None` allows every source.
    pub allow: Option<Vec<Cidr>>,
    /// Most open connections per source address.
    pub per_source: Option<u32>,
    /// Most open connections in all.
    pub total: Option<u32>,
    /// New connections per source (keyed by the address's fingerprint).
    pub rate: Option<RateLimit>,
    /// Shared-data key prefix (`rollgate/<policy>/tcp/`).
    pub key_prefix: String,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The source is outside `allow` (or unknown while `allow` is set).
    Allow,
    /// `in_flight` is reached.
    InFlight,
    /// The source's `rate` bucket is empty.
    Rate,
}

/// One worker's open connections and their shared counts.
#[derive(Debug)]
pub struct InFlight {
    /// This VM's id among the proxy's VMs.
    pub worker: u64,
    /// Open connections per count key (a source's key, and the total's).
    held: HashMap<String, u32>,
}

impl InFlight {
    /// The accounting of worker `worker` (any id unique among the VMs: `fetch::worker_id`).
    pub fn new(worker: u64) -> InFlight {
        InFlight {
            worker,
            held: HashMap::new(),
        }
    }

    /// Open connections this worker holds under `key`.
    pub fn held(&self, key: &str) -> u32 {
        self.held.get(key).copied().unwrap_or(0)
    }
}

/// A connection admitted: what its close gives back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Admitted {
    /// Count keys it holds one of.
    pub keys: Vec<String>,
}

/// One entry of a count key: 20 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    worker: u64,
    count: u32,
    written_ns: u64,
}

const ENTRY_LEN: usize = 20;

/// First byte of a count key's value. A key is never emptied (an empty value reads as absent,
/// and a write to an absent key cannot be compare-and-swapped), so only its very first write
/// is unconditional.
const FORMAT: u8 = 1;

fn decode(b: &[u8]) -> Vec<Entry> {
    let entries = match b.split_first() {
        Some((&FORMAT, rest)) => rest,
        _ => &[],
    };
    entries
        .chunks_exact(ENTRY_LEN)
        .filter_map(|c| {
            Some(Entry {
                worker: u64::from_le_bytes(c.get(0..8)?.try_into().ok()?),
                count: u32::from_le_bytes(c.get(8..12)?.try_into().ok()?),
                written_ns: u64::from_le_bytes(c.get(12..20)?.try_into().ok()?),
            })
        })
        .collect()
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + entries.len() * ENTRY_LEN);
    out.push(FORMAT);
    for e in entries {
        out.extend_from_slice(&e.worker.to_le_bytes());
        out.extend_from_slice(&e.count.to_le_bytes());
        out.extend_from_slice(&e.written_ns.to_le_bytes());
    }
    out
}

/// Rewrites `key` by compare-and-swap: `f` gets the other live workers' sum and returns this
/// worker's new count, or `None` to leave the key as it is. Returns `Some(written)` or `None`
/// when `f` declined; when the store keeps failing, `Some(false)`.
fn update(
    store: &dyn SharedStore,
    key: &str,
    worker: u64,
    now_ns: u64,
    mut f: impl FnMut(u64) -> Option<u32>,
) -> Option<bool> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let Some((value, cas)) = store.get(key) else {
            // Created empty first, then written by compare-and-swap like any other time: an
            // unconditional write of counts could erase another worker's. Two workers creating
            // the key at once can still erase the other's first entry (Envoy has no
            // create-if-absent); that worker's next sweep writes it back.
            let _ = store.set(key, &[FORMAT], 0);
            continue;
        };
        let entries = decode(&value);
        let mut live: Vec<Entry> = entries
            .into_iter()
            .filter(|e| e.worker != worker && now_ns.saturating_sub(e.written_ns) < STALE_NS)
            .filter(|e| e.count > 0)
            .collect();
        let others = live.iter().map(|e| u64::from(e.count)).sum();
        let mine = f(others)?;
        if mine > 0 {
            live.push(Entry {
                worker,
                count: mine,
                written_ns: now_ns,
            });
        }
        if store.set(key, &encode(&live), cas).is_ok() {
            return Some(true);
        }
    }
    Some(false)
}

impl TcpLimits {
    /// Whether this policy counts open connections.
    pub fn counts(&self) -> bool {
        self.per_source.is_some() || self.total.is_some()
    }

    fn total_key(&self) -> String {
        format!("{}total", self.key_prefix)
    }

    fn source_key(&self, ip: Option<IpAddr>) -> String {
        match ip {
            Some(ip) => format!("{}src/{}", self.key_prefix, ip.to_canonical()),
            None => format!("{}src/-", self.key_prefix),
        }
    }

    /// Decides a new connection from `ip`: allow, then in-flight, then rate (a connection
    /// refused for another reason spends no token). On admission the counts are taken and
    /// must be given back with [`TcpLimits::close`].
    pub fn open(
        &self,
        w: &mut InFlight,
        store: &dyn SharedStore,
        ip: Option<IpAddr>,
        now_ns: u64,
    ) -> Result<Admitted, Refusal> {
        if let Some(allow) = &self.allow {
            if !ip.is_some_and(|ip| allow.iter().any(|c| c.contains(ip))) {
                return Err(Refusal::Allow);
            }
        }
        let mut taken = Admitted::default();
        for (key, max) in [
            (
                self.per_source.map(|_| self.source_key(ip)),
                self.per_source,
            ),
            (self.total.map(|_| self.total_key()), self.total),
        ] {
            let (Some(key), Some(max)) = (key, max) else {
                continue;
            };
            let held = w.held(&key);
            let took = update(store, &key, w.worker, now_ns, |others| {
                (others + u64::from(held) < u64::from(max)).then_some(held + 1)
            });
            if took.is_none() {
                self.close(w, store, &taken, now_ns);
                return Err(Refusal::InFlight);
            }
            *w.held.entry(key.clone()).or_insert(0) += 1;
            taken.keys.push(key);
        }
        if let Some(rate) = &self.rate {
            let text = ip
                .map(|ip| ip.to_canonical().to_string())
                .unwrap_or_default();
            let fp = crate::ratelimit::ip_fingerprint(text.as_bytes());
            if !rate.check(store, fp, now_ns).admitted {
                self.close(w, store, &taken, now_ns);
                return Err(Refusal::Rate);
            }
        }
        Ok(taken)
    }

    /// Gives back what `admitted` took. Idempotence is the caller's: call it once per
    /// admission (the filter clears its `Admitted` after).
    pub fn close(&self, w: &mut InFlight, store: &dyn SharedStore, admitted: &Admitted, now: u64) {
        for key in &admitted.keys {
            let held = w.held(key).saturating_sub(1);
            if held == 0 {
                w.held.remove(key);
            } else {
                w.held.insert(key.clone(), held);
            }
            // A failed write is repaired by the next sweep.
            let _ = update(store, key, w.worker, now, |_| Some(held));
        }
    }

    /// The tick: rewrites this worker's entries from what it holds, so they stay live while
    /// it runs and other workers' forgotten ones age out.
    pub fn sweep(&self, w: &InFlight, store: &dyn SharedStore, now_ns: u64) {
        for (key, &held) in &w.held {
            let _ = update(store, key, w.worker, now_ns, |_| Some(held));
        }
    }

    /// Open connections under `ip`'s key (or in all, for `None` with a total), as the shared
    /// data says at `now_ns`: what a test or a stat reads.
    pub fn open_count(&self, store: &dyn SharedStore, key: &str, now_ns: u64) -> u64 {
        store.get(key).map_or(0, |(v, _)| {
            decode(&v)
                .iter()
                .filter(|e| now_ns.saturating_sub(e.written_ns) < STALE_NS)
                .map(|e| u64::from(e.count))
                .sum()
        })
    }

    /// The count key of a source address (for [`TcpLimits::open_count`]).
    pub fn key_of(&self, ip: Option<IpAddr>) -> String {
        self.source_key(ip)
    }

    /// The count key of the total.
    pub fn key_of_total(&self) -> String {
        self.total_key()
    }
}

#[cfg(test)]
#[path = "tcp_tests.rs"]
mod tests;
