//! Per-worker token leases: a worker takes a few tokens of a key's shared bucket in one
//! compare-and-swap and spends them locally, so a key's next requests on that worker cost no
//! shared-data call at all (a shared-data write is the dearest host call the limiter makes).
//!
//! Exactness: leased tokens are spent early, not created. A token leased by one worker is not
//! available to another until spent, and tokens still leased when an entry is dropped are
//! lost; so over any interval a key is admitted within `workers × lease` of what the exact
//! bucket admits. The lease is at most 1/64 of the burst, and 1 (exact, no lease) for bursts
//! under 128, so small limits behave exactly as before.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Most keys one worker holds leases for. Two generations of half this size: when the newer
/// one fills, the older is dropped (its leftover tokens are lost, never duplicated), so keys
/// seen recently keep their leases, like an LRU without the bookkeeping. About 25 bytes a key.
pub const MAX_LEASES: usize = 16_384;

/// Largest lease, whatever the burst.
pub const MAX_LEASE: u64 = 64;

/// Tokens one worker may take at once from a bucket of capacity `burst`.
pub fn lease_size(burst: u64) -> u64 {
    (burst / 64).clamp(1, MAX_LEASE)
}

/// Tokens a worker holds for one key.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Lease {
    /// Tokens still to spend.
    tokens: u64,
    /// Tokens the shared bucket had left when the lease was taken (for `X-RateLimit-Remaining`).
    shared_left: f64,
}

impl Lease {
    /// Takes one token: (tokens still leased, tokens left in all), or `None` if none is.
    fn spend(&mut self) -> Option<(u64, f64)> {
        self.tokens = self.tokens.checked_sub(1)?;
        Some((self.tokens, self.shared_left + self.tokens as f64))
    }
}

/// Keys are already 64-bit fingerprints: a multiply-shift spreads them for the table without
/// SipHash's cost.
#[derive(Default)]
pub(crate) struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        let x = self.0 ^ (self.0 >> 33);
        x.wrapping_mul(0xff51_afd7_ed55_8ccd) ^ (x >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Table = HashMap<u64, Lease, BuildHasherDefault<FingerprintHasher>>;

/// A table keyed by fingerprints.
pub(crate) type ByFingerprint<V> = HashMap<u64, V, BuildHasherDefault<FingerprintHasher>>;

/// One worker's leases for one limit, by key fingerprint.
#[derive(Debug, Default, Clone)]
pub struct Leases {
    newer: Table,
    older: Table,
}

impl Leases {
    /// Spends one leased token of `key_fp`; returns the tokens the key has left in all (leased
    /// plus the shared bucket when the lease was taken), or `None` when nothing is leased.
    pub fn spend(&mut self, key_fp: u64) -> Option<f64> {
        if let Some(lease) = self.newer.get_mut(&key_fp) {
            let (tokens, left) = lease.spend()?;
            if tokens == 0 {
                self.newer.remove(&key_fp);
            }
            return Some(left);
        }
        // Used again: the lease moves to the newer generation.
        let mut lease = self.older.remove(&key_fp)?;
        let (tokens, left) = lease.spend()?;
        if tokens > 0 {
            self.insert(key_fp, lease);
        }
        Some(left)
    }

    /// Keeps `tokens` for `key_fp`.
    pub fn keep(&mut self, key_fp: u64, tokens: u64, shared_left: f64) {
        self.older.remove(&key_fp);
        if tokens > 0 {
            self.insert(
                key_fp,
                Lease {
                    tokens,
                    shared_left,
                },
            );
        }
    }

    fn insert(&mut self, key_fp: u64, lease: Lease) {
        if self.newer.len() >= MAX_LEASES / 2 && !self.newer.contains_key(&key_fp) {
            self.older = std::mem::take(&mut self.newer);
        }
        self.newer.insert(key_fp, lease);
    }

    /// Number of keys with leased tokens.
    pub fn len(&self) -> usize {
        self.newer.len() + self.older.len()
    }

    /// Whether no key has leased tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens leased for `key_fp`.
    pub fn tokens(&self, key_fp: u64) -> u64 {
        self.newer
            .get(&key_fp)
            .or_else(|| self.older.get(&key_fp))
            .map_or(0, |l| l.tokens)
    }
}
