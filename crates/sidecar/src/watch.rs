//! The rollout directory: every `*.yaml`/`*.yml` file is one Rollout (files starting with
//! `.` are ignored). Polled (no inotify dependency): a file whose content changed is reloaded,
//! a new one is loaded (resuming from its status file if there is one). A removed one is
//! kept, status and policy, for `--vanished-grace` (shown with an error saying its file is
//! gone), so a file moved out and back continues where it was; after that it is dropped
//! together with its status file.
//!
//! Symbolic links and special files under a rollout name are listed as refused, never read
//! ([`files::read_regular`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rollgate_policy::policy::spec::PolicySpec;

use super::files::{self, ReadError};
use super::registry::{new_id, status_path, Entry, Shared, State, StatusFile};
use rollgate_rollout::plan::fingerprint;
use rollgate_rollout::time::human_ms;
use rollgate_rollout::{validate, Event, Plan, RolloutStatus, Timestamp};

/// Largest rollout file read (the rendered policy has the same bound).
pub const MAX_ROLLOUT_BYTES: usize = rollgate_policy::limits::MAX_POLICY_BYTES;
/// Largest status file read.
const MAX_STATUS_BYTES: usize = 2 * rollgate_policy::limits::MAX_POLICY_BYTES;

fn rollout_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        // The entry's own type (a link is a link, not what it points to): links and special
        // files are listed, to be refused by name when read; only directories are skipped.
        let dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if yaml && !name.starts_with('.') && !dir {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The text of a rollout file, or why it is refused; `None` when it vanished meanwhile.
fn read_rollout(file: &Path) -> Option<Result<String, String>> {
    match files::read_regular(file, MAX_ROLLOUT_BYTES) {
        Ok(bytes) => Some(String::from_utf8(bytes).map_err(|e| {
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            )
        })),
        Err(ReadError::NotFound) => None,
        Err(e) => Some(Err(e.to_string())),
    }
}

