//! A filter VM that dies does not take the gateway down, on the SHIPPED Envoy config
//! (`manifests/envoy/envoy.yaml`, adapted only in addresses, ports and the filter's path):
//! a VM made to trap on purpose is replaced and routes by the sidecar's policy again, and a
//! policy that kills the VMs applying it is dropped so a fixed one can apply.
//!
//! The VMs are killed with the test build of the filter (`make wasm-test-trap`, feature
//! `test-trap`): a request header `x-rollgate-test-trap` and a policy named
//! `test-trap-on-apply` make it trap. The shipped filter has neither (checked below).
//!
//! Envoy's behaviour (data-plane-api `envoy/extensions/wasm/v3/wasm.proto`, PluginConfig
//! `failure_policy`): FAIL_RELOAD creates a new plugin instance for the next request after a
//! runtime error, with `reload_config.backoff` ("If not specified, the default 1s base interval
//! will be applied", ReloadConfig); FAIL_CLOSED answers every request of a failed VM with 503
//! (cpp-host `src/context.cc` CHECK_FAIL → Envoy `failStream`, details `wasm_fail_stream`).

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use rollgate_e2e::{
    test_trap_wasm_path, wasm_path, workspace_root, Client, Envoy, PolicyServer, Upstream, CANARY,
    DEV, STABLE,
};

/// The shipped config, bound to loopback port 0 (the harness reads the real ports from the
/// admin endpoint), loading `wasm`, with its clusters pointed at the test's upstreams and
/// sidecar. Every replaced text must be there: a changed manifest fails here, loudly.
fn shipped_config(wasm: &str, upstreams: &[Upstream], sidecar: u16, policy: &str) -> String {
    let path = workspace_root().join("manifests/envoy/envoy.yaml");
    let mut yaml = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let port = |name: &str| {
        upstreams
            .iter()
            .find(|u| u.name() == name)
            .map(|u| u.port())
            .unwrap()
    };
    let edits = [
        ("port_value: 9901", "port_value: 0".to_string()),
        (
            "address: 0.0.0.0, port_value: 10000",
            "address: 127.0.0.1, port_value: 0".to_string(),
        ),
        (
            "filename: /etc/rollgate/rollgate_plugin.wasm",
            format!("filename: {wasm}"),
        ),
        (
            "address: flask.default.svc.cluster.local, port_value: 80",
            format!("address: 127.0.0.1, port_value: {}", port(STABLE)),
        ),
        (
            "address: flask-canary.default.svc.cluster.local, port_value: 80",
            format!("address: 127.0.0.1, port_value: {}", port(CANARY)),
        ),
        (
            "address: flask-dev.default.svc.cluster.local, port_value: 80",
            format!("address: 127.0.0.1, port_value: {}", port(DEV)),
        ),
        ("port_value: 8181", format!("port_value: {sidecar}")),
        (
            "failure_policy: FAIL_RELOAD",
            format!("failure_policy: {policy}"),
        ),
    ];
    for (from, to) in edits {
        assert_eq!(
            yaml.matches(from).count(),
            1,
            "manifests/envoy/envoy.yaml should contain `{from}` once"
        );
        yaml = yaml.replace(from, &to);
    }
    yaml
}

struct Gateway {
    envoy: Envoy,
    _upstreams: Vec<Upstream>,
}

/// The shipped config with the test-trap filter and `failure_policy`, on `workers` workers.
fn start(server: &PolicyServer, failure_policy: &str, workers: u32) -> Gateway {
    start_with(&test_trap_wasm_path(), server, failure_policy, workers)
}

fn start_with(wasm: &Path, server: &PolicyServer, failure_policy: &str, workers: u32) -> Gateway {
    let upstreams: Vec<Upstream> = [STABLE, CANARY, DEV]
        .iter()
        .map(|n| Upstream::start(n))
        .collect();
    let yaml = shipped_config(
        &wasm.to_string_lossy(),
        &upstreams,
        server.port(),
        failure_policy,
    );
    Gateway {
        envoy: Envoy::start_yaml(&yaml, workers).unwrap(),
        _upstreams: upstreams,
    }
}

/// A policy sending everything to `default` (the shipped policy's variants).
fn policy(name: &str, default: &str) -> String {
    format!(
        r#"{{"name":"{name}","variants":{{"stable":"k8s-flask","canary":"k8s-flask-canary","dev":"k8s-flask-dev"}},"default":"{default}","cluster_header":"x-rollgate-cluster","variant_header":"x-rollgate-variant"}}"#
    )
}

/// Status and upstream of one request on a fresh connection (so every worker answers some).
fn one(port: u16, extra: &[(&str, &[u8])]) -> (u16, String) {
    let r = Client::new(port).get("gateway.test", "/", extra);
    (r.status, r.header_str("x-upstream").unwrap_or_default())
}

/// How long until `n` requests in a row reach `upstream` (None: not within `timeout`).
fn time_until_served_by(
    port: u16,
    upstream: &str,
    n: usize,
    timeout: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let mut row = 0;
    while start.elapsed() < timeout {
        if one(port, &[]).1 == upstream {
            row += 1;
            if row == n {
                return Some(start.elapsed());
            }
        } else {
            row = 0;
            thread::sleep(Duration::from_millis(20));
        }
    }
    None
}

/// VMs that trapped so far, from Envoy's log.
fn vm_deaths(envoy: &Envoy) -> usize {
    envoy
        .log()
        .matches("Uncaught RuntimeError: unreachable")
        .count()
}

fn trap(port: u16) -> (u16, String) {
    one(port, &[("x-rollgate-test-trap", b"1")])
}

