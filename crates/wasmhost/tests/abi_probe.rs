//! ABI conformance of the host, through `rollgate-abi-probe` (a proxy-wasm module built for
//! wasm32-unknown-unknown: `malloc` allocator, no WASI): shared data and CAS across worker
//! VMs, shared queues, ticks on the virtual clock, metrics, properties, HTTP callouts, local
//! responses, traps and Envoy's phase rules.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rollgate_wasmhost::{
    CalloutReply, FailurePolicy, Host, HostError, HttpRequest, LogLevel, Metric, Plugin,
    PluginConfig, Response, Wasm, DEFAULT_EPOCH_SECS,
};

fn start(host: &Host, config: PluginConfig) -> Plugin {
    host.start(common::probe(), config)
        .expect("start the probe")
}

fn probe(workers: usize) -> (Host, Plugin) {
    let host = Host::new();
    let plugin = start(&host, PluginConfig::new("").workers(workers));
    (host, plugin)
}

fn op(ops: &str) -> HttpRequest {
    HttpRequest::get("probe.local", "/p").header("x-probe-op", ops)
}

fn note(ex: &rollgate_wasmhost::Exchange, name: &str) -> String {
    ex.request_header(&format!("x-probe-{name}"))
        .unwrap_or_else(|| panic!("no x-probe-{name} in {:?}", ex.request_headers))
}

#[test]
fn lifecycle_runs_in_envoys_order() {
    let (_host, plugin) = probe(1);
    let infos = plugin.logs_at(LogLevel::Info);
    assert_eq!(infos[0], "vm started: queue 1");
    assert_eq!(infos[1], "configure: 0 bytes");
    let ex = plugin.run(op("")).unwrap();
    assert!(ex.forwarded);
    assert_eq!(ex.response.as_ref().unwrap().status, 200);
    // on_log runs after the response, with the response readable.
    let last = plugin.logs_at(LogLevel::Info).pop().unwrap();
    assert_eq!(
        last,
        format!("on_log ctx={} status=200 code=200 op=", ex.context_id)
    );
}

#[test]
fn shared_data_cas_is_shared_by_every_worker() {
    let (host, plugin) = probe(3);
    for i in 1..=30u32 {
        let ex = plugin.run(op("cas").worker(i as usize % 3)).unwrap();
        assert_eq!(note(&ex, "counter"), i.to_string());
    }
    let (value, cas) = host.shared_data("", b"counter").unwrap();
    assert_eq!(value, b"30");
    assert_eq!(cas, 30, "one global cas counter, starting at 1");
    // Another vm_id is another namespace.
    assert_eq!(host.shared_data("other", b"counter"), None);

    let ex = plugin.run(op("cas-stale")).unwrap();
    assert_eq!(note(&ex, "first"), "Ok");
    assert_eq!(note(&ex, "stale"), "CasMismatch");
    assert_eq!(note(&ex, "absent"), "Ok", "an absent key accepts any cas");
    assert_eq!(note(&ex, "missing"), "Ok((None, None))");
}

#[test]
fn queue_ready_goes_to_the_last_registrant() {
    let (host, plugin) = probe(3);
    plugin.clear_logs();
    let ex = plugin
        .run(op("enqueue").header("x-probe-msg", "hello").worker(0))
        .unwrap();
    assert_eq!(note(&ex, "enqueue"), "Ok");
    assert_eq!(note(&ex, "resolve-unknown"), "Ok(None)");
    let dequeued: Vec<_> = plugin
        .logs()
        .into_iter()
        .filter(|l| l.message.starts_with("dequeued"))
        .collect();
    assert_eq!(dequeued.len(), 1);
    assert_eq!(dequeued[0].message, "dequeued hello");
    assert_eq!(dequeued[0].worker, 2, "worker 2 registered the queue last");
    assert!(plugin
        .logs_at(LogLevel::Info)
        .contains(&"queue 1 then: Ok(None)".to_string()));
    assert_eq!(host.queue_len("", "probe_queue"), Some(0));
}