fn short(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// A changed file, read and checked without the lock.
struct Changed {
    file: PathBuf,
    content: String,
    result: Result<Plan, String>,
    /// For a file new to the sidecar: its status file, with the policy in it accepted.
    saved: Option<Saved>,
}

struct Saved {
    file: StatusFile,
    policy: Option<(PolicySpec, Arc<String>)>,
    tcp: Option<(PolicySpec, Arc<String>)>,
}

/// Reads the directory once and applies what changed.
///
/// Reading, parsing, validating and compiling (seconds for a large Rollout) run without the
/// lock that serves the API; only the swap of the results into the state holds it. The
/// entries' files and contents change only here, on the control thread (and in `start`
/// before it runs), so what was read against the state copied at the start still applies.
pub fn scan(shared: &Arc<Shared>) {
    let files = match rollout_files(&shared.config.dir) {
        Ok(f) => f,
        Err(e) => {
            shared.log(&format!("cannot read {}: {e}", shared.config.dir.display()));
            return;
        }
    };
    let known: HashMap<PathBuf, String> = shared
        .lock()
        .entries
        .iter()
        // A vanished file that is back is read again whatever its content.
        .filter(|(_, e)| e.gone_since.is_none())
        .map(|(k, e)| (k.clone(), e.content.clone()))
        .collect();
    let mut changed = Vec::new();
    for file in &files {
        // A file that vanished meanwhile is looked at again next time.
        let Some(read) = read_rollout(file) else {
            continue;
        };
        // A refused file's fingerprint is its reason: reported once, not at every scan.
        let content = match &read {
            Ok(text) => fingerprint(text.as_bytes()),
            Err(why) => format!("refused: {why}"),
        };
        if known.get(file) == Some(&content) {
            continue;
        }
        let result = read.and_then(|text| validate::load(&text).map_err(|e| e.to_string()));
        let saved = if known.contains_key(file) {
            None
        } else {
            // Only a file the sidecar has no entry for (a vanished one that is back keeps
            // its entry, which is newer than its status file).
            read_saved(shared, file)
        };
        changed.push(Changed {
            file: file.clone(),
            content,
            result,
            saved,
        });
    }
    let mut events = Vec::new();
    {
        let mut st = shared.lock();
        let gone: Vec<PathBuf> = st
            .entries
            .keys()
            .filter(|k| !files.contains(k))
            .cloned()
            .collect();
        let grace = shared.config.vanished_grace;
        for key in gone {
            vanished(shared, &mut st, &key, grace);
        }
        for c in changed {
            let file = c.file.clone();
            if let Some(event) = load(shared, &mut st, c) {
                events.push((file, event));
            }
        }
    }
    for (file, event) in events {
        // Not a command: SpecChanged and Resumed are never refused.
        let _ = shared.apply(&file, event, Timestamp::now());
    }
}

/// The file of the entry at `key` is not in the directory: the entry is kept for `grace`
/// (its policy served, its status file kept, its error saying so), then removed.
fn vanished(shared: &Arc<Shared>, st: &mut State, key: &Path, grace: Duration) {
    let Some(e) = st.entries.get_mut(key) else {
        return;
    };
    match e.gone_since {
        _ if grace.is_zero() => {}
        None => {
            e.gone_since = Some(Instant::now());
            let why = format!(
                "{} is gone from the directory: the rollout is kept for {}, then deleted",
                short(key),
                human_ms(grace.as_millis() as u64)
            );
            shared.log(&why);
            e.error = Some(why);
            e.generation += 1;
            shared.persist(e);
            return;
        }
        Some(since) if since.elapsed() < grace => return,
        Some(_) => {}
    }
    remove(shared, st, key);
}

fn remove(shared: &Arc<Shared>, st: &mut State, key: &Path) {
    let Some(e) = st.entries.remove(key) else {
        return;
    };
    if let Some(name) = &e.name {
        st.retired.insert(name.clone(), e.status.policy_version);
        shared.log(&format!(
            "{} removed: rollout {name} deleted, its policy is no longer served",
            short(key)
        ));
    }
    let _ = std::fs::remove_file(status_path(key));
    // Its webhook answers go with it.
    let live: Vec<String> = st.entries.values().map(|e| e.id.to_string()).collect();
    shared
        .driver
        .webhooks
        .retain(|id| live.iter().any(|l| l == id));
    shared.changed.notify_all();
}

/// The status file of `file`, with its policy accepted by the filter's compiler (or dropped).
fn read_saved(shared: &Shared, file: &Path) -> Option<Saved> {
    let path = status_path(file);
    let bytes = match files::read_regular(&path, MAX_STATUS_BYTES) {
        Ok(b) => b,
        Err(ReadError::NotFound) => return None,
        Err(e) => {
            shared.log(&format!("ignoring {}: {e}", short(&path)));
            return None;
        }
    };
    let sf: StatusFile = match serde_json::from_slice(&bytes) {
        Ok(sf) => sf,
        Err(e) => {
            // serde_json's message names a line and column, never the content.
            shared.log(&format!("ignoring {}: {e}", short(&path)));
            return None;
        }
    };
    let accepted = |p: Option<PolicySpec>| {
        p.and_then(|p| {
            let json = rollgate_rollout::accept_rendered(&p).ok()?;
            Some((p, Arc::new(json)))
        })
    };
    let policy = accepted(sf.policy.clone());
    // Only beside the policy it was served with (one version for both).
    let tcp = policy
        .as_ref()
        .and_then(|_| accepted(sf.tcp_policy.clone()));
    Some(Saved {
        file: sf,
        policy,
        tcp,
    })
}

/// Swaps a changed file's outcome into the state; returns the event to apply to it then.
fn load(shared: &Arc<Shared>, st: &mut State, changed: Changed) -> Option<Event> {
    let Changed {
        file,
        content,
        result,
        saved,
    } = changed;
    let file = file.as_path();
    let result = result.and_then(|plan| {
        match st
            .entries
            .values()
            .find(|e| e.file != file && e.name.as_deref() == Some(&plan.name))
        {
            Some(other) => Err(format!(
                "metadata.name: '{}' is already the name of {}",
                plan.name,
                short(&other.file)
            )),
            None => clash(st, file, plan),
        }
    });
    if !st.entries.contains_key(file) {
        let mut entry = restore(st, file, &result, saved);
        entry.id = new_id();
        if let Ok(plan) = &result {
            if entry.status.gateways.is_empty() {
                // From the last reading, so the first step of a rollout new to the sidecar
                // waits for the gateways as every later one does (before the sidecar's first
                // reading, at its start, none are known yet).
                entry.status.gateways = shared.gateways_of(&plan.name);
            }
        }
        st.entries.insert(file.to_path_buf(), entry);
    }
    let entry = st.entries.get_mut(file)?;
    // Whatever follows changes the entry: a pass loaded before commits nothing onto it.
    entry.generation += 1;
    if entry.gone_since.take().is_some() {
        shared.log(&format!("{} is back", short(file)));
    }
    entry.content = content;
    let plan = match result {
        Ok(plan) => plan,
        Err(why) => {
            shared.metrics.invalid_files.inc();
            let keeps = if entry.policy.is_some() {
                format!("policy v{} keeps serving", entry.status.policy_version)
            } else {
                "nothing is served for it".to_string()
            };
            shared.log(&format!("{}: invalid, {keeps}: {why}", short(file)));
            entry.error = Some(why);
            shared.persist(entry);
            return None;
        }
    };
    let renamed = entry.name.as_ref().filter(|n| **n != plan.name).cloned();
    if let Some(old) = renamed {
        // A rename is a new rollout under the new name; the old one is gone.
        st.retired.insert(old, entry.status.policy_version);
        entry.status = RolloutStatus {
            policy_version: entry.status.policy_version,
            ..RolloutStatus::default()
        };
        entry.policy = None;
        entry.tcp = None;
        let old_id = std::mem::replace(&mut entry.id, new_id()).to_string();
        shared.driver.webhooks.retain(|id| id != old_id);
        shared.changed.notify_all();
    }
    let first = entry.plan.is_none();
    let event = if first && entry.status.revision == plan.revision {
        Event::Resumed
    } else {
        Event::SpecChanged
    };
    shared.log(&format!(
        "{}: {} rollout {} ({} steps)",
        short(file),
        if first { "loaded" } else { "reloaded" },
        plan.name,
        plan.steps.len()
    ));
    entry.name = Some(plan.name.clone());
    entry.plan = Some(Arc::new(plan));
    if entry.error.take().is_some() {
        // The error clears from the status file even if the status does not change.
        shared.persist(entry);
    }
    Some(event)
}

/// `plan`, unless its name or its TCP policy's (`<name>-tcp`) is already served for another
/// file: one name, one policy.
fn clash(st: &State, file: &Path, plan: Plan) -> Result<Plan, String> {
    let tcp_name = rollgate_rollout::tcp_policy_name(&plan.name);
    for other in st.entries.values().filter(|e| e.file != file) {
        let Some(name) = other.name.as_deref() else {
            continue;
        };
        let others_tcp = other.plan.as_ref().is_some_and(|p| p.spec.tcp.is_some());
        if plan.spec.tcp.is_some() && name == tcp_name {
            return Err(format!(
                "spec.tcp: its policy's name '{tcp_name}' is already the name of the rollout \
                 in {}",
                short(&other.file)
            ));
        }
        if others_tcp && rollgate_rollout::tcp_policy_name(name) == plan.name {
            return Err(format!(
                "metadata.name: '{}' is already the name of the TCP policy of {}",
                plan.name,
                short(&other.file)
            ));
        }
    }
    Ok(plan)
}

/// A new entry for `file`: from its status file if there is one (a restart resumes where it
/// was, at the same version), else from scratch, counting versions on from a deleted
/// rollout of the same name.
fn restore(st: &State, file: &Path, result: &Result<Plan, String>, saved: Option<Saved>) -> Entry {
    let (sf, policy, tcp) = match saved {
        Some(s) => (Some(s.file), s.policy, s.tcp),
        None => (None, None, None),
    };
    let name = result
        .as_ref()
        .ok()
        .map(|p| p.name.clone())
        .or_else(|| sf.as_ref().and_then(|s| s.rollout.clone()));
    let mut entry = Entry {
        file: file.to_path_buf(),
        content: String::new(),
        name: name.clone(),
        plan: None,
        status: RolloutStatus::default(),
        policy: None,
        tcp: None,
        error: None,
        gone_since: None,
        id: 0,
        generation: 0,
    };
    match sf {
        // The status of another rollout (the file now names a different one) only lends its
        // version count.
        Some(sf) if sf.rollout.is_some() && sf.rollout == name => {
            entry.status = sf.status;
            entry.policy = policy;
            entry.tcp = tcp;
        }
        Some(sf) => entry.status.policy_version = sf.status.policy_version,
        None => {}
    }
    if let Some(v) = name.as_ref().and_then(|n| st.retired.get(n)) {
        entry.status.policy_version = entry.status.policy_version.max(*v);
    }
    entry
}
