//! The controller's API calls, against kube's mock-service pattern (tower-test): the exact
//! requests for the WasmPlugin patch, the status update and the Events, and what the
//! controller does when the API server answers 409 or 500.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::Client;
use rollgate_controller::analysis::Source;
use rollgate_controller::controller::{self, Context, Error};
use rollgate_rollout::{render, validate, Phase, Rollout};
use serde_json::json;

mod kube_support;

use kube_support::{failure, Reply, Seen};

fn rollout() -> Rollout {
    kube_support::rollout("7")
}

/// A stand-in API server: records every request and answers with `status_for(uri)` (body:
/// the request body echoed, or the Rollout for a status patch).
fn api_server(status_for: fn(&str) -> u16) -> (Client, Arc<Mutex<Vec<Seen>>>) {
    kube_support::api_server("default", move |s: &Seen| {
        let code = status_for(&s.uri);
        let answer = if code >= 400 {
            failure(code, "Conflict")
        } else if s.uri.contains("/rollouts/") {
            let mut ro = serde_json::to_value(rollout()).unwrap();
            ro["status"] = s.body["status"].clone();
            ro
        } else {
            s.body.clone()
        };
        Reply::Json(code, answer)
    })
}

fn ok(_: &str) -> u16 {
    200
}

#[tokio::test]
async fn first_reconcile_patches_the_wasmplugin_then_the_status_then_publishes_events() {
    let (client, seen) = api_server(ok);
    let ctx = Context::new(client, Some("rollgate-0".into()));
    let action = controller::reconcile(Arc::new(rollout()), ctx)
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
    let seen = seen.lock().unwrap().clone();

    // 1. The rendered policy, server-side applied into the WasmPlugin named like the Rollout.
    let wp = &seen[0];
    assert_eq!(wp.method, "PATCH");
    assert_eq!(
        wp.uri,
        "/apis/extensions.istio.io/v1alpha1/namespaces/shop/wasmplugins/flask?&force=true&fieldManager=rollgate"
    );
    assert_eq!(wp.body["apiVersion"], "extensions.istio.io/v1alpha1");
    assert_eq!(wp.body["kind"], "WasmPlugin");
    assert_eq!(wp.body["metadata"], json!({"name": "flask"}));
    let ro = rollout();
    let plan = validate::plan(&ro).unwrap();
    let status: rollgate_rollout::RolloutStatus =
        serde_json::from_value(seen[1].body["status"].clone()).unwrap();
    let expected = serde_json::to_value(render(&plan.name, &plan.spec, &status)).unwrap();
    assert_eq!(wp.body["spec"], json!({ "pluginConfig": expected }));
    // The seed's first step turns the header route on.
    let routes = expected["routes"].to_string();
    assert!(routes.contains("shenzhen"), "{routes}");

    // 2. The status, server-side applied to the status subresource, guarded by the
    //    resourceVersion read.
    let st = &seen[1];
    assert_eq!(st.method, "PATCH");
    assert_eq!(
        st.uri,
        "/apis/rollgate.dev/v1alpha1/namespaces/shop/rollouts/flask/status?&force=true&fieldManager=rollgate"
    );
    assert_eq!(st.body["apiVersion"], "rollgate.dev/v1alpha1");
    assert_eq!(st.body["kind"], "Rollout");
    assert_eq!(
        st.body["metadata"],
        json!({"name": "flask", "resourceVersion": "7"})
    );
    assert_eq!(status.revision, plan.revision);
    assert_eq!(status.policy_version, 1);
    assert_eq!(status.phase, Phase::Paused);

    // 3. An Event for the transition, on the Rollout, its reason the phase reached.
    assert_eq!(seen.len(), 3, "{seen:#?}");
    for ev in &seen[2..] {
        assert_eq!(ev.method, "POST");
        assert_eq!(ev.uri, "/apis/events.k8s.io/v1/namespaces/shop/events?");
        assert_eq!(ev.body["reason"], "Paused");
        assert_eq!(ev.body["type"], "Normal");
        assert_eq!(ev.body["reportingController"], "rollgate");
        assert_eq!(ev.body["regarding"]["kind"], "Rollout");
        assert_eq!(ev.body["regarding"]["name"], "flask");
        assert_eq!(ev.body["regarding"]["resourceVersion"], "7");
        let note = ev.body["note"].as_str().unwrap();
        assert!(note.contains("header route"), "{note}");
    }
}

