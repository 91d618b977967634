//! The commands on Rollouts in the cluster (`promote`, `abort`, `retry`, and reading them),
//! for the CLI's `--kubernetes` mode (the `rollgate` crate's `cli::cluster`).
//!
//! A command steps the Rollout's status with the engine ([`step`]) and server-side-applies
//! it, guarded by the `resourceVersion` read: if the controller wrote in between (409), the
//! command re-reads and tries again. The controller then sees the new status, renders the
//! policy and writes it into the WasmPlugin.

use kube::{Api, Client, ResourceExt};

use super::controller::{apply_status, Error};
use rollgate_rollout::view::{Expect, RolloutView};
use rollgate_rollout::{step, validate, Event, Refused, Rollout, Timestamp};

/// How often a command retries after a conflict with the controller.
const CONFLICT_RETRIES: usize = 3;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The API server refused or failed.
    #[error(transparent)]
    Kube(#[from] Error),
    /// The engine refused (e.g. promote when not paused) or the spec is invalid.
    #[error("{0}")]
    Refused(String),
}

impl From<kube::Error> for CommandError {
    fn from(e: kube::Error) -> Self {
        CommandError::Kube(Error::Kube(e))
    }
}

/// The Rollout as `rollgate status` shows it (the sidecar's view; `file` is `ns/name`).
pub fn view(ro: &Rollout) -> RolloutView {
    let plan = validate::plan(ro);
    let status = ro.status.clone().unwrap_or_default();
    RolloutView {
        name: ro.name_any(),
        file: format!("{}/{}", ro.namespace().unwrap_or_default(), ro.name_any()),
        error: plan.as_ref().err().map(ToString::to_string),
        steps: plan
            .as_ref()
            .map(|p| p.steps.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        serving: status.policy_version > 0,
        status,
    }
}

/// Reads one Rollout.
pub async fn get(client: &Client, ns: &str, name: &str) -> Result<RolloutView, CommandError> {
    let api: Api<Rollout> = Api::namespaced(client.clone(), ns);
    Ok(view(&api.get(name).await?))
}

/// Every Rollout of the namespace.
pub async fn list(client: &Client, ns: &str) -> Result<Vec<RolloutView>, CommandError> {
    let api: Api<Rollout> = Api::namespaced(client.clone(), ns);
    let list = api.list(&Default::default()).await?;
    Ok(list.items.iter().map(view).collect())
}

/// Applies `event` (promote, abort, retry) to the Rollout's status.
pub async fn command(
    client: &Client,
    ns: &str,
    name: &str,
    event: Event,
) -> Result<RolloutView, CommandError> {
    command_expecting(client, ns, name, event, &Expect::default()).await
}

/// [`command`], only if the Rollout stands where `expect` says (`promote --from-step N`):
/// a command repeated after an unknown outcome then cannot skip a pause, as on the sidecar.
pub async fn command_expecting(
    client: &Client,
    ns: &str,
    name: &str,
    event: Event,
    expect: &Expect,
) -> Result<RolloutView, CommandError> {
    let api: Api<Rollout> = Api::namespaced(client.clone(), ns);
    let mut tries = 0;
    loop {
        let mut ro = api.get(name).await?;
        let plan = validate::plan(&ro).map_err(|e| CommandError::Refused(e.to_string()))?;
        let old = ro.status.clone().unwrap_or_default();
        if let Some(why) = expect.mismatch(name, plan.steps.len(), &old) {
            return Err(CommandError::Refused(why));
        }
        let t = step(&plan, &old, event.clone(), Timestamp::now())
            .map_err(|Refused(why)| CommandError::Refused(why))?;
        let rv = ro.resource_version();
        match apply_status(client, ns, name, rv.as_deref(), &t.status).await {
            Ok(()) => {
                ro.status = Some(t.status);
                return Ok(view(&ro));
            }
            Err(Error::Conflict(_)) if tries < CONFLICT_RETRIES => tries += 1,
            Err(e) => return Err(e.into()),
        }
    }
}
