//! The sidecar's state: one entry per Rollout file, each with its last good plan, its status,
//! and the policy rendered from them. Every change goes through [`Shared::apply`], which runs
//! the step engine, renders, validates the policy with the filter's compiler, bumps the
//! version, persists the status file and wakes the long-polls.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rollgate_policy::policy::spec::PolicySpec;
use serde::{Deserialize, Serialize};

use super::metrics::Metrics;
use super::{files, Config};
use rollgate_policy::policy::PolicyErrors;
use rollgate_rollout::gateways::{self, Reading};
use rollgate_rollout::notify;
use rollgate_rollout::view::Expect;
use rollgate_rollout::webhook;
use rollgate_rollout::{
    accept_rendered, render, render_tcp, step, Effect, Event, FieldError, GatewayStatus, Plan,
    Refused, RolloutErrors, RolloutStatus, Timestamp, Transition,
};

/// How far a gateway's claimed version may lead the served one and still renumber it
/// ([`State::renumber_after`]): 65,536 lost versions, years of releases of one rollout.
pub const RENUMBER_LEAD: u64 = 1 << 16;

/// Writes one log line: a test's capture (`serve::Config.log`). Without one, lines go to
/// `tracing` with their fields, and the binary's subscriber writes them.
pub type Logger = Arc<dyn Fn(&str) + Send + Sync>;

/// What the sidecar keeps beside `flask.yaml` in `flask.status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusFile {
    /// The rollout's name (absent while its file never validated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
    /// Why the rollout file is refused; the last good version keeps running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The status.
    pub status: RolloutStatus,
    /// The policy being served (at `status.policyVersion`), so a restart serves the same
    /// policy at the same version, even if the rollout file turned invalid meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicySpec>,
    /// The TCP policy served beside it (`<rollout>-tcp`, same version), if the rollout has
    /// connection limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_policy: Option<PolicySpec>,
}

/// The status file beside a rollout file: `flask.yaml` → `flask.status.json`.
pub fn status_path(file: &Path) -> PathBuf {
    file.with_extension("status.json")
}

/// One rollout file.
#[derive(Debug)]
pub struct Entry {
    /// The rollout file.
    pub file: PathBuf,
    /// Fingerprint of the file content last read.
    pub content: String,
    /// The rollout's name, once known (from the last good version or the status file).
    pub name: Option<String>,
    /// The last good version, if any.
    pub plan: Option<Plan>,
    /// Where it stands.
    pub status: RolloutStatus,
    /// The served policy and its JSON.
    pub policy: Option<(PolicySpec, Arc<String>)>,
    /// The served TCP policy (`spec.tcp`, served as `<rollout>-tcp` at the same version) and
    /// its JSON: always the one rendered from the same plan as `policy`.
    pub tcp: Option<(PolicySpec, Arc<String>)>,
    /// Why the file is refused, if it is.
    pub error: Option<String>,
    /// Since when the file is gone from the directory, if it is (kept for the grace).
    pub gone_since: Option<std::time::Instant>,
}

impl Entry {
    /// The name used in the API: the rollout's, else the file's stem.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
    }

    fn to_file(&self) -> StatusFile {
        StatusFile {
            rollout: self.name.clone(),
            error: self.error.clone(),
            status: self.status.clone(),
            policy: self.policy.as_ref().map(|(p, _)| p.clone()),
            tcp_policy: self.tcp.as_ref().map(|(p, _)| p.clone()),
        }
    }
}

/// All entries.
#[derive(Debug, Default)]
pub struct State {
    /// By rollout file.
    pub entries: BTreeMap<PathBuf, Entry>,
    /// Last versions of deleted rollouts, so a re-created one keeps counting up.
    pub retired: HashMap<String, u64>,
    /// Set when the server stops: long-polls answer at once.
    pub stopping: bool,
}

impl State {
    /// The file of the rollout named `name`.
    pub fn key_of(&self, name: &str) -> Option<PathBuf> {
        self.entries
            .iter()
            .find(|(_, e)| e.name.as_deref() == Some(name))
            .map(|(k, _)| k.clone())
    }

