//! Leader election against a mock API server: a free lease is created, a lease held by a
//! live replica is left alone, an expired one is taken over with the resourceVersion read,
//! and losing that race (409) means not leading.

use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff;
use kube::client::Body;
use kube::{Api, Client};
use rollgate::kube::lease::LeaseLock;
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

#[test]
fn options_come_from_the_downward_api_and_flags() {
    use rollgate::kube::run::parse_options;
    let env = |k: &str| match k {
        "POD_NAMESPACE" => Some("ops".to_string()),
        "POD_NAME" => Some("rollgate-7f".to_string()),
        _ => None,
    };
    let o = parse_options(&["--kubernetes".to_string()], env).unwrap();
    assert_eq!(
        (o.lease_namespace.as_str(), o.identity.as_str()),
        ("ops", "rollgate-7f")
    );
    let args = ["--kubernetes", "--identity", "me"].map(String::from);
    assert_eq!(parse_options(&args, env).unwrap().identity, "me");
    let prom = ["--kubernetes", "--prometheus", "http://p:9090"].map(String::from);
    let o = parse_options(&prom, env).unwrap();
    assert_eq!(
        o.source(),
        rollgate::kube::analysis::Source::Prometheus("http://p:9090".into())
    );
    let bad = [
        "--kubernetes",
        "--prometheus",
        "http://p",
        "--envoy-admin",
        "http://e",
    ]
    .map(String::from);
    assert!(parse_options(&bad, env).is_err());
}
