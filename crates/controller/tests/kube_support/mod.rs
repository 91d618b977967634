//! Shared by the Kubernetes tests: a stand-in API server (kube's mock-service pattern, over
//! tower-test) that records every request and answers as the test says, and the example
//! Rollout.

// Each test binary uses only some of these helpers.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use rollgate_rollout::{validate, Phase, Rollout, RolloutStatus};
use serde_json::{json, Value};

/// One request the code under test sent.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `GET`, `PATCH`, …
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string (empty if none).
    pub query: String,
    /// The URI as sent (path and query, `?` included even when the query is empty).
    pub uri: String,
    /// The JSON body (`Null` if none).
    pub body: Value,
}

impl Seen {
    /// Whether the query has `key=value`.
    pub fn has(&self, key: &str, value: &str) -> bool {
        self.query
            .split('&')
            .any(|kv| kv == format!("{key}={value}"))
    }

    /// Whether this is a watch request.
    pub fn is_watch(&self) -> bool {
        self.method == "GET" && self.has("watch", "true")
    }
}

/// What the stand-in answers.
pub enum Reply {
    /// A status code and a JSON body.
    Json(u16, Value),
    /// A watch: the events, one JSON object per line, then the end of the response.
    Events(Vec<Value>),
    /// No answer at all: a watch that stays open.
    Hold,
}

/// A Kubernetes `Status` failure with `code`.
pub fn failure(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("{reason} (test)"), "reason": reason, "code": code})
}

/// A stand-in API server: records every request, answers with `answer(request)`.
pub fn api_server(
    default_ns: &str,
    mut answer: impl FnMut(&Seen) -> Reply + Send + 'static,
) -> (Client, Arc<Mutex<Vec<Seen>>>) {
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            let uri = req.uri().to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let s = Seen {
                method,
                path,
                query,
                uri,
                body,
            };
            let reply = answer(&s);
            log.lock().unwrap().push(s);
            let (code, bytes) = match reply {
                Reply::Json(code, v) => (code, serde_json::to_vec(&v).unwrap()),
                Reply::Events(evs) => {
                    let lines: Vec<String> = evs.iter().map(Value::to_string).collect();
                    (200, format!("{}\n", lines.join("\n")).into_bytes())
                }
                Reply::Hold => {
                    held.push(send);
                    continue;
                }
            };
            let resp = Response::builder()
                .status(code)
                .body(Body::from(bytes))
                .unwrap();
            send.send_response(resp);
        }
    });
    (Client::new(mock, default_ns), seen)
}

/// `examples/rollout.yaml` in namespace `shop` at resourceVersion `rv`.
pub fn rollout(rv: &str) -> Rollout {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/rollout.yaml"
    ))
    .unwrap();
    let mut ro = validate::parse(&text).unwrap();
    ro.metadata.namespace = Some("shop".into());
    ro.metadata.resource_version = Some(rv.into());
    ro.metadata.uid = Some("0b5c0a6e-1111-2222-3333-444455556666".into());
    ro
}

/// [`rollout`] paused at its first manual gate (step 1), as the engine leaves it there.
pub fn paused_rollout(rv: &str) -> Rollout {
    let mut ro = rollout(rv);
    let plan = validate::plan(&ro).unwrap();
    ro.status = Some(RolloutStatus {
        phase: Phase::Paused,
        current_step: 1,
        policy_version: 2,
        revision: plan.revision,
        attempt: 1,
        ..Default::default()
    });
    ro
}

/// Reads one HTTP/1.1 message with a `content-length` body: the start line and the body.
/// (The sidecar's tests have the same helper in `rollout_support`, which links the sidecar.)
pub fn read_message(r: &mut impl std::io::BufRead) -> std::io::Result<(String, Vec<u8>)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut length = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        if h.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            if n.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{h:?}: {e}"))
                })?;
            }
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body)?;
    Ok((line.trim().to_string(), body))
}

/// An Envoy Gateway EnvoyExtensionPolicy `name` in `shop` loading rollgate (a `wasm` entry
/// named `rollgate` after another filter's), as a user writes it.
pub fn eep(name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "gateway.envoyproxy.io/v1alpha1",
        "kind": "EnvoyExtensionPolicy",
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": "3"},
        "spec": {
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "flask"}],
            "wasm": [
                {"name": "auth", "rootID": "auth", "code": {"type": "HTTP", "http": {"url": "https://example.com/auth.wasm"}}},
                {"name": "rollgate", "rootID": "rollgate", "failOpen": false,
                 "code": {"type": "HTTP", "http": {"url": "https://example.com/rollgate.wasm", "sha256": "00"}},
                 "config": {"name": "flask"}}
            ]
        }
    })
}
