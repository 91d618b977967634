//! Circuit breakers shared by every worker.
//!
//! State (closed → open → recovering → closed) lives in one shared-data record per breaker;
//! statistics live in ten shared bucket records (the rolling window). Each worker counts its
//! responses locally and merges them into the shared bucket at most once per `check_period`
//! (on its tick) or when the bucket's time slice ends, so the request path does no shared
//! write. Every worker evaluates the expression on its tick; compare-and-swap makes exactly one
//! of them perform each transition. Opening starts a new *generation*: statistics of the old
//! one are ignored, so recovery is judged on new traffic only.

pub mod expr;
pub mod window;

use expr::{Cond, Metric, Stats};
use window::{Bucket, BUCKETS_PER_WINDOW};

use crate::policy::number;
use crate::store::{SharedStore, StoreError};

/// Envoy `response.flags` bits meaning the upstream failed: no healthy upstream (UH), upstream
/// timeout (UT), upstream reset (UR), connection failure (UF), connection termination (UC).
pub const UPSTREAM_FAILURE_FLAGS: u64 = 0x2 | 0x4 | 0x10 | 0x20 | 0x40;

/// A breaker's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Traffic flows; the expression is watched.
    Closed,
    /// Traffic of the scope is refused or sent to the fallback variant.
    Open,
    /// A growing share of traffic is let through; the expression is watched.
    Recovering,
}

impl Phase {
    /// Gauge value: 0 closed, 1 open, 2 recovering.
    pub fn gauge(self) -> u64 {
        match self {
            Phase::Closed => 0,
            Phase::Open => 1,
            Phase::Recovering => 2,
        }
    }

    /// Lower-case name, for logs.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Closed => "closed",
            Phase::Open => "open",
            Phase::Recovering => "recovering",
        }
    }
}

/// The shared state record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    /// Fingerprint of the breaker's configuration; a changed breaker starts closed.
    pub config: u32,
    /// Statistics generation; bumped on every opening.
    pub generation: u32,
    /// The phase.
    pub phase: Phase,
    /// When the phase began.
    pub since_ns: u64,
    /// When an open or recovering phase ends.
    pub until_ns: u64,
}

impl State {
    fn encode(&self) -> [u8; 26] {
        let mut b = [0u8; 26];
        b[0] = 1;
        b[1..5].copy_from_slice(&self.config.to_le_bytes());
        b[5..9].copy_from_slice(&self.generation.to_le_bytes());
        b[9] = self.phase.gauge() as u8;
        b[10..18].copy_from_slice(&self.since_ns.to_le_bytes());
        b[18..26].copy_from_slice(&self.until_ns.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<State> {
        if b.len() != 26 || b.first() != Some(&1) {
            return None;
        }
        let u32_at = |i: usize| b.get(i..i + 4)?.try_into().ok().map(u32::from_le_bytes);
        let u64_at = |i: usize| b.get(i..i + 8)?.try_into().ok().map(u64::from_le_bytes);
        let phase = match b.get(9)? {
            0 => Phase::Closed,
            1 => Phase::Open,
            2 => Phase::Recovering,
            _ => return None,
        };
        Some(State {
            config: u32_at(1)?,
            generation: u32_at(5)?,
            phase,
            since_ns: u64_at(10)?,
            until_ns: u64_at(18)?,
        })
    }
}

/// A compiled breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    /// Its name.
    pub name: String,
    /// Index of the variant it guards; `None` guards all traffic of the policy.
    pub variant: Option<usize>,
    /// The trip condition.
    pub cond: Cond,
    /// How often the condition is checked.
    pub check_period_ns: u64,
    /// Time spent open.
    pub fallback_ns: u64,
    /// Length of the recovery ramp.
    pub recovery_ns: u64,
    /// Length of one window bucket (window / 10).
    pub bucket_ns: u64,
    /// Status of the refusal while open.
    pub response_code: u16,
    /// Variant that takes the scope's traffic while open.
    pub fallback_variant: Option<usize>,
    /// Fingerprint of everything that shapes state and statistics.
    pub config: u32,
    /// Shared-data key prefix: `rollgate/<policy>/cb/<name>/`.
    pub key_prefix: String,
}

/// One worker's view of a breaker: the last state seen and the counts not yet shared.
#[derive(Debug, Clone)]
pub struct Local {
    /// The shared state as last read (or written) by this worker.
    pub state: State,
    pending: Bucket,
    /// Recovery ramp: fractional passes owed; a request passes when a whole one is due.
    credit: f64,
    ramp_since: u64,
}

/// What a request in scope gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Through to its variant; its response is counted.
    Pass,
    /// Refused, or sent to the fallback variant.
    Fallback,
}