    /// Numbers the served policy of `name` after `seen`, a version a gateway already runs
    /// but this sidecar never served (it lost its status file, or is a fresh replica): its
    /// own policy is the current truth, and only a higher number makes the gateway take it.
    /// Returns the entry to persist; `None` when `name` has no policy or is not behind.
    ///
    /// Anyone may poll, so a claimed version only moves ours when it is at most
    /// [`RENUMBER_LEAD`] ahead: a restarted sidecar is behind its gateways by the versions
    /// it lost, never by billions, and a stranger's `version=18446744073709551614` would
    /// otherwise push the counter to its end (before: the next promote wrapped it to v0, and
    /// gateways got 304 forever). A claim beyond the lead is only compared.
    pub fn renumber_after(&mut self, name: &str, seen: u64) -> Option<&Entry> {
        let (key, _) = self.serving(name)?;
        let e = self.entries.get_mut(&key).filter(|e| e.policy.is_some())?;
        let served = e.status.policy_version;
        if served >= seen || seen - served > RENUMBER_LEAD {
            return None;
        }
        e.status.policy_version = seen.saturating_add(1);
        Some(e)
    }

    /// The entry serving policy `name` and whether `name` is its TCP policy: the rollout of
    /// that name, else (`flask-tcp`) the rollout whose TCP policy it is (the load refuses a
    /// rollout whose name or TCP policy's name another one's already is).
    fn serving(&self, name: &str) -> Option<(PathBuf, bool)> {
        let by_name = |n: &str| {
            self.entries
                .iter()
                .find(|(_, e)| e.name.as_deref() == Some(n))
        };
        if let Some((k, _)) = by_name(name) {
            return Some((k.clone(), false));
        }
        let rollout = name.strip_suffix(rollgate_rollout::render::TCP_SUFFIX)?;
        by_name(rollout)
            .filter(|(_, e)| e.tcp.is_some())
            .map(|(k, _)| (k.clone(), true))
    }

    /// The served policy of `name` (a rollout's, or `<rollout>-tcp`, its TCP policy, at the
    /// same version): (version, JSON).
    pub fn policy_of(&self, name: &str) -> Option<(u64, Arc<String>)> {
        let (key, tcp) = self.serving(name)?;
        let e = &self.entries[&key];
        let (_, json) = if tcp {
            e.tcp.as_ref()?
        } else {
            e.policy.as_ref()?
        };
        Some((e.status.policy_version, json.clone()))
    }
}

/// A rendered HTTP policy and the TCP policy beside it, if any.
type Rendered = (PolicySpec, Option<PolicySpec>);
/// Their JSON, as served.
type Served = (String, Option<String>);

/// Both policies through the filter's acceptance function; a refusal of the TCP one names
/// its fields under `tcp.`, as the filter's errors do.
fn accept_both((policy, tcp): &Rendered) -> Result<Served, PolicyErrors> {
    let json = accept_rendered(policy)?;
    let tcp = tcp.as_ref().map(accept_rendered).transpose()?;
    Ok((json, tcp))
}

/// Why [`Shared::command`] did nothing.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// No rollout has that name.
    #[error("no rollout named '{0}'")]
    NotFound(String),
    /// The rollout file never validated: there is nothing to drive.
    #[error("rollout '{0}' has no valid version: {1}")]
    Invalid(String, String),
    /// The rollout is not where the command expected it: it moved on (an earlier try of
    /// the same command was applied, or someone else acted), so acting again could skip a
    /// pause.
    #[error("{0}")]
    Moved(String),
    /// Not applicable in the rollout's state.
    #[error(transparent)]
    Refused(#[from] Refused),
}

/// Wakes the long-polls, which are futures on the server's runtime: a counter they watch
/// (a change made between a poll's look at the state and its wait is still seen).
#[derive(Debug)]
pub struct Wake(tokio::sync::watch::Sender<u64>);

impl Default for Wake {
    fn default() -> Wake {
        Wake(tokio::sync::watch::Sender::new(0))
    }
}

