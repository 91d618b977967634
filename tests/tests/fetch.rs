//! The filter fetching its policy in a real Envoy (two workers) from a stand-in sidecar:
//! workers switch within moments of a push, a bad policy is refused while the last good one
//! serves, an unreachable sidecar changes nothing, limiter state survives unchanged limits.

use std::thread;
use std::time::{Duration, Instant};

use rollgate_e2e::{Client, Envoy, EnvoyOptions, PolicyServer, Upstream, CANARY, DEV, STABLE};

const SOURCE_SPEC: &str =
    r#"{"cluster":"rollgate","path":"/v1/policies/flask","poll":"200ms","wait":"5s"}"#;

/// A configuration of just the source.
fn source_only() -> String {
    format!(r#"{{"source":{SOURCE_SPEC}}}"#)
}

/// A configuration with a starting policy beside the source.
fn source_with(policy: &str) -> String {
    let fields = policy.trim().strip_prefix('{').expect("a JSON object");
    format!(r#"{{"source":{SOURCE_SPEC},{fields}"#)
}

fn policy(default: &str, extra: &str) -> String {
    format!(
        r#"{{"name":"flask","variants":{{"stable":"k8s-flask","canary":"k8s-flask-canary","dev":"k8s-flask-dev"}},
            "default":"{default}"{extra}}}"#
    )
}

struct Setup {
    envoy: Envoy,
    _upstreams: Vec<Upstream>,
}

fn start(config: &str, server: &PolicyServer) -> Setup {
    let upstreams: Vec<Upstream> = [STABLE, CANARY, DEV]
        .iter()
        .map(|n| Upstream::start(n))
        .collect();
    let mut opts = EnvoyOptions::new(config)
        .cluster("rollgate", server.port())
        .fallback_cluster(DEV);
    for u in &upstreams {
        opts = opts.cluster(u.name(), u.port());
    }
    Setup {
        envoy: Envoy::start(&opts).unwrap(),
        _upstreams: upstreams,
    }
}

/// Who serves each of `n` requests spread over fresh connections (so both workers answer).
fn served(port: u16, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let mut c = Client::new(port);
            c.get("pro.coding", "/", &[])
                .header_str("x-upstream")
                .unwrap_or_default()
        })
        .collect()
}

fn wait_all_served_by(port: u16, upstream: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if served(port, 20).iter().all(|s| s == upstream) {
            return start.elapsed();
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "not all requests reached {upstream} within {timeout:?}: {:?}",
        served(port, 20)
    );
}

#[test]
fn workers_switch_to_each_pushed_policy() {
    let server = PolicyServer::start();
    let s = start(&source_only(), &server);
    let port = s.envoy.port();
    // No policy yet: requests pass untouched (to the fallback route).
    assert!(served(port, 10).iter().all(|u| u == DEV));
    server.publish(&policy("canary", ""));
    let t1 = wait_all_served_by(port, CANARY, Duration::from_secs(3));
    server.publish(&policy("stable", ""));
    let t2 = wait_all_served_by(port, STABLE, Duration::from_secs(3));
    println!("switched in {t1:?} and {t2:?}");
    assert!(
        t2 < Duration::from_secs(1),
        "a push reaches every worker within moments: {t2:?}"
    );
    assert!(s
        .envoy
        .wait_for_log("policy 'flask' version 2 applied", Duration::from_secs(2)));
    assert_eq!(
        s.envoy.stat("wasmcustom.rollgate.flask.policy.version"),
        Some(2)
    );
}

#[test]
fn an_invalid_policy_is_refused_and_the_last_good_one_serves() {
    let server = PolicyServer::start();
    let s = start(&source_only(), &server);
    let port = s.envoy.port();
    server.publish(&policy("canary", ""));
    wait_all_served_by(port, CANARY, Duration::from_secs(3));
    server.publish(&policy("blue", ""));
    assert!(s.envoy.wait_for_log(
        "policy version 2 from cluster 'rollgate' /v1/policies/flask refused: default: unknown variant 'blue'",
        Duration::from_secs(3)
    ));
    assert!(
        served(port, 20).iter().all(|u| u == CANARY),
        "version 1 keeps serving"
    );
    assert_eq!(
        s.envoy.stat("wasmcustom.rollgate.flask.policy.refused"),
        Some(1)
    );
    // The next good one is taken.
    server.publish(&policy("stable", ""));
    wait_all_served_by(port, STABLE, Duration::from_secs(3));
}

