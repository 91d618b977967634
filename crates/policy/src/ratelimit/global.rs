//! A worker's side of a global limit: what it may decide without asking the service.
//!
//! Kuadrant's filter asks Limitador on every request (kuadrant-operator #798, #1343). Here a
//! worker asks only when it must:
//! - **Batches**: an admitted ask reserves `hits` requests at once (RLS `hits_addend`); the
//!   worker spends the rest locally until the window the service reported ends. The batch is
//!   a sixteenth of what the service said remains (at most [`MAX_BATCH`]), so it shrinks to
//!   single hits, and exact answers, as the window fills.
//! - **Asking ahead**: when half a batch is left, one request asks for the next batch while
//!   the others go on spending the rest. Without it every request that finds the batch spent
//!   asks at once: at 32 connections `make bench` saw a quarter of the asks queue past the
//!   service's 20 ms timeout. A second ask goes out only when the first is still unanswered
//!   after its timeout, or the held hits run out before it is answered.
//! - **Known refusals**: once the service says OVER_LIMIT, the key is refused locally until
//!   its window resets (fixed windows: nothing can free it earlier).
//!
//! The price, in accuracy: reserved hits a worker has not spent when the window ends are
//! lost, so a window admits at most `Σ held batches` fewer requests than its limit (never
//! more: a hit is spent only after the service counted it). Under steady traffic above the
//! limit the batches are spent within milliseconds and the loss is near zero; the Envoy
//! tests measure it. A batch asked when less than it remains is refused whole by Limitador,
//! so such a refusal is retried once for a single hit before the request is refused.

use super::lease::ByFingerprint;
use crate::rls::Answer;

/// Most hits reserved in one ask.
pub const MAX_BATCH: u64 = 64;
/// A batch is the remaining count divided by this.
const BATCH_SHARE: u64 = 16;
/// Keys a worker remembers per limit; beyond, it forgets them all (their held hits are lost,
/// which only admits less).
const MAX_KEYS: usize = 16_384;

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    /// Hits reserved and not yet spent, valid until `until_ns`.
    tokens: u64,
    /// What the service said remains after our reservation (for `X-RateLimit-Remaining`).
    remaining: u64,
    until_ns: u64,
    /// Refused until this instant.
    over_until_ns: u64,
    /// The next ask's `hits_addend`.
    batch: u64,
    /// An ask ahead is in flight until this instant (its timeout), unless answered before.
    asking_until_ns: u64,
}

impl Entry {
    /// Whether hits of the current window are held.
    fn holds(&self, now_ns: u64) -> bool {
        self.tokens > 0 && now_ns < self.until_ns
    }

    /// Spends one held hit of the current window, if there is one.
    fn take_held(&mut self, now_ns: u64) -> Option<Local> {
        if !self.holds(now_ns) {
            return None;
        }
        self.tokens -= 1;
        Some(Local::Admitted {
            remaining: self.remaining + self.tokens,
            reset_ms: (self.until_ns - now_ns).div_ceil(1_000_000),
        })
    }
}

/// What a worker can say about a request on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// Admitted from a held batch; about `remaining` are left in the window.
    Admitted { remaining: u64, reset_ms: u64 },
    /// Refused: the window is known to be full for `reset_ms` more.
    Over { reset_ms: u64 },
    /// Ask the service for `hits`.
    Ask { hits: u64 },
}

/// One global limit's state on one worker.
#[derive(Debug, Default)]
pub struct GlobalCache {
    keys: ByFingerprint<Entry>,
}

impl GlobalCache {
    /// Decides `key` at `now_ns` from what this worker holds, or says to ask; an ask's
    /// answer is due within `timeout_ns`.
    pub fn spend(&mut self, key: u64, now_ns: u64, timeout_ns: u64) -> Local {
        let Some(e) = self.keys.get_mut(&key) else {
            return Local::Ask { hits: 1 };
        };
        // Ask ahead at half a batch, one ask at a time; single-hit batches (a window nearly
        // full) are exact answers and never asked ahead.
        if e.batch > 1 && e.holds(now_ns) && e.tokens <= e.batch / 2 && now_ns >= e.asking_until_ns
        {
            e.asking_until_ns = now_ns.saturating_add(timeout_ns);
            return Local::Ask { hits: e.batch };
        }
        // Held hits first: the service counted them, even if a later ask was refused.
        if let Some(admitted) = e.take_held(now_ns) {
            return admitted;
        }
        if now_ns < e.over_until_ns {
            return Local::Over {
                reset_ms: (e.over_until_ns - now_ns).div_ceil(1_000_000),
            };
        }
        Local::Ask {
            hits: e.batch.max(1),
        }
    }