#[tokio::test]
async fn unchanged_rollout_writes_nothing_the_second_time() {
    let (client, seen) = api_server(ok);
    let ctx = Context::new(client, None);
    controller::reconcile(Arc::new(rollout()), ctx.clone())
        .await
        .unwrap();
    let status = seen.lock().unwrap()[1].body["status"].clone();
    let mut ro = rollout();
    ro.status = Some(serde_json::from_value(status).unwrap());
    let before = seen.lock().unwrap().len();
    controller::reconcile(Arc::new(ro), ctx).await.unwrap();
    assert_eq!(
        seen.lock().unwrap().len(),
        before,
        "paused and unchanged: no request"
    );
}

#[tokio::test]
async fn a_deleted_rollout_is_forgotten() {
    let (client, _) = api_server(server_error);
    let ctx = Context::new(client, None);
    let err = controller::reconcile(Arc::new(rollout()), ctx.clone())
        .await
        .unwrap_err();
    controller::error_policy(Arc::new(rollout()), &err, ctx.clone());
    let uid = rollout().metadata.uid.unwrap_or_default();
    let other = ("shop/other".to_string(), "u2".to_string());
    assert_eq!(
        ctx.forget_all_but(&[other.clone(), ("shop/flask".into(), uid)]),
        1
    );
    assert_eq!(
        ctx.forget_all_but(&[other]),
        0,
        "its back-off count is gone"
    );
}

#[tokio::test]
async fn a_restarted_controller_neither_reapplies_nor_bumps_an_unchanged_policy() {
    let (client, seen) = api_server(ok);
    controller::reconcile(Arc::new(rollout()), Context::new(client.clone(), None))
        .await
        .unwrap();
    let status = seen.lock().unwrap()[1].body["status"].clone();
    assert_eq!(status["policyVersion"], 1);
    let mut ro = rollout();
    ro.status = Some(serde_json::from_value(status).unwrap());
    let before = seen.lock().unwrap().len();
    // A new process (or the new leader after a fail-over): nothing in memory.
    controller::reconcile(Arc::new(ro), Context::new(client, None))
        .await
        .unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.len(),
        before,
        "same policy, nothing to write; got {:#?}",
        &seen[before..]
    );
}

fn status_conflicts(uri: &str) -> u16 {
    if uri.contains("/status") {
        409
    } else {
        200
    }
}

#[tokio::test]
async fn a_conflict_on_the_status_is_retried_at_once() {
    let (client, seen) = api_server(status_conflicts);
    let ctx = Context::new(client, None);
    let ro = Arc::new(rollout());
    let err = controller::reconcile(ro.clone(), ctx.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    // No Event for a transition that was not stored.
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .all(|s| !s.uri.contains("/events")));
    assert_eq!(
        controller::error_policy(ro, &err, ctx),
        Action::requeue(Duration::from_millis(100))
    );
}

fn server_error(uri: &str) -> u16 {
    if uri.contains("/wasmplugins/") {
        500
    } else {
        200
    }
}

