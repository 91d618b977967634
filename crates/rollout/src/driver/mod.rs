//! The one driver of a rollout, for both modes: `serve --dir` (a directory of Rollout files
//! and their status files) and `serve --kubernetes` (the API server). Each is a [`Store`];
//! everything else is written once, here.
//!
//! One [`Driver::pass`] over one rollout: load its plan and status from the store; step it
//! with the event that started the pass (a command, the clock, a spec change, a reading),
//! then with the answer of the webhook it waits at ([`Webhooks`]) and with what the store
//! observes of the gateways ([`Store::observe`]); render its policies and, when they differ
//! from what the store serves, have the filter's own acceptance function accept them (a
//! refusal keeps the last good policy and says why: [`Store::refuse`]); number a new policy;
//! commit the status and the policies together ([`Store::commit`], which may find the rollout
//! moved since the load: the pass then starts over on the fresh state). Only once the status
//! is stored: the notifications, the webhook call the status waits at, and the notes
//! ([`Store::publish`]). A pass is level-triggered: it reads only the store, the webhooks'
//! answers and the clock, so repeating one changes nothing.

#[cfg(test)]
mod tests;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;

use rollgate_policy::policy::spec::PolicySpec;
use rollgate_policy::policy::PolicyErrors;

use crate::status::Told;
use crate::view::Expect;
use crate::webhook::Call;
use crate::{
    accept_rendered, notify, render, render_tcp, step, Effect, Event, FieldError, Plan, Refused,
    RolloutErrors, RolloutStatus, Timestamp,
};
pub use webhooks::Webhooks;

/// A rendered HTTP policy and the TCP policy beside it, if the rollout has one.
pub type Rendered = (PolicySpec, Option<PolicySpec>);
/// Their JSON, as the filter's acceptance function accepted it.
pub type Accepted = (String, Option<String>);

/// A new policy for [`Store::commit`] to write: as rendered, and as accepted.
#[derive(Debug, Clone)]
pub struct Push {
    /// The policies.
    pub policy: Rendered,
    /// Their accepted JSON.
    pub json: Accepted,
}

/// What a pass starts from.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    /// The rollout's last good plan.
    pub plan: Arc<Plan>,
    /// Its stored status.
    pub status: RolloutStatus,
    /// Names the rollout's webhook calls for its whole life, and no other rollout's (the
    /// controller: the Rollout's UID, so one deleted and created again under its name does
    /// not inherit the answers of the old one).
    pub id: String,
    /// What the store checks at commit: that nothing changed the rollout since this load.
    pub token: T,
}

/// Why [`Store::commit`] or [`Store::refuse`] did not store.
#[derive(Debug)]
pub enum CommitError<E> {
    /// The rollout changed since it was loaded: the pass starts over on the fresh state.
    Stale,
    /// Anything else: the pass ends with it.
    Store(E),
}

/// Where a mode keeps its rollouts: one rollout, as one pass sees it.
pub trait Store: Clone + Send + Sync + 'static {
    /// What [`Store::commit`] checks against a concurrent change.
    type Token: Send + Sync;
    /// What goes wrong.
    type Error: Send;

    /// The rollout's plan and status; `None` when there is nothing to drive (no valid
    /// version, or gone).
    fn load(&self)
        -> impl Future<Output = Result<Option<Loaded<Self::Token>>, Self::Error>> + Send;

    /// Whether the policies served now are `policy`.
    fn serves(&self, loaded: &Loaded<Self::Token>, policy: &Rendered) -> bool;

    /// Events observed of the gateways for this pass, after its own event and the webhook's
    /// answer took the rollout to `status` (`pushes`: this pass will write a new policy): the
    /// versions they serve. The sidecar's readings start passes of their own instead.
    fn observe(
        &self,
        loaded: &Loaded<Self::Token>,
        status: &RolloutStatus,
        pushes: bool,
    ) -> impl Future<Output = Vec<Event>> + Send {
        let _ = (loaded, status, pushes);
        async { Vec::new() }
    }

    /// The analysis events due (measurements, canary breaker trips) for the rollout at
    /// `status`, after the observed events.
    fn judge(
        &self,
        loaded: &Loaded<Self::Token>,
        status: &RolloutStatus,
    ) -> impl Future<Output = Vec<Event>> + Send {
        let _ = (loaded, status);
        async { Vec::new() }
    }

    /// The filter refused the policy the pass rendered (`why`): the last good one keeps
    /// serving, and the rollout says why. The status is not stored.
    fn refuse(
        &self,
        loaded: Loaded<Self::Token>,
        why: String,
    ) -> impl Future<Output = Result<(), CommitError<Self::Error>>> + Send;

    /// Stores `status` and, with `push`, the new policies (numbered `status.policyVersion`),
    /// unless the rollout changed since `loaded` ([`CommitError::Stale`]). Returns the status
    /// as stored.
    fn commit(
        &self,
        loaded: Loaded<Self::Token>,
        status: RolloutStatus,
        push: Option<Push>,
    ) -> impl Future<Output = Result<RolloutStatus, CommitError<Self::Error>>> + Send;

    /// Tells what the stored pass did (`notes`, possibly none).
    fn publish(
        &self,
        plan: &Plan,
        status: &RolloutStatus,
        notes: Vec<String>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// One log line about rollout `name` at `status`.
    fn log(&self, name: &str, status: &RolloutStatus, line: &str);

    /// A webhook call ended with `outcome` (counted by the sidecar).
    fn answered(&self, outcome: &Result<u16, String>) {
        let _ = outcome;
    }
}

