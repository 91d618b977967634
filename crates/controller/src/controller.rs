//! `rollgate serve --kubernetes`: the same engine as `serve --dir` ([`step`], [`render`],
//! [`validate::plan`]) driven by the API server instead of a directory.
//!
//! Per reconcile of a Rollout: validate the spec into a plan; step it (`SpecChanged` when its
//! revision differs from the status's, else `Tick`); render the policy and server-side-apply
//! it into the `pluginConfig` of the Rollout's WasmPlugin; server-side-apply the status
//! (carrying the `resourceVersion` read, so a concurrent `rollgate promote` wins and this
//! reconcile retries on the fresh object: 409); publish an Event per transition; then start
//! the webhook call the stored status waits at ([`super::webhooks`]), whose answer a later
//! reconcile feeds to the engine (`Event::Webhook`). Errors back off exponentially per
//! Rollout. No finalizer: nothing outside the Rollout needs
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
//! ([`render_tcp`]) server-side applied into a second WasmPlugin, `<wasmPlugin>-tcp`, with
//! `type: NETWORK`: the policy runs only in a network filter, and the HTTP WasmPlugin's
//! `pluginConfig` is exactly what it was without the limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::analysis::{Analyzer, Source};
use super::webhooks::Webhooks;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use rollgate_rollout::notify;
use rollgate_rollout::plan::fingerprint;
use rollgate_rollout::status::Told;
use rollgate_rollout::webhook::Call;
use rollgate_rollout::{
    accept_rendered, render, render_tcp, step, validate, Effect, Event, Phase, Rollout,
    RolloutStatus, Timestamp,
};
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
    /// Webhook steps: the calls in flight and their answers.
    pub webhooks: Webhooks,
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
            webhooks: Webhooks::default(),
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
        failures + self.analyzer.retain(key_live) + self.webhooks.retain(uid_live)
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

/// Delivers each of `told` to the receivers that want it, each on a task of its own.
fn send_notices(
    receivers: &[rollgate_rollout::types::Notify],
    name: &str,
    told: &[notify::Notice],
    status: &rollgate_rollout::RolloutStatus,
) {
    for n in told {
        for r in receivers.iter().filter(|r| notify::wants(r, n.kind)) {
            let (url, body) = (r.url.clone(), notify::body(name, n, status));
            let rollout = name.to_string();
            tokio::spawn(async move {
                if let Err(e) = notify::deliver(&url, &body).await {
                    tracing::warn!(%rollout, %url, error = %e, "notification not delivered");
                }
            });
        }
    }
}

/// Whether `status` renders an HTTP policy other than the one `old` records as written.
fn pushes(plan: &rollgate_rollout::Plan, status: &RolloutStatus, old: &RolloutStatus) -> bool {
    let rendered = serde_json::to_value(render(&plan.name, &plan.spec, status));
    let digest = rendered.map(|v| fingerprint(v.to_string().as_bytes()));
    digest.ok().as_deref() != applied_parts(old.applied_policy.as_deref()).0
}

