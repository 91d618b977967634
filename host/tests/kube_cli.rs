//! `rollgate promote|abort|retry|status --kubernetes` against a mock API server: the
//! requests sent, a conflict with the controller retried on a fresh read, a refused command.

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use rollgate::kube::commands::cli_with;
use rollgate::rollout::{validate, Event, Phase, Rollout, RolloutStatus};
use serde_json::{json, Value};

fn paused_rollout(rv: &str) -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/rollout.yaml"
    ))
    .unwrap();
    let mut ro: Rollout = validate::parse(&text).unwrap();
    let plan = validate::plan(&ro).unwrap();
    ro.metadata.namespace = Some("shop".into());
    ro.metadata.resource_version = Some(rv.into());
    ro.status = Some(RolloutStatus {
        phase: Phase::Paused,
        current_step: 1,
        policy_version: 2,
        revision: plan.revision,
        attempt: 1,
        ..Default::default()
    });
    serde_json::to_value(ro).unwrap()
}

/// One request: method, path, body.
type Seen = (String, String, Value);

/// Serves GETs with the paused Rollout (resourceVersion 1, 2, … per read) and answers status
/// patches with `patch_codes` in turn; records (method, path, body).
fn server(patch_codes: Vec<u16>) -> (Client, Arc<Mutex<Vec<Seen>>>) {
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let (mut reads, mut codes) = (0, patch_codes.into_iter());
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (code, answer) = if method == "GET" {
                reads += 1;
                (200, paused_rollout(&reads.to_string()))
            } else {
                let code = codes.next().unwrap_or(200);
                let mut ro = paused_rollout("99");
                ro["status"] = body["status"].clone();
                let failure = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "message": "conflict", "reason": "Conflict", "code": code});
                (code, if code == 200 { ro } else { failure })
            };
            log.lock().unwrap().push((method, path, body));
            send.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    });
    (Client::new(mock, "shop"), seen)
}

const ONE: &str = "/apis/rollgate.dev/v1alpha1/namespaces/shop/rollouts/flask";

#[tokio::test]
async fn promote_retries_a_conflict_on_a_fresh_read() {
    let (client, seen) = server(vec![409, 200]);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let name = "flask".to_string();
    let code = cli_with(
        &client,
        "shop",
        "promote",
        Some(Event::Promote),
        Some(&name),
        &mut out,
        &mut err,
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    let seen = seen.lock().unwrap().clone();
    let calls: Vec<(&str, &str)> = seen
        .iter()
        .map(|(m, p, _)| (m.as_str(), p.as_str()))
        .collect();
    let status = format!("{ONE}/status");
    assert_eq!(
        calls,
        [
            ("GET", ONE),
            ("PATCH", status.as_str()),
            ("GET", ONE),
            ("PATCH", status.as_str())
        ]
    );
    // Each write carries the resourceVersion of the read before it.
    assert_eq!(seen[1].2["metadata"]["resourceVersion"], "1");
    assert_eq!(seen[3].2["metadata"]["resourceVersion"], "2");
    // The pause is released: the engine ran `setWeight: 50` and stopped at the next pause.
    assert_eq!(seen[3].2["status"]["currentStep"], 3);
    assert_eq!(seen[3].2["status"]["canaryWeight"], 50.0);
    assert_eq!(seen[3].2["status"]["phase"], "Paused");
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("flask: promote: "), "{text}");
}

#[tokio::test]
async fn a_command_the_engine_refuses_writes_nothing_and_exits_1() {
    let (client, seen) = server(vec![]);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let name = "flask".to_string();
    let code = cli_with(
        &client,
        "shop",
        "retry",
        Some(Event::Retry),
        Some(&name),
        &mut out,
        &mut err,
    )
    .await
    .unwrap();
    assert_eq!(code, 1);
    assert!(String::from_utf8(err)
        .unwrap()
        .starts_with("rollgate retry: "));
    assert!(seen.lock().unwrap().iter().all(|(m, _, _)| m == "GET"));
}

#[tokio::test]
async fn status_reads_the_rollout() {
    let (client, seen) = server(vec![]);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let name = "flask".to_string();
    let code = cli_with(
        &client,
        "shop",
        "status",
        None,
        Some(&name),
        &mut out,
        &mut err,
    )
    .await
    .unwrap();
    assert_eq!(code, 0);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("flask") && text.contains("Paused"), "{text}");
    assert_eq!(seen.lock().unwrap().len(), 1);
}
