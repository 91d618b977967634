//! Webhook steps: `POST` the rollout's status to the step's URL on a thread of its own, and
//! feed the answer back to the engine as [`Event::Webhook`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::client;
use super::registry::Shared;
use crate::rollout::{Event, RolloutStatus, Timestamp};

/// One call to make.
#[derive(Debug, Clone)]
pub struct Call {
    /// The rollout file.
    pub key: PathBuf,
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

/// Calls the webhook in the background.
pub fn spawn(shared: Arc<Shared>, call: Call) {
    shared.log(&format!(
        "{}: calling webhook {} (step {})",
        call.rollout,
        call.url,
        call.step + 1
    ));
    let spawned = std::thread::Builder::new()
        .name(format!("webhook-{}", call.rollout))
        .spawn({
            let shared = shared.clone();
            let call = call.clone();
            move || run(&shared, call)
        });
    if let Err(e) = spawned {
        // Called with the state locked, so the failure cannot be fed back here; the rollout
        // waits at the step, and a restart of the sidecar calls again.
        shared.log(&format!(
            "{}: cannot start the webhook call: {e}",
            call.rollout
        ));
    }
}

fn run(shared: &Arc<Shared>, call: Call) {
    let body = serde_json::json!({
        "rollout": call.rollout,
        "step": call.step,
        "attempt": call.attempt,
        "status": call.status,
    });
    let outcome = client::request(
        "POST",
        &call.url,
        Some(body.to_string().as_bytes()),
        Duration::from_millis(call.timeout_ms),
    )
    .map(|r| r.status)
    .map_err(|e| e.to_string());
    finish(shared, call, outcome);
}

fn finish(shared: &Arc<Shared>, call: Call, outcome: Result<u16, String>) {
    let ok = matches!(outcome, Ok(c) if (200..300).contains(&c));
    shared.metrics.webhooks(ok).inc();
    let mut st = shared.lock();
    let event = Event::Webhook {
        attempt: call.attempt,
        step: call.step,
        outcome,
    };
    // Not a command: a stale answer is dropped by the engine, never refused.
    let _ = shared.apply(&mut st, &call.key, event, Timestamp::now());
}