#[tokio::test]
async fn a_server_error_backs_off_and_writes_no_status() {
    let (client, seen) = api_server(server_error);
    let ctx = Context::new(client, None);
    let ro = Arc::new(rollout());
    let err = controller::reconcile(ro.clone(), ctx.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Kube(_)), "{err:?}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "only the failed WasmPlugin patch: {seen:#?}");
    // The status is not advanced past a policy the gateways never got; back-off doubles.
    let delays: Vec<Action> = (0..3)
        .map(|_| controller::error_policy(ro.clone(), &err, ctx.clone()))
        .collect();
    assert_eq!(
        delays,
        [1, 2, 4].map(|s| Action::requeue(Duration::from_secs(s)))
    );
}

/// A stand-in Envoy admin: each `/stats/prometheus` reading shows 100 more canary 5xx.
fn failing_canary_admin() -> String {
    serve_readings(|i| {
        format!(
            "# TYPE rollgate_flask_variant_canary_rs_5xx counter\n\
             rollgate_flask_variant_canary_rs_5xx {}\n\
             rollgate_flask_variant_canary_rs_2xx 10\n",
            100 * i
        )
    })
}

/// A stand-in Prometheus: the instant query's vector, 100 more canary 5xx per reading
/// (split over two gateways, which the controller sums). Fails the request unless the
/// query is the policy's selector.
fn failing_canary_prometheus() -> String {
    serve_readings(|i| {
        let v = |n: usize| json!(["1764500000.0", n.to_string()]);
        json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"__name__": "rollgate_flask_variant_canary_rs_5xx", "instance": "gw-a"}, "value": v(60 * i)},
            {"metric": {"__name__": "rollgate_flask_variant_canary_rs_5xx", "instance": "gw-b"}, "value": v(40 * i)},
            {"metric": {"__name__": "rollgate_flask_variant_canary_rs_2xx", "instance": "gw-a"}, "value": v(10)}
        ]}})
        .to_string()
    })
}

/// Serves `body(i)` for the i-th request; a request line is checked for the expected path.
fn serve_readings(body: fn(usize) -> String) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for (i, conn) in listener.incoming().enumerate() {
            let mut conn = conn.unwrap();
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap_or(0);
            let line = String::from_utf8_lossy(&buf[..n])
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let expected = [
                "GET /stats/prometheus ",
                "GET /api/v1/query?query=%7B__name__%3D~%22rollgate_flask_.%2A%22%7D ",
            ];
            let body = if expected.iter().any(|e| line.starts_with(e)) {
                body(i)
            } else {
                format!("unexpected request {line}")
            };
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[tokio::test]
async fn a_failing_canary_measured_at_the_gateways_is_aborted() {
    aborts_a_failing_canary(Source::EnvoyAdmin(vec![failing_canary_admin()])).await;
}

#[tokio::test]
async fn a_failing_canary_measured_by_prometheus_is_aborted() {
    aborts_a_failing_canary(Source::Prometheus(failing_canary_prometheus())).await;
}

async fn aborts_a_failing_canary(source: Source) {
    let (client, seen) = api_server(ok);
    let ctx = Context::with_analysis(client, None, source);
    let forget = ctx.clone();
    let mut ro = rollout();
    let analysis = ro.spec.strategy.analysis.as_mut().unwrap();
    analysis.interval = Some("200ms".into());
    analysis.failure_limit = 0;
    // Paused at the first pause, header route on (as the first reconcile leaves it).
    controller::reconcile(Arc::new(ro.clone()), ctx.clone())
        .await
        .unwrap();
    let status = seen.lock().unwrap()[1].body["status"].clone();
    ro.status = Some(serde_json::from_value(status).unwrap());
    ro.metadata.resource_version = Some("8".into());
    // The reading after one interval shows the canary answering 5xx only.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let before = seen.lock().unwrap().len();
    let action = controller::reconcile(Arc::new(ro), ctx).await.unwrap();
    assert_eq!(
        action,
        Action::await_change(),
        "aborted: nothing left to drive"
    );
    let seen = seen.lock().unwrap()[before..].to_vec();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    // All traffic back to stable: no header route, no split.
    let config = seen[0].body["spec"]["pluginConfig"].to_string();
    assert!(!config.contains("shenzhen"), "{config}");
    assert_eq!(seen[1].body["status"]["phase"], "Aborted");
    assert_eq!(seen[1].body["status"]["canaryWeight"], 0.0);
    assert_eq!(seen[2].body["reason"], "Aborted");
    assert_eq!(seen[2].body["type"], "Warning");
    let note = seen[2].body["note"].as_str().unwrap();
    assert!(note.contains("success-rate"), "{note}");
    // What was read of it is kept while it exists, and forgotten once it is deleted.
    let uid = rollout().metadata.uid.unwrap_or_default();
    assert_eq!(forget.forget_all_but(&[("shop/flask".into(), uid)]), 1);
    assert_eq!(forget.forget_all_but(&[]), 0);
}

/// A Rollout naming an Envoy Gateway EnvoyExtensionPolicy: the controller reads it, finds the
/// `rollgate` wasm entry (here the second) and JSON-patches only that entry's `config`,
/// guarded by a `test` of the entry's name; the user's `code`, `failOpen` and the other
/// filter are never written.
#[tokio::test]
async fn an_envoy_extension_policy_gets_the_policy_in_its_rollgate_wasm_entry() {
    let (client, seen) = kube_support::api_server("default", |s: &Seen| {
        if s.path.contains("/envoyextensionpolicies/") {
            Reply::Json(200, kube_support::eep("flask-gw"))
        } else if s.uri.contains("/rollouts/") {
            let mut ro = serde_json::to_value(rollout()).unwrap();
            ro["status"] = s.body["status"].clone();
            Reply::Json(200, ro)
        } else {
            Reply::Json(200, s.body.clone())
        }
    });
    let mut ro = rollout();
    ro.spec.envoy_extension_policy = Some("flask-gw".into());
    let ctx = Context::new(client, None);
    controller::reconcile(Arc::new(ro.clone()), ctx)
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0].method, "GET");
    assert_eq!(
        seen[0].uri,
        "/apis/gateway.envoyproxy.io/v1alpha1/namespaces/shop/envoyextensionpolicies/flask-gw"
    );
    let patch = &seen[1];
    assert_eq!(patch.method, "PATCH");
    assert_eq!(
        patch.uri,
        "/apis/gateway.envoyproxy.io/v1alpha1/namespaces/shop/envoyextensionpolicies/flask-gw?"
    );
    let status: rollgate_rollout::RolloutStatus =
        serde_json::from_value(seen[2].body["status"].clone()).unwrap();
    let plan = validate::plan(&ro).unwrap();
    let expected = serde_json::to_value(render(&plan.name, &plan.spec, &status)).unwrap();
    assert_eq!(
        patch.body,
        json!([
            {"op": "test", "path": "/spec/wasm/1/name", "value": "rollgate"},
            {"op": "add", "path": "/spec/wasm/1/config", "value": expected},
        ])
    );
    assert!(
        !seen.iter().any(|s| s.uri.contains("wasmplugins")),
        "{seen:#?}"
    );
}