/// Why a pass did not store anything.
#[derive(Debug, thiserror::Error)]
pub enum PassError<E> {
    /// The event does not apply in the rollout's state.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The rollout is not where the command expected it (it moved on: an earlier try of the
    /// same command was applied, or someone else acted), so acting again could skip a pause.
    #[error("{0}")]
    Moved(String),
    /// The store failed.
    #[error("the store failed")]
    Store(E),
}

/// How often a pass starts over on a rollout that keeps changing under it before it gives up
/// ([`PassError::Moved`]: a command is answered "not applied", a tick waits for the next):
/// each change is a commit of another pass or a re-read file, so this is not reached in
/// practice.
const MAX_TRIES: usize = 64;

/// What drives rollouts, whatever the store: the webhook calls in flight and their answers.
#[derive(Default)]
pub struct Driver {
    /// Webhook steps.
    pub webhooks: Webhooks,
}

/// The status, effects and notices of a pass so far.
struct Fold<'a> {
    plan: &'a Plan,
    now: Timestamp,
    status: RolloutStatus,
    effects: Vec<Effect>,
    told: Vec<notify::Notice>,
}

impl Fold<'_> {
    /// Steps with `event`, ignored when refused (readings and answers never are).
    fn then(&mut self, event: Event) {
        if let Ok(next) = step(self.plan, &self.status, event.clone(), self.now) {
            let told = notify::notices(&self.plan.name, &self.status, &next.status, &event);
            self.told.extend(told);
            self.status = next.status;
            self.effects.extend(next.effects);
        }
    }
}

/// Both policies through the filter's acceptance function; a refusal of the TCP one names
/// its fields under `tcp.`, as the filter's errors do.
fn accept_both((policy, tcp): &Rendered) -> Result<Accepted, PolicyErrors> {
    let json = accept_rendered(policy)?;
    let tcp = tcp.as_ref().map(accept_rendered).transpose()?;
    Ok((json, tcp))
}

/// The policies `plan` renders at `status`.
pub fn render_both(plan: &Plan, status: &RolloutStatus) -> Rendered {
    (
        render(&plan.name, &plan.spec, status),
        render_tcp(&plan.name, &plan.spec),
    )
}

