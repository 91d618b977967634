//! Webhook steps under `serve --kubernetes`: the controller calls a real local HTTP server
//! (the webhook) and, against kube's mock-service pattern, the test checks the requests it
//! sends to the API server before the call and after the answer — 2xx goes on, anything
//! else (an error status, no answer in time) aborts — and that the answer survives a
//! conflict on the status write.

mod kube_support;

use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use kube_support::{api_server, failure, rollout, Reply, Seen};
use rollgate_controller::controller::{self, Context, Error};
use rollgate_rollout::{Phase, Rollout, RolloutStatus};
use serde_json::Value;

/// What the webhook server does with a call.
#[derive(Clone, Copy)]
enum Hook {
    /// Answers with this status.
    Answer(u16),
    /// Reads the call and never answers.
    Silent,
}

/// The calls a webhook server got: request line, JSON body.
type Calls = Arc<Mutex<Vec<(String, Value)>>>;

/// A webhook server on a free port: records each call.
fn webhook_server(hook: Hook) -> (String, Calls) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/migrate", listener.local_addr().unwrap());
    let calls = Arc::new(Mutex::new(Vec::new()));
    let log = calls.clone();
    std::thread::spawn(move || {
        let mut open = Vec::new();
        for conn in listener.incoming() {
            let conn = conn.unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let (line, body) = kube_support::read_message(&mut reader).unwrap();
            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
            log.lock().unwrap().push((line, body));
            match hook {
                Hook::Answer(code) => {
                    let mut conn = conn;
                    let _ = write!(
                        conn,
                        "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                }
                Hook::Silent => open.push(conn),
            }
        }
    });
    (url, calls)
}

/// The example Rollout with a webhook as its second step.
fn with_webhook(url: &str) -> Rollout {
    let mut ro = rollout("7");
    let steps = format!(
        "[{{setWeight: 10}}, {{webhook: {{url: \"{url}\", timeout: 500ms}}}}, \
         {{setWeight: 50}}, {{pause: {{}}}}]"
    );
    ro.spec.strategy.steps = serde_yaml::from_str(&steps).unwrap();
    ro
}

/// Answers every request with 200 (status patches: the Rollout carrying the status sent),
/// except the status patches numbered in `conflicts` (1-based), which get 409.
fn answers(conflicts: &'static [usize]) -> impl FnMut(&Seen) -> Reply + Send + 'static {
    let mut status_patches = 0;
    move |s: &Seen| {
        if s.path.ends_with("/status") {
            status_patches += 1;
            if conflicts.contains(&status_patches) {
                return Reply::Json(409, failure(409, "Conflict"));
            }
            let mut ro = serde_json::to_value(rollout("8")).unwrap();
            ro["status"] = s.body["status"].clone();
            return Reply::Json(200, ro);
        }
        Reply::Json(200, s.body.clone())
    }
}

/// First reconcile: the rollout reaches the webhook step. Returns the Rollout as the API
/// server now holds it (status stored, resourceVersion 8).
async fn reach_the_webhook(ctx: &Arc<Context>, seen: &Arc<Mutex<Vec<Seen>>>, url: &str) -> Rollout {
    let mut ro = with_webhook(url);
    let action = controller::reconcile(Arc::new(ro.clone()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
    let seen = seen.lock().unwrap().clone();
    let kinds: Vec<(&str, bool)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.path.ends_with("/status")))
        .collect();
    assert_eq!(
        kinds,
        [("PATCH", false), ("PATCH", true), ("POST", false)],
        "{seen:#?}"
    );
    let status: RolloutStatus = serde_json::from_value(seen[1].body["status"].clone()).unwrap();
    assert_eq!(status.phase, Phase::Progressing);
    assert_eq!((status.current_step, status.canary_weight), (1, 10.0));
    assert_eq!(
        status.message,
        format!("step 2/4: waiting for webhook {url}")
    );
    assert_eq!(seen[2].body["reason"], "Progressing");
    ro.status = Some(status);
    ro.metadata.resource_version = Some("8".into());
    ro
}

/// Reconciles `ro` every 20 ms until the controller sends the API server something new;
/// returns what it sent then and the last reconcile's outcome.
async fn reconcile_until_written(
    ctx: &Arc<Context>,
    seen: &Arc<Mutex<Vec<Seen>>>,
    ro: &Rollout,
) -> (Vec<Seen>, Result<Action, Error>) {
    let before = seen.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let outcome = controller::reconcile(Arc::new(ro.clone()), ctx.clone()).await;
        let now = seen.lock().unwrap()[before..].to_vec();
        if !now.is_empty() {
            return (now, outcome);
        }
        // While the call is in flight the rollout waits: nothing is written.
        assert!(outcome.is_ok(), "{outcome:?}");
        assert!(Instant::now() < deadline, "the webhook's answer never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_webhook_answering_2xx_moves_the_rollout_on() {
    let (url, calls) = webhook_server(Hook::Answer(204));
    // The first status write after the answer conflicts with another writer; so does the
    // write from a stale copy (the fourth).
    let (client, seen) = api_server("default", answers(&[2, 4]));
    let ctx = Context::new(client, None);
    let ro = reach_the_webhook(&ctx, &seen, &url).await;

    let (sent, outcome) = reconcile_until_written(&ctx, &seen, &ro).await;
    assert!(matches!(outcome, Err(Error::Conflict(_))), "{outcome:?}");
    assert!(
        sent.iter().all(|s| s.method == "PATCH"),
        "no Event: {sent:#?}"
    );
    // The answer is kept for the retry, which writes the same move.
    let before = seen.lock().unwrap().len();
    let action = controller::reconcile(Arc::new(ro.clone()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
    let sent = seen.lock().unwrap()[before..].to_vec();
    assert_eq!(sent.len(), 3, "{sent:#?}");
    let config = sent[0].body["spec"]["pluginConfig"].to_string();
    assert!(config.contains("\"weight\":50.0"), "{config}");
    let st = &sent[1];
    assert!(st.path.ends_with("/rollouts/flask/status"), "{}", st.path);
    assert_eq!(st.body["metadata"]["resourceVersion"], "8");
    let status = &st.body["status"];
    assert_eq!(status["phase"], "Paused");
    assert_eq!(status["currentStep"], 3);
    assert_eq!(status["canaryWeight"], 50.0);
    assert_eq!(status["attempt"], 1);
    assert_eq!(sent[2].body["reason"], "Paused");
    assert_eq!(sent[2].body["type"], "Normal");
    let note = sent[2].body["note"].as_str().unwrap();
    assert!(
        note.contains(&format!("webhook {url} answered 204")),
        "{note}"
    );

    // A reconcile of a stale copy (still at the webhook step: the watch has not delivered
    // the write) steps to the same move, which the API server refuses, and calls no more.
    let stale = controller::reconcile(Arc::new(ro.clone()), ctx.clone()).await;
    assert!(matches!(stale, Err(Error::Conflict(_))), "{stale:?}");
    let last = seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(last.body["status"]["currentStep"], 3);
    assert_eq!(last.body["metadata"]["resourceVersion"], "8");

    // One call, a POST of the rollout's status at the step.
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(calls[0].0, "POST /migrate HTTP/1.1");
    let body = &calls[0].1;
    assert_eq!(body["rollout"], "flask");
    assert_eq!(
        (body["step"].clone(), body["attempt"].clone()),
        (1.into(), 1.into())
    );
    assert_eq!(body["status"]["phase"], "Progressing");
    assert_eq!(body["status"]["currentStep"], 1);
}

#[tokio::test]
async fn a_webhook_answering_500_aborts_the_rollout() {
    let (url, calls) = webhook_server(Hook::Answer(500));
    aborts(&url, &calls, "answered 500").await;
}

#[tokio::test]
async fn a_webhook_not_answering_in_time_aborts_the_rollout() {
    let (url, calls) = webhook_server(Hook::Silent);
    aborts(&url, &calls, "failed").await;
}

/// Calls the webhook at `url` and checks the abort the answer (`why`) leads to.
async fn aborts(url: &str, calls: &Calls, why: &str) {
    let (client, seen) = api_server("default", answers(&[]));
    let ctx = Context::new(client, None);
    let ro = reach_the_webhook(&ctx, &seen, url).await;
    let (sent, outcome) = reconcile_until_written(&ctx, &seen, &ro).await;
    assert_eq!(outcome.unwrap(), Action::await_change(), "aborted: final");
    assert_eq!(sent.len(), 3, "{sent:#?}");
    // All traffic back to stable.
    let config = sent[0].body["spec"]["pluginConfig"].to_string();
    assert!(config.contains("\"weight\":0.0"), "{config}");
    let status = &sent[1].body["status"];
    assert_eq!(status["phase"], "Aborted");
    assert_eq!(status["canaryWeight"], 0.0);
    let message = status["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("aborted at step 2/4: webhook {url} {why}")),
        "{message}"
    );
    assert_eq!(sent[2].body["reason"], "Aborted");
    assert_eq!(sent[2].body["type"], "Warning");

    // Stored and final: the next reconcile neither writes nor calls again.
    let mut done = ro.clone();
    done.status = Some(serde_json::from_value(status.clone()).unwrap());
    let before = seen.lock().unwrap().len();
    controller::reconcile(Arc::new(done), ctx.clone())
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap().len(), before);
    assert_eq!(calls.lock().unwrap().len(), 1);
}
