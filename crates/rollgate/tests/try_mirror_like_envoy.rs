//! A route's `mirror` to a cluster Envoy does not have: what `rollgate try` reports (the copy,
//! refused BadArgument) must be what Envoy 1.40 does with it. The same policy and requests in a
//! real Envoy (only the stable cluster declared) and in the host (no `--cluster`) must leave
//! the same `shadow_*` stats, and every client is answered by stable.

#[path = "../../wasmhost/tests/common/mod.rs"]
mod common;

use std::thread;
use std::time::Duration;

use rollgate::wasmhost::{Host, HttpRequest, PluginConfig, Status};
use rollgate_e2e::{Envoy, EnvoyOptions, Upstream};

const POLICY: &str = r#"{"name":"flask","variants":{"stable":"k8s-flask","canary":"k8s-flask-canary"},
 "default":"stable","routes":[{"match":"Host(`pro.coding`)","variant":"stable",
 "mirror":{"variant":"canary","percent":100}}]}"#;

const N: u64 = 5;

const STATS: [&str; 5] = [
    "shadow_rq_total",
    "shadow_dropped",
    "shadow_skipped",
    "shadow_failed",
    "shadow_mismatch",
];

fn canary_stat(name: &str) -> String {
    format!("wasmcustom.rollgate.flask.variant.canary.{name}")
}

#[test]
fn a_copy_to_an_undeclared_cluster_counts_as_in_envoy() {
    let stable = Upstream::start("k8s-flask");
    let opts = EnvoyOptions::new(POLICY).cluster(stable.name(), stable.port());
    let yaml = rollgate_e2e::render_config(&opts, &common::filter_path());
    let envoy = Envoy::start_yaml(&yaml, 2).expect("Envoy starts");
    let mut client = envoy.client();
    for i in 0..N {
        let r = client.get("pro.coding", &format!("/{i}"), &[("x-user-id", b"alice")]);
        assert_eq!(r.status, 200, "{}", envoy.log());
    }
    assert_eq!(stable.requests(), N);
    // Copies leave in a later event-loop turn: give them time to be counted.
    thread::sleep(Duration::from_millis(500));
    let in_envoy: Vec<u64> = STATS
        .iter()
        .map(|n| envoy.stat(&canary_stat(n)).unwrap_or(0))
        .collect();

    let host = Host::new();
    let plugin = host
        .start(
            common::filter(),
            PluginConfig::new(POLICY)
                .name("rollgate")
                .root_id("rollgate")
                .workers(2),
        )
        .unwrap();
    for i in 0..N {
        let ex = plugin
            .run(HttpRequest::get("pro.coding", &format!("/{i}")).header("x-user-id", "alice"))
            .unwrap();
        assert_eq!(ex.response.as_ref().map(|r| r.status), Some(200));
        assert_eq!(ex.http_calls.len(), 1, "the copy is reported");
        assert_eq!(ex.http_calls[0].refused, Some(Status::BadArgument));
    }
    let in_host: Vec<u64> = STATS
        .iter()
        .map(|n| host.metric(&canary_stat(n)).map_or(0, |m| m.value()))
        .collect();
    eprintln!("{STATS:?}: Envoy {in_envoy:?}, host {in_host:?}");
    assert_eq!(in_host, in_envoy, "{STATS:?}");
    // Not vacuous: Envoy counted the refused copies somewhere.
    assert!(in_envoy.iter().any(|v| *v > 0), "{in_envoy:?}");
}
