//! `rollgate serve --kubernetes`: the driver of `serve --dir` ([`Driver`]) over the API
//! server instead of a directory (`KubeStore`, a [`Store`]).
//!
//! Per reconcile of a Rollout: validate the spec into a plan; one pass of the driver, started
//! by `SpecChanged` when the spec's revision differs from the status's, else `Tick`: it
//! renders the policy, which the store server-side-applies into the `pluginConfig` of the
//! Rollout's WasmPlugin, then server-side-applies the status (carrying the `resourceVersion`
//! read, so a concurrent `rollgate promote` wins and this reconcile retries on the fresh
//! object: 409); publishes an Event per transition; then starts the webhook call the stored
//! status waits at, whose answer a later reconcile feeds to the engine (`Event::Webhook`).
//! Errors back off exponentially per Rollout. No finalizer: nothing outside the Rollout needs
//! cleaning up (the WasmPlugin keeps its last policy, the safe state).
//!
//! A Rollout with `spec.acknowledge` waits at each step that changed the policy until every
//! gateway serves it: the policy written is numbered (`version`, the status's
//! `policyVersion`), the filter reports the number as a gauge, and each reconcile that pushes
//! nothing new feeds the engine what the analysis source reads of it per gateway
//! (`Event::Gateways`). Without `acknowledge` the policy carries no number (filters before
//! the field refuse it).
//!
//! A Rollout with connection limits (`spec.tcp`) also has its TCP policy
//! ([`rollgate_rollout::render_tcp`]) server-side applied into a second WasmPlugin, `<wasmPlugin>-tcp`, with
//! `type: NETWORK`: the policy runs only in a network filter, and the HTTP WasmPlugin's
//! `pluginConfig` is exactly what it was without the limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::analysis::{Analyzer, Source};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use rollgate_policy::policy::spec::PolicySpec;
use rollgate_rollout::driver::{
    render_both, CommitError, Driver, Loaded, PassError, Push, Rendered, Store,
};
use rollgate_rollout::plan::fingerprint;
use rollgate_rollout::{validate, Event, Phase, Plan, Rollout, RolloutStatus, Timestamp};
use rollgate_rollout::{API_VERSION, KIND};

/// The field manager of every server-side apply (what `kubectl get --show-managed-fields`
/// shows as owning `status` and `spec.pluginConfig`).
pub const FIELD_MANAGER: &str = "rollgate";

/// What went wrong talking to the API server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Someone else changed the object since it was read (HTTP 409): retry at once on the
    /// fresh object the watch delivers.
    #[error("conflict writing {0}: changed since read")]
    Conflict(String),
    /// Any other API error (5xx, 403, …): back off.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The rendered policy did not serialize (never expected).
    #[error("rendering the policy: {0}")]
    Render(#[from] serde_json::Error),
    /// Another replica holds the leader-election Lease now.
    #[error("lost the leader-election lease")]
    LostLease,
    /// The Rollout has no namespace or name (never from the API server).
    #[error("rollout without namespace or name")]
    Unnamed,
    /// The gateway resource the Rollout names cannot take the policy as it is.
    #[error("{0}")]
    Target(String),
}

impl Error {
    fn from_kube(what: &str, e: kube::Error) -> Error {
        match &e {
            kube::Error::Api(s) if s.code == 409 => Error::Conflict(what.to_string()),
            _ => Error::Kube(e),
        }
    }
}

/// The controller's shared state.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Consecutive failures per rollout (`ns/name`), for the back-off.
    failures: Mutex<HashMap<String, u32>>,
    /// Analysis from the gateways' stats (`--envoy-admin`, `--prometheus`).
    analyzer: Analyzer,
    /// The driver (the sidecar's too): webhook steps, their calls and answers.
    pub driver: Driver,
}

impl Context {
    /// A context for `client`; `instance` names this replica in Events (the pod name).
    pub fn new(client: Client, instance: Option<String>) -> Arc<Context> {
        Context::with_analysis(client, instance, Source::None)
    }

    /// A context whose rollouts are analysed from `source`.
    pub fn with_analysis(client: Client, instance: Option<String>, source: Source) -> Arc<Context> {
        let reporter = Reporter {
            controller: "rollgate".into(),
            instance,
        };
        Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            failures: Mutex::default(),
            analyzer: Analyzer::new(source),
            driver: Driver::default(),
        })
    }
}

