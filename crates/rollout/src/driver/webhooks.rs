//! Webhook steps, for both modes: the call ([`crate::webhook::Call`]) made as a task of the
//! runtime the driver runs on, its answer kept here for the next pass, which feeds it to the
//! engine ([`crate::Event::Webhook`]).
//!
//! Level-triggered: every pass over a rollout that waits at a webhook step asks for the call,
//! and [`Webhooks::start`] makes it once per rollout, attempt and step in this process. The
//! answer is picked up by the next pass (the sidecar ticks every 100 ms, the controller
//! requeues an active rollout every second); if the status write fails, the retry finds the
//! same answer. A new leader, a restarted controller or a restarted sidecar calls again, so
//! a webhook must tolerate a repeated call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::webhook::Call;
use crate::{Event, RolloutStatus};

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

    /// Makes `call` for the rollout `key` (an id unique to the rollout's life: the
    /// controller's UID) in the background, unless this attempt's step is already called (in
    /// flight or answered). `log` gets one line when a call starts (or cannot); `answered`
    /// gets the outcome when it comes.
    pub fn start(
        &self,
        key: &str,
        call: Call,
        log: impl FnOnce(String),
        answered: impl FnOnce(&Result<u16, String>) + Send + 'static,
    ) {
        let Ok(mut slots) = self.slots.lock() else {
            return;
        };
        let same = |s: &Slot| s.call.attempt == call.attempt && s.call.step == call.step;
        if slots.get(key).is_some_and(same) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Passes run inside the runtime; were one not to, the next one retries.
            log(format!("no async runtime to call webhook {}", call.url));
            return;
        };
        log(format!(
            "calling webhook {} (step {})",
            call.url,
            call.step + 1
        ));
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
            answered(&outcome);
            if let Ok(mut slots) = slots.lock() {
                // Dropped if a later call of the rollout replaced this one meanwhile.
                if let Some(slot) = slots.get_mut(&key).filter(|s| s.call == call) {
                    slot.outcome = Some(outcome);
                }
            }
        }));
    }
}