#[test]
fn an_unreachable_sidecar_changes_nothing_for_traffic() {
    let server = PolicyServer::start();
    let s = start(&source_with(&policy("canary", "")), &server);
    let port = s.envoy.port();
    assert!(
        served(port, 10).iter().all(|u| u == CANARY),
        "the starting policy serves before any fetch"
    );
    server.publish(&policy("stable", ""));
    wait_all_served_by(port, STABLE, Duration::from_secs(3));
    drop(server);
    thread::sleep(Duration::from_millis(1500));
    assert!(
        served(port, 30).iter().all(|u| u == STABLE),
        "the last fetched policy keeps serving"
    );
    assert!(s.envoy.wait_for_log(
        "policy fetch from cluster 'rollgate' /v1/policies/flask failed",
        Duration::from_secs(3)
    ));
    assert!(
        s.envoy
            .stat("wasmcustom.rollgate.flask.policy.fetch_errors")
            .unwrap()
            >= 1
    );
}

#[test]
fn limiter_state_survives_a_push_that_keeps_the_limit() {
    let server = PolicyServer::start();
    let s = start(&source_only(), &server);
    let port = s.envoy.port();
    let limit = r#","rate_limits":[{"name":"api","average":1,"period":"1m","burst":3}]"#;
    server.publish(&policy("canary", limit));
    assert!(s
        .envoy
        .wait_for_log("policy 'flask' version 1 applied", Duration::from_secs(3)));
    thread::sleep(Duration::from_millis(300)); // both workers adopt it
    let mut c = Client::new(port);
    let statuses: Vec<u16> = (0..4)
        .map(|_| c.get("pro.coding", "/", &[]).status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    // A new version with other routing but the same limit: still empty.
    server.publish(&policy("stable", limit));
    assert!(s
        .envoy
        .wait_for_log("policy 'flask' version 2 applied", Duration::from_secs(3)));
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        c.get("pro.coding", "/", &[]).status,
        429,
        "the bucket carried over"
    );
    // Changing the limit starts it afresh.
    server.publish(&policy(
        "stable",
        &limit.replace("\"burst\":3", "\"burst\":4"),
    ));
    assert!(s
        .envoy
        .wait_for_log("policy 'flask' version 3 applied", Duration::from_secs(3)));
    thread::sleep(Duration::from_millis(300));
    let r = c.get("pro.coding", "/", &[]);
    assert_eq!(
        (r.status, r.header_str("x-upstream").as_deref()),
        (200, Some(STABLE))
    );
}

/// A fetched connection-limit policy (`tcp`, no variants: a network filter's) reaching an
/// HTTP filter is refused and the last good policy keeps serving. Before, the filter applied
/// it ("policy 'flask' version 2 applied") and its root context switched to network streams,
/// for which the Rust SDK (0.2.5 dispatcher.rs, `on_http_request_headers`) panics with
/// "invalid context_id" on an HTTP stream's first callback: a trapped VM on every worker.
#[test]
fn a_network_only_policy_is_refused_by_an_http_filter() {
    let server = PolicyServer::start();
    let s = start(&source_only(), &server);
    let port = s.envoy.port();
    server.publish(&policy("canary", ""));
    wait_all_served_by(port, CANARY, Duration::from_secs(3));
    server.publish(r#"{"name":"flask","tcp":{"in_flight":{"per_source":3}}}"#);
    assert!(
        s.envoy.wait_for_log(
            "policy version 2 from cluster 'rollgate' /v1/policies/flask refused: tcp: a connection-limit policy without variants runs only in a network filter",
            Duration::from_secs(3)
        ),
        "{}",
        s.envoy.log()
    );
    // Every worker had the time to adopt it, had it been published.
    thread::sleep(Duration::from_millis(500));
    let answers = served(port, 20);
    assert!(
        answers.iter().all(|u| u == CANARY),
        "version 1 keeps serving: {answers:?}"
    );
    assert_eq!(
        s.envoy.stat("wasmcustom.rollgate.flask.policy.refused"),
        Some(1)
    );
}