impl Context {
    /// Forgets every rollout not in `live` (`(ns/name, uid)` of the Rollouts that exist):
    /// without a finalizer a deleted Rollout is never reconciled again, so its back-off count,
    /// analysis baseline and webhook answers would otherwise stay for the life of the process.
    /// Returns how many per-rollout entries remain.
    pub fn forget_all_but(&self, live: &[(String, String)]) -> usize {
        let key_live = |k: &str| live.iter().any(|(key, _)| key == k);
        let uid_live = |u: &str| live.iter().any(|(_, uid)| uid == u);
        let failures = self.failures.lock().map_or(0, |mut f| {
            f.retain(|k, _| key_live(k));
            f.len()
        });
        failures + self.analyzer.retain(key_live) + self.driver.webhooks.retain(uid_live)
    }
}

/// The Istio WasmPlugin resource (no Rust types: only its `pluginConfig` is written).
pub fn wasmplugin_resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk("extensions.istio.io", "v1alpha1", "WasmPlugin");
    ApiResource::from_gvk_with_plural(&gvk, "wasmplugins")
}

/// The WasmPlugin a Rollout writes to: `spec.wasmPlugin`, else the Rollout's name.
pub fn wasmplugin_name(ro: &Rollout) -> String {
    ro.spec.wasm_plugin.clone().unwrap_or_else(|| ro.name_any())
}

/// The WasmPlugin a Rollout's TCP policy goes to: [`wasmplugin_name`] + `-tcp`.
pub fn tcp_wasmplugin_name(ro: &Rollout) -> String {
    rollgate_rollout::tcp_policy_name(&wasmplugin_name(ro))
}

/// Server-side-applies a TCP policy as the `pluginConfig` of WasmPlugin `plugin`, with
/// `type: NETWORK` (owned too: a connection-limit policy in an HTTP filter would stop its VM,
/// so the controller never leaves one there).
pub async fn apply_tcp_policy(
    client: &Client,
    ns: &str,
    plugin: &str,
    policy: &serde_json::Value,
) -> Result<(), Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &wasmplugin_resource());
    let patch = json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": { "name": plugin },
        "spec": { "type": "NETWORK", "pluginConfig": policy },
    });
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(plugin, &pp, &Patch::Apply(&patch))
        .await
        .map_err(|e| Error::from_kube(&format!("wasmplugin {ns}/{plugin}"), e))?;
    Ok(())
}

/// What `status.appliedPolicy` records: the HTTP policy's fingerprint, then ` tcp:` and the
/// TCP policy's when there is one (a Rollout without `spec.tcp` records what it always did,
/// so an upgraded controller re-applies nothing).
fn applied(http: &str, tcp: Option<&str>) -> String {
    match tcp {
        Some(t) => format!("{http} tcp:{t}"),
        None => http.to_string(),
    }
}

/// The two fingerprints of a recorded `appliedPolicy`.
fn applied_parts(recorded: Option<&str>) -> (Option<&str>, Option<&str>) {
    match recorded.map(|r| r.split_once(" tcp:").unwrap_or((r, ""))) {
        Some((h, "")) => (Some(h), None),
        Some((h, t)) => (Some(h), Some(t)),
        None => (None, None),
    }
}

/// The Envoy Gateway EnvoyExtensionPolicy resource (no Rust types: only one `config` is written).
pub fn envoyextensionpolicy_resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk("gateway.envoyproxy.io", "v1alpha1", "EnvoyExtensionPolicy");
    ApiResource::from_gvk_with_plural(&gvk, "envoyextensionpolicies")
}

/// The `wasm` entry of an EnvoyExtensionPolicy the controller writes.
pub const EEP_WASM_NAME: &str = "rollgate";

/// Writes `policy` into the rendered Rollout's gateway: its EnvoyExtensionPolicy when it
/// names one, else its WasmPlugin.
pub async fn apply_to_gateway(
    client: &Client,
    ns: &str,
    ro: &Rollout,
    policy: &serde_json::Value,
) -> Result<(), Error> {
    match &ro.spec.envoy_extension_policy {
        Some(eep) => apply_policy_eep(client, ns, eep, policy).await,
        None => apply_policy(client, ns, &wasmplugin_name(ro), policy).await,
    }
}