/// One reconcile of one Rollout (level-triggered: reads only the object and the clock).
pub async fn reconcile(ro: Arc<Rollout>, ctx: Arc<Context>) -> Result<Action, Error> {
    let (Some(ns), Some(name)) = (ro.namespace(), ro.metadata.name.clone()) else {
        return Err(Error::Unnamed);
    };
    let key = format!("{ns}/{name}");
    let mut reference = ro.object_ref(&());
    // Part of the Recorder's series key: see the Events below.
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
    let now = Timestamp::now();
    // Tick and SpecChanged are never refused; keep the status if one ever is.
    let t =
        step(&plan, &old, event.clone(), now).unwrap_or_else(|_| rollgate_rollout::Transition {
            status: old.clone(),
            effects: Vec::new(),
        });
    // Told from where the last notices left the rollout, not from the stored status: a
    // transition the CLI wrote into the status (it patches it directly) is told now.
    let last_told = old
        .notified
        .as_ref()
        .map_or_else(|| old.clone(), |m| m.apply(&old));
    let mut told = notify::notices(&plan.name, &last_told, &t.status, &event);
    let mut status = t.status;
    let mut effects = t.effects;
    // The answer of the webhook the rollout waits at, through the same engine: 2xx goes on,
    // anything else aborts.
    let uid = ro.uid().unwrap_or_else(|| key.clone());
    if let Some(ev) = ctx.webhooks.answer(&uid, &status) {
        if let Ok(next) = step(&plan, &status, ev.clone(), now) {
            told.extend(notify::notices(&plan.name, &status, &next.status, &ev));
            status = next.status;
            effects.extend(next.effects);
        }
    }
    // Which version each gateway serves, for a Rollout that waits for them (`acknowledge`):
    // the step that changed the policy goes on once they all serve it. Not while this
    // reconcile is about to push a new policy (a command or the clock moved the rollout): the
    // version the step waits for is numbered only when it is written, and the gateways
    // serving the last one must not count as serving it; the next reconcile reads them.
    if ro.spec.acknowledge.is_some() && !pushes(&plan, &status, &old) {
        if let Some(gateways) = ctx.analyzer.gateways(&plan.name).await {
            let ev = Event::Gateways { gateways };
            if let Ok(next) = step(&plan, &status, ev.clone(), now) {
                told.extend(notify::notices(&plan.name, &status, &next.status, &ev));
                status = next.status;
                effects.extend(next.effects);
            }
        }
    }
    // The analysis events due (measurements, canary breaker trips), through the same engine.
    for ev in ctx.analyzer.events(&key, &plan, &status).await {
        if let Ok(next) = step(&plan, &status, ev.clone(), now) {
            told.extend(notify::notices(&plan.name, &status, &next.status, &ev));
            status = next.status;
            effects.extend(next.effects);
        }
    }
    status.notified = Some(Told::of(&status));
    let rendered = render(&plan.name, &plan.spec, &status);
    let tcp = render_tcp(&plan.name, &plan.spec);
    // Written only once the filter's own acceptance function accepts the very text, as the
    // sidecar serves it; else the last good policy stays and the Rollout says why.
    let accepted =
        accept_rendered(&rendered).and_then(|_| tcp.as_ref().map(accept_rendered).transpose());
    if let Err(e) = accepted {
        let why = format!("rendered policy refused by the filter: {e}");
        publish(&ctx, &reference, true, "InvalidPolicy", why).await?;
        return Ok(Action::await_change());
    }
    let policy = serde_json::to_value(rendered)?;
    let tcp_policy = tcp.map(serde_json::to_value).transpose()?;
    // Compared with the fingerprints stored in the status, not with memory: level-triggered,
    // so a restart or a fail-over neither re-applies nor bumps the version. Each policy is
    // written when it changed: a step rewrites the HTTP one only, the TCP limits change with
    // the spec alone.
    let digest = fingerprint(policy.to_string().as_bytes());
    let tcp_digest = tcp_policy
        .as_ref()
        .map(|t| fingerprint(t.to_string().as_bytes()));
    let (old_http, old_tcp) = applied_parts(old.applied_policy.as_deref());
    let mut wrote = false;
    if old_http != Some(digest.as_str()) {
        // Numbered (after the fingerprint: the number is not what changed) only for a
        // Rollout that waits for its gateways: a filter before `version` refuses it.
        let mut policy = policy.clone();
        if ro.spec.acknowledge.is_some() {
            policy["version"] = json!(old.policy_version.max(status.policy_version) + 1);
        }
        apply_to_gateway(&ctx.client, &ns, &ro, &policy).await?;
        wrote = true;
    }
    if let (Some(t), Some(d)) = (&tcp_policy, &tcp_digest) {
        if old_tcp != Some(d.as_str()) {
            apply_tcp_policy(&ctx.client, &ns, &tcp_wasmplugin_name(&ro), t).await?;
            wrote = true;
        }
    }
    let recorded = applied(&digest, tcp_digest.as_deref());
    if wrote || old.applied_policy.as_deref() != Some(recorded.as_str()) {
        if wrote {
            status.policy_version = old.policy_version.max(status.policy_version) + 1;
        }
        status.applied_policy = Some(recorded);
    }
    if status != old {
        apply_status(
            &ctx.client,
            &ns,
            &name,
            ro.resource_version().as_deref(),
            &status,
        )
        .await?;
    }
    // Only now that the status is stored: the notifications, in the background (a slow or
    // dead receiver never holds the rollout; a failed status write sends none).
    send_notices(&ro.spec.notify, &plan.name, &told, &status);
    // Only now that the status is stored: its webhook call (the engine's `Resumed`
    // re-issues the call a status waits on, which also covers a restart or a new leader;
    // the first call per attempt and step is the only one made).
    if let Ok(t) = step(&plan, &status, Event::Resumed, now) {
        for fx in &t.effects {
            if let Some(call) = Call::from_effect(&plan.name, &status, fx) {
                if call.attempt == status.attempt && call.step == status.current_step {
                    ctx.webhooks.start(&uid, &key, call);
                }
            }
        }
    }
    // One Event per reconcile that moved the rollout, its reason the phase reached: kube's
    // Recorder folds events with the same reason and object into one series (keeping the
    // first note), and the object's resourceVersion (in the reference) differs per write.
    let notes: Vec<String> = effects
        .into_iter()
        .filter_map(|fx| match fx {
            Effect::Note(n) => Some(n),
            _ => None,
        })
        .collect();
    if !notes.is_empty() {
        let warning = status.phase == Phase::Aborted;
        let reason = status.phase.to_string();
        publish(&ctx, &reference, warning, &reason, notes.join("; ")).await?;
    }
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
