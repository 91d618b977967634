//! Webhook steps: `POST` the rollout's status to the step's URL and feed the answer back to
//! the engine as [`Event::Webhook`].
//!
//! [`Call::send`] and [`Call::answer`] are the one implementation of a call; the driver makes
//! it, for the sidecar and the controller alike ([`crate::driver::Webhooks`]).

use std::time::Duration;

use super::client;
use crate::{Effect, Event, RolloutStatus};

/// One call to make.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The rollout's name.
    pub rollout: String,
    /// The attempt it belongs to.
    pub attempt: u32,
    /// The step it belongs to.
    pub step: u32,
    /// Where.
    pub url: String,
    /// How long to wait.
    pub timeout_ms: u64,
    /// The status at the call, sent as the body.
    pub status: RolloutStatus,
}

impl Call {
    /// The call an [`Effect::CallWebhook`] asks for, made with `status`; `None` for other
    /// effects.
    pub fn from_effect(rollout: &str, status: &RolloutStatus, effect: &Effect) -> Option<Call> {
        match effect {
            Effect::CallWebhook {
                attempt,
                step,
                url,
                timeout_ms,
            } => Some(Call {
                rollout: rollout.to_string(),
                attempt: *attempt,
                step: *step,
                url: url.clone(),
                timeout_ms: *timeout_ms,
                status: status.clone(),
            }),
            Effect::Note(_) => None,
        }
    }

    /// The JSON body: the rollout, the step and attempt it is called for, and the status.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "rollout": self.rollout,
            "step": self.step,
            "attempt": self.attempt,
            "status": self.status,
        })
    }

    /// Makes the call (at most `timeout_ms`): the HTTP status, or why there was none.
    pub async fn send(&self) -> Result<u16, String> {
        client::fetch(
            "POST",
            &self.url,
            Some(self.body().to_string().as_bytes()),
            Duration::from_millis(self.timeout_ms),
        )
        .await
        .map(|r| r.status)
        .map_err(|e| e.to_string())
    }

    /// The engine event reporting `outcome`; the engine drops it if the rollout has moved
    /// on (another attempt or step), so a late answer never applies to the wrong step.
    pub fn answer(&self, outcome: Result<u16, String>) -> Event {
        Event::Webhook {
            attempt: self.attempt,
            step: self.step,
            outcome,
        }
    }
}

/// Whether `outcome` lets the rollout go on (a 2xx answer), as the engine decides it.
pub fn succeeded(outcome: &Result<u16, String>) -> bool {
    matches!(outcome, Ok(c) if (200..300).contains(c))
}