/// Replaces the `config` of the EnvoyExtensionPolicy's `wasm` entry named `rollgate`.
///
/// A JSON patch, not server-side apply: `spec.wasm` is a list without merge keys, so an
/// apply would have to own the whole entry (its `code`, `failOpen`, …), which the user
/// writes. The patch's `test` of the entry's name makes a concurrent reorder a 422, retried
/// by the next reconcile, rather than a write into another filter's config.
pub async fn apply_policy_eep(
    client: &Client,
    ns: &str,
    name: &str,
    policy: &serde_json::Value,
) -> Result<(), Error> {
    let what = format!("envoyextensionpolicy {ns}/{name}");
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &envoyextensionpolicy_resource());
    let eep = api
        .get(name)
        .await
        .map_err(|e| Error::from_kube(&what, e))?;
    let entries = eep.data["spec"]["wasm"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let Some(i) = entries
        .iter()
        .position(|w| w["name"].as_str() == Some(EEP_WASM_NAME))
    else {
        return Err(Error::Target(format!(
            "{what} has no wasm entry named '{EEP_WASM_NAME}'"
        )));
    };
    let patch: json_patch::Patch = serde_json::from_value(json!([
        { "op": "test", "path": format!("/spec/wasm/{i}/name"), "value": EEP_WASM_NAME },
        { "op": "add", "path": format!("/spec/wasm/{i}/config"), "value": policy },
    ]))
    .map_err(|e| Error::Target(format!("{what}: {e}")))?;
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .map_err(|e| Error::from_kube(&what, e))?;
    Ok(())
}

/// Server-side-applies `policy` (JSON text) as the WasmPlugin's `pluginConfig`.
pub async fn apply_policy(
    client: &Client,
    ns: &str,
    plugin: &str,
    policy: &serde_json::Value,
) -> Result<(), Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &wasmplugin_resource());
    let patch = json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": { "name": plugin },
        "spec": { "pluginConfig": policy },
    });
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(plugin, &pp, &Patch::Apply(&patch))
        .await
        .map_err(|e| Error::from_kube(&format!("wasmplugin {ns}/{plugin}"), e))?;
    Ok(())
}

/// Server-side-applies the status; `resource_version` (the one read) makes a concurrent
/// writer's change a 409 rather than lost.
pub async fn apply_status(
    client: &Client,
    ns: &str,
    name: &str,
    resource_version: Option<&str>,
    status: &RolloutStatus,
) -> Result<(), Error> {
    let api: Api<Rollout> = Api::namespaced(client.clone(), ns);
    let mut metadata = json!({ "name": name });
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    let patch = json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "status": status,
    });
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(name, &pp, &Patch::Apply(&patch))
        .await
        .map_err(|e| Error::from_kube(&format!("rollout {ns}/{name} status"), e))?;
    Ok(())
}

