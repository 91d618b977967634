//! Webhook steps under `serve --kubernetes`: the sidecar's call
//! ([`rollgate_rollout::webhook::Call`]) made as a task of the controller's runtime, its answer kept here for
//! the reconciles that feed it to the engine ([`rollgate_rollout::Event::Webhook`]).
//!
//! Level-triggered like the rest of the controller: every reconcile of a rollout that waits
//! at a webhook step asks for the call, and [`Webhooks::start`] makes it once per rollout,
//! attempt and step in this process. The answer is picked up by the next reconcile: a
//! rollout waiting at a webhook is active, so it is requeued every second; if the status
//! write fails, the retry finds the same answer. A new leader, or a restarted controller,
//! calls again — as a restarted sidecar does — so a webhook must tolerate a repeated call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rollgate_rollout::webhook::Call;
use rollgate_rollout::{Event, RolloutStatus};

/// One call made for a rollout, and its answer once it came.
struct Slot {
    call: Call,
    outcome: Option<Result<u16, String>>,
}

/// The last webhook call of every rollout (by UID), in flight or answered.
///
/// A call is kept after its answer moved the rollout on: a reconcile of a stale copy of the
/// Rollout (the watch has not delivered the write yet) then finds the answer again, steps to
/// the same status and fails its write with a conflict, instead of calling a second time.
/// Keyed by UID so that a Rollout deleted and created again under the same name (its
/// attempts counting from 1 again) does not inherit the old answers.
#[derive(Default)]
pub struct Webhooks {
    // Shared with the task of each call, which stores the answer.
    slots: Arc<Mutex<HashMap<String, Slot>>>,
}

/// Whether `call` is the one `status` waits on (same attempt and step, still moving).
fn awaited(call: &Call, status: &RolloutStatus) -> bool {
    status.phase.is_active() && call.attempt == status.attempt && call.step == status.current_step
}

impl Webhooks {
    /// Drops the slots of rollouts whose UID `live` says is gone; how many slots remain.
    pub fn retain(&self, live: impl Fn(&str) -> bool) -> usize {
        self.slots.lock().map_or(0, |mut slots| {
            slots.retain(|uid, _| live(uid));
            slots.len()
        })
    }

    /// The answer to the call `status` waits on, as the engine event, once it came.
    pub fn answer(&self, key: &str, status: &RolloutStatus) -> Option<Event> {
        let slots = self.slots.lock().ok()?;
        let slot = slots.get(key).filter(|s| awaited(&s.call, status))?;
        let outcome = slot.outcome.clone()?;
        Some(slot.call.answer(outcome))
    }

    /// Makes `call` for the rollout `key` (its UID; `ns/name` in log lines) in the
    /// background, unless this attempt's step is already called (in flight or answered).
    pub fn start(&self, key: &str, name: &str, call: Call) {
        let Ok(mut slots) = self.slots.lock() else {
            return;
        };
        let same = |s: &Slot| s.call.attempt == call.attempt && s.call.step == call.step;
        if slots.get(key).is_some_and(same) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Reconciles call this inside the runtime; were it not, the next one retries.
            tracing::warn!(
                rollout = name,
                step = call.step + 1,
                "no async runtime to call webhook {}",
                call.url
            );
            return;
        };
        tracing::info!(
            rollout = name,
            step = call.step + 1,
            "calling webhook {}",
            call.url
        );
        slots.insert(
            key.to_string(),
            Slot {
                call: call.clone(),
                outcome: None,
            },
        );
        let (slots, key) = (self.slots.clone(), key.to_string());
        drop(runtime.spawn(async move {
            let outcome = call.send().await;
            if let Ok(mut slots) = slots.lock() {
                // Dropped if a later call of the rollout replaced this one meanwhile.
                if let Some(slot) = slots.get_mut(&key).filter(|s| s.call == call) {
                    slot.outcome = Some(outcome);
                }
            }
        }));
    }
}
