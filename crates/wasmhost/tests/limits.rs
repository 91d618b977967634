//! The host bounds each call: a VM growing its memory past `max_memory` traps, a call that never
//! returns is interrupted after `call_timeout`, and the VM then fails as Envoy's does
//! (`rollgate try`'s bounds on the same modules are in `crates/rollgate/tests/limits.rs`).

mod modules;

use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use modules::{busy, grpc_send_flood, grpc_stream_flood, hog, spin};
use rollgate_wasmhost::{
    GrpcStreamCall, GrpcStreamReply, GrpcStreamSent, Host, HttpRequest, PluginConfig, Wasm,
    MAX_GRPC_STREAMS, MAX_GRPC_STREAM_QUEUED_BYTES,
};

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

/// A plugin opening gRPC streams without end gets InternalFailure past [`MAX_GRPC_STREAMS`]
/// open on its VM, and one queueing messages without end past
/// [`MAX_GRPC_STREAM_QUEUED_BYTES`] on a stream within a callback; the host logs why, and
/// the handlers get what was accepted.
#[test]
fn the_host_bounds_grpc_streams() {
    let opened = Arc::new(AtomicUsize::new(0));
    let n = Arc::clone(&opened);
    let config = PluginConfig::new("")
        .call_timeout(Duration::from_secs(5))
        .grpc_stream_cluster("grpc", move |_: &GrpcStreamCall| {
            n.fetch_add(1, Ordering::SeqCst);
            |_: &[GrpcStreamSent]| Vec::<GrpcStreamReply>::new()
        });
    let wasm = Wasm::interruptible_from_bytes(&grpc_stream_flood()).unwrap();
    let plugin = Host::new().start(&wasm, config).unwrap();
    let ex = plugin.run(HttpRequest::get("a", "/")).unwrap();
    assert_eq!(opened.load(Ordering::SeqCst), MAX_GRPC_STREAMS);
    assert!(
        ex.logs.iter().any(|l| l.from_host
            && l.message
                .contains("1024 gRPC streams already open on this VM")),
        "{:?}",
        ex.logs
    );

    let queued = Arc::new(AtomicUsize::new(0));
    let q = Arc::clone(&queued);
    let config = PluginConfig::new("")
        .call_timeout(Duration::from_secs(5))
        .grpc_stream_cluster("grpc", move |_: &GrpcStreamCall| {
            let q = Arc::clone(&q);
            move |sent: &[GrpcStreamSent]| {
                for s in sent {
                    if let GrpcStreamSent::Message(m) = s {
                        q.fetch_add(m.len(), Ordering::SeqCst);
                    }
                }
                Vec::<GrpcStreamReply>::new()
            }
        });
    let wasm = Wasm::interruptible_from_bytes(&grpc_send_flood()).unwrap();
    let plugin = Host::new().start(&wasm, config).unwrap();
    let ex = plugin.run(HttpRequest::get("a", "/")).unwrap();
    assert_eq!(queued.load(Ordering::SeqCst), MAX_GRPC_STREAM_QUEUED_BYTES);
    assert!(
        ex.logs
            .iter()
            .any(|l| l.from_host && l.message.contains("bytes queued on gRPC stream 6")),
        "{:?}",
        ex.logs
    );
}

/// A metered module's fuel counts its own work per request, the same on every run: `busy(k)`
/// costs exactly `k` more per request than `busy(0)`; an unmetered module has no count.
#[test]
fn a_metered_module_counts_its_work_exactly() {
    let per_request = |k: usize| {
        let wasm = Wasm::metered_from_bytes(&busy(k)).unwrap();
        let plugin = Host::new().start(&wasm, PluginConfig::new("{}")).unwrap();
        let started = plugin.fuel_consumed().unwrap();
        for _ in 0..10 {
            plugin.run(HttpRequest::get("a", "/")).unwrap();
        }
        (plugin.fuel_consumed().unwrap() - started) / 10
    };
    let (base, busier) = (per_request(0), per_request(1_000));
    assert!(base > 0, "the request callbacks cost something");
    assert_eq!(busier - base, 1_000);
    assert_eq!(per_request(1_000), busier, "the same on every run");
    let plain = Wasm::from_bytes(&busy(0)).unwrap();
    let plugin = Host::new().start(&plain, PluginConfig::new("{}")).unwrap();
    assert_eq!(plugin.fuel_consumed(), None);
}
