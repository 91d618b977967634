//! `rollgate promote|abort|retry|status --kubernetes` against a mock API server: the
//! requests sent, a conflict with the controller retried on a fresh read, a refused command.

use std::sync::{Arc, Mutex};

use kube::Client;
use rollgate::cli::cluster::{cli_with, cli_with_step};
use rollgate::rollout::Event;
use serde_json::Value;

#[path = "../../controller/tests/kube_support/mod.rs"]
mod kube_support;

use kube_support::{failure, Reply, Seen};

fn paused_rollout(rv: &str) -> Value {
    serde_json::to_value(kube_support::paused_rollout(rv)).unwrap()
}

/// Serves GETs with the paused Rollout (resourceVersion 1, 2, … per read) and answers status
/// patches with `patch_codes` in turn; records every request.
fn server(patch_codes: Vec<u16>) -> (Client, Arc<Mutex<Vec<Seen>>>) {
    let (mut reads, mut codes) = (0, patch_codes.into_iter());
    kube_support::api_server("shop", move |s: &Seen| {
        if s.method == "GET" {
            reads += 1;
            return Reply::Json(200, paused_rollout(&reads.to_string()));
        }
        let code = codes.next().unwrap_or(200);
        if code != 200 {
            return Reply::Json(code, failure(code, "Conflict"));
        }
        let mut ro = paused_rollout("99");
        ro["status"] = s.body["status"].clone();
        Reply::Json(code, ro)
    })
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
        .map(|s| (s.method.as_str(), s.path.as_str()))
        .collect();
    let status = format!("{ONE}/status");
    // The first read is promote's own: it acts only at the step it reads (at most once, as
    // against the sidecar), then each write follows a fresh read.
    assert_eq!(
        calls,
        [
            ("GET", ONE),
            ("GET", ONE),
            ("PATCH", status.as_str()),
            ("GET", ONE),
            ("PATCH", status.as_str())
        ]
    );
    // Each write carries the resourceVersion of the read before it.
    assert_eq!(seen[2].body["metadata"]["resourceVersion"], "2");
    assert_eq!(seen[4].body["metadata"]["resourceVersion"], "3");
    // The pause is released: the engine ran `setWeight: 50` and stopped at the next pause.
    assert_eq!(seen[4].body["status"]["currentStep"], 3);
    assert_eq!(seen[4].body["status"]["canaryWeight"], 50.0);
    assert_eq!(seen[4].body["status"]["phase"], "Paused");
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("flask: promote: "), "{text}");
}

#[tokio::test]
async fn a_promote_from_a_step_the_rollout_left_writes_nothing() {
    // `promote --from-step 4` repeated after an unknown outcome: the Rollout is at step 2
    // (the mock's), not 4, so nothing is written (before: no way to say it; a repeated
    // promote released the next pause).
    let (client, seen) = server(vec![]);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let name = "flask".to_string();
    let code = cli_with_step(
        &client,
        "shop",
        "promote",
        Some(Event::Promote),
        Some(&name),
        Some(4),
        &mut out,
        &mut err,
    )
    .await
    .unwrap();
    assert_eq!(code, 1);
    let err = String::from_utf8(err).unwrap();
    assert!(err.contains("not at step 4: not applied"), "{err}");
    assert!(seen.lock().unwrap().iter().all(|s| s.method == "GET"));
    // From the step it is at: applied.
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = cli_with_step(
        &client,
        "shop",
        "promote",
        Some(Event::Promote),
        Some(&name),
        Some(2),
        &mut out,
        &mut err,
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    assert!(seen.lock().unwrap().iter().any(|s| s.method == "PATCH"));
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
    assert!(seen.lock().unwrap().iter().all(|s| s.method == "GET"));
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