#[test]
fn the_shipped_filter_has_no_trap_trigger() {
    let _t = rollgate_e2e::timing_lock();
    // The header's name is data the filter hands to Envoy: in the test build only.
    let shipped = fs::read(wasm_path()).unwrap();
    let test = fs::read(test_trap_wasm_path()).unwrap();
    let has = |bytes: &[u8], what: &str| bytes.windows(what.len()).any(|w| w == what.as_bytes());
    let header = "x-rollgate-test-trap";
    assert!(has(&test, header), "the test build has `{header}`");
    assert!(!has(&shipped, header), "the shipped filter has `{header}`");
    // And both triggers, pulled on the shipped filter, kill nothing.
    let server = PolicyServer::start();
    server.publish(&policy("test-trap-on-apply", "canary"));
    let g = start_with(&wasm_path(), &server, "FAIL_RELOAD", 1);
    let port = g.envoy.port();
    assert!(time_until_served_by(port, CANARY, 5, Duration::from_secs(10)).is_some());
    assert_eq!(trap(port), (200, CANARY.to_string()));
    assert_eq!(vm_deaths(&g.envoy), 0, "{}", g.envoy.log());
}

#[test]
fn a_trapped_filter_routes_by_the_sidecars_policy_again_within_10s() {
    let _t = rollgate_e2e::timing_lock();
    let server = PolicyServer::start();
    server.publish(&policy("flask", "canary"));
    // One worker: its VM is the one holding the fetch lease when it dies.
    let g = start(&server, "FAIL_RELOAD", 1);
    let port = g.envoy.port();
    assert!(
        time_until_served_by(port, CANARY, 5, Duration::from_secs(10)).is_some(),
        "the sidecar's policy serves before the trap"
    );
    let (status, _) = trap(port);
    assert_eq!(status, 503, "the request whose VM died");
    assert!(g
        .envoy
        .wait_for_log("Uncaught RuntimeError: unreachable", Duration::from_secs(5)));
    let recovered = time_until_served_by(port, CANARY, 5, Duration::from_secs(10));
    println!("served by the sidecar's policy again after {recovered:?}");
    assert!(
        recovered.is_some(),
        "a fresh VM serves the sidecar's policy within 10 s"
    );
    // And it follows the sidecar again: the dead VM's fetch lease must not keep the fresh
    // VM from polling (it lasted the 20 s long-poll wait plus 10 s).
    let pushed = Instant::now();
    server.publish(&policy("flask", "dev"));
    let followed = time_until_served_by(port, DEV, 5, Duration::from_secs(10));
    println!("a push after recovery applied after {followed:?}");
    assert!(
        followed.is_some(),
        "a push after recovery applies within 10 s (waited {:?})",
        pushed.elapsed()
    );
}

#[test]
fn under_fail_closed_a_trapped_worker_stays_down() {
    let _t = rollgate_e2e::timing_lock();
    let server = PolicyServer::start();
    server.publish(&policy("flask", "canary"));
    let g = start(&server, "FAIL_CLOSED", 1);
    let port = g.envoy.port();
    assert!(time_until_served_by(port, CANARY, 5, Duration::from_secs(10)).is_some());
    assert_eq!(trap(port).0, 503);
    // Three times FAIL_RELOAD's 1 s backoff: still down.
    let until = Instant::now() + Duration::from_secs(3);
    let mut statuses = Vec::new();
    while Instant::now() < until {
        statuses.push(one(port, &[]).0);
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        statuses.iter().all(|s| *s == 503),
        "every request after the trap gets 503: {statuses:?}"
    );
}

#[test]
fn a_policy_that_kills_the_vms_applying_it_is_dropped_and_a_fixed_one_applies() {
    let _t = rollgate_e2e::timing_lock();
    let server = PolicyServer::start();
    // Version 1 kills every VM that applies it (the test build traps on this name).
    server.publish(&policy("test-trap-on-apply", "canary"));
    let g = start(&server, "FAIL_RELOAD", 2);
    let port = g.envoy.port();
    assert!(g.envoy.wait_for_log(
        "Uncaught RuntimeError: unreachable",
        Duration::from_secs(10)
    ));
    // Requests drive the reloads (FAIL_RELOAD replaces a dead VM for the next request).
    // Served again: every request after that instant reaches the starting policy's default.
    let start = Instant::now();
    let (mut last_failure, mut requests) = (None, 0);
    while start.elapsed() < Duration::from_secs(10) {
        requests += 1;
        if one(port, &[]) != (200, STABLE.to_string()) {
            last_failure = Some(start.elapsed());
        }
        thread::sleep(Duration::from_millis(20));
    }
    let deaths = vm_deaths(&g.envoy);
    println!(
        "{deaths} VM deaths in 10 s; {requests} requests, the last failed one after {last_failure:?}"
    );
    assert!(
        last_failure.is_none_or(|t| t < Duration::from_secs(6)),
        "served again for good within 6 s (the last 4 s without a failure)"
    );
    assert!(deaths <= 6, "{deaths} VMs died");
    assert!(g
        .envoy
        .log()
        .contains("applying it: refused, it is never applied again"));
    // A fixed version applies on every worker.
    server.publish(&policy("flask", "dev"));
    let fixed = time_until_served_by(port, DEV, 20, Duration::from_secs(10));
    println!("the fixed version serves after {fixed:?}");
    assert!(fixed.is_some(), "the fixed version 2 applies");
    assert_eq!(vm_deaths(&g.envoy), deaths, "version 2 kills no VM");
}
