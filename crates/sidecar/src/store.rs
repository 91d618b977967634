//! One rollout file's entry as the driver's store ([`rollgate_rollout::driver::Store`]):
//! loaded and committed under the state's lock, each commit checking the entry and its
//! generation (a scan, a renumbering or another pass may have changed it since the load, or
//! replaced it: the pass then starts over). Committing a new policy serves it (the long-polls wake) and persists the
//! status file beside the rollout file.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use rollgate_rollout::driver::{CommitError, Loaded, Push, Rendered, Store};
use rollgate_rollout::{webhook, Plan, RolloutStatus};

use super::registry::{Entry, Shared};

/// The entry of rollout file `key`.
#[derive(Clone)]
pub struct DirStore {
    /// The sidecar.
    pub shared: Arc<Shared>,
    /// The rollout file.
    pub key: PathBuf,
}

/// What a commit checks: the entry ([`Entry::id`]: a file removed and written again is a new
/// entry, whose generations count from the start again) and its generation.
pub type Token = (u64, u64);

impl DirStore {
    /// Runs `f` on the entry, under the lock, if it is still the one loaded, unchanged.
    fn at<T>(
        &self,
        (id, generation): Token,
        f: impl FnOnce(&Shared, &mut Entry) -> T,
    ) -> Result<T, CommitError<Infallible>> {
        let mut st = self.shared.lock();
        match st.entries.get_mut(&self.key) {
            Some(e) if e.id == id && e.generation == generation => Ok(f(&self.shared, e)),
            _ => Err(CommitError::Stale),
        }
    }
}

impl Store for DirStore {
    type Token = Token;
    type Error = Infallible;

    async fn load(&self) -> Result<Option<Loaded<Token>>, Infallible> {
        let st = self.shared.lock();
        let Some(e) = st.entries.get(&self.key) else {
            return Ok(None);
        };
        Ok(e.plan.as_ref().map(|plan| Loaded {
            plan: plan.clone(),
            status: e.status.clone(),
            id: e.id.to_string(),
            token: (e.id, e.generation),
        }))
    }

    fn serves(&self, _: &Loaded<Token>, (policy, tcp): &Rendered) -> bool {
        let st = self.shared.lock();
        st.entries.get(&self.key).is_some_and(|e| {
            e.policy.as_ref().map(|(p, _)| p) == Some(policy)
                && e.tcp.as_ref().map(|(p, _)| p) == tcp.as_ref()
        })
    }

    async fn refuse(
        &self,
        loaded: Loaded<Token>,
        why: String,
    ) -> Result<(), CommitError<Infallible>> {
        self.at(loaded.token, |shared, e| {
            let line = format!("{why}; the last good policy keeps serving");
            shared.log_rollout(&loaded.plan.name, &e.status, &line);
            e.error = Some(why);
            e.generation += 1;
            shared.persist(e);
        })
    }

    async fn commit(
        &self,
        loaded: Loaded<Token>,
        status: RolloutStatus,
        push: Option<Push>,
    ) -> Result<RolloutStatus, CommitError<Infallible>> {
        let name = &loaded.plan.name;
        self.at(loaded.token, |shared, e| {
            let pushed = push.is_some();
            if let Some(Push {
                policy: (policy, tcp),
                json: (json, tcp_json),
            }) = push
            {
                e.policy = Some((policy, Arc::new(json)));
                e.tcp = tcp.zip(tcp_json).map(|(p, j)| (p, Arc::new(j)));
                let line = format!(
                    "policy v{} (canary weight {}%, header route {})",
                    status.policy_version,
                    status.canary_weight,
                    if status.header_route.is_some() {
                        "on"
                    } else {
                        "off"
                    }
                );
                shared.log_rollout(name, &status, &line);
            }
            if pushed || status != e.status {
                e.status = status.clone();
                e.generation += 1;
                shared.persist(e);
            }
            if pushed {
                shared.changed.notify_all();
            }
            status
        })
    }

    async fn publish(
        &self,
        plan: &Plan,
        status: &RolloutStatus,
        notes: Vec<String>,
    ) -> Result<(), Infallible> {
        for note in notes {
            self.shared.metrics.transitions.inc();
            self.shared.log_rollout(&plan.name, status, &note);
        }
        Ok(())
    }

    fn log(&self, name: &str, status: &RolloutStatus, line: &str) {
        self.shared.log_rollout(name, status, line);
    }

    fn answered(&self, outcome: &Result<u16, String>) {
        self.shared
            .metrics
            .count_webhook(webhook::succeeded(outcome));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use rollgate_rollout::driver::{CommitError, Store};

    use super::super::registry::{new_id, Entry, Shared, State, Wake};
    use super::super::{metrics::Metrics, Config};
    use super::*;

    fn entry(file: &std::path::Path, id: u64, generation: u64) -> Entry {
        let plan = rollgate_rollout::validate::load(include_str!("../../../examples/rollout.yaml"))
            .unwrap();
        Entry {
            file: file.to_path_buf(),
            content: String::new(),
            name: Some(plan.name.clone()),
            plan: Some(Arc::new(plan)),
            status: RolloutStatus::default(),
            policy: None,
            tcp: None,
            error: None,
            gone_since: None,
            id,
            generation,
        }
    }

    /// A file removed and written again while a pass ran is a new entry, which may have
    /// reached the generation the pass loaded: the pass must not commit onto it.
    #[test]
    fn a_commit_onto_a_replaced_entry_is_stale() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // The commit writes the status file beside the rollout file.
        let dir = std::env::temp_dir().join(format!("rollgate-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Wake::default(),
            admins: Mutex::default(),
            readings: Mutex::default(),
            config: Config::new(&dir),
            metrics: Metrics::default(),
            log: Some(Arc::new(|_: &str| {})),
            traffic: Mutex::default(),
            driver: Default::default(),
            runtime: runtime.handle().clone(),
        });
        let key = dir.join("flask.yaml");
        shared
            .lock()
            .entries
            .insert(key.clone(), entry(&key, new_id(), 2));
        let store = DirStore {
            shared: shared.clone(),
            key: key.clone(),
        };
        let loaded = runtime.block_on(store.load()).unwrap().unwrap();
        let status = loaded.status.clone();
        shared
            .lock()
            .entries
            .insert(key.clone(), entry(&key, new_id(), 2));
        let commit = runtime.block_on(store.commit(loaded, status.clone(), None));
        assert!(matches!(commit, Err(CommitError::Stale)));
        // The same entry, unchanged, takes it.
        let loaded = runtime.block_on(store.load()).unwrap().unwrap();
        let mut moved = status;
        moved.message = "moved".into();
        let stored = runtime.block_on(store.commit(loaded, moved, None)).unwrap();
        assert_eq!(shared.lock().entries[&key].status, stored);
        assert!(dir.join("flask.status.json").is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
