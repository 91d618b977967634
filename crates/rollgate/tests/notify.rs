//! Notifications (`spec.notify`) from the sidecar to a local receiver: one JSON POST with a
//! `text` per transition, retried with back-off when the receiver fails, filtered by event,
//! and never holding the rollout.

mod rollout_support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rollout_support::{wait_until, FakeServer, Sidecar, TempDir, SEED};

const WAIT: Duration = Duration::from_secs(15);

fn with_notify(receivers: &str) -> String {
    SEED.replace(
        "  strategy:\n",
        &format!("  notify:\n{receivers}  strategy:\n"),
    )
}

fn bodies(server: &FakeServer) -> Vec<serde_json::Value> {
    server
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|(_, _, body)| serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
        .collect()
}

#[test]
fn transitions_are_posted_with_a_text_retried_and_filtered() {
    // The first answer fails: the notice is sent again.
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let all = FakeServer::start(false, move |_, _, _| {
        if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            (500, "try later".into())
        } else {
            (200, "ok".into())
        }
    });
    let aborts_only = FakeServer::start(false, |_, _, _| (204, String::new()));
    let dir = TempDir::new("notify");
    dir.write(
        "flask.yaml",
        &with_notify(&format!(
            "  - url: {}/hooks/all\n  - url: {}/hooks/aborts\n    events: [aborted]\n",
            all.url(),
            aborts_only.url()
        )),
    );
    let s = Sidecar::start(&dir.0, &[]);
    // The seed pauses at its first manual gate: told twice (a 500, then the retry).
    wait_until("the paused notice, retried", WAIT, || {
        bodies(&all)
            .iter()
            .filter(|b| b["event"] == "paused")
            .count()
            == 2
    });
    let paused = &bodies(&all)[1];
    assert_eq!(paused["rollout"], "flask");
    let text = paused["text"].as_str().unwrap();
    assert!(text.starts_with("flask: paused at step"), "{text}");
    assert!(bodies(&aborts_only).is_empty(), "only aborts go there");

    assert_eq!(s.post("/v1/rollouts/flask/abort").status, 200);
    wait_until("the aborted notices", WAIT, || {
        bodies(&aborts_only).len() == 1 && bodies(&all).iter().any(|b| b["event"] == "aborted")
    });
    let aborted = &bodies(&aborts_only)[0];
    assert_eq!(aborted["event"], "aborted");
    assert_eq!(aborted["phase"], "Aborted");
    let text = aborted["text"].as_str().unwrap();
    assert!(text.contains("aborted by `rollgate abort`"), "{text}");
    let (_, path, _) = aborts_only.requests.lock().unwrap()[0].clone();
    assert_eq!(path, "/hooks/aborts");
}

#[test]
fn a_dead_receiver_never_holds_the_rollout() {
    let dir = TempDir::new("notify-dead");
    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    dir.write(
        "flask.yaml",
        &with_notify(&format!("  - url: http://127.0.0.1:{port}/\n")),
    );
    let s = Sidecar::start(&dir.0, &[]);
    wait_until("the first pause", WAIT, || {
        s.rollout("flask")["status"]["phase"] == "Paused"
    });
    // Promote and abort answer at once while the notices keep failing in the background.
    let t = std::time::Instant::now();
    assert_eq!(s.post("/v1/rollouts/flask/promote").status, 200);
    assert_eq!(s.post("/v1/rollouts/flask/abort").status, 200);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    wait_until("the failure logged", WAIT, || s.logged("not delivered"));
}
