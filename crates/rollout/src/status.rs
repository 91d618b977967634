//! Where a rollout stands: what [`step`](super::step) reads and writes, the sidecar persists,
//! the API serves and [`render`](super::render) turns into a policy.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::time::Timestamp;

/// The rollout's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Moving through the steps (or waiting for a webhook).
    #[default]
    Progressing,
    /// At a pause step: until `rollgate promote`, or until its duration has passed.
    Paused,
    /// Every step done: the canary takes all traffic. Final until the spec changes.
    Promoted,
    /// Stopped by `rollgate abort`, a failed analysis or webhook, or a canary breaker trip:
    /// weight 0, header route off. Final until `rollgate retry` or a spec change.
    Aborted,
}

impl Phase {
    /// Whether the rollout still moves (analysis runs, breaker trips abort it).
    pub fn is_active(self) -> bool {
        matches!(self, Phase::Progressing | Phase::Paused)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Progressing => "Progressing",
            Phase::Paused => "Paused",
            Phase::Promoted => "Promoted",
            Phase::Aborted => "Aborted",
        })
    }
}

fn is_zero_u32(x: &u32) -> bool {
    *x == 0
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// The state of one rollout.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The phase.
    pub phase: Phase,
    /// Index (0-based) of the step being executed; the number of steps once promoted.
    pub current_step: u32,
    /// The canary's weight in percent.
    pub canary_weight: f64,
    /// The rule of the active header route (without the spec's `match`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_route: Option<String>,
    /// Percent of the release route's requests copied to the canary (shadow traffic).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mirror_percent: f64,
    /// Largest response body compared between stable and the canary's copies (0: none).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub mirror_compare_body: u32,
    /// Version of the policy rendered from this status; starts at 1, only grows.
    pub policy_version: u64,
    /// Fingerprint of what defines the release (the stable and canary clusters and the
    /// steps); a spec whose revision differs starts the rollout over.
    pub revision: String,
    /// Counts starts, retries and restarts, so measurements and webhook answers that belong
    /// to an earlier attempt are recognised and dropped.
    pub attempt: u32,
    /// When the current step began (timed pauses count from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Timestamp>,
    /// Failed analysis measurements in this attempt.
    #[serde(default)]
    pub failed_analyses: u32,
    /// The last analysis measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStatus>,
    /// What is going on, for people.
    #[serde(default)]
    pub message: String,
    /// The controller's fingerprint of the policy it last wrote to the WasmPlugin, so a
    /// restarted controller or a new leader bumps `policyVersion` only for a policy that
    /// really changed (the sidecar keeps its versions itself and leaves this out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_policy: Option<String>,
    /// Where the driver last told `spec.notify` the rollout stood, so a transition someone
    /// else wrote into the status (`rollgate promote --kubernetes` patches it directly) is
    /// still told at the next pass. Both modes write it; under the sidecar, whose every
    /// transition is a pass, it always equals the status's own figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notified: Option<Told>,
    /// The known gateways and the policy version each serves, as last read (empty when no
    /// gateway is known: then steps apply as soon as the policy is pushed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<GatewayStatus>,
    /// Set while the current step's policy is pushed but not yet served by every gateway:
    /// the rollout waits at that step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting_gateways: Option<AckWait>,
}

/// The part of a status notifications compare ([`crate::notify::notices`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Told {
    /// The phase.
    pub phase: Phase,
    /// The step.
    pub current_step: u32,
    /// The attempt.
    pub attempt: u32,
    /// Failed analyses in that attempt.
    pub failed_analyses: u32,
}

impl Told {
    /// Where `status` stands.
    pub fn of(status: &RolloutStatus) -> Told {
        Told {
            phase: status.phase,
            current_step: status.current_step,
            attempt: status.attempt,
            failed_analyses: status.failed_analyses,
        }
    }

    /// `status` as it stood when this was told: what the next notices compare against.
    pub fn apply(&self, status: &RolloutStatus) -> RolloutStatus {
        RolloutStatus {
            phase: self.phase,
            current_step: self.current_step,
            attempt: self.attempt,
            failed_analyses: self.failed_analyses,
            ..status.clone()
        }
    }
}

/// One gateway (an Envoy running the filter) and the policy version it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// How it is known: its admin address (`127.0.0.1:9901`) or Prometheus instance.
    pub gateway: String,
    /// The version of this rollout's policy it serves; absent when it serves none yet or
    /// could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Its stats could not be read (paused, down, unreachable).
    #[serde(default, skip_serializing_if = "is_false")]
    pub unreachable: bool,
}

impl GatewayStatus {
    /// Whether it serves `version` or a later one.
    pub fn serves(&self, version: u64) -> bool {
        !self.unreachable && self.version.is_some_and(|v| v >= version)
    }
}

impl fmt::Display for GatewayStatus {
    /// `127.0.0.1:9903 on v4`, `… unreachable`, `… serving no policy`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.unreachable, self.version) {
            (true, _) => write!(f, "{} unreachable", self.gateway),
            (false, Some(v)) if v > 0 => write!(f, "{} on v{v}", self.gateway),
            (false, _) => write!(f, "{} serving no policy", self.gateway),
        }
    }
}

/// A step waiting for the gateways to serve its policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AckWait {
    /// Since when (the deadline counts from here).
    pub since: Timestamp,
    /// The deadline passed and the rollout waits on (`onDeadline: wait`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub overdue: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `2/3 gateways on v5; 127.0.0.1:9903 still on v4`: who serves `version` and who lags.
