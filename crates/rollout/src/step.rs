//! The step engine: (plan, status, event, now) → new status + effects. One pure function,
//! [`step`]; the sidecar does the I/O its effects ask for and feeds the outcomes back as
//! events.
//!
//! Semantics follow Argo Rollouts:
//! * steps run in order; `setWeight` and `setHeaderRoute` take effect at once, a pause stops
//!   until `promote` (or until its duration has passed), a webhook stops until it answers;
//! * after the last step the canary is promoted: weight 100, header route off, phase
//!   `Promoted`;
//! * abort (by hand, by the analysis after more than `failureLimit` failed measurements, by
//!   a failed webhook, or by a trip of a breaker guarding the canary) sets weight 0 and the
//!   header route off: everyone is back on stable; `retry` starts over from the first step;
//! * a spec whose revision (stable and canary clusters, steps) differs starts over as a new
//!   release; other edits (limits, breakers, fixed routes, analysis bounds) apply in place;
//! * with gateways known ([`Event::Gateways`]), a step that changes the policy is applied only
//!   once every gateway serves the version pushed for it: the rollout waits at that step
//!   (analysis measurements are dropped meanwhile, since part of the traffic still ran the
//!   old policy), and past `spec.acknowledge.deadline` waits on or aborts. With no gateway
//!   known, steps apply as soon as the policy is pushed, as before.

use super::plan::{Plan, PlanStep};
use super::status::{AnalysisStatus, GatewayStatus, Phase, RolloutStatus, Verdict};
use super::time::{human_ms, Timestamp};

mod ack;

/// Something that happened to a rollout.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Time passed (timed pauses end).
    Tick,
    /// `rollgate promote`: release the current pause.
    Promote,
    /// `rollgate abort`.
    Abort,
    /// `rollgate retry`: start an aborted rollout over.
    Retry,
    /// An analysis measurement of attempt `attempt`.
    Analysis {
        /// The attempt it was measured for.
        attempt: u32,
        /// The figures.
        measurement: AnalysisStatus,
    },
    /// A webhook call ended: `Ok(status code)` or `Err(why it failed)`.
    Webhook {
        /// The attempt it was called for.
        attempt: u32,
        /// The step it was called for.
        step: u32,
        /// The answer.
        outcome: Result<u16, String>,
    },
    /// A breaker guarding the canary opened.
    BreakerTripped {
        /// The attempt the trip was seen in.
        attempt: u32,
        /// The breaker's name.
        breaker: String,
        /// Trips seen since the last check.
        trips: u64,
    },
    /// The spec was (re)loaded: starts over if its revision differs from the status's.
    SpecChanged,
    /// The sidecar restarted with this status: re-issue what was in flight.
    Resumed,
    /// The known gateways were read: the policy version each serves (every one of them,
    /// each time; an empty list means no gateway is known).
    Gateways {
        /// Each gateway with its version.
        gateways: Vec<GatewayStatus>,
    },
}

/// What the caller must do besides storing the new status.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Call a webhook and report with [`Event::Webhook`].
    CallWebhook {
        /// Attempt to report back.
        attempt: u32,
        /// Step to report back.
        step: u32,
        /// The URL.
        url: String,
        /// How long to wait for the answer.
        timeout_ms: u64,
    },
    /// A transition worth a log line (and, in Kubernetes, an Event).
    Note(String),
}

/// The outcome of [`step`].
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The new status (equal to the old one if nothing changed).
    pub status: RolloutStatus,
    /// What to do.
    pub effects: Vec<Effect>,
}

