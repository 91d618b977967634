//! The real rollgate filter (`make wasm`, wasm32-wasip1) in the host: the routing story of the
//! example policy, header hygiene, hostile header bytes, and policy rejection.

mod common;

use rollgate_e2e::sticky::in_split;
use rollgate_wasmhost::{Exchange, Host, HostError, HttpRequest, LogLevel, Plugin, PluginConfig};

fn start(policy: &str, workers: usize) -> Plugin {
    Host::new()
        .start(common::filter(), PluginConfig::new(policy).workers(workers))
        .expect("the filter accepts the policy")
}

fn example(workers: usize) -> Plugin {
    start(&common::example_policy(), workers)
}

fn routed(ex: &Exchange) -> (Option<String>, Option<String>) {
    (
        ex.request_header("x-rollgate-variant"),
        ex.request_header("x-rollgate-cluster"),
    )
}

#[test]
fn dev_host_goes_to_dev() {
    let plugin = example(1);
    let ex = plugin.run(HttpRequest::get("dev.coding", "/")).unwrap();
    assert!(ex.forwarded);
    assert_eq!(
        routed(&ex),
        (Some("dev".into()), Some("k8s-flask-dev".into()))
    );
    assert!(ex.route_cache_clears > 0, "the route must be re-matched");
    assert!(plugin
        .logs_at(LogLevel::Info)
        .iter()
        .any(|l| l.starts_with("policy 'flask' loaded: 3 variants, 3 routes")));
}

#[test]
fn shenzhen_goes_to_canary_and_others_to_stable() {
    let plugin = example(1);
    let ex = plugin
        .run(HttpRequest::get("pro.coding", "/").header("location", "shenzhen"))
        .unwrap();
    assert_eq!(
        routed(&ex),
        (Some("canary".into()), Some("k8s-flask-canary".into()))
    );
    let ex = plugin
        .run(HttpRequest::get("elsewhere.example", "/"))
        .unwrap();
    assert_eq!(
        routed(&ex),
        (Some("stable".into()), Some("k8s-flask".into()))
    );
}

#[test]
fn half_of_two_thousand_users_see_canary_and_stay_there() {
    let plugin = example(2);
    let mut canary = 0;
    for n in 0..2000 {
        let user = format!("user-{n}");
        let ex = plugin
            .run(HttpRequest::get("pro.coding", "/").header("x-user-id", &user))
            .unwrap();
        let variant = ex.request_header("x-rollgate-variant").unwrap();
        // Predicted independently of the plugin's code (the e2e harness's MurmurHash3).
        let expected = if in_split("flask", user.as_bytes(), 50) {
            "canary"
        } else {
            "stable"
        };
        assert_eq!(variant, expected, "{user}");
        canary += usize::from(variant == "canary");
        if n % 100 == 0 {
            // Sticky: again, on the other worker, same answer.
            let again = plugin
                .run(HttpRequest::get("pro.coding", "/x").header("x-user-id", &user))
                .unwrap();
            assert_eq!(again.request_header("x-rollgate-variant").unwrap(), variant);
        }
    }
    assert!((940..=1060).contains(&canary), "canary share {canary}/2000");
}

#[test]
fn client_sent_internal_headers_are_replaced_or_removed() {
    let plugin = example(1);
    let ex = plugin
        .run(
            HttpRequest::get("other.example", "/")
                .header("x-rollgate-cluster", "k8s-flask-dev")
                .header("x-rollgate-variant", "dev")
                .header("x-rollgate-cluster", "second"),
        )
        .unwrap();
    assert_eq!(
        ex.request_headers
            .get_all("x-rollgate-cluster")
            .collect::<Vec<_>>(),
        vec![&b"k8s-flask"[..]]
    );
    assert_eq!(
        ex.request_headers
            .get_all("x-rollgate-variant")
            .collect::<Vec<_>>(),
        vec![&b"stable"[..]]
    );
    // Without a default, an unrouted request keeps no internal header at all.
    let plugin = start(
        r#"{"name":"f","variants":{"a":"ca"},"routes":[{"match":"Host(`a.example`)","variant":"a"}]}"#,
        1,
    );
    let ex = plugin
        .run(
            HttpRequest::get("b.example", "/")
                .header("x-rollgate-cluster", "ca")
                .header("x-rollgate-variant", "a"),
        )
        .unwrap();
    assert_eq!(routed(&ex), (None, None));
    assert!(ex.forwarded);
}