pub fn ack_summary(gateways: &[GatewayStatus], version: u64) -> String {
    let on = gateways.iter().filter(|g| g.serves(version)).count();
    let lagging: Vec<String> = gateways
        .iter()
        .filter(|g| !g.serves(version))
        .map(|g| match (g.unreachable, g.version) {
            (false, Some(v)) if v > 0 => format!("{} still on v{v}", g.gateway),
            _ => g.to_string(),
        })
        .collect();
    let mut s = format!("{on}/{} gateways on v{version}", gateways.len());
    if !lagging.is_empty() {
        s.push_str("; ");
        s.push_str(&lagging.join(", "));
    }
    s
}

/// How a measurement came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Verdict {
    /// Every measured figure was within its bounds.
    Passed,
    /// At least one figure was out of bounds.
    Failed,
    /// Too little canary traffic (or no data) to judge.
    Inconclusive,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::Inconclusive => "inconclusive",
        })
    }
}

/// One analysis measurement with its figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    /// When it was taken.
    pub at: Timestamp,
    /// The verdict.
    pub verdict: Verdict,
    /// Canary responses in the measured interval.
    pub requests: u64,
    /// Each metric's figure.
    pub figures: Vec<Figure>,
}

impl AnalysisStatus {
    /// `success-rate 0.512 < min 0.99, latency-p99 12ms` over N requests.
    pub fn summary(&self) -> String {
        let figures: Vec<String> = self.figures.iter().map(Figure::to_string).collect();
        if figures.is_empty() {
            return format!("{} canary responses", self.requests);
        }
        format!(
            "{} ({} canary responses)",
            figures.join(", "),
            self.requests
        )
    }
}

/// One metric's figure in a measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Figure {
    /// The metric's name (`success-rate`, `latency-p99`, …).
    pub metric: String,
    /// The measured value (ratios 0–1, latencies in ms); `None` without data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The lower bound, in the value's unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The upper bound, in the value's unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Whether the value is within bounds (true without data: nothing failed).
    pub passed: bool,
}

impl Figure {
    fn is_latency(&self) -> bool {
        self.metric.starts_with("latency-")
    }

    fn fmt_value(&self, v: f64) -> String {
        if self.is_latency() {
            format!("{}ms", trim(v, 1))
        } else {
            trim(v, 4)
        }
    }
}

fn trim(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(v) = self.value else {
            return write!(f, "{} no data", self.metric);
        };
        write!(f, "{} {}", self.metric, self.fmt_value(v))?;
        match (self.passed, self.min, self.max) {
            (false, Some(min), _) if v < min => write!(f, " < min {}", self.fmt_value(min)),
            (false, _, Some(max)) => write!(f, " > max {}", self.fmt_value(max)),
            (true, Some(min), None) => write!(f, " (min {})", self.fmt_value(min)),
            (true, None, Some(max)) => write!(f, " (max {})", self.fmt_value(max)),
            (true, Some(min), Some(max)) => write!(
                f,
                " (within {}..{})",
                self.fmt_value(min),
                self.fmt_value(max)
            ),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(metric: &str, value: Option<f64>, min: Option<f64>, max: Option<f64>) -> Figure {
        let passed = value.is_none_or(|v| min.is_none_or(|m| v >= m) && max.is_none_or(|m| v <= m));
        Figure {
            metric: metric.into(),
            value,
            min,
            max,
            passed,
        }
    }

    #[test]
    fn figures_read_well() {
        assert_eq!(
            fig("success-rate", Some(0.5125), Some(0.99), None).to_string(),
            "success-rate 0.5125 < min 0.99"
        );
        assert_eq!(
            fig("success-rate", Some(1.0), Some(0.99), None).to_string(),
            "success-rate 1 (min 0.99)"
        );
        assert_eq!(
            fig("latency-p99", Some(612.26), None, Some(500.0)).to_string(),
            "latency-p99 612.3ms > max 500ms"
        );
        assert_eq!(
            fig("latency-p99", None, None, Some(500.0)).to_string(),
            "latency-p99 no data"
        );
        let a = AnalysisStatus {
            at: Timestamp(0),
            verdict: Verdict::Passed,
            requests: 40,
            figures: vec![fig("error-rate", Some(0.0), None, Some(0.01))],
        };
        assert_eq!(a.summary(), "error-rate 0 (max 0.01) (40 canary responses)");
    }

    #[test]
    fn status_json_is_camel_case() {
        let s = RolloutStatus {
            phase: Phase::Paused,
            current_step: 1,
            canary_weight: 0.0,
            header_route: Some("Headers(`a`, `b`)".into()),
            policy_version: 3,
            revision: "r".into(),
            attempt: 1,
            ..RolloutStatus::default()
        };
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["phase"], "Paused");
        assert_eq!(json["currentStep"], 1);
        assert_eq!(json["headerRoute"], "Headers(`a`, `b`)");
        assert_eq!(json["policyVersion"], 3);
        let back: RolloutStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn status_written_before_loads_and_writes_back_identically() {
        // Written by the hand-written formatter before jiff: the status a sidecar or the
        // cluster holds today must load with the same instants and write back byte for byte.
        let text = r#"{"phase":"Paused","currentStep":1,"canaryWeight":0.0,"policyVersion":3,"revision":"r","attempt":1,"stepStartedAt":"2026-11-30T18:23:42.123Z","analysis":{"at":"1970-01-01T00:00:00.000Z","verdict":"Passed","requests":40,"figures":[]}}"#;
        let s: RolloutStatus = serde_json::from_str(text).unwrap();
        assert_eq!(s.step_started_at, Some(Timestamp(1_796_063_022_123)));
        let back = serde_json::to_value(&s).unwrap();
        assert_eq!(back["stepStartedAt"], "2026-11-30T18:23:42.123Z");
        assert_eq!(back["analysis"]["at"], "1970-01-01T00:00:00.000Z");
        let again: RolloutStatus = serde_json::from_value(back).unwrap();
        assert_eq!(again, s);
    }
}
