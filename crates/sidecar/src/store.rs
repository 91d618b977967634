//! One rollout file's entry as the driver's store ([`rollgate_rollout::driver::Store`]):
//! loaded and committed under the state's lock, each commit checking the entry's generation
//! (a scan, a renumbering or another pass may have changed it since the load: the pass then
//! starts over). Committing a new policy serves it (the long-polls wake) and persists the
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

impl DirStore {
    /// Runs `f` on the entry, under the lock, if it is still at `generation`.
    fn at<T>(
        &self,
        generation: u64,
        f: impl FnOnce(&Shared, &mut Entry) -> T,
    ) -> Result<T, CommitError<Infallible>> {
        let mut st = self.shared.lock();
        match st.entries.get_mut(&self.key) {
            Some(e) if e.generation == generation => Ok(f(&self.shared, e)),
            _ => Err(CommitError::Stale),
        }
    }
}

impl Store for DirStore {
    type Token = u64;
    type Error = Infallible;

    async fn load(&self) -> Result<Option<Loaded<u64>>, Infallible> {
        let st = self.shared.lock();
        let Some(e) = st.entries.get(&self.key) else {
            return Ok(None);
        };
        Ok(e.plan.as_ref().map(|plan| Loaded {
            plan: plan.clone(),
            status: e.status.clone(),
            id: e.id.to_string(),
            token: e.generation,
        }))
    }

    fn serves(&self, _: &Loaded<u64>, (policy, tcp): &Rendered) -> bool {
        let st = self.shared.lock();
        st.entries.get(&self.key).is_some_and(|e| {
            e.policy.as_ref().map(|(p, _)| p) == Some(policy)
                && e.tcp.as_ref().map(|(p, _)| p) == tcp.as_ref()
        })
    }

    async fn refuse(
        &self,
        loaded: Loaded<u64>,
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
        loaded: Loaded<u64>,
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
