//! Token-bucket arithmetic, Traefik's meaning: `average` tokens per `period` refill a bucket of
//! capacity `burst`; a request takes one token. Pure functions of (state, time).

use crate::duration::NANOS_PER_SEC;

/// A bucket's stored state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketState {
    /// Fingerprint of the limit's configuration: a changed limit starts afresh.
    pub config: u32,
    /// Fingerprint of the key that owns the slot.
    pub key: u64,
    /// Tokens left at `last_ns`.
    pub tokens: f64,
    /// When `tokens` was computed.
    pub last_ns: u64,
}

const ENCODED_LEN: usize = 1 + 4 + 8 + 8 + 8;
const FORMAT: u8 = 1;

impl BucketState {
    /// Serialized form for shared data.
    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        out[0] = FORMAT;
        out[1..5].copy_from_slice(&self.config.to_le_bytes());
        out[5..13].copy_from_slice(&self.key.to_le_bytes());
        out[13..21].copy_from_slice(&self.tokens.to_le_bytes());
        out[21..29].copy_from_slice(&self.last_ns.to_le_bytes());
        out
    }

    /// Parses [`BucketState::encode`]'s output; anything else is `None` (treated as empty).
    pub fn decode(b: &[u8]) -> Option<BucketState> {
        if b.len() != ENCODED_LEN || b.first() != Some(&FORMAT) {
            return None;
        }
        let u32_at = |i: usize| b.get(i..i + 4)?.try_into().ok().map(u32::from_le_bytes);
        let u64_at = |i: usize| b.get(i..i + 8)?.try_into().ok().map(u64::from_le_bytes);
        let tokens = f64::from_bits(u64_at(13)?);
        if !tokens.is_finite() {
            return None;
        }
        Some(BucketState {
            config: u32_at(1)?,
            key: u64_at(5)?,
            tokens,
            last_ns: u64_at(21)?,
        })
    }
}

/// A limit's rate and capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens per nanosecond.
    pub per_ns: f64,
    /// Capacity.
    pub burst: f64,
}

impl Rate {
    /// `average` tokens per `period_ns`, capacity `burst`.
    pub fn new(average: f64, period_ns: u64, burst: u64) -> Rate {
        Rate {
            per_ns: average / period_ns as f64,
            burst: burst as f64,
        }
    }

    /// Tokens at `now` given `tokens` at `last`: refilled, capped at `burst`. A clock that goes
    /// backwards refills nothing.
    pub fn refill(&self, tokens: f64, last_ns: u64, now_ns: u64) -> f64 {
        let elapsed = now_ns.saturating_sub(last_ns) as f64;
        (tokens + elapsed * self.per_ns).min(self.burst)
    }

    /// Whole seconds, rounded up (at least 1), until `tokens` reaches `want`.
    pub fn secs_until(&self, tokens: f64, want: f64) -> u64 {
        if tokens >= want {
            return 0;
        }
        let ns = (want - tokens) / self.per_ns;
        ((ns / NANOS_PER_SEC as f64).ceil() as u64).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_round_trip_and_garbage() {
        let s = BucketState {
            config: 7,
            key: u64::MAX - 3,
            tokens: 12.5,
            last_ns: 99,
        };
        assert_eq!(BucketState::decode(&s.encode()), Some(s));
        assert_eq!(BucketState::decode(b""), None);
        assert_eq!(BucketState::decode(&s.encode()[..20]), None);
        let mut bad = s.encode();
        bad[0] = 9;
        assert_eq!(BucketState::decode(&bad), None);
        let nan = BucketState {
            tokens: f64::NAN,
            ..s
        };
        assert_eq!(BucketState::decode(&nan.encode()), None);
    }

    #[test]
    fn refill_and_cap() {
        let r = Rate::new(500.0, NANOS_PER_SEC, 1000);
        assert_eq!(r.refill(0.0, 0, NANOS_PER_SEC), 500.0);
        assert_eq!(r.refill(0.0, 0, 10 * NANOS_PER_SEC), 1000.0);
        assert_eq!(r.refill(3.0, 1_000, 1_000), 3.0);
        assert_eq!(r.refill(3.0, 5_000, 1_000), 3.0, "backwards clock");
        let slow = Rate::new(1.0, 60 * NANOS_PER_SEC, 1);
        assert!((slow.refill(0.0, 0, 30 * NANOS_PER_SEC) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn seconds_until_rounds_up() {
        let r = Rate::new(500.0, NANOS_PER_SEC, 1000);
        assert_eq!(r.secs_until(0.0, 1.0), 1, "2 ms rounds up to 1 s");
        assert_eq!(r.secs_until(0.0, 1000.0), 2);
        assert_eq!(r.secs_until(999.0, 1000.0), 1);
        assert_eq!(r.secs_until(1000.0, 1000.0), 0);
        let slow = Rate::new(1.0, 60 * NANOS_PER_SEC, 1);
        assert_eq!(slow.secs_until(0.0, 1.0), 60);
        assert_eq!(slow.secs_until(0.5, 1.0), 30);
    }
}