/// Publishes one Event on the Rollout.
pub async fn publish(
    ctx: &Context,
    reference: &ObjectReference,
    warning: bool,
    reason: &str,
    note: String,
) -> Result<(), Error> {
    let ev = KubeEvent {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    ctx.recorder.publish(&ev, reference).await?;
    Ok(())
}

/// One Rollout as the driver sees it in one reconcile: the object the watch delivered (its
/// status, and its `resourceVersion`, which the status write carries) and the API to write
/// the policies, the status and the Events to.
#[derive(Clone)]
struct KubeStore {
    ctx: Arc<Context>,
    ro: Arc<Rollout>,
    plan: Arc<Plan>,
    ns: String,
    name: String,
    /// `ns/name`: the analysis tracker's and the back-off's key, and the log's rollout.
    key: String,
    reference: ObjectReference,
}

impl KubeStore {
    fn old(&self) -> RolloutStatus {
        self.ro.status.clone().unwrap_or_default()
    }
}

/// The fingerprint of a policy as the WasmPlugin gets it.
fn digest_of(policy: &serde_json::Value) -> String {
    fingerprint(policy.to_string().as_bytes())
}

impl Store for KubeStore {
    type Token = ();
    type Error = Error;

    async fn load(&self) -> Result<Option<Loaded<()>>, Error> {
        Ok(Some(Loaded {
            plan: self.plan.clone(),
            status: self.old(),
            id: self.ro.uid().unwrap_or_else(|| self.key.clone()),
            token: (),
        }))
    }

    /// Compared with the fingerprints stored in the status, not with memory: level-triggered,
    /// so a restart or a fail-over neither re-applies nor bumps the version.
    fn serves(&self, loaded: &Loaded<()>, (http, tcp): &Rendered) -> bool {
        let (old_http, old_tcp) = applied_parts(loaded.status.applied_policy.as_deref());
        let same = |recorded: Option<&str>, p: &PolicySpec| {
            serde_json::to_value(p).is_ok_and(|v| recorded == Some(digest_of(&v).as_str()))
        };
        same(old_http, http) && tcp.as_ref().is_none_or(|t| same(old_tcp, t))
    }

    /// Which version each gateway serves, for a Rollout that waits for them (`acknowledge`):
    /// the step that changed the policy goes on once they all serve it. Not while this
    /// reconcile is about to push a new policy (a command or the clock moved the rollout):
    /// the version the step waits for is numbered only when it is written, and the gateways
    /// serving the last one must not count as serving it; the next reconcile reads them.
    async fn observe(&self, _: &Loaded<()>, _: &RolloutStatus, pushes: bool) -> Vec<Event> {
        if self.ro.spec.acknowledge.is_none() || pushes {
            return Vec::new();
        }
        match self.ctx.analyzer.gateways(&self.plan.name).await {
            Some(gateways) => vec![Event::Gateways { gateways }],
            None => Vec::new(),
        }
    }

    async fn judge(&self, _: &Loaded<()>, status: &RolloutStatus) -> Vec<Event> {
        self.ctx
            .analyzer
            .events(&self.key, &self.plan, status)
            .await
    }

    async fn refuse(&self, _: Loaded<()>, why: String) -> Result<(), CommitError<Error>> {
        publish(&self.ctx, &self.reference, true, "InvalidPolicy", why)
            .await
            .map_err(CommitError::Store)
    }

    /// Each policy is written when it changed: a step rewrites the HTTP one only, the TCP
    /// limits change with the spec alone. Then the status, carrying the `resourceVersion`
    /// read: a concurrent `rollgate promote` wins, and this reconcile fails with a conflict
    /// and is retried on the fresh object the watch delivers.
    async fn commit(
        &self,
        loaded: Loaded<()>,
        mut status: RolloutStatus,
        push: Option<Push>,
    ) -> Result<RolloutStatus, CommitError<Error>> {
        let store = |e: Error| CommitError::Store(e);
        let old = loaded.status;
        let (http, tcp) = match push {
            Some(p) => p.policy,
            None => render_both(&self.plan, &status),
        };
        let policy = serde_json::to_value(http).map_err(|e| store(e.into()))?;
        let tcp_policy = tcp
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| store(e.into()))?;
        let digest = digest_of(&policy);
        let tcp_digest = tcp_policy.as_ref().map(digest_of);
        let (old_http, old_tcp) = applied_parts(old.applied_policy.as_deref());
        let mut wrote = false;
        if old_http != Some(digest.as_str()) {
            // Numbered (after the fingerprint: the number is not what changed) only for a
            // Rollout that waits for its gateways: a filter before `version` refuses it.
            let mut policy = policy.clone();
            if self.ro.spec.acknowledge.is_some() {
                policy["version"] = json!(status.policy_version);
            }
            apply_to_gateway(&self.ctx.client, &self.ns, &self.ro, &policy)
                .await
                .map_err(store)?;
            wrote = true;
        }
        if let (Some(t), Some(d)) = (&tcp_policy, &tcp_digest) {
            if old_tcp != Some(d.as_str()) {
                let plugin = tcp_wasmplugin_name(&self.ro);
                apply_tcp_policy(&self.ctx.client, &self.ns, &plugin, t)
                    .await
                    .map_err(store)?;
                wrote = true;
            }
        }
        let recorded = applied(&digest, tcp_digest.as_deref());
        if wrote || old.applied_policy.as_deref() != Some(recorded.as_str()) {
            status.applied_policy = Some(recorded);
        }
        if status != old {
            let rv = self.ro.resource_version();
            apply_status(
                &self.ctx.client,
                &self.ns,
                &self.name,
                rv.as_deref(),
                &status,
            )
            .await
            .map_err(store)?;
        }
        Ok(status)
    }

    /// One Event per reconcile that moved the rollout, its reason the phase reached: kube's
    /// Recorder folds events with the same reason and object into one series (keeping the
    /// first note), and the object's resourceVersion (in the reference) differs per write.
    async fn publish(
        &self,
        _: &Plan,
        status: &RolloutStatus,
        notes: Vec<String>,
    ) -> Result<(), Error> {
        if notes.is_empty() {
            return Ok(());
        }
        let warning = status.phase == Phase::Aborted;
        let reason = status.phase.to_string();
        publish(
            &self.ctx,
            &self.reference,
            warning,
            &reason,
            notes.join("; "),
        )
        .await
    }

    fn log(&self, _: &str, status: &RolloutStatus, line: &str) {
        tracing::info!(
            rollout = self.key,
            step = status.current_step + 1,
            version = status.policy_version,
            "{line}"
        );
    }
}

