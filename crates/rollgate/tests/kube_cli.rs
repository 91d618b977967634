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

/// `rollgate dashboard --kubernetes`: the page's reads are the namespace's Rollouts; its
/// commands need this origin and the token, and are written as the CLI's `promote` writes.
#[tokio::test]
async fn the_dashboard_reads_and_commands_the_clusters_rollouts() {
    use rollgate::cli::dashboard::{start_with, Source};
    use rollgate::serve::auth::Token;

    const TOKEN: &str = "dashboard-cluster-token-0123";
    let (client, seen) = kube_support::api_server("shop", |s: &Seen| {
        let ro = paused_rollout("7");
        match s.method.as_str() {
            "GET" if s.path.ends_with("/rollouts") => Reply::Json(
                200,
                serde_json::json!({"apiVersion": "rollgate.dev/v1alpha1", "kind": "RolloutList",
                                   "metadata": {}, "items": [ro]}),
            ),
            "GET" => Reply::Json(200, ro),
            _ => {
                let mut ro = paused_rollout("8");
                ro["status"] = s.body["status"].clone();
                Reply::Json(200, ro)
            }
        }
    });
    let token = Token::new(TOKEN, "test").unwrap();
    let dash = start_with(
        "127.0.0.1:0",
        Source::Cluster {
            client,
            ns: "shop".into(),
        },
        Some(token),
    )
    .unwrap();
    let url = format!("http://{}", dash.addr);
    // The API stand-in runs on this test's runtime: requests block on another thread.
    let call = |method: &'static str, path: &str, headers: Vec<(String, String)>, body: &str| {
        let (url, body) = (format!("{url}{path}"), body.as_bytes().to_vec());
        tokio::task::spawn_blocking(move || {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let body = (!body.is_empty()).then_some(body.as_slice());
            let timeout = std::time::Duration::from_secs(5);
            rollgate::rollout::client::request_with(method, &url, &h, body, timeout, None).unwrap()
        })
    };
    let page = call("GET", "/", vec![], "").await.unwrap();
    assert_eq!(page.status, 200);
    assert!(page.header("content-security-policy").is_some());
    let list = call("GET", "/v1/rollouts", vec![], "").await.unwrap();
    assert_eq!(list.status, 200, "{}", list.text());
    let list: Value = serde_json::from_slice(&list.body).unwrap();
    assert_eq!(list["rollouts"][0]["name"], "flask");
    assert_eq!(list["rollouts"][0]["status"]["currentStep"], 1);

    let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    };
    let bearer = format!("Bearer {TOKEN}");
    let promote = "/v1/rollouts/flask/promote";
    let body = r#"{"expect": {"step": 2, "attempt": 1}}"#;
    let json = ("content-type", "application/json");
    let evil = h(&[
        ("origin", "http://evil.example"),
        ("authorization", &bearer),
        json,
    ]);
    assert_eq!(call("POST", promote, evil, body).await.unwrap().status, 403);
    let anonymous = h(&[("origin", &url), json]);
    assert_eq!(
        call("POST", promote, anonymous, body).await.unwrap().status,
        401
    );
    assert!(seen.lock().unwrap().iter().all(|s| s.method == "GET"));

    let page_command = h(&[("origin", &url), ("authorization", &bearer), json]);
    let r = call("POST", promote, page_command.clone(), body)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let patch = seen
        .lock()
        .unwrap()
        .iter()
        .find(|s| s.method == "PATCH")
        .cloned()
        .unwrap();
    assert_eq!(patch.path, format!("{ONE}/status"));
    assert_eq!(patch.body["status"]["currentStep"], 3);
    // Where the page expects the rollout no longer is: refused, nothing written.
    let stale = r#"{"expect": {"step": 4, "attempt": 1}}"#;
    let r = call("POST", promote, page_command, stale).await.unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    drop(dash);
}
