//! The fetch lease after a VM death, in rollgate's own host (Envoy's FAIL_RELOAD and
//! shared-data rules on a virtual clock, so the timing is exact): the worker VM holding the
//! lease dies with its long poll in flight, and the VM that replaces it polls again within 2 s.
//! In Envoy the main thread's VM usually holds the lease and never serves requests, so this
//! case is hard to reach there on purpose; here the only VM is the holder.
//!
//! Uses the test build of the filter (`make wasm-test-trap`): a request with the header
//! `x-rollgate-test-trap` traps it.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rollgate_wasmhost::{CalloutReply, FailurePolicy, Host, HttpRequest, PluginConfig, Wasm};

const CONFIG: &str = r#"{"source":{"cluster":"rollgate","path":"/v1/policies/flask","poll":"1s","wait":"20s"},
  "name":"flask","variants":{"stable":"k8s-flask"},"default":"stable"}"#;

#[test]
fn a_fresh_vm_polls_again_within_2s_when_the_lease_holder_died() {
    let path = rollgate_e2e::test_trap_wasm_path();
    let wasm = Wasm::from_file(&path).unwrap();
    let host = Host::new();
    let polls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&polls);
    let plugin = host
        .start(
            &wasm,
            PluginConfig::new(CONFIG)
                .failure_policy(FailurePolicy::FailReload)
                .cluster("rollgate", move |_| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    // The sidecar holds the long poll: nothing changes.
                    CalloutReply::Pending
                }),
        )
        .unwrap();
    host.advance(Duration::from_millis(200)).unwrap();
    assert_eq!(
        polls.load(Ordering::SeqCst),
        1,
        "the only VM holds the lease"
    );

    let trap = HttpRequest::get("a", "/").header("x-rollgate-test-trap", "1");
    assert!(plugin.run(trap).is_err(), "the VM died");
    // FAIL_RELOAD: the next request gets a fresh VM.
    let ex = plugin.run(HttpRequest::get("a", "/")).unwrap();
    assert_eq!(
        ex.request_header("x-rollgate-cluster").as_deref(),
        Some("k8s-flask")
    );
    let mut waited = Duration::ZERO;
    while polls.load(Ordering::SeqCst) < 2 && waited < Duration::from_secs(40) {
        host.advance(Duration::from_millis(100)).unwrap();
        waited += Duration::from_millis(100);
    }
    println!("the fresh VM polled after {waited:?}");
    // It used to wait out the dead VM's lease: the 20 s wait plus 10 s.
    assert!(
        waited <= Duration::from_millis(2100),
        "the fresh VM polled after {waited:?}"
    );
}