/// A command that does not apply in the rollout's state (e.g. promote when not paused).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Applies `event` to `status` under `plan` at time `now`.
pub fn step(
    plan: &Plan,
    status: &RolloutStatus,
    event: Event,
    now: Timestamp,
) -> Result<Transition, Refused> {
    let mut run = Run {
        plan,
        st: status.clone(),
        fx: Vec::new(),
        now,
    };
    let active = status.phase.is_active();
    let current = run.current().cloned();
    let awaiting = status.awaiting_gateways.is_some();
    match event {
        // Waiting for the gateways: only a reading of them moves the step on, and the
        // deadline is judged at the first reading past it, so an abort names who lagged
        // then (a paused gateway holds a reading for its timeout, longer than a deadline
        // may be, and the last reading before it may be older than the push).
        Event::Tick | Event::Resumed if active && awaiting => {}
        Event::Tick if active && !matches!(current, Some(PlanStep::Webhook { .. })) => {
            run.enter();
        }
        Event::Tick => {}
        Event::Promote => {
            if status.phase != Phase::Paused {
                return Err(Refused(format!(
                    "{} is not paused ({}): nothing to promote",
                    plan.name,
                    run.position()
                )));
            }
            run.note(format!("promoted past {}", run.position()));
            run.next();
            run.enter();
        }
        Event::Abort => match status.phase {
            Phase::Aborted => {
                return Err(Refused(format!("{} is already aborted", plan.name)));
            }
            Phase::Promoted => {
                return Err(Refused(format!(
                    "{} is already promoted; change its spec to start a new release",
                    plan.name
                )));
            }
            _ => run.abort("aborted by `rollgate abort`".to_string()),
        },
        Event::Retry => {
            if status.phase != Phase::Aborted {
                return Err(Refused(format!(
                    "{} is not aborted ({}): nothing to retry",
                    plan.name,
                    run.position()
                )));
            }
            run.restart("retrying from the first step");
        }
        Event::Analysis {
            attempt,
            measurement,
        } if active && attempt == status.attempt && !awaiting => run.analysis(measurement),
        Event::Analysis { .. } => {}
        Event::Webhook {
            attempt,
            step,
            outcome,
        } if active && attempt == status.attempt && step == status.current_step => {
            if let Some(PlanStep::Webhook { url, .. }) = current {
                match outcome {
                    Ok(code) if (200..300).contains(&code) => {
                        run.note(format!("webhook {url} answered {code}"));
                        run.next();
                        run.enter();
                    }
                    Ok(code) => run.abort(format!("webhook {url} answered {code}")),
                    Err(e) => run.abort(format!("webhook {url} failed: {e}")),
                }
            }
        }
        Event::Webhook { .. } => {}
        Event::BreakerTripped {
            attempt,
            breaker,
            trips,
        } if active && attempt == status.attempt => {
            let s = if trips == 1 { "" } else { "s" };
            run.abort(format!(
                "circuit breaker '{breaker}' on the canary opened ({trips} trip{s})"
            ));
        }
        Event::BreakerTripped { .. } => {}
        Event::SpecChanged if status.revision != plan.revision => {
            if status.revision.is_empty() {
                run.restart("started");
            } else {
                run.restart("new release (stable, canary or steps changed): starting over");
            }
        }
        Event::SpecChanged => {}
        Event::Resumed if active => match current {
            Some(PlanStep::Webhook { url, timeout_ms }) => run.fx.push(Effect::CallWebhook {
                attempt: status.attempt,
                step: status.current_step,
                url,
                timeout_ms,
            }),
            _ => run.enter(),
        },
        Event::Resumed => {}
        Event::Gateways { gateways } => {
            // Kept in any phase, so the status shows what each gateway serves.
            run.st.gateways = gateways;
            if active && awaiting {
                run.check_ack();
            }
        }
    }
    Ok(Transition {
        status: run.st,
        effects: run.fx,
    })
}

struct Run<'a> {
    plan: &'a Plan,
    st: RolloutStatus,
    fx: Vec<Effect>,
    now: Timestamp,
}

