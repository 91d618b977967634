//! The Prometheus text exposition of `GET /metrics`: the sidecar's counters ([`Metrics`]) and
//! gauges read from the rollouts' state ([`State`]) at scrape time.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::metrics::{Counter, Metrics, POLICY_CODES};
use super::registry::State;
use rollgate_rollout::Phase;

/// The Prometheus text exposition.
pub fn render(m: &Metrics, st: &State) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let one = |c: &Counter| vec![(String::new(), c.get() as f64)];
    metric(
        "rollgate_policy_answers_total",
        "counter",
        "Answers to GET /v1/policies/NAME by status.",
        &POLICY_CODES
            .iter()
            .zip(&m.policy_answers)
            .map(|(code, c)| (format!("{{code=\"{code}\"}}"), c.get() as f64))
            .collect::<Vec<_>>(),
    );
    metric(
        "rollgate_policy_polls_waiting",
        "gauge",
        "Long-polls held open right now.",
        &[(
            String::new(),
            m.polls_waiting.load(Ordering::Relaxed) as f64,
        )],
    );
    metric(
        "rollgate_scrapes_total",
        "counter",
        "Scrapes of Envoy admin endpoints.",
        &one(&m.scrapes),
    );
    metric(
        "rollgate_scrape_errors_total",
        "counter",
        "Failed scrapes of Envoy admin endpoints.",
        &one(&m.scrape_errors),
    );
    metric(
        "rollgate_analysis_measurements_total",
        "counter",
        "Analysis measurements by verdict.",
        &["passed", "failed", "inconclusive"]
            .iter()
            .zip(&m.analyses)
            .map(|(v, c)| (format!("{{verdict=\"{v}\"}}"), c.get() as f64))
            .collect::<Vec<_>>(),
    );
    metric(
        "rollgate_webhook_calls_total",
        "counter",
        "Webhook step calls by outcome.",
        &[
            ("{outcome=\"ok\"}".to_string(), m.webhooks_ok.get() as f64),
            (
                "{outcome=\"failed\"}".to_string(),
                m.webhooks_failed.get() as f64,
            ),
        ],
    );
    metric(
        "rollgate_rollout_transitions_total",
        "counter",
        "Rollout transitions.",
        &one(&m.transitions),
    );
    metric(
        "rollgate_rollout_invalid_files_total",
        "counter",
        "Rollout files refused.",
        &one(&m.invalid_files),
    );
    metric(
        "rollgate_http_refused_connections_total",
        "counter",
        "Connections answered 503 because the connection cap was reached.",
        &one(&m.refused_connections),
    );
    let per = |f: &dyn Fn(&super::registry::Entry) -> Option<f64>| -> Vec<(String, f64)> {
        st.entries
            .values()
            .filter_map(|e| {
                let labels = format!("{{rollout=\"{}\"}}", escape(&e.display_name()));
                f(e).map(|v| (labels, v))
            })
            .collect()
    };
    metric(
        "rollgate_rollout_policy_version",
        "gauge",
        "Version of the policy served for the rollout.",
        &per(&|e| e.policy.as_ref().map(|_| e.status.policy_version as f64)),
    );
    metric(
        "rollgate_rollout_canary_weight",
        "gauge",
        "The canary's weight in percent.",
        &per(&|e| e.plan.as_ref().map(|_| e.status.canary_weight)),
    );
    metric(
        "rollgate_rollout_step",
        "gauge",
        "Steps done (the 0-based index of the current step).",
        &per(&|e| e.plan.as_ref().map(|_| f64::from(e.status.current_step))),
    );
    metric(
        "rollgate_rollout_steps",
        "gauge",
        "Steps in the rollout.",
        &per(&|e| e.plan.as_ref().map(|p| p.steps.len() as f64)),
    );
    metric(
        "rollgate_rollout_invalid",
        "gauge",
        "1 while the rollout file is refused (the last good version keeps running).",
        &per(&|e| Some(if e.error.is_some() { 1.0 } else { 0.0 })),
    );
    let mut phases = Vec::new();
    for e in st.entries.values().filter(|e| e.plan.is_some()) {
        for p in [
            Phase::Progressing,
            Phase::Paused,
            Phase::Promoted,
            Phase::Aborted,
        ] {
            phases.push((
                format!(
                    "{{rollout=\"{}\",phase=\"{p}\"}}",
                    escape(&e.display_name())
                ),
                if e.status.phase == p { 1.0 } else { 0.0 },
            ));
        }
    }
    metric(
        "rollgate_rollout_phase",
        "gauge",
        "1 for the rollout's phase.",
        &phases,
    );
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
