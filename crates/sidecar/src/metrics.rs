//! The sidecar's own counters for `GET /metrics` (rendered with the rollouts' gauges by
//! [`super::exposition`]), as `prometheus-client` metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use rollgate_rollout::Verdict;

/// The statuses of policy answers that are counted.
const POLICY_CODES: [u16; 4] = [200, 304, 404, 400];

/// `{code="…"}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Code {
    code: u16,
}

/// `{verdict="…"}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    verdict: &'static str,
}

/// `{outcome="…"}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    outcome: &'static str,
}

/// Everything `/metrics` counts.
#[derive(Debug)]
pub struct Metrics {
    /// Policy answers by status: 200, 304, 404, 400.
    policy_answers: Family<Code, Counter>,
    /// Long-polls being held right now.
    pub polls_waiting: Gauge,
    /// Scrapes of Envoy admin endpoints.
    pub scrapes: Counter,
    /// Failed scrapes.
    pub scrape_errors: Counter,
    /// Measurements by verdict: passed, failed, inconclusive.
    analyses: Family<VerdictLabel, Counter>,
    /// Webhook calls by outcome: ok, failed.
    webhooks: Family<Outcome, Counter>,
    /// Rollout transitions (steps, pauses, aborts, promotions).
    pub transitions: Counter,
    /// Rollout files refused.
    pub invalid_files: Counter,
    /// Connections answered 503 because the connection cap was reached.
    pub refused_connections: Counter,
}

impl Default for Metrics {
    /// Every labelled series exists from the start at 0, so a rate over the first event is
    /// not lost.
    fn default() -> Metrics {
        let m = Metrics {
            policy_answers: Family::default(),
            polls_waiting: Gauge::default(),
            scrapes: Counter::default(),
            scrape_errors: Counter::default(),
            analyses: Family::default(),
            webhooks: Family::default(),
            transitions: Counter::default(),
            invalid_files: Counter::default(),
            refused_connections: Counter::default(),
        };
        for code in POLICY_CODES {
            drop(m.policy_answers.get_or_create(&Code { code }));
        }
        for verdict in [Verdict::Passed, Verdict::Failed, Verdict::Inconclusive] {
            drop(m.analyses.get_or_create(&verdict_label(verdict)));
        }
        for ok in [true, false] {
            drop(m.webhooks.get_or_create(&outcome(ok)));
        }
        m
    }
}

fn verdict_label(verdict: Verdict) -> VerdictLabel {
    VerdictLabel {
        verdict: match verdict {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::Inconclusive => "inconclusive",
        },
    }
}

fn outcome(ok: bool) -> Outcome {
    Outcome {
        outcome: if ok { "ok" } else { "failed" },
    }
}

impl Metrics {
    /// Counts a policy answer with `status` (other statuses are not counted).
    pub fn count_policy_answer(&self, status: u16) {
        if POLICY_CODES.contains(&status) {
            self.policy_answers
                .get_or_create(&Code { code: status })
                .inc();
        }
    }

    /// Counts a measurement with `verdict`.
    pub fn count_analysis(&self, verdict: Verdict) {
        self.analyses.get_or_create(&verdict_label(verdict)).inc();
    }

    /// Counts a webhook call by outcome.
    pub fn count_webhook(&self, ok: bool) {
        self.webhooks.get_or_create(&outcome(ok)).inc();
    }

    /// Registers the counters (shared, not copied) in `reg`, in the order they are shown. A
    /// counter's name gets its `_total` suffix from the encoder, and each help a final period.
    pub(super) fn register(&self, reg: &mut Registry) {
        reg.register(
            "rollgate_policy_answers",
            "Answers to GET /v1/policies/NAME by status",
            self.policy_answers.clone(),
        );
        reg.register(
            "rollgate_policy_polls_waiting",
            "Long-polls held open right now",
            self.polls_waiting.clone(),
        );
        reg.register(
            "rollgate_scrapes",
            "Scrapes of Envoy admin endpoints",
            self.scrapes.clone(),
        );
        reg.register(
            "rollgate_scrape_errors",
            "Failed scrapes of Envoy admin endpoints",
            self.scrape_errors.clone(),
        );
        reg.register(
            "rollgate_analysis_measurements",
            "Analysis measurements by verdict",
            self.analyses.clone(),
        );
        reg.register(
            "rollgate_webhook_calls",
            "Webhook step calls by outcome",
            self.webhooks.clone(),
        );
        reg.register(
            "rollgate_rollout_transitions",
            "Rollout transitions",
            self.transitions.clone(),
        );
        reg.register(
            "rollgate_rollout_invalid_files",
            "Rollout files refused",
            self.invalid_files.clone(),
        );
        reg.register(
            "rollgate_http_refused_connections",
            "Connections answered 503 because the connection cap was reached",
            self.refused_connections.clone(),
        );
    }
}