impl Run<'_> {
    fn current(&self) -> Option<&PlanStep> {
        self.plan.steps.get(self.st.current_step as usize)
    }

    /// `step 3/6 (setWeight 50)`.
    fn position(&self) -> String {
        let n = self.plan.steps.len();
        match self.current() {
            Some(s) => format!(
                "{}, step {}/{n}: {s}",
                self.st.phase,
                self.st.current_step + 1
            ),
            None => format!("{}, all {n} steps done", self.st.phase),
        }
    }

    fn note(&mut self, text: String) {
        self.fx.push(Effect::Note(text));
    }

    fn next(&mut self) {
        self.st.current_step += 1;
        self.st.step_started_at = Some(self.now);
        self.st.phase = Phase::Progressing;
    }

    /// Runs steps from the current one until one blocks or none are left.
    fn enter(&mut self) {
        if self.st.awaiting_gateways.is_some() {
            // The step stays until the gateways serve its policy (`check_ack`).
            return;
        }
        let total = self.plan.steps.len();
        loop {
            let n = self.st.current_step as usize + 1;
            let Some(step) = self.current().cloned() else {
                self.complete();
                return;
            };
            match step {
                PlanStep::SetWeight(w) => {
                    let changed = self.st.canary_weight != w;
                    if changed {
                        self.note(format!("step {n}/{total}: canary weight {w}%"));
                    }
                    self.st.canary_weight = w;
                    if changed && self.await_gateways() {
                        return;
                    }
                    self.next();
                }
                PlanStep::SetHeaderRoute(rule) => {
                    let changed = self.st.header_route != rule;
                    if changed {
                        self.note(match &rule {
                            Some(r) => format!("step {n}/{total}: header route {r} to the canary"),
                            None => format!("step {n}/{total}: header route off"),
                        });
                    }
                    self.st.header_route = rule;
                    if changed && self.await_gateways() {
                        return;
                    }
                    self.next();
                }
                PlanStep::SetMirror(p, compare) => {
                    let compare = if p > 0.0 { compare } else { 0 };
                    // Either changes the policy the gateways must serve before the step is done.
                    let changed =
                        self.st.mirror_percent != p || self.st.mirror_compare_body != compare;
                    if self.st.mirror_percent != p {
                        self.note(if p > 0.0 {
                            format!("step {n}/{total}: {p}% of requests copied to the canary")
                        } else {
                            format!("step {n}/{total}: mirroring off")
                        });
                    }
                    self.st.mirror_percent = p;
                    self.st.mirror_compare_body = compare;
                    if changed && self.await_gateways() {
                        return;
                    }
                    self.next();
                }
                PlanStep::Pause(duration) => {
                    let started = *self.st.step_started_at.get_or_insert(self.now);
                    let message = match duration {
                        Some(ms) if self.now.since(started) >= ms => {
                            self.next();
                            continue;
                        }
                        Some(ms) => format!(
                            "paused at step {n}/{total} for {} (until {}); \
                             `rollgate promote {}` ends it early",
                            human_ms(ms),
                            started.plus_ms(ms),
                            self.plan.name
                        ),
                        None => format!(
                            "paused at step {n}/{total}: run `rollgate promote {}` to go on",
                            self.plan.name
                        ),
                    };
                    if self.st.phase != Phase::Paused {
                        self.note(message.clone());
                    }
                    self.st.phase = Phase::Paused;
                    self.st.message = message;
                    return;
                }
                PlanStep::Webhook { url, timeout_ms } => {
                    self.st.phase = Phase::Progressing;
                    self.st.message = format!("step {n}/{total}: waiting for webhook {url}");
                    self.fx.push(Effect::CallWebhook {
                        attempt: self.st.attempt,
                        step: self.st.current_step,
                        url,
                        timeout_ms,
                    });
                    return;
                }
            }
        }
    }

    fn complete(&mut self) {
        self.st.awaiting_gateways = None;
        self.st.phase = Phase::Promoted;
        self.st.canary_weight = 100.0;
        self.st.header_route = None;
        // The canary is what users get now: nothing left to shadow.
        self.st.mirror_percent = 0.0;
        self.st.mirror_compare_body = 0;
        self.st.current_step = self.plan.steps.len() as u32;
        self.st.message = "promoted: the canary serves all traffic".to_string();
        self.note(self.st.message.clone());
    }

    fn abort(&mut self, why: String) {
        self.st.awaiting_gateways = None;
        self.st.phase = Phase::Aborted;
        self.st.canary_weight = 0.0;
        self.st.header_route = None;
        self.st.mirror_percent = 0.0;
        self.st.mirror_compare_body = 0;
        self.st.message = format!(
            "aborted at step {}/{}: {why}; all traffic is back on {}",
            (self.st.current_step as usize + 1).min(self.plan.steps.len()),
            self.plan.steps.len(),
            self.plan.spec.stable_variant
        );
        self.note(self.st.message.clone());
    }

    fn restart(&mut self, why: &str) {
        self.st.attempt += 1;
        self.st.revision = self.plan.revision.clone();
        self.st.current_step = 0;
        self.st.canary_weight = 0.0;
        self.st.header_route = None;
        self.st.mirror_percent = 0.0;
        self.st.mirror_compare_body = 0;
        self.st.failed_analyses = 0;
        self.st.analysis = None;
        self.st.awaiting_gateways = None;
        self.st.phase = Phase::Progressing;
        self.st.step_started_at = Some(self.now);
        self.st.message = why.to_string();
        self.note(format!("{why} (attempt {})", self.st.attempt));
        self.enter();
    }

    fn analysis(&mut self, m: AnalysisStatus) {
        let verdict = m.verdict;
        let summary = m.summary();
        self.st.analysis = Some(m);
        if verdict != Verdict::Failed {
            return;
        }
        self.st.failed_analyses += 1;
        let limit = self.plan.analysis.as_ref().map_or(0, |a| a.failure_limit);
        let failed = self.st.failed_analyses;
        if failed > limit {
            self.abort(format!(
                "analysis failed {failed} time{} (failureLimit {limit}): {summary}",
                if failed == 1 { "" } else { "s" }
            ));
        } else {
            self.note(format!(
                "analysis failed ({failed} of {} allowed): {summary}",
                limit
            ));
        }
    }
}

#[cfg(test)]
#[path = "step_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "step_ack_tests.rs"]
mod ack_tests;
