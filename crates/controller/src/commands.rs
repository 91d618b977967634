//! The commands on Rollouts in the cluster (`promote`, `abort`, `retry`, and reading them),
//! for the CLI's `--kubernetes` mode (the `rollgate` crate's `cli::cluster`).
//!
//! A command steps the Rollout's status with the engine ([`step`]) and server-side-applies
//! it, guarded by the `resourceVersion` read: if the controller wrote in between (409), the
//! command re-reads and tries again. The controller then sees the new status, renders the
//! policy and writes it into the WasmPlugin.
//!
//! [`list_all`] and [`rendered_policy`] serve the controller's own HTTP endpoints
//! (`serve --kubernetes --listen`, the `rollgate` crate's `cli::cluster_http`).

use kube::{Api, Client, ResourceExt};

use super::controller::{apply_status, Error};
use rollgate_rollout::plan::fingerprint;
use rollgate_rollout::view::{Expect, RolloutView};
use rollgate_rollout::{
    accept_rendered, render, step, validate, Event, Refused, Rollout, Timestamp,
};

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
    Ok(list_rollouts(client, ns).await?.iter().map(view).collect())
}

/// The Rollouts of namespace `ns`, as stored.
pub async fn list_rollouts(client: &Client, ns: &str) -> Result<Vec<Rollout>, CommandError> {
    let api: Api<Rollout> = Api::namespaced(client.clone(), ns);
    Ok(api.list(&Default::default()).await?.items)
}

/// Every Rollout of every namespace (one cluster-wide list, as the controller's watcher
/// starts with).
pub async fn list_all(client: &Client) -> Result<Vec<Rollout>, CommandError> {
    let api: Api<Rollout> = Api::all(client.clone());
    Ok(api.list(&Default::default()).await?.items)
}

/// Reads one Rollout as it is stored.
pub async fn read(client: &Client, ns: &str, name: &str) -> Result<Rollout, CommandError> {
    let api: Api<Rollout> = Api::namespaced(client.clone(), ns);
    Ok(api.get(name).await?)
}

/// The policy of a Rollout, as the controller renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedPolicy {
    /// Its version: the status's `policyVersion` when the controller has written this very
    /// policy (its fingerprint is the status's `appliedPolicy`), else the version the
    /// controller gives it when it writes it (a command changed the status since).
    pub version: u64,
    /// Whether the controller has written it into the gateway.
    pub applied: bool,
    /// The policy JSON, the text the filter's own acceptance function accepted.
    pub json: String,
}

/// The policy the controller renders for `ro` from its spec and its status, with the
/// controller's own pure functions ([`validate::plan`], [`render`], [`accept_rendered`]);
/// `Err` says why there is none (an invalid spec, a policy the filter refuses, or a rollout
/// the controller has not rendered yet), as the controller would say in its Events.
pub fn rendered_policy(ro: &Rollout) -> Result<RenderedPolicy, String> {
    let plan = validate::plan(ro).map_err(|e| format!("invalid spec: {e}"))?;
    let status = ro.status.clone().unwrap_or_default();
    if status.policy_version == 0 {
        return Err("the controller has not rendered its policy yet".into());
    }
    let rendered = render(&plan.name, &plan.spec, &status);
    let json = accept_rendered(&rendered)
        .map_err(|e| format!("rendered policy refused by the filter: {e}"))?;
    // The fingerprint the controller stores, of the value it writes into `pluginConfig`.
    let value = serde_json::to_value(&rendered).map_err(|e| e.to_string())?;
    let applied =
        status.applied_policy.as_deref() == Some(&fingerprint(value.to_string().as_bytes()));
    Ok(RenderedPolicy {
        version: status.policy_version + u64::from(!applied),
        applied,
        json,
    })
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
