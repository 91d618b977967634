//! The real rollgate filter as a network filter in the host: connections opened and closed the
//! way Envoy 1.40's `envoy.filters.network.wasm` drives them (`src/tcp.rs` cites Envoy's
//! `source/extensions/common/wasm/context.cc`: `Context::onNewConnection`, `closeStream`,
//! `onEvent`, `onCloseTCP`), answered admitted or refused by the policy's `tcp` section, with
//! the counts shared by the worker VMs.

mod common;

use std::time::Duration;

use rollgate_wasmhost::{ConnectionEvent, Host, HostError, Plugin, PluginConfig};

fn start(policy: &str, workers: usize) -> Plugin {
    Host::new()
        .start(common::filter(), PluginConfig::new(policy).workers(workers))
        .expect("the filter accepts the policy")
}

fn counter(plugin: &Plugin, suffix: &str) -> i64 {
    plugin
        .host()
        .metrics()
        .into_iter()
        .find(|(name, _)| name.ends_with(suffix))
        .map(|(_, m)| m.value() as i64)
        .unwrap_or_else(|| panic!("no metric *{suffix} in {:?}", plugin.host().metrics()))
}

fn refused(e: &ConnectionEvent) -> bool {
    !e.admitted && e.closed_by_filter && e.closed
}

#[test]
fn a_third_connection_from_one_source_is_refused_until_one_closes() {
    // Two workers: the count is the shared-data one both VMs see.
    let plugin = start(
        r#"{"name":"mysql","tcp":{"in_flight":{"per_source":2}}}"#,
        2,
    );
    let a = plugin.open_connection("10.0.0.1:5000", None).unwrap();
    let b = plugin.open_connection("10.0.0.1:5001", None).unwrap();
    assert!(a.admitted && b.admitted, "{a:?} {b:?}");
    assert_ne!(a.worker, b.worker, "round-robin over the two VMs");
    let c = plugin.open_connection("10.0.0.1:5002", None).unwrap();
    assert!(refused(&c), "{c:?}");
    // Refused and closed by Envoy: the context is gone, and cannot be closed again.
    assert_eq!(plugin.open_connections().len(), 2);
    assert!(matches!(
        plugin.close_connection(c.worker, c.context_id),
        Err(HostError::NoSuchConnection { .. })
    ));
    // Another source has its own count.
    let other = plugin.open_connection("10.0.0.2:5000", None).unwrap();
    assert!(other.admitted, "{other:?}");
    assert_eq!(counter(&plugin, "tcp.refused_in_flight"), 1);
    assert_eq!(counter(&plugin, "tcp.active"), 3);

    let closed = plugin.close_connection(a.worker, a.context_id).unwrap();
    assert!(closed.closed && !closed.closed_by_filter);
    assert_eq!(counter(&plugin, "tcp.active"), 2);
    let d = plugin.open_connection("10.0.0.1:5003", None).unwrap();
    assert!(d.admitted, "a close gives the place back: {d:?}");
    let e = plugin.open_connection("10.0.0.1:5004", None).unwrap();
    assert!(refused(&e), "{e:?}");
}

#[test]
fn allow_lists_source_networks() {
    let plugin = start(
        r#"{"name":"mysql","tcp":{"allow":["10.0.0.0/8","::1/128"]}}"#,
        1,
    );
    assert!(
        plugin
            .open_connection("10.9.8.7:1234", None)
            .unwrap()
            .admitted
    );
    assert!(plugin.open_connection("[::1]:1234", None).unwrap().admitted);
    assert!(refused(
        &plugin.open_connection("192.168.1.1:1234", None).unwrap()
    ));
    assert!(refused(
        &plugin.open_connection("127.0.0.1:1234", None).unwrap()
    ));
    assert_eq!(counter(&plugin, "tcp.refused_allow"), 2);
}

#[test]
fn rate_refills_with_the_hosts_clock() {
    let plugin = start(
        r#"{"name":"mysql","tcp":{"rate":{"average":2,"period":"1s","burst":2}}}"#,
        1,
    );
    let open = || plugin.open_connection("10.0.0.1:4000", None).unwrap();
    assert!(open().admitted && open().admitted);
    assert!(refused(&open()), "the burst is spent");
    plugin.host().advance(Duration::from_millis(500)).unwrap();
    assert!(open().admitted, "one token back after half a period");
    assert!(refused(&open()));
    assert_eq!(counter(&plugin, "tcp.refused_rate"), 2);
}

#[test]
fn without_a_tcp_section_connections_pass() {
    // An HTTP policy's root creates HTTP contexts; a policy with `tcp` alone is needed for the
    // network side. A TCP policy with no limits admits everything.
    let plugin = start(r#"{"name":"mysql","tcp":{}}"#, 1);
    let a = plugin.open_connection("10.0.0.1:1", None).unwrap();
    assert!(a.admitted && !a.closed, "{a:?}");
    plugin.close_connection(a.worker, a.context_id).unwrap();
    assert!(plugin.open_connections().is_empty());
}
