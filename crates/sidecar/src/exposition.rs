//! The Prometheus text exposition (version 0.0.4) of `GET /metrics`: the sidecar's counters
//! ([`Metrics`]) and gauges read from the rollouts' state ([`State`]) at scrape time, encoded
//! by `prometheus-client`.

use prometheus_client::encoding::{
    prometheus_text, EncodeGaugeValue, EncodeLabelSet, EncodeMetric, MetricEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::metrics::Metrics;
use super::registry::{Entry, State};
use rollgate_rollout::Phase;

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// `{rollout="…"}`
#[derive(Debug, EncodeLabelSet)]
struct Rollout {
    rollout: String,
}

/// `{rollout="…",phase="…"}`
#[derive(Debug, EncodeLabelSet)]
struct RolloutPhase {
    rollout: String,
    phase: String,
}

/// One gauge per rollout, read at scrape time and shown in file order. (A `Family` is for
/// live metrics: it would hold a hash map per scrape and print the rollouts in hash order.)
#[derive(Debug)]
struct Rows<L, V>(Vec<(L, V)>);

impl<L: EncodeLabelSet, V: EncodeGaugeValue> EncodeMetric for Rows<L, V> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, v) in &self.0 {
            encoder.encode_family(labels)?.encode_gauge(v)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// The Prometheus text exposition.
pub fn render(m: &Metrics, st: &State) -> String {
    let mut reg = Registry::default();
    m.register(&mut reg);
    fn per<V>(st: &State, f: impl Fn(&Entry) -> Option<V>) -> Rows<Rollout, V> {
        Rows(
            st.entries
                .values()
                .filter_map(|e| {
                    let rollout = e.display_name();
                    f(e).map(|v| (Rollout { rollout }, v))
                })
                .collect(),
        )
    }
    reg.register(
        "rollgate_rollout_policy_version",
        "Version of the policy served for the rollout",
        per(st, |e| e.policy.as_ref().map(|_| e.status.policy_version)),
    );
    reg.register(
        "rollgate_rollout_canary_weight",
        "The canary's weight in percent",
        per(st, |e| e.plan.as_ref().map(|_| e.status.canary_weight)),
    );
    reg.register(
        "rollgate_rollout_step",
        "Steps done (the 0-based index of the current step)",
        per(st, |e| e.plan.as_ref().map(|_| e.status.current_step)),
    );
    reg.register(
        "rollgate_rollout_steps",
        "Steps in the rollout",
        per(st, |e| e.plan.as_ref().map(|p| p.steps.len())),
    );
    reg.register(
        "rollgate_rollout_invalid",
        "1 while the rollout file is refused (the last good version keeps running)",
        per(st, |e| Some(u32::from(e.error.is_some()))),
    );
    let phases = [
        Phase::Progressing,
        Phase::Paused,
        Phase::Promoted,
        Phase::Aborted,
    ];
    reg.register(
        "rollgate_rollout_phase",
        "1 for the rollout's phase",
        Rows(
            st.entries
                .values()
                .filter(|e| e.plan.is_some())
                .flat_map(|e| {
                    phases.iter().map(|p| {
                        let labels = RolloutPhase {
                            rollout: e.display_name(),
                            phase: p.to_string(),
                        };
                        (labels, u32::from(e.status.phase == *p))
                    })
                })
                .collect(),
        ),
    );
    let mut out = String::new();
    // Writing to a String cannot fail, and every label value is escaped by the encoder.
    let _ = prometheus_text::encode(&mut out, &reg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollgate_rollout::Verdict;

    #[test]
    fn counters_keep_their_names_labels_and_types() {
        let m = Metrics::default();
        m.count_policy_answer(404);
        m.count_policy_answer(404);
        m.count_policy_answer(500);
        m.count_analysis(Verdict::Failed);
        m.count_webhook(true);
        m.polls_waiting.inc();
        m.scrapes.inc();
        let text = render(&m, &State::default());
        for line in [
            "# HELP rollgate_policy_answers_total Answers to GET /v1/policies/NAME by status.",
            "# TYPE rollgate_policy_answers_total counter",
            "rollgate_policy_answers_total{code=\"404\"} 2",
            "rollgate_policy_answers_total{code=\"200\"} 0",
            "# TYPE rollgate_policy_polls_waiting gauge",
            "rollgate_policy_polls_waiting 1",
            "rollgate_scrapes_total 1",
            "rollgate_scrape_errors_total 0",
            "rollgate_analysis_measurements_total{verdict=\"failed\"} 1",
            "rollgate_analysis_measurements_total{verdict=\"passed\"} 0",
            "rollgate_webhook_calls_total{outcome=\"ok\"} 1",
            "rollgate_webhook_calls_total{outcome=\"failed\"} 0",
            "rollgate_rollout_transitions_total 0",
            "rollgate_rollout_invalid_files_total 0",
            "rollgate_http_refused_connections_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("code=\"500\""), "{text}");
        // No rollouts: their gauges are described, with no samples.
        assert!(
            text.contains("# TYPE rollgate_rollout_step gauge\n"),
            "{text}"
        );
        assert!(!text.contains("rollgate_rollout_step{"), "{text}");
    }

    #[test]
    fn rollout_names_are_escaped_in_labels() {
        let mut st = State::default();
        let file = std::path::PathBuf::from("odd.yaml");
        let entry = Entry {
            file: file.clone(),
            content: String::new(),
            name: Some("a\"b\\c\nd".into()),
            plan: None,
            status: Default::default(),
            policy: None,
            tcp: None,
            error: Some("refused".into()),
            gone_since: None,
            id: 1,
            generation: 0,
        };
        st.entries.insert(file, entry);
        let text = render(&Metrics::default(), &st);
        assert!(
            text.contains("rollgate_rollout_invalid{rollout=\"a\\\"b\\\\c\\nd\"} 1\n"),
            "{text}"
        );
        // Not a valid rollout: no step or phase gauges.
        assert!(!text.contains("rollgate_rollout_phase{"), "{text}");
    }
}
