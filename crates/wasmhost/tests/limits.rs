//! The host bounds each call: a VM growing its memory past `max_memory` traps, a call that never
//! returns is interrupted after `call_timeout`, and the VM then fails as Envoy's does
//! (`rollgate try`'s bounds on the same modules are in `crates/rollgate/tests/limits.rs`).

mod modules;

use std::time::{Duration, Instant};

use modules::{hog, spin};
use rollgate_wasmhost::{Host, HttpRequest, PluginConfig, Wasm};

#[test]
fn the_host_bounds_memory_and_time_per_call() {
    // The same bounds through the library, with the figures asserted exactly.
    let mb = 1 << 20;
    let wasm = Wasm::interruptible_from_bytes(&hog()).unwrap();
    let plugin = Host::new()
        .start(&wasm, PluginConfig::new("{}").max_memory(32 * mb))
        .unwrap();
    let err = plugin.run(HttpRequest::get("a", "/")).unwrap_err();
    assert!(
        format!("{err}").contains("forcing trap when growing memory"),
        "{err}"
    );
    // The VM failed; the next request gets Envoy's FAIL_CLOSED answer.
    let ex = plugin.run(HttpRequest::get("a", "/")).unwrap();
    let local = ex.local_response.unwrap();
    assert_eq!(
        (local.status, local.details.as_str()),
        (503, "wasm_fail_stream")
    );

    let wasm = Wasm::interruptible_from_bytes(&spin()).unwrap();
    let plugin = Host::new()
        .start(
            &wasm,
            PluginConfig::new("{}").call_timeout(Duration::from_millis(100)),
        )
        .unwrap();
    let start = Instant::now();
    let err = plugin.run(HttpRequest::get("a", "/")).unwrap_err();
    assert!(format!("{err}").contains("interrupt"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}
