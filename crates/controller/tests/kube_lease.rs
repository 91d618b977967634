//! Leader election against a mock API server: a free lease is created, a lease held by a
//! live replica is left alone, an expired one is taken over with the resourceVersion read,
//! and losing that race (409) means not leading.

use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff;
use kube::client::Body;
use kube::{Api, Client};
use rollgate_controller::lease::LeaseLock;
use serde_json::{json, Value};

type Script = Vec<(&'static str, &'static str, u16, Value)>;

/// Answers the requests in `script` order, checking method and path; returns what was sent.
fn server(script: Script) -> (Client, tokio::task::JoinHandle<Vec<Value>>) {
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let task = tokio::spawn(async move {
        let mut bodies = Vec::new();
        for (method, path, code, answer) in script {
            let (req, send) = handle.next_request().await.expect("a request");
            assert_eq!(req.method().as_str(), method);
            assert_eq!(req.uri().path(), path);
            let bytes = req.into_body().collect_bytes().await.unwrap();
            bodies.push(serde_json::from_slice(&bytes).unwrap_or(Value::Null));
            let resp = Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap();
            send.send_response(resp);
        }
        bodies
    });
    (Client::new(mock, "rollgate-system"), task)
}

const PATH: &str =
    "/apis/coordination.k8s.io/v1/namespaces/rollgate-system/leases/rollgate-controller";
const LIST: &str = "/apis/coordination.k8s.io/v1/namespaces/rollgate-system/leases";

fn status(code: u16) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "x", "code": code,
           "reason": if code == 404 { "NotFound" } else { "InternalError" }})
}

fn lease(holder: &str, renewed_secs_ago: i64) -> Value {
    let t = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(renewed_secs_ago);
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "rollgate-controller", "resourceVersion": "41"},
           "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                    "renewTime": t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
                    "leaseTransitions": 3}})
}

fn lock(client: Client) -> LeaseLock {
    let api: Api<Lease> = Api::namespaced(client, "rollgate-system");
    LeaseLock::new(api, "rollgate-controller", "pod-a", Duration::from_secs(15))
}

#[tokio::test]
async fn a_missing_lease_is_created_and_held() {
    let (client, task) = server(vec![
        ("GET", PATH, 404, status(404)),
        ("POST", LIST, 201, lease("pod-a", 0)),
    ]);
    assert!(lock(client).try_acquire_or_renew().await.unwrap());
    let sent = task.await.unwrap();
    assert_eq!(sent[1]["spec"]["holderIdentity"], "pod-a");
    assert_eq!(sent[1]["spec"]["leaseDurationSeconds"], 15);
}

#[tokio::test]
async fn a_live_lease_of_another_replica_is_left_alone() {
    let (client, task) = server(vec![("GET", PATH, 200, lease("pod-b", 2))]);
    assert!(!lock(client).try_acquire_or_renew().await.unwrap());
    assert_eq!(task.await.unwrap().len(), 1, "no write");
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_with_the_version_read() {
    let (client, task) = server(vec![
        ("GET", PATH, 200, lease("pod-b", 60)),
        ("PUT", PATH, 200, lease("pod-a", 0)),
    ]);
    assert!(lock(client).try_acquire_or_renew().await.unwrap());
    let sent = task.await.unwrap();
    assert_eq!(sent[1]["metadata"]["resourceVersion"], "41");
    assert_eq!(sent[1]["spec"]["holderIdentity"], "pod-a");
    assert_eq!(sent[1]["spec"]["leaseTransitions"], 4);
}

#[tokio::test]
async fn losing_the_race_for_an_expired_lease_is_not_leading() {
    let (client, task) = server(vec![
        ("GET", PATH, 200, lease("pod-b", 60)),
        ("PUT", PATH, 409, status(409)),
    ]);
    assert!(!lock(client).try_acquire_or_renew().await.unwrap());
    task.await.unwrap();
}

#[tokio::test]
async fn a_server_error_is_an_error_not_leadership() {
    let (client, task) = server(vec![("GET", PATH, 500, status(500))]);
    assert!(lock(client).try_acquire_or_renew().await.is_err());
    task.await.unwrap();
}

/// What the controller did while leading, and when (virtual time).
type Log = std::sync::Arc<std::sync::Mutex<Vec<(tokio::time::Instant, &'static str)>>>;

/// The lease API for a leader that acquired at t=0: the first renewal succeeds, every later
/// one fails with 500 (`hang`: is never answered). Logs each request's time and outcome.
fn flaky_api(log: Log, hang: bool) -> Client {
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        let mut renewals = 0;
        let mut held = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let now = tokio::time::Instant::now();
            let (code, body) = match (req.method().as_str(), renewals) {
                ("GET", _) if renewals >= 1 && hang => {
                    log.lock().unwrap().push((now, "renewal hangs"));
                    held.push(send);
                    continue;
                }
                ("GET", _) if renewals >= 1 => {
                    log.lock().unwrap().push((now, "renewal fails"));
                    (500, status(500))
                }
                ("GET", _) => (200, lease("pod-a", 0)),
                _ => {
                    renewals += 1;
                    log.lock().unwrap().push((now, "renewed"));
                    (200, lease("pod-a", 0))
                }
            };
            let resp = Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap();
            send.send_response(resp);
        }
    });
    Client::new(mock, "rollgate-system")
}

/// A leader whose renewals stop succeeding (failing or hanging) stops acting before its lease
/// can expire: no controller write after the last successful renewal plus the renew deadline,
/// which is shorter than the 15 s after which another replica may take the lease over.
async fn leader_steps_down(hang: bool) {
    let log: Log = Default::default();
    let lock = lock(flaky_api(log.clone(), hang));
    let start = tokio::time::Instant::now();
    let work_log = log.clone();
    let work = async move {
        loop {
            work_log
                .lock()
                .unwrap()
                .push((tokio::time::Instant::now(), "controller write"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        rollgate_controller::run::lead(&lock, work),
    )
    .await;
    let log = log.lock().unwrap().clone();
    let at = |t: tokio::time::Instant| t.duration_since(start).as_secs_f64();
    let mut renewed = log.iter().filter(|e| e.1 == "renewed").map(|e| at(e.0));
    let last_renewal = renewed.next_back().expect("one renewal succeeded");
    let last_write = log
        .iter()
        .filter(|e| e.1 == "controller write")
        .map(|e| at(e.0))
        .next_back()
        .unwrap();
    let failures = log
        .iter()
        .filter(|e| e.1 != "renewed" && e.1 != "controller write");
    assert!(
        failures.count() >= 1,
        "renewals were attempted after the last success"
    );
    let Ok(result) = outcome else {
        panic!(
            "still leading 60 s later; last renewal at {last_renewal} s, last write {last_write} s"
        );
    };
    assert!(
        matches!(
            result,
            Err(rollgate_controller::controller::Error::LostLease)
        ),
        "{result:?}"
    );
    // Another replica may take over 15 s (the lease) after the last renewal it saw.
    assert!(
        last_write <= last_renewal + 10.0,
        "wrote at {last_write} s; last renewal {last_renewal} s; lease 15 s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_leader_whose_renewals_fail_stops_writing_before_the_lease_expires() {
    leader_steps_down(false).await;
}

#[tokio::test(start_paused = true)]
async fn a_leader_whose_renewal_hangs_stops_writing_before_the_lease_expires() {
    leader_steps_down(true).await;
}