#[test]
fn non_utf8_header_values_are_harmless() {
    let plugin = example(1);
    let ex = plugin
        .run(
            HttpRequest::get("pro.coding", "/")
                .header("location", b"\xff\xfeshenzhen")
                .header("x-user-id", b"\xc3\x28\x80")
                .header("cookie", b"a=\xff; b=\x80"),
        )
        .unwrap();
    let variant = ex.request_header("x-rollgate-variant").unwrap();
    let expected = if in_split("flask", b"\xc3\x28\x80", 50) {
        "canary"
    } else {
        "stable"
    };
    assert_eq!(variant, expected);
    assert_eq!(
        ex.request_headers.get("x-user-id"),
        Some(&b"\xc3\x28\x80"[..])
    );
    assert!(plugin.failure(0).is_none());
    assert!(plugin.logs_at(LogLevel::Critical).is_empty());
}

#[test]
fn invalid_policy_is_rejected_with_json_paths() {
    let bad = common::example_policy()
        .replace(r#""weight": 50"#, r#""weight": 150"#)
        .replace(
            "Headers(`location`, `shenzhen`)",
            "Headers(`location` `shenzhen`)",
        );
    let err = Host::new()
        .start(common::filter(), PluginConfig::new(bad))
        .unwrap_err();
    let HostError::ConfigureFailed { logs, .. } = &err else {
        panic!("expected on_configure to return false, got {err}")
    };
    let errors: Vec<&str> = logs
        .iter()
        .filter(|l| l.level == LogLevel::Error)
        .map(|l| l.message.as_str())
        .collect();
    let all = errors.join("\n");
    assert!(
        all.contains("routes[1].match: column 42: expected ',' or ')'"),
        "{all}"
    );
    assert!(
        all.contains("routes[2].split[0].weight: must be between 0 and 100, got 150"),
        "{all}"
    );
    let err = Host::new()
        .start(common::filter(), PluginConfig::new("not json"))
        .unwrap_err();
    assert!(matches!(err, HostError::ConfigureFailed { .. }), "{err}");
}

#[test]
fn every_worker_decides_alike() {
    let plugin = example(3);
    for n in 0..60 {
        let user = format!("u{n}");
        let variants: Vec<String> = (0..3)
            .map(|w| {
                plugin
                    .run(
                        HttpRequest::get("pro.coding", "/")
                            .header("x-user-id", &user)
                            .worker(w),
                    )
                    .unwrap()
                    .request_header("x-rollgate-variant")
                    .unwrap()
            })
            .collect();
        assert!(
            variants.iter().all(|v| *v == variants[0]),
            "{user}: {variants:?}"
        );
    }
}

/// Shadow traffic through the real filter: the copy is sent from the root context, so its
/// answer still counts when it comes after the request is over (a copy sent from the request's
/// own context would have its answer dropped by the SDK at that point).
#[test]
fn a_mirror_copy_answered_after_its_request_is_compared_with_the_primary() {
    use rollgate_wasmhost::{CalloutReply, Metric, Response};
    let policy = r#"{"name":"flask","variants":{"stable":"k8s-flask","canary":"k8s-flask-canary"},
        "default":"stable","routes":[{"match":"Host(`pro.coding`)","variant":"stable",
        "mirror":{"variant":"canary","percent":100,"max_body":16}}]}"#;
    let host = Host::new();
    let plugin = host
        .start(
            common::filter(),
            PluginConfig::new(policy)
                .workers(1)
                .cluster("k8s-flask-canary", |_| CalloutReply::Pending),
        )
        .expect("the filter accepts the policy");
    let ex = plugin
        .run(
            HttpRequest::new("POST", "pro.coding:8080", "/orders?id=7")
                .header("x-user-id", "alice")
                .header("x-rollgate-cluster", "forged")
                .body("abc")
                .body("def"),
        )
        .unwrap();
    assert!(ex.forwarded);
    let calls = plugin.pending_http_calls();
    assert_eq!(calls.len(), 1, "one copy, sent once the body was complete");
    let call = &calls[0];
    assert_eq!(call.cluster, "k8s-flask-canary");
    assert_eq!(call.body, b"abcdef");
    let h = &call.headers;
    assert_eq!(
        h.get_str(":authority").as_deref(),
        Some("pro.coding-shadow:8080")
    );
    assert_eq!(h.get_str(":path").as_deref(), Some("/orders?id=7"));
    assert_eq!(h.get_str(":method").as_deref(), Some("POST"));
    assert_eq!(h.get_str("x-user-id").as_deref(), Some("alice"));
    assert_eq!(h.get_str("x-rollgate-shadow").as_deref(), Some("1"));
    assert!(!h.contains("x-rollgate-cluster") && !h.contains("x-rollgate-variant"));
    let counter = |name: &str| match host.metric(&format!("rollgate.flask.variant.canary.{name}")) {
        Some(Metric::Counter(n)) => n,
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(counter("shadow_rq_total"), 1);
    assert_eq!(counter("shadow_rs_5xx"), 0);
    // The request is long over (the primary answered 200); the copy's 503 arrives now.
    plugin
        .respond_http_call(
            call.worker,
            call.token,
            CalloutReply::Respond(Response::new(503)),
        )
        .unwrap();
    assert_eq!(counter("shadow_rs_5xx"), 1);
    assert_eq!(counter("shadow_mismatch"), 1);
    // A body over max_body is not copied, and counted.
    plugin
        .run(HttpRequest::new("PUT", "pro.coding", "/big").body(vec![b'x'; 17]))
        .unwrap();
    assert_eq!(plugin.pending_http_calls().len(), 0);
    assert_eq!(counter("shadow_skipped"), 1);
    assert_eq!(plugin.failure(0), None);
}

/// A policy written into the filter's configuration (Istio's `pluginConfig`) with the
/// controller's `version` reports it as the same gauge a fetched policy's version goes to:
/// what tells the controller which gateways serve it. Without `version`, no gauge (the
/// policy of a filter before the field, unchanged).
#[test]
fn a_configured_policy_reports_the_controllers_version() {
    use rollgate_wasmhost::Metric;
    let policy = |extra: &str| {
        format!(
            r#"{{"name":"my.app","variants":{{"stable":"k8s-flask"}},"default":"stable"{extra}}}"#
        )
    };
    let host = Host::new();
    let _p = host
        .start(
            common::filter(),
            PluginConfig::new(policy(r#","version":7"#)).workers(2),
        )
        .expect("the filter accepts a numbered policy");
    assert_eq!(
        host.metric("rollgate.my_app.policy.version"),
        Some(Metric::Gauge(7)),
        "{:?}",
        host.metrics().keys().collect::<Vec<_>>()
    );
    let host = Host::new();
    let _p = host
        .start(common::filter(), PluginConfig::new(policy("")).workers(1))
        .unwrap();
    assert_eq!(host.metric("rollgate.my_app.policy.version"), None);
    // Not a number the gauge can hold: refused with its path, nothing loaded.
    let Err(err) = Host::new().start(
        common::filter(),
        PluginConfig::new(policy(r#","version":-1"#)),
    ) else {
        panic!("a negative version is refused");
    };
    assert!(err.to_string().contains("version"), "{err}");
}