/// A transition this worker performed (others' transitions are seen, not reported).
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The phase left.
    pub from: Phase,
    /// The phase entered.
    pub to: Phase,
    /// The figures it was decided on.
    pub figures: String,
}

impl Local {
    /// The statistics generation this worker is in; pass it back to [`Breaker::record`].
    pub fn generation(&self) -> u32 {
        self.state.generation
    }
}

impl Breaker {
    /// A fresh local view, as on a worker that has not ticked yet: closed.
    pub fn local(&self) -> Local {
        let state = State {
            config: self.config,
            generation: 1,
            phase: Phase::Closed,
            since_ns: 0,
            until_ns: 0,
        };
        Local {
            state,
            pending: Bucket::new(0, 1),
            credit: 0.0,
            ramp_since: 0,
        }
    }

    fn state_key(&self) -> String {
        format!("{}state", self.key_prefix)
    }

    fn bucket_key(&self, epoch: u64) -> String {
        format!("{}w{}", self.key_prefix, epoch % BUCKETS_PER_WINDOW)
    }

    /// The phase at `now` from the locally known state, following the clock through
    /// open → recovering → closed without waiting for a tick. Returns the ramp's progress too.
    pub fn phase_at(&self, s: &State, now: u64) -> (Phase, f64) {
        let ramp = |since: u64| {
            (now.saturating_sub(since) as f64 / self.recovery_ns.max(1) as f64).min(1.0)
        };
        match s.phase {
            Phase::Closed => (Phase::Closed, 1.0),
            Phase::Open if now < s.until_ns => (Phase::Open, 0.0),
            Phase::Open if now < s.until_ns.saturating_add(self.recovery_ns) => {
                (Phase::Recovering, ramp(s.until_ns))
            }
            Phase::Recovering if now < s.until_ns => (Phase::Recovering, ramp(s.since_ns)),
            _ => (Phase::Closed, 1.0),
        }
    }

    /// Decides for one request in scope. While recovering, the share let through follows the
    /// ramp: at progress p, a share p of the requests arriving now passes (a credit counter,
    /// so the share is exact and spread evenly, with no randomness).
    pub fn admit(&self, l: &mut Local, now: u64) -> Admission {
        match self.phase_at(&l.state, now) {
            (Phase::Closed, _) => Admission::Pass,
            (Phase::Open, _) => Admission::Fallback,
            (Phase::Recovering, p) => {
                let since = if l.state.phase == Phase::Open {
                    l.state.until_ns
                } else {
                    l.state.since_ns
                };
                if l.ramp_since != since {
                    (l.ramp_since, l.credit) = (since, 0.0);
                }
                l.credit += p;
                if l.credit >= 1.0 {
                    l.credit -= 1.0;
                    Admission::Pass
                } else {
                    Admission::Fallback
                }
            }
        }
    }