impl Driver {
    /// One pass over the rollout of `store`, started by `event` at `now`; with `expect`
    /// (a command's `{"expect": …}` and the name it is shown by), only while the rollout
    /// stands there. Returns the status as stored, or `None` when nothing was (nothing to
    /// drive, or the rendered policy refused).
    pub async fn pass<S: Store>(
        &self,
        store: &S,
        event: Event,
        expect: Option<(&str, &Expect)>,
        now: Timestamp,
    ) -> Result<Option<RolloutStatus>, PassError<S::Error>> {
        // Accepting a large policy takes seconds: a pass that starts over keeps the verdict
        // on the policy it rendered, if it renders the same one again.
        let mut accepted: Option<(Rendered, Result<Accepted, PolicyErrors>)> = None;
        for _ in 0..MAX_TRIES {
            let Some(loaded) = store.load().await.map_err(PassError::Store)? else {
                return Ok(None);
            };
            let plan = loaded.plan.clone();
            if let Some((name, expect)) = expect {
                if let Some(why) = expect.mismatch(name, plan.steps.len(), &loaded.status) {
                    return Err(PassError::Moved(why));
                }
            }
            let first = step(&plan, &loaded.status, event.clone(), now)?;
            // Told from where the last notices left the rollout, not from the stored status:
            // a transition the CLI wrote into a Rollout's status (it patches it) is told now.
            let last_told = loaded
                .status
                .notified
                .as_ref()
                .map_or_else(|| loaded.status.clone(), |t| t.apply(&loaded.status));
            let mut fold = Fold {
                plan: &plan,
                now,
                told: notify::notices(&plan.name, &last_told, &first.status, &event),
                status: first.status,
                effects: first.effects,
            };
            // The answer of the webhook the rollout waits at: 2xx goes on, anything else
            // aborts.
            if let Some(answer) = self.webhooks.answer(&loaded.id, &fold.status) {
                fold.then(answer);
            }
            let (seen, rendered) = (fold.status.clone(), render_both(&plan, &fold.status));
            let pushes = !store.serves(&loaded, &rendered);
            for observed in store.observe(&loaded, &fold.status, pushes).await {
                fold.then(observed);
            }
            for judged in store.judge(&loaded, &fold.status).await {
                fold.then(judged);
            }
            let Fold {
                mut status,
                effects,
                told,
                ..
            } = fold;
            // Rendered and compared again only when what was observed moved the rollout.
            let (policy, pushes) = if status == seen {
                (rendered, pushes)
            } else {
                let policy = render_both(&plan, &status);
                let pushes = !store.serves(&loaded, &policy);
                (policy, pushes)
            };
            status.notified = Some(Told::of(&status));
            let push = if !pushes {
                None
            } else {
                let verdict = match accepted.take() {
                    Some((p, verdict)) if p == policy => verdict,
                    _ => accept_both(&policy),
                };
                accepted = Some((policy.clone(), verdict.clone()));
                match verdict {
                    Ok(json) => Some(Push { policy, json }),
                    Err(e) => {
                        // Bounded as a Rollout's own errors are (a log line, an Event note).
                        let problems = e.0.into_iter().map(|p| FieldError {
                            path: p.path,
                            message: p.message,
                        });
                        let why = format!(
                            "rendered policy refused by the filter: {}",
                            RolloutErrors(problems.collect())
                        );
                        match store.refuse(loaded, why).await {
                            Ok(()) => return Ok(None),
                            Err(CommitError::Stale) => continue,
                            Err(CommitError::Store(e)) => return Err(PassError::Store(e)),
                        }
                    }
                }
            };
            if push.is_some() {
                // Saturating: a version never wraps back below what gateways run.
                status.policy_version = loaded
                    .status
                    .policy_version
                    .max(status.policy_version)
                    .saturating_add(1);
            }
            let id = loaded.id.clone();
            let stored = match store.commit(loaded, status, push).await {
                Ok(s) => s,
                Err(CommitError::Stale) => continue,
                Err(CommitError::Store(e)) => return Err(PassError::Store(e)),
            };
            self.after(store, &plan, &id, &stored, told, now);
            let notes = effects
                .into_iter()
                .filter_map(|fx| match fx {
                    Effect::Note(n) => Some(n),
                    Effect::CallWebhook { .. } => None,
                })
                .collect();
            store
                .publish(&plan, &stored, notes)
                .await
                .map_err(PassError::Store)?;
            return Ok(Some(stored));
        }
        Err(PassError::Moved(format!(
            "the rollout changed {MAX_TRIES} times while this pass ran: not applied, try again"
        )))
    }

    /// What follows a stored status: its notifications, in the background (a slow or dead
    /// receiver never holds the rollout; a failed status write sends none; one still being
    /// retried when the runtime stops is dropped, as a stopped process drops it), and the webhook
    /// call it waits at (the engine's `Resumed` re-issues the call a status waits on, which
    /// also covers a restart or a new leader; the first call per attempt and step is the
    /// only one made).
    fn after<S: Store>(
        &self,
        store: &S,
        plan: &Plan,
        id: &str,
        status: &RolloutStatus,
        told: Vec<notify::Notice>,
        now: Timestamp,
    ) {
        let runtime = tokio::runtime::Handle::try_current();
        for n in &told {
            for r in plan.spec.notify.iter().filter(|r| notify::wants(r, n.kind)) {
                let Ok(runtime) = &runtime else {
                    let line = format!("no async runtime to deliver a notification to {}", r.url);
                    store.log(&plan.name, status, &line);
                    continue;
                };
                let body = notify::body(&plan.name, n, status);
                let (store, url) = (store.clone(), r.url.clone());
                let (name, status) = (plan.name.clone(), status.clone());
                drop(runtime.spawn(async move {
                    if let Err(e) = notify::deliver(&url, &body).await {
                        let line = format!("notification to {url} not delivered: {e}");
                        store.log(&name, &status, &line);
                    }
                }));
            }
        }
        let Ok(t) = step(plan, status, Event::Resumed, now) else {
            return;
        };
        for fx in &t.effects {
            let Some(call) = Call::from_effect(&plan.name, status, fx) else {
                continue;
            };
            if call.attempt == status.attempt && call.step == status.current_step {
                let (logger, answered) = (store.clone(), store.clone());
                self.webhooks.start(
                    id,
                    call,
                    |line| logger.log(&plan.name, status, &line),
                    move |outcome| answered.answered(outcome),
                );
            }
        }
    }
}
