//! A Rollout with connection limits (`spec.tcp`) against kube's mock-service pattern: its
//! TCP policy is server-side applied into a second WasmPlugin, `<wasmPlugin>-tcp`, with
//! `type: NETWORK`; the HTTP WasmPlugin gets exactly what it got without the limits; a step
//! rewrites the HTTP policy only, a change of the limits the TCP one only.

use std::sync::{Arc, Mutex};

use kube::Client;
use rollgate_controller::controller::{self, Context};
use rollgate_rollout::{
    render, render_tcp, step, validate, Event, Rollout, RolloutStatus, Timestamp,
};
use serde_json::json;

mod kube_support;

use kube_support::{Reply, Seen};

const WP: &str = "/apis/extensions.istio.io/v1alpha1/namespaces/shop/wasmplugins";
const SSA: &str = "?&force=true&fieldManager=rollgate";

/// The seed Rollout writing into WasmPlugin `gw`, with connection limits.
fn rollout(per_source: u32) -> Rollout {
    let mut ro = kube_support::rollout("7");
    ro.spec.wasm_plugin = Some("gw".into());
    ro.spec.tcp = Some(
        serde_json::from_value(
            json!({"allow": ["10.0.0.0/8"], "inFlight": {"perSource": per_source}}),
        )
        .unwrap(),
    );
    ro
}

fn api_server() -> (Client, Arc<Mutex<Vec<Seen>>>) {
    kube_support::api_server("default", |s: &Seen| {
        if s.uri.contains("/rollouts/") {
            let mut ro = serde_json::to_value(rollout(3)).unwrap();
            ro["status"] = s.body["status"].clone();
            Reply::Json(200, ro)
        } else {
            Reply::Json(200, s.body.clone())
        }
    })
}

fn status_of(s: &Seen) -> RolloutStatus {
    serde_json::from_value(s.body["status"].clone()).unwrap()
}

/// The requests from `from` on, as (method, uri).
fn calls(seen: &Arc<Mutex<Vec<Seen>>>, from: usize) -> Vec<(String, String)> {
    seen.lock().unwrap()[from..]
        .iter()
        .map(|s| (s.method.clone(), s.uri.clone()))
        .collect()
}