#[test]
fn ticks_fire_per_vm_on_the_virtual_clock() {
    let host = Host::new();
    let plugin = start(&host, PluginConfig::new("tick_ms=100").workers(2));
    assert_eq!(plugin.tick_period(1), Some(Duration::from_millis(100)));
    host.advance(Duration::from_millis(350)).unwrap();
    assert_eq!(host.elapsed(), Duration::from_millis(350));
    let ticks: Vec<_> = plugin
        .logs()
        .into_iter()
        .filter(|l| l.message.starts_with("tick "))
        .collect();
    let epoch_ms = u128::from(DEFAULT_EPOCH_SECS) * 1000;
    let seen: Vec<(usize, String)> = ticks
        .iter()
        .map(|l| (l.worker, l.message.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (0, format!("tick 1 at {}", epoch_ms + 100)),
            (1, format!("tick 2 at {}", epoch_ms + 100)),
            (0, format!("tick 3 at {}", epoch_ms + 200)),
            (1, format!("tick 4 at {}", epoch_ms + 200)),
            (0, format!("tick 5 at {}", epoch_ms + 300)),
            (1, format!("tick 6 at {}", epoch_ms + 300)),
        ]
    );
    assert_eq!(host.shared_data("", b"ticks").unwrap().0, b"6");
    // Nothing more until the next period is due.
    host.advance(Duration::from_millis(49)).unwrap();
    assert_eq!(host.shared_data("", b"ticks").unwrap().0, b"6");
    host.advance(Duration::from_millis(1)).unwrap();
    assert_eq!(host.shared_data("", b"ticks").unwrap().0, b"8");
}

#[test]
fn metrics_are_named_and_checked_like_envoys() {
    let (host, plugin) = probe(2);
    let ex = plugin.run(op("metrics").worker(0)).unwrap();
    assert_eq!(
        note(&ex, "metrics"),
        "inc=Ok zero=BadArgument neg=BadArgument up=Ok down=Ok rec=Ok get=Ok(1) \
         hist=Err(BadArgument) unknown=Err(NotFound)"
    );
    // The second worker's VM defines the same names: same stats.
    plugin.run(op("metrics").worker(1)).unwrap();
    assert_eq!(host.metric("probe_requests"), Some(Metric::Counter(2)));
    assert_eq!(
        host.metric("wasmcustom.probe_requests"),
        Some(Metric::Counter(2))
    );
    assert_eq!(host.metric("probe_inflight"), Some(Metric::Gauge(6)));
    assert_eq!(
        host.metric("probe_sizes"),
        Some(Metric::Histogram(vec![42, 42]))
    );
    assert_eq!(host.metrics().len(), 3);
    assert_eq!(host.metric("nope"), None);
}

