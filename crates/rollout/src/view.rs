//! What the sidecar's API answers and the CLI shows, for both modes (the controller's
//! `--kubernetes` commands build the same views from Rollout resources): one rollout's view,
//! the list, and a command's body with where it expects the rollout to stand.

use serde::{Deserialize, Serialize};

use crate::RolloutStatus;

/// One rollout, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutView {
    /// The rollout's name (the file's stem while the file never validated).
    pub name: String,
    /// The rollout file.
    pub file: String,
    /// Why the file is refused, if it is; the last good version keeps running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The steps of the last good version, described.
    pub steps: Vec<String>,
    /// Where it stands.
    pub status: RolloutStatus,
    /// Whether a policy is served for it.
    pub serving: bool,
}

/// `GET /v1/rollouts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutList {
    /// Every rollout, by file name.
    pub rollouts: Vec<RolloutView>,
}

/// A command's body: none, or `{"expect": {"step": N, "attempt": A}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    /// Where the rollout must stand for the command to act (else 409).
    #[serde(default)]
    pub expect: Expect,
}

/// Where a command expects the rollout to stand (`{"expect": {"step": 4}}`); a command
/// retried after a timeout then acts at most once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The step (1-based, as shown: "step 4/6") the rollout must be at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    /// The attempt (`status.attempt`) it must be in: a retry starts a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

impl Expect {
    /// Why `status` is not where this expects it, if it is not.
    pub fn mismatch(&self, name: &str, steps: usize, status: &RolloutStatus) -> Option<String> {
        let at = status.current_step.saturating_add(1);
        let step_moved = self.step.is_some_and(|s| s != at);
        let attempt_moved = self.attempt.is_some_and(|a| a != status.attempt);
        if !step_moved && !attempt_moved {
            return None;
        }
        let now = if status.current_step as usize >= steps {
            format!("{:?}, all {steps} steps done", status.phase)
        } else {
            format!("{:?} at step {at}/{steps}", status.phase)
        };
        let expected = match (self.step, self.attempt) {
            (Some(s), Some(a)) => format!("step {s} of attempt {a}"),
            (Some(s), None) => format!("step {s}"),
            (None, Some(a)) => format!("attempt {a}"),
            (None, None) => String::new(),
        };
        Some(format!(
            "{name} is {now} (attempt {}), not at {expected}: not applied (an earlier try may \
             have been)",
            status.attempt
        ))
    }
}