    /// Spends a hit of `key` held for the current window, if there is one (for a request
    /// whose ask failed).
    pub fn take_held(&mut self, key: u64, now_ns: u64) -> Option<Local> {
        self.keys.get_mut(&key)?.take_held(now_ns)
    }

    /// Records the service's `answer` to an ask of `hits` for `key` at `now_ns`; one of
    /// those hits is the asking request's. Returns what to do with that request.
    pub fn record(&mut self, key: u64, hits: u64, answer: Answer, now_ns: u64) -> Local {
        if self.keys.len() >= MAX_KEYS && !self.keys.contains_key(&key) {
            self.keys.clear();
        }
        let e = self.keys.entry(key).or_default();
        e.asking_until_ns = 0;
        let reset_ns = answer.reset_ms.map(|ms| ms.saturating_mul(1_000_000));
        let remaining = answer.remaining.unwrap_or(0);
        // Several requests of this worker may have asked at once: hits still held from an
        // earlier answer stay (they were counted), whatever this answer says.
        if now_ns >= e.until_ns {
            e.tokens = 0;
        }
        if answer.over_limit {
            if hits > 1 {
                // Refused as a batch; a single hit may still fit.
                e.batch = 1;
                return Local::Ask { hits: 1 };
            }
            // Without a reset time the refusal is not remembered: the next request asks.
            e.over_until_ns = reset_ns.map_or(0, |r| now_ns.saturating_add(r));
            // Another request's batch came back meanwhile: this one takes a held hit.
            if let Some(admitted) = e.take_held(now_ns) {
                return admitted;
            }
            return Local::Over {
                reset_ms: answer.reset_ms.unwrap_or(0),
            };
        }
        e.over_until_ns = 0;
        match reset_ns {
            // Held hits belong to this window only; without its end, hold none.
            Some(r) => {
                let until = now_ns.saturating_add(r);
                // Older held hits may belong to an earlier window: all expire at the earlier
                // end, which can only lose hits, never admit beyond a window.
                e.until_ns = if e.tokens > 0 {
                    e.until_ns.min(until)
                } else {
                    until
                };
                e.tokens += hits.saturating_sub(1);
                e.batch = (remaining / BATCH_SHARE).clamp(1, MAX_BATCH);
            }
            None => e.batch = 1,
        }
        e.remaining = remaining;
        Local::Admitted {
            remaining: remaining + e.tokens,
            reset_ms: answer.reset_ms.unwrap_or(0),
        }
    }

    /// Keys remembered (for tests of the bound).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    /// The service's answer is due within this (the default 20 ms).
    const T: u64 = 20 * MS;

    fn ok(remaining: u64, reset_ms: u64) -> Answer {
        Answer {
            over_limit: false,
            remaining: Some(remaining),
            reset_ms: Some(reset_ms),
        }
    }

    fn over(reset_ms: u64) -> Answer {
        Answer {
            over_limit: true,
            remaining: Some(0),
            reset_ms: Some(reset_ms),
        }
    }

    #[test]
    fn the_first_request_asks_for_one_then_batches_follow_the_remaining_count() {
        let mut c = GlobalCache::default();
        assert_eq!(c.spend(7, 0, T), Local::Ask { hits: 1 });
        assert!(matches!(
            c.record(7, 1, ok(179, 3000), 0),
            Local::Admitted { remaining: 179, .. }
        ));
        // 179 / 16 = 11 hits next time.
        assert_eq!(c.spend(7, MS, T), Local::Ask { hits: 11 });
        c.record(7, 11, ok(168, 2999), MS);
        // Ten held, next batch 168 / 16 = 10: five requests need no ask, the sixth asks
        // ahead, the five after it spend the rest while that ask is out.
        for n in 0..5 {
            assert!(
                matches!(c.spend(7, 2 * MS, T), Local::Admitted { .. }),
                "request {n}"
            );
        }
        assert_eq!(c.spend(7, 2 * MS, T), Local::Ask { hits: 10 });
        for n in 0..5 {
            assert!(
                matches!(c.spend(7, 2 * MS, T), Local::Admitted { .. }),
                "request {n} during the ask ahead"
            );
        }
        // Spent before the answer: the next request asks on its own.
        assert_eq!(c.spend(7, 2 * MS, T), Local::Ask { hits: 10 });
    }