#[test]
fn properties_answer_like_envoy() {
    let host = Host::new();
    let plugin = start(
        &host,
        PluginConfig::new("")
            .name("probe-plugin")
            .root_id("probe-root")
            .vm_id("probe-vm")
            .property(&["xds", "cluster_name"], "outbound|80||svc"),
    );
    let ex = plugin
        .run(
            HttpRequest::new("POST", "pro.coding:8080", "/a/b?x=1")
                .header("x-probe-op", "props")
                .source("10.1.2.3:4567"),
        )
        .unwrap();
    assert_eq!(note(&ex, "source-address"), "10.1.2.3:4567");
    assert_eq!(note(&ex, "source-port"), "4567");
    assert_eq!(note(&ex, "request-path"), "/a/b?x=1");
    assert_eq!(note(&ex, "request-url-path"), "/a/b");
    assert_eq!(note(&ex, "request-host"), "pro.coding:8080");
    assert_eq!(note(&ex, "request-method"), "POST");
    assert_eq!(note(&ex, "plugin-name"), "probe-plugin");
    assert_eq!(note(&ex, "plugin-root-id"), "probe-root");
    assert_eq!(note(&ex, "plugin-vm-id"), "probe-vm");
    assert_eq!(
        note(&ex, "missing"),
        "None",
        "NotFound, which the SDK maps to None"
    );
    assert_eq!(note(&ex, "custom"), "outbound|80||svc");
    // A request's own property hides the configured one, for that request only.
    let given = |r: HttpRequest| r.property(&["xds", "cluster_name"], "outbound|81||other");
    let one = plugin.run(given(op("props"))).unwrap();
    assert_eq!(note(&one, "custom"), "outbound|81||other");
    let next = plugin.run(op("props")).unwrap();
    assert_eq!(note(&next, "custom"), "outbound|80||svc");
    assert_eq!(note(&ex, "set"), "Ok");
    // Envoy reads a set property back only at a one-segment path (try_like_envoy.rs).
    assert_eq!(note(&ex, "mark"), "None");
    let ex = plugin.run(op("props").no_source()).unwrap();
    assert_eq!(note(&ex, "source-address"), "None");
    // Envoy's default connection manager takes the downstream address from X-Forwarded-For.
    let xff = || op("props").header("x-forwarded-for", " 192.0.2.1, 198.51.100.7 ");
    let ex = plugin.run(xff()).unwrap();
    assert_eq!(note(&ex, "source-address"), "198.51.100.7:0");
    assert_eq!(
        ex.request_header("x-forwarded-for").as_deref(),
        Some("192.0.2.1, 198.51.100.7"),
        "the codec trims whitespace around values"
    );
    let peer = start(&host, PluginConfig::new("").use_remote_address(true));
    let ex = peer.run(xff()).unwrap();
    assert_eq!(
        note(&ex, "source-address"),
        rollgate_wasmhost::DEFAULT_SOURCE
    );
}

#[test]
fn http_calls_are_answered_by_the_cluster_handler() {
    let seen: Arc<Mutex<Vec<rollgate_wasmhost::HttpCall>>> = Arc::default();
    let host = Host::new();
    let log = Arc::clone(&seen);
    let plugin = start(
        &host,
        PluginConfig::new("").cluster("auth", move |call| {
            log.lock().unwrap().push(call.clone());
            CalloutReply::Respond(Response::new(201).header("x-a", "1").body("pong"))
        }),
    );
    let ex = plugin.run(op("http")).unwrap();
    assert!(ex.forwarded, "resumed by the callout response");
    assert_eq!(note(&ex, "auth-status"), "201");
    assert_eq!(note(&ex, "auth-body"), "pong");
    assert_eq!(note(&ex, "call-counts"), "4:2:4:0");
    assert_eq!(note(&ex, "call-status"), "0:");
    assert_eq!(
        note(&ex, "call-trailers"),
        "0:true",
        "an empty map is pointer 0, size 0"
    );
    let calls = seen.lock().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].cluster, "auth");
    assert_eq!(calls[0].body, b"ping");
    assert_eq!(calls[0].headers.get_str(":path").as_deref(), Some("/check"));
    assert_eq!(
        calls[0].headers.get_str("content-length").as_deref(),
        Some("4")
    );
    assert_eq!(calls[0].timeout, Some(Duration::from_secs(1)));

    let ex = plugin.run(op("http-bad")).unwrap();
    assert_eq!(note(&ex, "unknown-cluster"), "Err(BadArgument)");
    assert_eq!(note(&ex, "no-path"), "Err(BadArgument)");
}

