//! A route's `mirror` in the host: the copy the filter sends from its root context is
//! reported with the request that caused it (`Exchange::http_calls`), whether Envoy would send
//! it (a declared cluster) or refuse it at once (BadArgument for a cluster it does not have,
//! Envoy's `Context::httpCall` in source/extensions/common/wasm/context.cc).

mod common;

use std::sync::{Arc, Mutex};

use rollgate_wasmhost::{CalloutReply, Host, HttpRequest, PluginConfig, Response, Status};

const POLICY: &str = r#"{"name":"flask","variants":{"stable":"k8s-flask","canary":"k8s-flask-canary"},
 "default":"stable","routes":[{"match":"Host(`pro.coding`)","variant":"stable",
 "mirror":{"variant":"canary","percent":100}}]}"#;

fn request() -> HttpRequest {
    HttpRequest::new("POST", "pro.coding:8080", "/a?b=1")
        .header("x-user-id", "alice")
        .body("hello ")
        .body("world")
}

#[test]
fn a_copy_to_an_undeclared_cluster_is_reported_refused() {
    let plugin = Host::new()
        .start(common::filter(), PluginConfig::new(POLICY))
        .unwrap();
    let ex = plugin.run(request()).unwrap();
    assert_eq!(ex.http_calls.len(), 1, "{:?}", ex.http_calls);
    let copy = &ex.http_calls[0];
    assert_eq!(copy.refused, Some(Status::BadArgument));
    assert_eq!(copy.call.cluster, "k8s-flask-canary");
    assert_eq!(
        copy.call.headers.get_str(":authority").as_deref(),
        Some("pro.coding-shadow:8080")
    );
    assert_eq!(
        copy.call.headers.get_str("x-rollgate-shadow").as_deref(),
        Some("1")
    );
    assert!(!copy.call.headers.contains("x-rollgate-variant"));
    assert_eq!(copy.call.body, b"hello world");
    // The primary is untouched by the copy's fate.
    assert_eq!(ex.response.as_ref().map(|r| r.status), Some(200));
    // A request on another host is not copied.
    let other = plugin.run(HttpRequest::get("other.coding", "/")).unwrap();
    assert!(other.http_calls.is_empty());
}

#[test]
fn a_copy_to_a_declared_cluster_is_sent_and_its_answer_reported() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let config = PluginConfig::new(POLICY).cluster("k8s-flask-canary", move |call| {
        seen2.lock().unwrap().push(call.clone());
        CalloutReply::Respond(Response::new(503).body("canary down"))
    });
    let plugin = Host::new().start(common::filter(), config).unwrap();
    let ex = plugin.run(request()).unwrap();
    assert_eq!(ex.http_calls.len(), 1, "{:?}", ex.http_calls);
    let copy = &ex.http_calls[0];
    assert_eq!(copy.refused, None);
    assert_eq!(copy.call.token, 4, "Envoy's first call token");
    assert_eq!(copy.answer_status, Some(503));
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(seen.lock().unwrap()[0].body, b"hello world");
}