    #[test]
    fn one_ask_ahead_at_a_time_until_answered_or_timed_out() {
        let mut c = GlobalCache::default();
        // 160 remain: batches of 10, nine held.
        c.record(1, 10, ok(160, 3000), 0);
        let spend = |c: &mut GlobalCache, at| c.spend(1, at, T);
        for _ in 0..4 {
            assert!(matches!(spend(&mut c, MS), Local::Admitted { .. }));
        }
        assert_eq!(spend(&mut c, MS), Local::Ask { hits: 10 });
        // Unanswered: the others spend, no second ask before the first's timeout.
        assert!(matches!(spend(&mut c, 2 * MS), Local::Admitted { .. }));
        // Past it (a lost or failed answer), one more asks ahead.
        assert_eq!(spend(&mut c, MS + T), Local::Ask { hits: 10 });
        // Answered: its hits join the four still held (one of its ten is the asker's).
        c.record(1, 10, ok(150, 2990), MS + T + MS);
        let admitted = (0..20)
            .take_while(|_| matches!(spend(&mut c, 30 * MS), Local::Admitted { .. }))
            .count();
        // 4 + 9 = 13 held, batch 150 / 16 = 9: ask ahead once 4 are left, after 9.
        assert_eq!(admitted, 9);
    }

    #[test]
    fn a_request_whose_ask_ahead_failed_takes_a_held_hit() {
        let mut c = GlobalCache::default();
        c.record(1, 3, ok(64, 3000), 0);
        // Two held, batch 4: the first request asks ahead.
        assert_eq!(c.spend(1, MS, T), Local::Ask { hits: 4 });
        // Its ask failed: it takes one of the two, one is left for the others.
        assert!(matches!(
            c.take_held(1, 30 * MS),
            Some(Local::Admitted { .. })
        ));
        let admitted = (0..5)
            .filter(|_| matches!(c.spend(1, 30 * MS, T), Local::Admitted { .. }))
            .count();
        assert_eq!(admitted, 1);
        assert_eq!(
            c.take_held(2, 30 * MS),
            None,
            "an unknown key holds nothing"
        );
    }

    #[test]
    fn held_hits_expire_with_the_window() {
        let mut c = GlobalCache::default();
        c.record(1, 20, ok(100, 50), 0);
        assert!(matches!(c.spend(1, 49 * MS, T), Local::Admitted { .. }));
        // The window the service reported is over: the hits held for it are void.
        assert_eq!(c.spend(1, 50 * MS, T), Local::Ask { hits: 6 });
    }

    #[test]
    fn a_refused_batch_is_retried_for_one_hit_and_a_refusal_is_remembered_until_reset() {
        let mut c = GlobalCache::default();
        c.record(1, 1, ok(40, 1000), 0);
        assert_eq!(c.record(1, 2, over(900), MS), Local::Ask { hits: 1 });
        assert_eq!(c.record(1, 1, over(900), MS), Local::Over { reset_ms: 900 });
        assert_eq!(c.spend(1, 500 * MS, T), Local::Over { reset_ms: 401 });
        assert_eq!(c.spend(1, 901 * MS, T), Local::Ask { hits: 1 });
    }

    #[test]
    fn concurrent_asks_of_one_worker_keep_every_counted_hit() {
        let mut c = GlobalCache::default();
        c.record(1, 1, ok(100, 3000), 0);
        // Two requests asked for six hits each before either answer came back.
        c.record(1, 6, ok(94, 2990), 10 * MS);
        // The second batch was refused whole: the five held from the first stay.
        assert_eq!(c.record(1, 6, over(2990), 10 * MS), Local::Ask { hits: 1 });
        // Its single hit is refused too, but a held one admits it.
        assert!(matches!(
            c.record(1, 1, over(2990), 10 * MS),
            Local::Admitted { .. }
        ));
        let admitted = (0..10)
            .filter(|_| matches!(c.spend(1, 11 * MS, T), Local::Admitted { .. }))
            .count();
        assert_eq!(admitted, 4);
    }

    #[test]
    fn without_a_reset_time_nothing_is_held_or_remembered() {
        let mut c = GlobalCache::default();
        let bare = |over_limit| Answer {
            over_limit,
            remaining: None,
            reset_ms: None,
        };
        c.record(1, 1, bare(false), 0);
        assert_eq!(c.spend(1, 0, T), Local::Ask { hits: 1 });
        c.record(1, 1, bare(true), 0);
        assert_eq!(c.spend(1, 0, T), Local::Ask { hits: 1 });
    }

    #[test]
    fn keys_are_bounded() {
        let mut c = GlobalCache::default();
        for k in 0..(MAX_KEYS as u64 + 10) {
            c.record(k, 1, ok(10, 1000), 0);
        }
        assert!(c.len() <= MAX_KEYS, "{}", c.len());
    }
}