#[test]
fn http_call_reset_timeout_and_late_answers() {
    let mode = Arc::new(AtomicUsize::new(0));
    let m = Arc::clone(&mode);
    let host = Host::new();
    let plugin = start(
        &host,
        PluginConfig::new("").cluster("auth", move |_| match m.load(Ordering::SeqCst) {
            0 => CalloutReply::Reset,
            _ => CalloutReply::Pending,
        }),
    );
    let ex = plugin.run(op("http")).unwrap();
    assert_eq!(note(&ex, "auth-status"), "none");
    assert_eq!(note(&ex, "call-status"), "11:reset");

    // Unanswered: the stream stalls, the client goes away, the callout (owned by the root
    // context) outlives it; its timeout answers 504 to a context the SDK no longer knows.
    mode.store(1, Ordering::SeqCst);
    let ex = plugin.run(op("http")).unwrap();
    assert_eq!(ex.stalled, Some(rollgate_wasmhost::Phase::RequestHeaders));
    assert!(ex.response.is_none());
    assert_eq!(plugin.pending_http_calls().len(), 1);
    host.advance(Duration::from_millis(999)).unwrap();
    assert_eq!(plugin.pending_http_calls().len(), 1);
    host.advance(Duration::from_millis(1)).unwrap();
    assert!(plugin.pending_http_calls().is_empty());
    assert_eq!(plugin.failure(0), None);

    // Answered by the test before the timeout, through the low-level API.
    let ex = plugin.run(op("http")).unwrap();
    assert!(ex.stalled.is_some());
    let call = plugin.pending_http_calls().pop().unwrap();
    plugin
        .respond_http_call(
            call.worker,
            call.token,
            CalloutReply::Respond(Response::new(200)),
        )
        .unwrap();
    assert!(plugin.pending_http_calls().is_empty());
    assert!(matches!(
        plugin.respond_http_call(call.worker, call.token, CalloutReply::Reset),
        Err(HostError::NoSuchCall { .. })
    ));
}

#[test]
fn local_response_stops_the_request_and_runs_the_response_side() {
    let (_host, plugin) = probe(1);
    let ex = plugin.run(op("local")).unwrap();
    assert!(!ex.forwarded);
    let local = ex.local_response.clone().unwrap();
    assert_eq!(local.status, 429);
    assert_eq!(local.body, b"slow down");
    assert_eq!(
        local.headers.get_str("x-probe-local").as_deref(),
        Some("yes")
    );
    assert_eq!(local.grpc_status, None, "the SDK passes -1: no grpc-status");
    let response = ex.response.clone().unwrap();
    assert_eq!(response.status, 429);
    assert_eq!(response.body, b"slow down");
    assert_eq!(
        ex.response_header("x-probe-local-seen").as_deref(),
        Some("yes")
    );
    assert_eq!(
        ex.response_header("content-type").as_deref(),
        Some("text/plain")
    );
    let last = plugin.logs_at(LogLevel::Info).pop().unwrap();
    assert!(last.contains("status=429 code=429"), "{last}");
}

#[test]
fn a_trap_fails_the_stream_and_then_the_vm_closed() {
    let (_host, plugin) = probe(2);
    let err = plugin.run(op("panic").worker(0)).unwrap_err();
    let HostError::Trap(trap) = err else {
        panic!("expected a trap, got {err}")
    };
    assert_eq!(trap.callback, "proxy_on_request_headers");
    assert_eq!(trap.worker, 0);
    assert!(trap.message.contains("probe panic: boom"), "{trap:?}");
    assert!(plugin.failure(0).is_some());
    plugin.clear_logs();
    let ex = plugin.run(op("cas").worker(0)).unwrap();
    let local = ex.local_response.unwrap();
    assert_eq!(
        (local.status, local.details.as_str()),
        (503, "wasm_fail_stream")
    );
    assert!(!ex.forwarded);
    assert!(plugin.logs().is_empty(), "the failed VM is not called");
    let ex = plugin.run(op("cas").worker(1)).unwrap();
    assert_eq!(note(&ex, "counter"), "1", "the other worker is fine");
}

#[test]
fn failure_policies_open_and_reload() {
    let host = Host::new();
    let open = start(
        &host,
        PluginConfig::new("").failure_policy(FailurePolicy::FailOpen),
    );
    open.run(op("panic")).unwrap_err();
    let ex = open.run(op("cas")).unwrap();
    assert!(ex.forwarded && ex.local_response.is_none());
    assert!(!ex.request_headers.contains("x-probe-counter"), "bypassed");

    let reload = start(
        &host,
        PluginConfig::new("").failure_policy(FailurePolicy::FailReload),
    );
    reload.run(op("panic")).unwrap_err();
    reload.clear_logs();
    let ex = reload.run(op("cas")).unwrap();
    assert!(ex.request_headers.contains("x-probe-counter"));
    assert_eq!(reload.logs_at(LogLevel::Info)[0], "vm started: queue 1");
    assert_eq!(reload.failure(0), None);
}

