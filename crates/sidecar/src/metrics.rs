//! The sidecar's own counters for `GET /metrics` (rendered with the rollouts' gauges by
//! [`super::exposition`]).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use rollgate_rollout::Verdict;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Everything `/metrics` counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Policy answers by status: 200, 304, 404, 400.
    pub policy_answers: [Counter; 4],
    /// Long-polls being held right now.
    pub polls_waiting: AtomicI64,
    /// Scrapes of Envoy admin endpoints.
    pub scrapes: Counter,
    /// Failed scrapes.
    pub scrape_errors: Counter,
    /// Measurements by verdict: passed, failed, inconclusive.
    pub analyses: [Counter; 3],
    /// Webhook calls answered 2xx.
    pub webhooks_ok: Counter,
    /// Webhook calls that failed.
    pub webhooks_failed: Counter,
    /// Rollout transitions (steps, pauses, aborts, promotions).
    pub transitions: Counter,
    /// Rollout files refused.
    pub invalid_files: Counter,
    /// Connections answered 503 because the connection cap was reached.
    pub refused_connections: Counter,
}

pub(super) const POLICY_CODES: [u16; 4] = [200, 304, 404, 400];

impl Metrics {
    /// The counter of policy answers with `status`.
    pub fn policy_answer(&self, status: u16) -> Option<&Counter> {
        let i = POLICY_CODES.iter().position(|c| *c == status)?;
        self.policy_answers.get(i)
    }

    /// The counter of measurements with `verdict`.
    pub fn analysis(&self, verdict: Verdict) -> &Counter {
        &self.analyses[match verdict {
            Verdict::Passed => 0,
            Verdict::Failed => 1,
            Verdict::Inconclusive => 2,
        }]
    }

    /// The counter of webhook calls by outcome.
    pub fn webhooks(&self, ok: bool) -> &Counter {
        if ok {
            &self.webhooks_ok
        } else {
            &self.webhooks_failed
        }
    }
}
