//! The sidecar's state: one entry per Rollout file, each with its last good plan, its status,
//! and the policy rendered from them. Every change of a rollout goes through
//! [`Shared::apply`]: one pass of the driver (the controller's too), which steps, renders,
//! has the filter's compiler accept the policy and numbers it; the entry as a store
//! ([`DirStore`]) then serves it, persists the status file and wakes the long-polls.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rollgate_policy::policy::spec::PolicySpec;
use serde::{Deserialize, Serialize};

use super::metrics::Metrics;
use super::store::DirStore;
use super::{files, Config};
use rollgate_rollout::driver::{Driver, PassError};
use rollgate_rollout::gateways::{self, Reading};
use rollgate_rollout::view::Expect;
use rollgate_rollout::{Event, GatewayStatus, Plan, Refused, RolloutStatus, Timestamp};

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
    pub plan: Option<Arc<Plan>>,
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
    /// Unique to this entry's rollout in the sidecar's life ([`new_id`]): names its webhook calls
    /// ([`rollgate_rollout::driver::Loaded::id`]).
    pub id: u64,
    /// Counts the changes of the entry, so a pass commits only onto the state it loaded.
    pub generation: u64,
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

/// A new [`Entry::id`]: one per rollout a file holds (a file renaming its rollout starts a
/// new one, whose webhook steps must not find the old one's answers).
pub fn new_id() -> u64 {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    LAST.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
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
        e.generation += 1;
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
    /// Drives the rollouts (the controller's driver too).
    pub driver: Driver,
    /// The runtime the API is served on, which also runs the driver's webhook calls and
    /// notifications.
    pub runtime: tokio::runtime::Handle,
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

    /// Applies `event` to the entry at `key` (with a valid plan): one pass of the driver
    /// ([`Driver::pass`]) over the entry as a store ([`DirStore`]).
    ///
    /// Called without the lock, which the pass takes only to load the entry and to commit:
    /// the filter's compiler, which accepts a new policy, runs outside it (a policy whose
    /// rules hold 60,000 arguments took seconds, during which every endpoint, `/healthz`
    /// included, waited). A commit finding the entry changed since its load starts the pass
    /// over on the fresh state (keeping the verdict on a policy it renders again).
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
    /// time the pass loads the entry, and the commit checks nothing moved it since.
    fn apply_expecting(
        self: &Arc<Self>,
        key: &Path,
        event: Event,
        now: Timestamp,
        expect: Option<(&str, &Expect)>,
    ) -> Result<(), CommandError> {
        let store = DirStore {
            shared: self.clone(),
            key: key.to_path_buf(),
        };
        // The store's futures never wait (it is memory and files under a lock), so the pass
        // runs on the calling thread; the runtime runs what it spawns (webhook calls,
        // notifications), on the API's thread.
        let pass = self.driver.pass(&store, event, expect, now);
        match self.runtime.block_on(pass) {
            Ok(_) => Ok(()),
            Err(PassError::Refused(r)) => Err(CommandError::Refused(r)),
            Err(PassError::Moved(why)) => Err(CommandError::Moved(why)),
            Err(PassError::Store(never)) => match never {},
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