/// One reconcile of one Rollout (level-triggered: reads only the object and the clock): one
/// pass of the [`Driver`], the sidecar's too, over the Rollout as a [`Store`].
pub async fn reconcile(ro: Arc<Rollout>, ctx: Arc<Context>) -> Result<Action, Error> {
    let (Some(ns), Some(name)) = (ro.namespace(), ro.metadata.name.clone()) else {
        return Err(Error::Unnamed);
    };
    let key = format!("{ns}/{name}");
    let mut reference = ro.object_ref(&());
    // Part of the Recorder's series key: see [`KubeStore::publish`].
    reference.resource_version = ro.resource_version();
    let plan = match validate::plan(&ro) {
        Ok(p) => p,
        Err(errs) => {
            // A bad spec is not retried: the next edit triggers a reconcile.
            publish(&ctx, &reference, true, "InvalidSpec", errs.to_string()).await?;
            return Ok(Action::await_change());
        }
    };
    let old = ro.status.clone().unwrap_or_default();
    let event = if old.revision != plan.revision {
        Event::SpecChanged
    } else {
        Event::Tick
    };
    let store = KubeStore {
        ctx: ctx.clone(),
        ro,
        plan: Arc::new(plan),
        ns,
        name,
        key: key.clone(),
        reference,
    };
    let stored = match ctx.driver.pass(&store, event, None, Timestamp::now()).await {
        Ok(stored) => stored,
        Err(PassError::Store(e)) => return Err(e),
        // Tick and SpecChanged are never refused, and no expectation is given.
        Err(PassError::Refused(_) | PassError::Moved(_)) => return Ok(Action::await_change()),
    };
    let Some(status) = stored else {
        // The rendered policy was refused: the last good one stays, the Rollout says why,
        // and the next edit triggers a reconcile.
        return Ok(Action::await_change());
    };
    if let Ok(mut f) = ctx.failures.lock() {
        f.remove(&key);
    }
    // Timed pauses end on the clock: look again soon while the rollout moves.
    Ok(if status.phase.is_active() {
        Action::requeue(Duration::from_secs(1))
    } else {
        Action::await_change()
    })
}

/// After a failed reconcile: a conflict is retried at once; anything else backs off
/// exponentially (1 s, 2 s, 4 s … capped at 5 min) per rollout.
pub fn error_policy(ro: Arc<Rollout>, err: &Error, ctx: Arc<Context>) -> Action {
    if matches!(err, Error::Conflict(_)) {
        return Action::requeue(Duration::from_millis(100));
    }
    let key = format!("{}/{}", ro.namespace().unwrap_or_default(), ro.name_any());
    let n = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(key).or_insert(0);
            *n = n.saturating_add(1);
            *n
        })
        .unwrap_or(1);
    Action::requeue(backoff(n))
}

/// The delay after `n` consecutive failures.
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(8)).min(Duration::from_secs(300))
}
