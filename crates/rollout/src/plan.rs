//! A validated Rollout in the form the engine runs: steps with parsed durations, the analysis
//! with parsed bounds, and the revision that tells a new release from an edit.

use std::fmt;

use super::excerpt::excerpt;
use super::time::human_ms;
use super::types::RolloutSpec;

/// A rollout that passed [`validate::plan`](super::validate::plan).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The rollout's (and policy's) name.
    pub name: String,
    /// The spec it was made from (rendering reads it).
    pub spec: RolloutSpec,
    /// The steps.
    pub steps: Vec<PlanStep>,
    /// Background analysis, if configured.
    pub analysis: Option<AnalysisPlan>,
    /// Fingerprint of the stable and canary clusters and the steps.
    pub revision: String,
    /// Breakers guarding the canary variant: a trip of one aborts the rollout.
    pub canary_breakers: Vec<String>,
    /// How long gateways may take to serve a step's policy.
    pub acknowledge: AckPlan,
}

/// `spec.acknowledge`, ready to run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AckPlan {
    /// Milliseconds the gateways get to serve a step's policy; `None`: no deadline.
    pub deadline_ms: Option<u64>,
    /// Past the deadline, abort (else keep waiting).
    pub abort: bool,
}

/// One step, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanStep {
    /// Set the canary weight (percent).
    SetWeight(f64),
    /// Pause for this many milliseconds, or until promoted (`None`).
    Pause(Option<u64>),
    /// Turn the header route on with this rule, or off (`None`).
    SetHeaderRoute(Option<String>),
    /// Copy this percentage of the release route's requests to the canary (0: stop),
    /// comparing response bodies up to this many bytes (0: not compared).
    SetMirror(f64, u32),
    /// Call the URL; 2xx goes on, anything else aborts.
    Webhook {
        /// `http://…`.
        url: String,
        /// How long to wait for the answer.
        timeout_ms: u64,
    },
}

impl fmt::Display for PlanStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanStep::SetWeight(w) => write!(f, "setWeight {w}"),
            PlanStep::Pause(None) => f.write_str("pause (until promoted)"),
            PlanStep::Pause(Some(ms)) => write!(f, "pause {}", human_ms(*ms)),
            PlanStep::SetHeaderRoute(Some(rule)) => write!(f, "setHeaderRoute {rule}"),
            PlanStep::SetHeaderRoute(None) => f.write_str("setHeaderRoute off"),
            PlanStep::SetMirror(p, 0) => write!(f, "setMirror {p}%"),
            PlanStep::SetMirror(p, b) => write!(f, "setMirror {p}% (bodies up to {b} B compared)"),
            PlanStep::Webhook { url, .. } => write!(f, "webhook {url}"),
        }
    }
}

/// The analysis, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisPlan {
    /// Milliseconds between measurements.
    pub interval_ms: u64,
    /// Failed measurements tolerated before the rollout aborts.
    pub failure_limit: u32,
    /// Fewer canary responses than this make a measurement inconclusive.
    pub min_requests: u64,
    /// The metrics.
    pub metrics: Vec<MetricPlan>,
}

/// One metric with its bounds in the value's unit (ratios, or milliseconds).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPlan {
    /// The name as written (`success-rate`, `latency-p99`).
    pub name: String,
    /// What it measures.
    pub kind: MetricKind,
    /// Lower bound.
    pub min: Option<f64>,
    /// Upper bound.
    pub max: Option<f64>,
}

/// What a metric measures on the canary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MetricKind {
    /// Share of responses that are not 5xx.
    SuccessRate,
    /// Share of responses that are 5xx.
    ErrorRate,
    /// Share of responses that were network errors.
    NetworkErrorRate,
    /// Latency at this quantile (0–1), in milliseconds.
    Latency(f64),
    /// Share of answered mirror copies whose status class differs from the primary's.
    ShadowMismatch,
    /// Share of compared response bodies (`setMirror.compareBody`) that differ.
    ShadowBodyMismatch,
}

impl MetricKind {
    /// Parses a metric name.
    pub fn parse(name: &str) -> Result<MetricKind, String> {
        match name {
            "success-rate" => Ok(MetricKind::SuccessRate),
            "error-rate" => Ok(MetricKind::ErrorRate),
            "network-error-rate" => Ok(MetricKind::NetworkErrorRate),
            "shadow-mismatch" => Ok(MetricKind::ShadowMismatch),
            "shadow-body-mismatch" => Ok(MetricKind::ShadowBodyMismatch),
            _ => {
                let pct = name.strip_prefix("latency-p").ok_or_else(|| {
                    format!(
                        "unknown metric '{}' (known: success-rate, error-rate, \
                         network-error-rate, shadow-mismatch, shadow-body-mismatch, latency-pNN such as latency-p99)",
                        excerpt(name)
                    )
                })?;
                match pct.parse::<f64>() {
                    Ok(p) if p > 0.0 && p < 100.0 && !pct.starts_with('+') => {
                        Ok(MetricKind::Latency(p / 100.0))
                    }
                    _ => Err(format!(
                        "'{}': the percentile must be a number between 0 and 100 \
                         (exclusive), as in latency-p99 or latency-p99.9",
                        excerpt(name)
                    )),
                }
            }
        }
    }

    /// Whether bounds are latencies (durations) rather than ratios.
    pub fn is_latency(self) -> bool {
        matches!(self, MetricKind::Latency(_))
    }
}

/// FNV-1a, 64 bits: a stable fingerprint (std's hasher may change between Rust releases,
/// and revisions are persisted).
pub fn fingerprint(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names() {
        assert_eq!(
            MetricKind::parse("success-rate"),
            Ok(MetricKind::SuccessRate)
        );
        assert_eq!(
            MetricKind::parse("shadow-mismatch"),
            Ok(MetricKind::ShadowMismatch)
        );
        assert_eq!(
            MetricKind::parse("latency-p99"),
            Ok(MetricKind::Latency(0.99))
        );
        let Ok(MetricKind::Latency(q)) = MetricKind::parse("latency-p99.9") else {
            panic!("latency-p99.9 is a latency")
        };
        assert!((q - 0.999).abs() < 1e-12);
        assert!(MetricKind::parse("latency-p100").is_err());
        assert!(MetricKind::parse("latency-p0").is_err());
        assert!(MetricKind::parse("latency-pxx").is_err());
        assert!(MetricKind::parse("p99")
            .unwrap_err()
            .contains("unknown metric 'p99'"));
    }

    #[test]
    fn fingerprint_is_fnv1a() {
        // Reference values of FNV-1a 64.
        assert_eq!(fingerprint(b""), "cbf29ce484222325");
        assert_eq!(fingerprint(b"a"), "af63dc4c8601ec8c");
    }

    #[test]
    fn steps_describe_themselves() {
        assert_eq!(PlanStep::SetWeight(12.5).to_string(), "setWeight 12.5");
        assert_eq!(PlanStep::SetMirror(10.0, 0).to_string(), "setMirror 10%");
        assert_eq!(
            PlanStep::SetMirror(10.0, 512).to_string(),
            "setMirror 10% (bodies up to 512 B compared)"
        );
        assert_eq!(PlanStep::Pause(Some(120_000)).to_string(), "pause 2m");
        assert_eq!(PlanStep::Pause(None).to_string(), "pause (until promoted)");
        assert_eq!(
            PlanStep::SetHeaderRoute(None).to_string(),
            "setHeaderRoute off"
        );
    }
}