/// An EnvoyExtensionPolicy without a `rollgate` wasm entry is not written at all, and the
/// reconcile fails naming it.
#[tokio::test]
async fn an_envoy_extension_policy_without_a_rollgate_entry_is_left_alone() {
    let (client, seen) = kube_support::api_server("default", |s: &Seen| {
        let mut eep = kube_support::eep("flask-gw");
        eep["spec"]["wasm"][1]["name"] = json!("other");
        if s.method == "GET" {
            Reply::Json(200, eep)
        } else {
            Reply::Json(200, s.body.clone())
        }
    });
    let mut ro = rollout();
    ro.spec.envoy_extension_policy = Some("flask-gw".into());
    let ctx = Context::new(client, None);
    let err = controller::reconcile(Arc::new(ro), ctx).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("has no wasm entry named 'rollgate'"),
        "{err}"
    );
    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().all(|s| s.method == "GET"), "{seen:#?}");
}

/// `spec.notify`: the reconcile that pauses the rollout POSTs a notice with a `text` to the
/// receiver, after the status is stored, in the background.
#[tokio::test]
async fn a_transition_is_notified_after_the_status_is_stored() {
    use std::io::{BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut r = BufReader::new(stream.try_clone().unwrap());
            let Ok((_, body)) = kube_support::read_message(&mut r) else {
                continue;
            };
            let mut w = stream;
            let _ = w.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
            let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
        }
    });
    let (client, seen) = api_server(ok);
    let mut ro = rollout();
    ro.spec.notify = vec![rollgate_rollout::types::Notify {
        url: format!("http://127.0.0.1:{port}/hook"),
        events: Some(vec!["paused".into()]),
    }];
    let ctx = Context::new(client, None);
    controller::reconcile(Arc::new(ro), ctx).await.unwrap();
    let mut got = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(b) = rx.try_recv() {
            got = Some(b);
            break;
        }
    }
    let body: serde_json::Value = serde_json::from_str(&got.expect("a notice within 5 s")).unwrap();
    assert_eq!(body["event"], "paused");
    assert_eq!(body["rollout"], "flask");
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .starts_with("flask: paused at step"),
        "{body}"
    );
    // The status was written before (the notice follows the stored transition).
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .any(|s| s.uri.contains("/status")));
}