#[test]
fn maps_and_buffers_outside_their_phase() {
    let host = Host::new();
    let plugin = start(&host, PluginConfig::new("").log_level(LogLevel::Warn));
    let ex = plugin.run(op("raw,log-level")).unwrap();
    assert_eq!(
        ex.response_header("x-probe-outside").as_deref(),
        Some("2"),
        "BadArgument"
    );
    assert_eq!(note(&ex, "bad-effective"), "2");
    assert_eq!(note(&ex, "continue-upstream"), "12", "Unimplemented");
    assert_eq!(note(&ex, "trailers-now"), "2");
    assert_eq!(note(&ex, "body-now"), "1", "NotFound");
    assert_eq!(
        note(&ex, "config-now"),
        "1",
        "the configuration is gone after on_configure"
    );
    assert_eq!(note(&ex, "log-level"), "Ok(Warn)");
}

#[test]
fn foreign_functions_and_route_cache() {
    let host = Host::new();
    let plugin = start(
        &host,
        PluginConfig::new("").foreign_function("probe_echo", |args| Ok(args.to_ascii_uppercase())),
    );
    let ex = plugin.run(op("foreign")).unwrap();
    assert_eq!(note(&ex, "clear"), "Ok(None)");
    assert_eq!(note(&ex, "echo"), "HI");
    assert_eq!(note(&ex, "nope"), "Err(NotFound)");
    // clear_route_cache once, plus one per request-header mutation (3 notes).
    assert_eq!(ex.route_cache_clears, 4);
}

#[test]
fn request_body_is_buffered_while_paused_and_can_be_replaced() {
    let (_host, plugin) = probe(1);
    let ex = plugin.run(op("body").body("ab").body("cd")).unwrap();
    assert_eq!(ex.request_body, b"ABCD");
    let bodies: Vec<String> = plugin
        .logs_at(LogLevel::Info)
        .into_iter()
        .filter(|m| m.starts_with("body "))
        .collect();
    assert_eq!(
        bodies,
        vec![
            "body 2 eos=false headers-status=2",
            "body 4 eos=true headers-status=2"
        ]
    );
}

#[test]
fn on_configure_false_is_reported_with_the_log() {
    let err = Host::new()
        .start(common::probe(), PluginConfig::new("reject=1"))
        .unwrap_err();
    let HostError::ConfigureFailed { worker, logs } = &err else {
        panic!("expected ConfigureFailed, got {err}")
    };
    assert_eq!(*worker, 0);
    assert!(logs
        .iter()
        .any(|l| l.level == LogLevel::Error && l.message == "probe: configuration rejected"));
    assert!(
        err.to_string().contains("probe: configuration rejected"),
        "{err}"
    );
}

/// A module importing `env.<name>` (a func `() -> ()`), exporting nothing else.
fn module_importing(name: &str) -> Vec<u8> {
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.extend([0x01, 0x04, 0x01, 0x60, 0x00, 0x00]); // type section: () -> ()
    let mut import = vec![0x01, 0x03];
    import.extend(b"env");
    import.push(name.len() as u8);
    import.extend(name.as_bytes());
    import.extend([0x00, 0x00]); // func, type 0
    m.push(0x02);
    m.push(import.len() as u8);
    m.extend(import);
    m
}