    /// Counts one response of a request that passed when the breaker was in `generation`
    /// (from [`Local::generation`] at admission). Responses admitted before an opening are
    /// dropped: they must not count against the recovery. Shares the pending counts first when
    /// their time slice is over.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        l: &mut Local,
        store: &dyn SharedStore,
        now: u64,
        generation: u32,
        status: u16,
        latency_us: u64,
        network_error: bool,
    ) {
        if generation != l.state.generation {
            return;
        }
        let epoch = now / self.bucket_ns.max(1);
        if l.pending.epoch != epoch || l.pending.generation != l.state.generation {
            self.flush(l, store);
            l.pending = Bucket::new(epoch, l.state.generation);
        }
        l.pending.record(status, latency_us, network_error);
    }

    /// Merges the pending counts into the shared bucket of their time slice.
    pub fn flush(&self, l: &mut Local, store: &dyn SharedStore) {
        if l.pending.total == 0 || l.pending.generation != l.state.generation {
            l.pending.total = 0;
            return;
        }
        let key = self.bucket_key(l.pending.epoch);
        for _ in 0..16 {
            let current = store.get(&key);
            let cas = current.as_ref().map_or(0, |(_, c)| *c);
            let mut merged = match current.and_then(|(v, _)| Bucket::decode(&v)) {
                Some(b) if b.epoch == l.pending.epoch && b.generation == l.pending.generation => b,
                // An older slice or generation: this slice starts over.
                _ => Bucket::new(l.pending.epoch, l.pending.generation),
            };
            merged.merge(&l.pending);
            match store.set(&key, &merged.encode(), cas) {
                Ok(()) | Err(StoreError::Failed) => break,
                Err(StoreError::CasMismatch) => continue,
            }
        }
        l.pending = Bucket::new(l.pending.epoch, l.pending.generation);
    }

    /// The window's statistics of the current generation at `now`.
    pub fn window(&self, store: &dyn SharedStore, generation: u32, now: u64) -> Bucket {
        let newest = now / self.bucket_ns.max(1);
        let oldest = newest.saturating_sub(BUCKETS_PER_WINDOW - 1);
        let mut sum = Bucket::new(newest, generation);
        for epoch in oldest..=newest {
            if let Some(b) = store
                .get(&self.bucket_key(epoch))
                .and_then(|(v, _)| Bucket::decode(&v))
            {
                if b.epoch == epoch && b.generation == generation {
                    sum.merge(&b);
                }
            }
        }
        sum
    }

    /// The periodic check (every `check_period`, traffic or not): shares pending counts,
    /// moves the phase along the clock, evaluates the condition, and reports a transition this
    /// worker made.
    pub fn tick(&self, l: &mut Local, store: &dyn SharedStore, now: u64) -> Option<Transition> {
        let key = self.state_key();
        for _ in 0..16 {
            let current = store.get(&key);
            let cas = current.as_ref().map_or(0, |(_, c)| *c);
            let shared = current.and_then(|(v, _)| State::decode(&v));
            let state = match shared {
                Some(s) if s.config == self.config => s,
                // First tick anywhere, or the breaker changed: start closed, new statistics.
                other => State {
                    config: self.config,
                    generation: other.map_or(1, |s| s.generation.wrapping_add(1)),
                    phase: Phase::Closed,
                    since_ns: now,
                    until_ns: 0,
                },
            };
            l.state = state;
            self.flush(l, store);
            let (phase, _) = self.phase_at(&state, now);
            let mut next = state;
            let mut figures = String::new();
            if phase != state.phase {
                // The clock moved it on (open → recovering, or either → closed).
                next = match phase {
                    Phase::Recovering => State {
                        phase,
                        since_ns: state.until_ns,
                        until_ns: state.until_ns + self.recovery_ns,
                        ..state
                    },
                    _ => State {
                        phase,
                        since_ns: now,
                        until_ns: 0,
                        ..state
                    },
                };
            }
            if phase != Phase::Open {
                let stats = self.window(store, state.generation, now);
                if self.cond.eval(&stats) {
                    figures = describe(&self.cond, &stats);
                    next = State {
                        generation: state.generation.wrapping_add(1),
                        phase: Phase::Open,
                        since_ns: now,
                        until_ns: now + self.fallback_ns,
                        ..state
                    };
                }
            }
            if next == state && shared == Some(state) {
                return None;
            }
            match store.set(&key, &next.encode(), cas) {
                Ok(()) => {
                    l.state = next;
                    return (next.phase != state.phase).then_some(Transition {
                        from: state.phase,
                        to: next.phase,
                        figures,
                    });
                }
                Err(StoreError::CasMismatch) => continue,
                Err(StoreError::Failed) => return None,
            }
        }
        None
    }
}

/// The values of every metric the condition reads, for the transition log.
pub fn describe(cond: &Cond, stats: &dyn Stats) -> String {
    let mut metrics = Vec::new();
    collect(cond, &mut metrics);
    metrics
        .iter()
        .map(|m| {
            // `number` rather than `{:.3}`: float formatting is about 20 KB of the filter.
            let v = stats.metric(*m);
            match m {
                Metric::LatencyAtQuantileMs(q) => format!(
                    "LatencyAtQuantileMS({})={}",
                    number::text(*q),
                    number::fixed(v, 1)
                ),
                Metric::NetworkErrorRatio => {
                    format!("NetworkErrorRatio()={}", number::fixed(v, 3))
                }
                Metric::ResponseCodeRatio(a, b, c, d) => {
                    format!("ResponseCodeRatio({a},{b},{c},{d})={}", number::fixed(v, 3))
                }
                Metric::RequestThreshold => format!("RequestThreshold()={}", number::text(v)),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn collect(c: &Cond, out: &mut Vec<Metric>) {
    match c {
        Cond::And(items) | Cond::Or(items) => {
            for c in items {
                collect(c, out);
            }
        }
        Cond::Not(a) => collect(a, out),
        Cond::Compare(m, _, _) => {
            if !out.contains(m) {
                out.push(*m);
            }
        }
    }
}

#[cfg(test)]
mod tests;