#[tokio::test]
async fn the_tcp_policy_goes_to_its_own_network_wasmplugin_and_changes_with_the_spec_only() {
    let (client, seen) = api_server();
    let ctx = Context::new(client.clone(), None);
    let ro = rollout(3);
    controller::reconcile(Arc::new(ro.clone()), ctx.clone())
        .await
        .unwrap();
    let first = seen.lock().unwrap().clone();
    assert_eq!(
        calls(&seen, 0),
        [
            ("PATCH".to_string(), format!("{WP}/gw{SSA}")),
            ("PATCH".to_string(), format!("{WP}/gw-tcp{SSA}")),
            (
                "PATCH".to_string(),
                format!("/apis/rollgate.dev/v1alpha1/namespaces/shop/rollouts/flask/status{SSA}")
            ),
            (
                "POST".to_string(),
                "/apis/events.k8s.io/v1/namespaces/shop/events?".to_string()
            ),
        ]
    );
    let status = status_of(&first[2]);
    let plan = validate::plan(&ro).unwrap();
    // The HTTP WasmPlugin: exactly what the same Rollout without limits renders.
    let mut without = ro.spec.clone();
    without.tcp = None;
    let http = serde_json::to_value(render(&plan.name, &without, &status)).unwrap();
    assert_eq!(
        first[0].body,
        json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
               "metadata": {"name": "gw"}, "spec": {"pluginConfig": http}})
    );
    // The TCP one: a network filter's policy, and the WasmPlugin's type said so.
    let tcp = serde_json::to_value(render_tcp(&plan.name, &plan.spec).unwrap()).unwrap();
    assert_eq!(tcp["name"], "flask-tcp");
    assert_eq!(
        tcp["tcp"],
        json!({"allow": ["10.0.0.0/8"], "in_flight": {"per_source": 3}})
    );
    assert_eq!(
        first[1].body,
        json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
               "metadata": {"name": "gw-tcp"},
               "spec": {"type": "NETWORK", "pluginConfig": tcp}})
    );
    assert_eq!(status.policy_version, 1);
    let recorded = status.applied_policy.clone().unwrap();
    assert!(recorded.contains(" tcp:"), "{recorded}");

    // Unchanged, in a new process: nothing is written.
    let mut ro = rollout(3);
    ro.status = Some(status.clone());
    let n = seen.lock().unwrap().len();
    controller::reconcile(Arc::new(ro.clone()), Context::new(client.clone(), None))
        .await
        .unwrap();
    assert_eq!(calls(&seen, n), []);

    // A step (`rollgate promote` wrote it into the status): the HTTP policy only.
    let promoted = step(&plan, &status, Event::Promote, Timestamp::now())
        .unwrap()
        .status;
    ro.status = Some(promoted);
    controller::reconcile(Arc::new(ro.clone()), ctx.clone())
        .await
        .unwrap();
    let stepped = calls(&seen, n);
    assert_eq!(stepped[0].1, format!("{WP}/gw{SSA}"), "{stepped:#?}");
    assert!(
        !stepped.iter().any(|(_, u)| u.contains("gw-tcp")),
        "{stepped:#?}"
    );
    let after_step = status_of(
        seen.lock()
            .unwrap()
            .iter()
            .rev()
            .find(|s| s.uri.contains("/status"))
            .unwrap(),
    );
    assert_eq!(after_step.policy_version, 2);

    // New limits: the TCP policy only, at the next version.
    let mut ro = rollout(5);
    ro.status = Some(after_step.clone());
    let n = seen.lock().unwrap().len();
    controller::reconcile(Arc::new(ro), ctx.clone())
        .await
        .unwrap();
    let changed = calls(&seen, n);
    assert_eq!(changed[0].1, format!("{WP}/gw-tcp{SSA}"), "{changed:#?}");
    assert!(
        !changed
            .iter()
            .any(|(_, u)| u.ends_with(&format!("/gw{SSA}"))),
        "{changed:#?}"
    );
    let s = seen.lock().unwrap();
    assert_eq!(
        s[n].body["spec"]["pluginConfig"]["tcp"]["in_flight"]["per_source"],
        5
    );
    let st = status_of(s.iter().rev().find(|s| s.uri.contains("/status")).unwrap());
    assert_eq!(st.policy_version, 3);
    assert_eq!(st.current_step, after_step.current_step, "same step");
}

/// A Rollout without `spec.tcp` records, writes and reads what it did before: a status an
/// older controller stored is up to date (no re-apply after an upgrade), and no TCP
/// WasmPlugin is written.
#[tokio::test]
async fn without_limits_nothing_changes() {
    let (client, seen) = api_server();
    let mut ro = kube_support::rollout("7");
    controller::reconcile(Arc::new(ro.clone()), Context::new(client.clone(), None))
        .await
        .unwrap();
    assert!(!calls(&seen, 0).iter().any(|(_, u)| u.contains("-tcp")));
    let status = status_of(&seen.lock().unwrap()[1]);
    let plan = validate::plan(&ro).unwrap();
    let http = serde_json::to_value(render(&plan.name, &plan.spec, &status)).unwrap();
    assert_eq!(
        status.applied_policy.as_deref(),
        Some(rollgate_rollout::plan::fingerprint(http.to_string().as_bytes()).as_str()),
        "the HTTP policy's fingerprint alone, as before"
    );
    ro.status = Some(status);
    let n = seen.lock().unwrap().len();
    controller::reconcile(Arc::new(ro), Context::new(client, None))
        .await
        .unwrap();
    assert_eq!(calls(&seen, n), []);
}