#[test]
fn instantiation_fails_on_missing_imports_and_non_proxy_modules() {
    let host = Host::new();
    let bogus = Wasm::from_bytes(&module_importing("proxy_bogus")).unwrap();
    let err = host.start(&bogus, PluginConfig::new("")).unwrap_err();
    assert!(matches!(err, HostError::Instantiate { .. }), "{err}");
    assert!(err.to_string().contains("proxy_bogus"), "{err}");
    // A module of the wrong signature for a known import is refused too.
    let wrong = Wasm::from_bytes(&module_importing("proxy_log")).unwrap();
    let err = host.start(&wrong, PluginConfig::new("")).unwrap_err();
    assert!(
        err.to_string().contains("incompatible import type"),
        "{err}"
    );
    // A valid module that is not proxy-wasm.
    let plain = Wasm::from_bytes(b"\0asm\x01\0\0\0").unwrap();
    let err = host.start(&plain, PluginConfig::new("")).unwrap_err();
    assert!(err.to_string().contains("proxy_abi_version_0_2_1"), "{err}");
    assert!(matches!(
        Wasm::from_bytes(b"not wasm"),
        Err(HostError::Compile(_))
    ));
}

#[test]
fn two_hosts_share_nothing() {
    let (a_host, a) = probe(1);
    let (b_host, b) = probe(1);
    assert_eq!(note(&a.run(op("cas")).unwrap(), "counter"), "1");
    assert_eq!(note(&a.run(op("cas")).unwrap(), "counter"), "2");
    assert_eq!(note(&b.run(op("cas")).unwrap(), "counter"), "1");
    a_host.advance(Duration::from_secs(5)).unwrap();
    assert_eq!(b_host.elapsed(), Duration::ZERO);
}

#[test]
fn time_is_virtual() {
    let (host, plugin) = probe(1);
    let t0 = note(&plugin.run(op("time")).unwrap(), "time");
    assert_eq!(
        t0,
        (u128::from(DEFAULT_EPOCH_SECS) * 1_000_000_000).to_string()
    );
    host.advance(Duration::from_millis(1500)).unwrap();
    let t1 = note(&plugin.run(op("time")).unwrap(), "time");
    assert_eq!(
        t1.parse::<u128>().unwrap() - t0.parse::<u128>().unwrap(),
        1_500_000_000
    );
}

#[test]
fn hosts_and_plugins_can_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Host>();
    send_sync::<Plugin>();
    send_sync::<Wasm>();
    let (host, plugin) = probe(1);
    let t = std::thread::spawn(move || {
        let counter = note(&plugin.run(op("cas")).unwrap(), "counter");
        (counter, plugin)
    });
    let (counter, plugin) = t.join().unwrap();
    assert_eq!(counter, "1");
    assert_eq!(host.shared_data("", b"counter").unwrap().0, b"1");
    // The last VM of vm_id "" going away takes its shared data along, as in Envoy.
    drop(plugin);
    assert_eq!(host.shared_data("", b"counter"), None);
}

/// Unary gRPC calls (what Envoy 1.40 does is checked by
/// crates/rollgate/tests/try_grpc_like_envoy.rs): a message reaches the filter through
/// `proxy_on_grpc_receive` and the GrpcReceiveBuffer, a failure through `proxy_on_grpc_close`
/// and `proxy_get_status`; tokens 5, 9, … per VM; an undeclared cluster is ParseFailure.
#[test]
fn grpc_calls_are_answered_by_the_grpc_cluster_handler() {
    let host = Host::new();
    let answers = Arc::new(AtomicUsize::new(0));
    let n = Arc::clone(&answers);
    let plugin = start(
        &host,
        PluginConfig::new("").grpc_cluster("grpc", move |call| {
            assert_eq!(
                (call.service.as_str(), call.method.as_str()),
                ("probe.Echo", "Say")
            );
            if n.fetch_add(1, Ordering::SeqCst) == 0 {
                rollgate_wasmhost::GrpcReply::Message(b"ok!".to_vec())
            } else {
                rollgate_wasmhost::GrpcReply::Close {
                    status: 16,
                    message: "who are you".into(),
                }
            }
        }),
    );
    let ex = plugin.run(op("grpc")).unwrap();
    assert!(ex.forwarded, "resumed by the gRPC answer");
    assert_eq!(note(&ex, "grpc-answer"), "5:0:3:6f6b21");
    assert_eq!(note(&ex, "grpc-status"), "0:none");
    let ex = plugin.run(op("grpc")).unwrap();
    assert_eq!(note(&ex, "grpc-answer"), "9:16:0:none");
    assert_eq!(note(&ex, "grpc-status"), "16:who are you");
    let ex = plugin.run(op("grpc-missing")).unwrap();
    assert_eq!(note(&ex, "grpc-missing"), "4:0", "ParseFailure, no token");
    assert_eq!(answers.load(Ordering::SeqCst), 2);
}