/// The next notice `rx` gets within 5 s (the runtime goes on meanwhile: delivery is a task).
async fn next_notice(
    rx: &std::sync::mpsc::Receiver<serde_json::Value>,
) -> Option<serde_json::Value> {
    for _ in 0..250 {
        if let Ok(b) = rx.try_recv() {
            return Some(b);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// A notification receiver on a loopback port: the bodies it got, in order.
fn receiver() -> (String, std::sync::mpsc::Receiver<serde_json::Value>) {
    use std::io::{BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut r = BufReader::new(stream.try_clone().unwrap());
            let Ok((_, body)) = kube_support::read_message(&mut r) else {
                continue;
            };
            let mut w = stream;
            let _ = w.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
            let _ = tx.send(serde_json::from_slice(&body).unwrap_or_default());
        }
    });
    (format!("http://127.0.0.1:{port}/hook"), rx)
}

/// `rollgate promote --kubernetes` writes the status itself (commands.rs): the controller's
/// next reconcile tells that transition, from where it last told the rollout stood, once.
#[tokio::test]
async fn a_transition_the_cli_wrote_is_notified_at_the_next_reconcile() {
    let (url, rx) = receiver();
    let with_notify = |status: Option<rollgate_rollout::RolloutStatus>| {
        let mut ro = rollout();
        ro.spec.notify = vec![rollgate_rollout::types::Notify {
            url: url.clone(),
            events: Some(vec!["paused".into(), "promoted".into()]),
        }];
        ro.status = status;
        ro
    };
    // The first reconcile pauses at the first pause and tells it; the status it writes says
    // so.
    let (client, seen) = api_server(ok);
    controller::reconcile(Arc::new(with_notify(None)), Context::new(client, None))
        .await
        .unwrap();
    let first = next_notice(&rx).await.expect("the first pause told");
    let written: rollgate_rollout::RolloutStatus = serde_json::from_value(
        seen.lock()
            .unwrap()
            .iter()
            .find(|s| s.uri.contains("/status"))
            .unwrap()
            .body["status"]
            .clone(),
    )
    .unwrap();
    let mark = written.notified.clone().expect("the told mark stored");
    assert_eq!(mark, rollgate_rollout::status::Told::of(&written));
    // The CLI's promote, as commands.rs makes it: the engine's step on the stored status.
    let plan = validate::plan(&with_notify(None)).unwrap();
    let promoted = rollgate_rollout::step(
        &plan,
        &written,
        rollgate_rollout::Event::Promote,
        rollgate_rollout::time::Timestamp::now(),
    )
    .unwrap()
    .status;
    assert!(promoted.current_step > written.current_step);
    assert_eq!(
        promoted.notified,
        Some(mark),
        "the CLI leaves the mark alone"
    );
    let (client, _) = api_server(ok);
    controller::reconcile(
        Arc::new(with_notify(Some(promoted.clone()))),
        Context::new(client, None),
    )
    .await
    .unwrap();
    let second = next_notice(&rx).await.expect("the CLI's transition told");
    assert_eq!(second["event"], first["event"]);
    assert_ne!(second["text"], first["text"], "{second}");
    assert!(
        second["text"].as_str().unwrap().contains(&promoted.message),
        "{second} / {}",
        promoted.message
    );
    // Told once: with the mark moved on, the same status tells nothing more.
    let mut settled = promoted;
    settled.notified = Some(rollgate_rollout::status::Told::of(&settled));
    let (client, _) = api_server(ok);
    controller::reconcile(
        Arc::new(with_notify(Some(settled))),
        Context::new(client, None),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rx.try_recv().is_err(), "told twice");
}
