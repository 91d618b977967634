//! `rollgate status --watch --kubernetes` against kube's mock-service pattern: the list and
//! watch requests it sends, each change printed once in `status --watch`'s shape, and the
//! exit codes (0 promoted, 1 aborted or missing; a refused watch is an error).

#[path = "../../controller/tests/kube_support/mod.rs"]
mod kube_support;

use std::time::Duration;

use kube_support::{api_server, failure, rollout, Reply, Seen};
use rollgate::cli::watch::follow;
use rollgate::cli::{format, CliError};
use rollgate::kube::commands::view;
use rollgate::rollout::{validate, Phase, Rollout, RolloutStatus};
use serde_json::{json, Value};

/// The example Rollout `name` at `phase` and step `step`, resourceVersion `rv`.
fn at(name: &str, phase: Phase, step: u32, rv: u32) -> Rollout {
    let mut ro = rollout(&rv.to_string());
    ro.metadata.name = Some(name.into());
    let plan = validate::plan(&ro).unwrap();
    ro.status = Some(RolloutStatus {
        phase,
        current_step: step,
        canary_weight: if phase == Phase::Promoted { 100.0 } else { 0.0 },
        policy_version: u64::from(step) + 1,
        revision: plan.revision,
        attempt: 1,
        ..Default::default()
    });
    ro
}

fn event(kind: &str, ro: &Rollout) -> Value {
    json!({"type": kind, "object": ro})
}

/// Answers the first list with `listed`, the first watch with `events`, later watches not
/// at all (they stay open).
fn list_then_watch(listed: Vec<Rollout>, events: Vec<Value>) -> impl FnMut(&Seen) -> Reply {
    let (mut listed, mut events) = (Some(listed), Some(events));
    move |s: &Seen| {
        if s.is_watch() {
            return events.take().map_or(Reply::Hold, Reply::Events);
        }
        match listed.take() {
            Some(items) => Reply::Json(
                200,
                json!({"apiVersion": "rollgate.dev/v1alpha1", "kind": "RolloutList",
                       "metadata": {"resourceVersion": "10"}, "items": items}),
            ),
            None => Reply::Hold,
        }
    }
}

fn block(ro: &Rollout) -> String {
    format::block(&view(ro), false)
}

/// Runs `status --watch [name]` for at most `limit`; returns the exit (None: still
/// watching), standard output and error, and the requests.
async fn watch(
    name: Option<&str>,
    answer: impl FnMut(&Seen) -> Reply + Send + 'static,
    limit: Duration,
) -> (Option<Result<u8, CliError>>, String, String, Vec<Seen>) {
    let (client, seen) = api_server("shop", answer);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let exit = tokio::time::timeout(
        limit,
        follow(&client, "shop", name, false, &mut out, &mut err),
    )
    .await
    .ok();
    let seen = seen.lock().unwrap().clone();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (exit, text(out), text(err), seen)
}

const ROLLOUTS: &str = "/apis/rollgate.dev/v1alpha1/namespaces/shop/rollouts";
const LONG: Duration = Duration::from_secs(10);

#[tokio::test]
async fn follows_a_rollout_until_promoted() {
    let start = at("flask", Phase::Progressing, 0, 10);
    let paused = at("flask", Phase::Paused, 1, 11);
    let mut again = paused.clone();
    again.metadata.resource_version = Some("12".into());
    let done = at("flask", Phase::Promoted, 6, 13);
    let events = [&paused, &again, &done].map(|r| event("MODIFIED", r));
    let answer = list_then_watch(vec![start.clone()], events.to_vec());
    let (exit, out, err, seen) = watch(Some("flask"), answer, LONG).await;
    assert_eq!(exit.unwrap().unwrap(), 0, "{err}");
    // Each change once (the unchanged status at resourceVersion 12 is not repeated),
    // separated by a blank line, as `status --watch` prints against the sidecar.
    assert_eq!(
        out,
        format!("{}\n{}\n{}", block(&start), block(&paused), block(&done))
    );
    // A list of the one object, then a watch from the list's resourceVersion.
    assert_eq!(seen.len(), 2, "{seen:#?}");
    for s in &seen {
        assert_eq!((s.method.as_str(), s.path.as_str()), ("GET", ROLLOUTS));
        assert!(
            s.has("fieldSelector", "metadata.name%3Dflask"),
            "{}",
            s.query
        );
    }
    assert!(!seen[0].is_watch());
    assert!(seen[1].is_watch() && seen[1].has("resourceVersion", "10"));
}

#[tokio::test]
async fn exits_1_once_the_rollout_is_aborted() {
    let start = at("flask", Phase::Paused, 1, 10);
    let aborted = at("flask", Phase::Aborted, 1, 11);
    let answer = list_then_watch(vec![start.clone()], vec![event("MODIFIED", &aborted)]);
    let (exit, out, _, _) = watch(Some("flask"), answer, LONG).await;
    assert_eq!(exit.unwrap().unwrap(), 1);
    assert_eq!(out, format!("{}\n{}", block(&start), block(&aborted)));
}

#[tokio::test]
async fn a_missing_rollout_exits_1() {
    let (exit, out, err, _) = watch(Some("flask"), list_then_watch(vec![], vec![]), LONG).await;
    assert_eq!(exit.unwrap().unwrap(), 1);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "rollgate status: rollouts.rollgate.dev \"flask\" not found\n"
    );
}

#[tokio::test]
async fn a_watch_the_api_server_refuses_is_an_error() {
    let forbidden = |_: &Seen| Reply::Json(403, failure(403, "Forbidden"));
    let (exit, _, _, seen) = watch(Some("flask"), forbidden, LONG).await;
    assert!(matches!(exit.unwrap(), Err(CliError::Cluster(_))));
    assert_eq!(seen.len(), 1, "not retried: {seen:#?}");
}

#[tokio::test]
async fn without_a_name_follows_the_namespace() {
    let flask = at("flask", Phase::Paused, 1, 10);
    let other = at("other", Phase::Progressing, 0, 11);
    let events = vec![event("ADDED", &other), event("DELETED", &flask)];
    let answer = list_then_watch(vec![flask.clone()], events);
    let (exit, out, _, seen) = watch(None, answer, Duration::from_millis(500)).await;
    assert!(exit.is_none(), "watches until interrupted");
    let list = |ros: &[&Rollout]| {
        let views: Vec<_> = ros.iter().map(|r| view(r)).collect();
        format::list(&views, false)
    };
    assert_eq!(
        out,
        format!(
            "{}\n{}\n{}",
            list(&[&flask]),
            list(&[&flask, &other]),
            list(&[&other])
        )
    );
    assert!(seen
        .iter()
        .all(|s| s.path == ROLLOUTS && !s.query.contains("fieldSelector")));
}