/// gRPC streams (what Envoy 1.40 does is checked by
/// crates/rollgate/tests/try_grpc_stream_like_envoy.rs): what the handler answers reaches the
/// filter in order on the root context (initial metadata as map 4, messages as buffer 5,
/// trailing metadata as map 5, the close with `proxy_get_status`), and nothing after the close;
/// a cancelled stream gets nothing more and its token is then unknown; tokens 6, 10, … per VM,
/// none taken by a missing cluster.
#[test]
fn grpc_streams_are_served_by_the_stream_cluster_handler() {
    use rollgate_wasmhost::{GrpcStreamCall, GrpcStreamReply, GrpcStreamSent, Headers};
    let host = Host::new();
    type Asked = Arc<Mutex<Vec<(u32, Vec<GrpcStreamSent>)>>>;
    let asked: Asked = Arc::default();
    let log = Arc::clone(&asked);
    let plugin = start(
        &host,
        PluginConfig::new("").grpc_stream_cluster("grpc", move |call: &GrpcStreamCall| {
            let (token, log) = (call.token, Arc::clone(&log));
            move |sent: &[GrpcStreamSent]| {
                log.lock().unwrap().push((token, sent.to_vec()));
                vec![
                    GrpcStreamReply::InitialMetadata(Headers::from_pairs([(":status", "200")])),
                    GrpcStreamReply::Message(b"x".to_vec()),
                    GrpcStreamReply::TrailingMetadata(Headers::new()),
                    GrpcStreamReply::Close {
                        status: 7,
                        message: "no".into(),
                    },
                    GrpcStreamReply::Message(b"late".to_vec()),
                ]
            }
        }),
    );
    let ex = plugin.run(op("grpc-stream")).unwrap();
    assert!(ex.forwarded, "resumed by the close");
    assert_eq!(
        note(&ex, "grpc-stream"),
        "open 6 | sent Ok Ok close Ok | initial 6 1 [:status=200] | message 6 1 x | \
         trailing 6 0 [] | close 6 7 status 7:no"
    );
    let ex = plugin.run(op("grpc-stream-missing")).unwrap();
    assert_eq!(note(&ex, "grpc-stream"), "open Err(ParseFailure)");
    let ex = plugin.run(op("grpc-stream-cancel")).unwrap();
    assert_eq!(
        note(&ex, "grpc-stream"),
        "open 10 | sent Ok cancel Ok | after 1 1 1 | http-token close 2 | call-token send 2"
    );
    let both = vec![
        GrpcStreamSent::Message(b"a".to_vec()),
        GrpcStreamSent::Message(b"bb".to_vec()),
        GrpcStreamSent::Close,
    ];
    assert_eq!(
        *asked.lock().unwrap(),
        [
            (6, both),
            (
                10,
                vec![
                    GrpcStreamSent::Message(b"a".to_vec()),
                    GrpcStreamSent::Cancel
                ]
            )
        ]
    );
    // Undeclared for streams but declared for unary calls: Envoy's refused connection.
    let plugin = start(
        &host,
        PluginConfig::new("").grpc_cluster("grpc", |_| {
            rollgate_wasmhost::GrpcReply::Message(Vec::new())
        }),
    );
    let ex = plugin.run(op("grpc-stream")).unwrap();
    assert!(
        note(&ex, "grpc-stream").starts_with(
            "open 6 | sent Ok Ok close Ok | initial 6 0 [] | trailing 6 4 [:status=200;"
        ),
        "{}",
        note(&ex, "grpc-stream")
    );
}