impl Wake {
    /// Wakes every waiting long-poll.
    pub fn notify_all(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every later [`Wake::notify_all`].
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// State shared by the server's threads and tasks.
pub struct Shared {
    /// The entries.
    pub state: Mutex<State>,
    /// Signalled whenever a served policy changes (or the server stops).
    pub changed: Wake,
    /// How the server was started.
    pub config: Config,
    /// Envoy admin URLs the analysis reads (from `config`, replaceable while running).
    pub admins: Mutex<Vec<String>>,
    /// The last reading of each gateway, so a rollout new to the sidecar starts knowing them.
    pub readings: Mutex<Vec<Reading>>,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// The test's log capture, if any (else `tracing`).
    pub log: Option<Logger>,
    /// The dashboard's charts: recent traffic per rollout.
    pub traffic: Mutex<super::traffic::Traffic>,
}

impl Shared {
    /// Locks the state (a panicked holder does not stop the others: every update leaves the
    /// state consistent before it can panic).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The Envoy admin URLs to read now.
    pub fn admins(&self) -> Vec<String> {
        self.admins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The gateways of policy `name` and their versions, as last read.
    pub fn gateways_of(&self, name: &str) -> Vec<GatewayStatus> {
        let readings = self.readings.lock().unwrap_or_else(|e| e.into_inner());
        gateways::versions(&readings, name)
    }

    /// Writes a log line.
    pub fn log(&self, line: &str) {
        match &self.log {
            Some(capture) => capture(line),
            None => tracing::info!(target: "rollgate::serve", "{line}"),
        }
    }

    /// Writes a log line about rollout `name` standing at `status`, with the rollout, step
    /// (`status.currentStep`) and policy version as fields (the capture gets `name: line`, as before).
    pub fn log_rollout(&self, name: &str, status: &RolloutStatus, line: &str) {
        match &self.log {
            Some(capture) => capture(&format!("{name}: {line}")),
            None => tracing::info!(
                target: "rollgate::serve",
                rollout = name,
                step = status.current_step,
                version = status.policy_version,
                "{line}"
            ),
        }
    }

    /// Runs a command (`promote`, `abort`, `retry`) on rollout `name`, if it stands where
    /// `expect` says (checked under the same lock as the step it guards).
    pub fn command(
        self: &Arc<Self>,
        name: &str,
        event: Event,
        expect: &Expect,
    ) -> Result<(), CommandError> {
        let key = {
            let st = self.lock();
            let key = st
                .key_of(name)
                .ok_or_else(|| CommandError::NotFound(name.to_string()))?;
            if st.entries[&key].plan.is_none() {
                let why = st.entries[&key].error.clone().unwrap_or_default();
                return Err(CommandError::Invalid(name.to_string(), why));
            }
            key
        };
        self.apply_expecting(&key, event, Timestamp::now(), Some((name, expect)))
    }

    /// Applies `event` to the entry at `key` (with a valid plan) and commits the outcome.
    ///
    /// Called without the lock: the filter's compiler, which accepts a new policy, runs
    /// outside it (a policy whose rules hold 60,000 arguments took seconds, during which every
    /// endpoint, `/healthz` included, waited). The step is computed under the lock from the
    /// state of the moment; if a new policy is needed, the lock is released to compile it and
    /// the step computed again once it is held anew: it commits only when it renders the very
    /// policy that was accepted (else the new one is compiled in turn).
    pub fn apply(
        self: &Arc<Self>,
        key: &Path,
        event: Event,
        now: Timestamp,
    ) -> Result<(), Refused> {
        match self.apply_expecting(key, event, now, None) {
            Err(CommandError::Refused(r)) => Err(r),
            // Without an expectation nothing else is returned.
            _ => Ok(()),
        }
    }

    /// [`Shared::apply`], only while rollout `name` stands where `expect` says: checked each
    /// time the step is computed, under the lock it is committed under.
    fn apply_expecting(
        self: &Arc<Self>,
        key: &Path,
        event: Event,
        now: Timestamp,
        expect: Option<(&str, &Expect)>,
    ) -> Result<(), CommandError> {
        let mut accepted: Option<(Rendered, Result<Served, PolicyErrors>)> = None;
        loop {
            let mut st = self.lock();
            let Some(entry) = st.entries.get_mut(key) else {
                return Ok(());
            };
            let Some(plan) = &entry.plan else {
                return Ok(());
            };
            if let Some((name, expect)) = expect {
                if let Some(why) = expect.mismatch(name, plan.steps.len(), &entry.status) {
                    return Err(CommandError::Moved(why));
                }
            }
            let t = step(plan, &entry.status, event.clone(), now)?;
            let policy = (
                render(&plan.name, &plan.spec, &t.status),
                render_tcp(&plan.name, &plan.spec),
            );
            let changed = entry.policy.as_ref().map(|(p, _)| p) != Some(&policy.0)
                || entry.tcp.as_ref().map(|(p, _)| p) != policy.1.as_ref();
            if changed && accepted.as_ref().map(|(p, _)| p) != Some(&policy) {
                drop(st);
                let result = accept_both(&policy);
                accepted = Some((policy, result));
                continue;
            }
            let json = if changed {
                accepted.take().map(|(_, r)| r)
            } else {
                None
            };
            self.commit(entry, key, t, policy, json, &event);
            return Ok(());
        }
    }

    /// Stores a transition computed under the same lock; `json` is the acceptance of
    /// `policy` when it differs from the one served.
    fn commit(
        self: &Arc<Self>,
        entry: &mut Entry,
        key: &Path,
        t: Transition,
        policy: Rendered,
        json: Option<Result<Served, PolicyErrors>>,
        event: &Event,
    ) {
        let name = entry
            .plan
            .as_ref()
            .map_or_else(|| entry.display_name(), |p| p.name.clone());
        let told = notify::notices(&name, &entry.status, &t.status, event);
        let mut status = t.status;
        status.policy_version = entry.status.policy_version;
        match json {
            None => {}
            Some(Err(e)) => {
                // Bounded as a Rollout's own errors are.
                let problems = e.0.into_iter().map(|p| FieldError {
                    path: p.path,
                    message: p.message,
                });
                let why = format!(
                    "rendered policy refused by the filter: {}",
                    RolloutErrors(problems.collect())
                );
                self.log_rollout(
                    &name,
                    &status,
                    &format!("{why}; the last good policy keeps serving"),
                );
                entry.error = Some(why);
                self.persist(entry);
                return;
            }
            Some(Ok((json, tcp_json))) => {
                // Saturating: a version never wraps back below what gateways run.
                status.policy_version = status.policy_version.saturating_add(1);
                let (policy, tcp) = policy;
                entry.policy = Some((policy, Arc::new(json)));
                entry.tcp = tcp.zip(tcp_json).map(|(p, j)| (p, Arc::new(j)));
                self.log_rollout(
                    &name,
                    &status,
                    &format!(
                        "policy v{} (canary weight {}%, header route {})",
                        status.policy_version,
                        status.canary_weight,
                        if status.header_route.is_some() {
                            "on"
                        } else {
                            "off"
                        }
                    ),
                );
                self.changed.notify_all();
            }
        }
        let dirty = status != entry.status;
        entry.status = status;
        for fx in t.effects {
            if let Some(call) = webhook::Call::from_effect(&name, &entry.status, &fx) {
                self.spawn_webhook(key.to_path_buf(), call);
            } else if let Effect::Note(n) = fx {
                self.metrics.transitions.inc();
                self.log_rollout(&name, &entry.status, &n.to_string());
            }
        }
        if dirty {
            self.persist(entry);
        }
        if let Some(plan) = &entry.plan {
            for n in &told {
                for r in plan.spec.notify.iter().filter(|r| notify::wants(r, n.kind)) {
                    self.spawn_notice(&name, &r.url, notify::body(&name, n, &entry.status));
                }
            }
        }
    }

    /// Delivers one notification on a thread of its own: retried with back-off
    /// ([`notify::deliver`]), never holding the rollout.
    fn spawn_notice(self: &Arc<Self>, name: &str, url: &str, body: serde_json::Value) {
        let thread = format!("notify-{name}");
        let (shared, name, url) = (self.clone(), name.to_string(), url.to_string());
        let spawned = std::thread::Builder::new().name(thread).spawn(move || {
            let outcome = rollgate_rollout::client::block_on(notify::deliver(&url, &body))
                .unwrap_or_else(|e| Err(e.to_string()));
            if let Err(e) = outcome {
                shared.log(&format!("{name}: notification to {url} not delivered: {e}"));
            }
        });
        if let Err(e) = spawned {
            self.log(&format!("cannot start a notification thread: {e}"));
        }
    }

    /// Writes the entry's status file (atomically, never through a link:
    /// [`files::replace`]).
    pub fn persist(&self, entry: &Entry) {
        let path = status_path(&entry.file);
        let json = serde_json::to_vec_pretty(&entry.to_file()).unwrap_or_default();
        if let Err(e) = files::replace(&path, &json) {
            self.log(&format!("cannot write {}: {e}", path.display()));
        }
    }
}

/// Webhook steps ([`webhook::Call`]), each on a thread of its own.
impl Shared {
    /// Calls the webhook in the background; the answer goes to the rollout file `key`.
    pub fn spawn_webhook(self: &Arc<Self>, key: PathBuf, call: webhook::Call) {
        let shared = self;
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
                move || {
                    let outcome = rollgate_rollout::client::block_on(call.send())
                        .unwrap_or_else(|e| Err(format!("{}: {e}", call.url)));
                    shared.finish_webhook(&key, &call, outcome);
                }
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

    fn finish_webhook(
        self: &Arc<Self>,
        key: &Path,
        call: &webhook::Call,
        outcome: Result<u16, String>,
    ) {
        let shared = self;
        shared.metrics.count_webhook(webhook::succeeded(&outcome));
        // Not a command: a stale answer is dropped by the engine, never refused.
        let _ = shared.apply(key, call.answer(outcome), Timestamp::now());
    }
}
