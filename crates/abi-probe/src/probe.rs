//! The probe's root and HTTP contexts.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType, PeerType, Status};

proxy_wasm::main! {{
    // Also installs the SDK's panic hook: a panic is logged at Critical before the trap.
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_buffer_bytes(
        t: u32,
        start: usize,
        max: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_grpc_send(token: u32, message_ptr: *const u8, message_size: usize, eos: u32) -> u32;
    fn proxy_grpc_close(token: u32) -> u32;
    fn proxy_grpc_cancel(token: u32) -> u32;
    fn proxy_grpc_call(
        service_ptr: *const u8,
        service_size: usize,
        service_name_ptr: *const u8,
        service_name_size: usize,
        method_ptr: *const u8,
        method_size: usize,
        metadata_ptr: *const u8,
        metadata_size: usize,
        message_ptr: *const u8,
        message_size: usize,
        timeout_ms: u32,
        token_ptr: *mut u32,
    ) -> u32;
}

/// Raw `proxy_grpc_call` to `cluster`: the status and token as the host gave them (the SDK
/// panics on statuses it does not expect, such as BadArgument for an unknown cluster).
fn raw_grpc_call(cluster: &str) -> (u32, u32) {
    let (service, method, message) = ("probe.Echo", "Say", b"\x0a\x02hi");
    let mut token = 0u32;
    // SAFETY: every pointer is to a live slice of the given length, or to `token`.
    let status = unsafe {
        proxy_grpc_call(
            cluster.as_ptr(),
            cluster.len(),
            service.as_ptr(),
            service.len(),
            method.as_ptr(),
            method.len(),
            std::ptr::null(),
            0,
            message.as_ptr(),
            message.len(),
            1000,
            &mut token,
        )
    };
    (status, token)
}

/// Raw `proxy_get_header_map_pairs`: the status and whether pointer and size were both 0
/// (the SDK would panic on statuses it does not expect, and hides the pointer).
fn raw_map(map_type: u32) -> (u32, bool) {
    let mut ptr: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: on success the host allocated `size` bytes at `ptr` with our allocator; we take
    // them back into a Vec to free them.
    unsafe {
        let status = proxy_get_header_map_pairs(map_type, &mut ptr, &mut size);
        let empty = ptr.is_null() && size == 0;
        if status == 0 && !ptr.is_null() {
            drop(Vec::from_raw_parts(ptr, size, size));
        }
        (status, empty)
    }
}

fn raw_buffer_status(buffer_type: u32) -> u32 {
    let mut ptr: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: as in `raw_map`.
    unsafe {
        let status = proxy_get_buffer_bytes(buffer_type, 0, 1024, &mut ptr, &mut size);
        if status == 0 && !ptr.is_null() {
            drop(Vec::from_raw_parts(ptr, size, size));
        }
        status
    }
}

fn info(msg: &str) {
    let _ = hostcalls::log(LogLevel::Info, msg);
}

fn status_name(r: Result<(), Status>) -> String {
    match r {
        Ok(()) => "Ok".into(),
        Err(s) => format!("{s:?}"),
    }
}

/// Increments shared counter `key` with a CAS loop; returns the new value.
fn cas_increment(key: &str) -> u64 {
    loop {
        let (value, cas) = hostcalls::get_shared_data(key).unwrap_or((None, None));
        let n = value
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        match hostcalls::set_shared_data(key, Some(n.to_string().as_bytes()), cas) {
            Ok(()) => return n,
            Err(Status::CasMismatch) => continue,
            Err(s) => panic!("set_shared_data: {s:?}"),
        }
    }
}

#[derive(Default)]
struct Metrics {
    requests: u32,
    inflight: u32,
    sizes: u32,
}

#[derive(Default)]
struct Root {
    metrics: std::rc::Rc<std::cell::RefCell<Metrics>>,
    queue: u32,
    /// `network=1`: the probe is a network filter ([`Connection`]).
    network: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        let mut m = self.metrics.borrow_mut();
        m.requests = hostcalls::define_metric(MetricType::Counter, "probe_requests").unwrap_or(0);
        m.inflight = hostcalls::define_metric(MetricType::Gauge, "probe_inflight").unwrap_or(0);
        m.sizes = hostcalls::define_metric(MetricType::Histogram, "probe_sizes").unwrap_or(0);
        self.queue = hostcalls::register_shared_queue("probe_queue").unwrap_or(0);
        info(&format!("vm started: queue {}", self.queue));
        true
    }

    fn on_configure(&mut self, size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let config = String::from_utf8_lossy(&config).into_owned();
        info(&format!("configure: {size} bytes"));
        for line in config.lines() {
            match line.split_once('=') {
                Some(("tick_ms", ms)) => {
                    let ms = ms.trim().parse().unwrap_or(0);
                    self.set_tick_period(Duration::from_millis(ms));
                }
                Some(("network", v)) => self.network = v.trim() == "1",
                Some(("reject", _)) => {
                    let _ = hostcalls::log(LogLevel::Error, "probe: configuration rejected");
                    return false;
                }
                _ => {}
            }
        }
        // Outside on_configure the plugin configuration is gone (NotFound → None).
        true
    }

    fn on_tick(&mut self) {
        let n = cas_increment("ticks");
        let now = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis());
        info(&format!("tick {n} at {now}"));
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = hostcalls::dequeue_shared_queue(queue_id) {
            info(&format!("dequeued {}", String::from_utf8_lossy(&item)));
        }
        let empty = hostcalls::dequeue_shared_queue(queue_id);
        info(&format!("queue {queue_id} then: {empty:?}"));
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            context_id,
            metrics: self.metrics.clone(),
            ops: Vec::new(),
            stream_events: Vec::new(),
        }))
    }

    fn create_stream_context(&self, context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(Connection { context_id }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(if self.network {
            ContextType::StreamContext
        } else {
            ContextType::HttpContext
        })
    }
}

/// A connection through the probe as a network filter: every callback is logged with what
/// it saw. Downstream data ending in `+` is held (Pause: Envoy keeps it in the connection's
/// read buffer and calls again with more); other downstream data goes on upper-cased, and
/// upstream data goes on with `<` prepended, so the tests see both rewrites.
struct Connection {
    context_id: u32,
}

fn shown(data: &[u8]) -> String {
    String::from_utf8_lossy(data).replace('\n', "\\n")
}

fn peer(p: PeerType) -> u32 {
    match p {
        PeerType::Unknown => 0,
        PeerType::Local => 1,
        PeerType::Remote => 2,
        _ => 99,
    }
}

impl Context for Connection {}

impl StreamContext for Connection {
    fn on_new_connection(&mut self) -> Action {
        info(&format!("tcp new ctx={}", self.context_id));
        Action::Continue
    }

    fn on_downstream_data(&mut self, size: usize, end_of_stream: bool) -> Action {
        let data = self.get_downstream_data(0, size).unwrap_or_default();
        info(&format!(
            "tcp downstream size={size} eos={end_of_stream} data={}",
            shown(&data)
        ));
        if data.ends_with(b"+") && !end_of_stream {
            return Action::Pause;
        }
        if !data.is_empty() {
            self.set_downstream_data(0, size, &data.to_ascii_uppercase());
        }
        Action::Continue
    }

    fn on_downstream_close(&mut self, p: PeerType) {
        info(&format!("tcp downstream close peer={}", peer(p)));
    }

    fn on_upstream_data(&mut self, size: usize, end_of_stream: bool) -> Action {
        let data = self.get_upstream_data(0, size).unwrap_or_default();
        info(&format!(
            "tcp upstream size={size} eos={end_of_stream} data={}",
            shown(&data)
        ));
        if !data.is_empty() {
            self.set_upstream_data(0, 0, b"<");
        }
        Action::Continue
    }

    fn on_upstream_close(&mut self, p: PeerType) {
        info(&format!("tcp upstream close peer={}", peer(p)));
    }

    fn on_log(&mut self) {
        info(&format!("tcp log ctx={}", self.context_id));
    }
}

struct Stream {
    context_id: u32,
    metrics: std::rc::Rc<std::cell::RefCell<Metrics>>,
    ops: Vec<String>,
    /// What a gRPC stream delivered, in order (op `grpc-stream`).
    stream_events: Vec<String>,
}

/// A header map as `k=v` pairs joined by `;` (values such as `date` hold commas).
fn pairs_text(pairs: &[(String, Vec<u8>)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
        .collect::<Vec<_>>()
        .join(";")
}

impl Stream {
    fn note(&self, name: &str, value: &str) {
        self.set_http_request_header(&format!("x-probe-{name}"), Some(value));
    }

    fn op(&mut self, op: &str) -> Action {
        match op {
            "cas" => {
                let n = cas_increment("counter");
                self.note("counter", &n.to_string());
            }
            "cas-stale" => {
                let (value, cas) = hostcalls::get_shared_data("counter").unwrap_or((None, None));
                let value = value.unwrap_or_default();
                let first = hostcalls::set_shared_data("counter", Some(&value), cas);
                let stale = hostcalls::set_shared_data("counter", Some(&value), cas);
                let absent = hostcalls::set_shared_data(
                    &format!("absent-{}", self.context_id),
                    Some(b"x"),
                    Some(12345),
                );
                self.note("first", &status_name(first));
                self.note("stale", &status_name(stale));
                self.note("absent", &status_name(absent));
                let missing = hostcalls::get_shared_data("never-set");
                self.note("missing", &format!("{missing:?}"));
            }
            "enqueue" => {
                let msg = self
                    .get_http_request_header("x-probe-msg")
                    .unwrap_or_default();
                let r = match hostcalls::resolve_shared_queue("", "probe_queue") {
                    Ok(Some(id)) => {
                        status_name(hostcalls::enqueue_shared_queue(id, Some(msg.as_bytes())))
                    }
                    other => format!("{other:?}"),
                };
                self.note("enqueue", &r);
                let unknown = hostcalls::resolve_shared_queue("", "no_such_queue");
                self.note("resolve-unknown", &format!("{unknown:?}"));
            }
            "props" => {
                let text = |path: Vec<&str>| match hostcalls::get_property(path) {
                    Ok(Some(v)) => String::from_utf8_lossy(&v).into_owned(),
                    Ok(None) => "None".into(),
                    Err(s) => format!("{s:?}"),
                };
                let int = |path: Vec<&str>| match hostcalls::get_property(path) {
                    Ok(Some(v)) if v.len() == 8 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&v);
                        i64::from_le_bytes(b).to_string()
                    }
                    other => format!("{other:?}"),
                };
                self.note("source-address", &text(vec!["source", "address"]));
                self.note("source-port", &int(vec!["source", "port"]));
                self.note("request-path", &text(vec!["request", "path"]));
                self.note("request-url-path", &text(vec!["request", "url_path"]));
                self.note("request-host", &text(vec!["request", "host"]));
                self.note("request-method", &text(vec!["request", "method"]));
                self.note("plugin-name", &text(vec!["plugin_name"]));
                self.note("plugin-root-id", &text(vec!["plugin_root_id"]));
                self.note("plugin-vm-id", &text(vec!["plugin_vm_id"]));
                self.note("missing", &text(vec!["no", "such", "property"]));
                self.note("custom", &text(vec!["xds", "cluster_name"]));
                let set = hostcalls::set_property(vec!["probe", "mark"], Some(b"marked"));
                self.note("set", &status_name(set));
                self.note("mark", &text(vec!["probe", "mark"]));
            }
            "metrics" => {
                let m = self.metrics.borrow();
                let inc = hostcalls::increment_metric(m.requests, 1);
                let zero = hostcalls::increment_metric(m.requests, 0);
                let neg = hostcalls::increment_metric(m.requests, -1);
                let up = hostcalls::increment_metric(m.inflight, 5);
                let down = hostcalls::increment_metric(m.inflight, -2);
                let rec = hostcalls::record_metric(m.sizes, 42);
                let get = hostcalls::get_metric(m.requests);
                let get_h = hostcalls::get_metric(m.sizes);
                let unknown = hostcalls::get_metric(m.requests + 4 * 100);
                let summary = format!(
                    "inc={} zero={} neg={} up={} down={} rec={} get={get:?} hist={get_h:?} unknown={unknown:?}",
                    status_name(inc),
                    status_name(zero),
                    status_name(neg),
                    status_name(up),
                    status_name(down),
                    status_name(rec),
                );
                drop(m);
                self.note("metrics", &summary);
            }
            "http" => {
                let r = self.dispatch_http_call(
                    "auth",
                    vec![
                        (":method", "POST"),
                        (":path", "/check"),
                        (":authority", "auth"),
                    ],
                    Some(b"ping"),
                    vec![],
                    Duration::from_secs(1),
                );
                match r {
                    Ok(token) => {
                        info(&format!("dispatched {token}"));
                        return Action::Pause;
                    }
                    Err(s) => self.note("dispatch", &format!("{s:?}")),
                }
            }
            "http-bad" => {
                let unknown = self.dispatch_http_call(
                    "nowhere",
                    vec![(":method", "GET"), (":path", "/"), (":authority", "x")],
                    None,
                    vec![],
                    Duration::from_secs(1),
                );
                let no_path = self.dispatch_http_call(
                    "auth",
                    vec![(":method", "GET"), (":authority", "x")],
                    None,
                    vec![],
                    Duration::from_secs(1),
                );
                self.note("unknown-cluster", &format!("{unknown:?}"));
                self.note("no-path", &format!("{no_path:?}"));
            }
            "grpc" | "grpc-deny" => {
                // A unary gRPC call to cluster `grpc` (method Deny: the server refuses it);
                // the answer is noted in `on_grpc_call_response`.
                let method = if op == "grpc" { "Say" } else { "Deny" };
                let r = self.dispatch_grpc_call(
                    "grpc",
                    "probe.Echo",
                    method,
                    vec![("x-probe-meta", b"m1")],
                    Some(b"\x0a\x02hi"),
                    Duration::from_secs(1),
                );
                match r {
                    Ok(token) => {
                        info(&format!("grpc dispatched {token}"));
                        self.note("grpc-token", &token.to_string());
                        return Action::Pause;
                    }
                    Err(s) => self.note("grpc-dispatch", &format!("{s:?}")),
                }
            }
            "grpc-stream" => {
                // A stream to cluster `grpc`: two messages, then the probe closes its side;
                // every callback the stream gets is noted in `stream_events`, written out as
                // `x-probe-grpc-stream` when it closes.
                let r = self.open_grpc_stream(
                    "grpc",
                    "probe.Echo",
                    "Chat",
                    vec![("x-probe-meta", b"m1")],
                );
                match r {
                    Ok(token) => {
                        self.stream_events.push(format!("open {token}"));
                        let first = hostcalls::send_grpc_stream_message(token, Some(b"a"), false);
                        let second = hostcalls::send_grpc_stream_message(token, Some(b"bb"), false);
                        let close = hostcalls::close_grpc_stream(token);
                        self.stream_events.push(format!(
                            "sent {} {} close {}",
                            status_name(first),
                            status_name(second),
                            status_name(close)
                        ));
                        return Action::Pause;
                    }
                    Err(s) => self.note("grpc-stream", &format!("open {s:?}")),
                }
            }
            "grpc-stream-cancel" => {
                // Cancel right after a send: nothing is delivered after it, and the token is
                // then unknown. Also the statuses for tokens of other kinds (raw: the SDK
                // panics on BadArgument). Noted at once.
                let r = self.open_grpc_stream("grpc", "probe.Echo", "Chat", vec![]);
                let note = match r {
                    Ok(token) => {
                        let sent = hostcalls::send_grpc_stream_message(token, Some(b"a"), false);
                        let cancel = hostcalls::cancel_grpc_stream(token);
                        // SAFETY: the message pointer is to a live 1-byte slice.
                        let (send_after, close_after, cancel_after, http_close, call_send) = unsafe {
                            (
                                proxy_grpc_send(token, b"b".as_ptr(), 1, 0),
                                proxy_grpc_close(token),
                                proxy_grpc_cancel(token),
                                proxy_grpc_close(4),
                                proxy_grpc_send(5, b"b".as_ptr(), 1, 0),
                            )
                        };
                        format!(
                            "open {token} | sent {} cancel {} | after {send_after} \
                             {close_after} {cancel_after} | http-token close {http_close} | \
                             call-token send {call_send}",
                            status_name(sent),
                            status_name(cancel)
                        )
                    }
                    Err(s) => format!("open {s:?}"),
                };
                self.note("grpc-stream", &note);
            }
            "grpc-stream-missing" => {
                let r = self.open_grpc_stream("nowhere", "probe.Echo", "Chat", vec![]);
                self.note("grpc-stream", &format!("open {r:?}"));
            }
            "grpc-missing" => {
                let (status, token) = raw_grpc_call("nowhere");
                self.note("grpc-missing", &format!("{status}:{token}"));
            }
            "seen" => {
                // The request header map as the filter sees it, in order, repeats apart:
                // `rollgate try` must hand filters what Envoy hands them.
                let pairs =
                    hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
                let seen: Vec<String> = pairs
                    .iter()
                    .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
                    .collect();
                info(&format!("seen {}", seen.join(" ")));
                self.note("seen", &seen.join(" "));
            }
            "warn" => {
                let _ = hostcalls::log(LogLevel::Warn, "probe: a warning");
                let _ = hostcalls::log(LogLevel::Debug, "probe: a debug line");
            }
            "local" => {
                self.send_http_response(429, vec![("x-probe-local", "yes")], Some(b"slow down"));
                return Action::Pause;
            }
            "panic" => panic!("probe panic: boom"),
            "time" => {
                let ns = hostcalls::get_current_time()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                self.note("time", &ns.to_string());
            }
            "log-level" => {
                self.note("log-level", &format!("{:?}", hostcalls::get_log_level()));
            }
            "foreign" => {
                let clear = hostcalls::call_foreign_function("clear_route_cache", None);
                let echo = hostcalls::call_foreign_function("probe_echo", Some(b"hi"));
                let nope = hostcalls::call_foreign_function("no_such_function", None);
                self.note("clear", &format!("{clear:?}"));
                self.note(
                    "echo",
                    &match echo {
                        Ok(Some(v)) => String::from_utf8_lossy(&v).into_owned(),
                        other => format!("{other:?}"),
                    },
                );
                self.note("nope", &format!("{nope:?}"));
            }
            "raw" => {
                // SAFETY: plain host calls without pointers.
                let (effective, upstream) =
                    unsafe { (proxy_set_effective_context(9999), proxy_continue_stream(3)) };
                self.note("bad-effective", &effective.to_string());
                self.note("continue-upstream", &upstream.to_string());
                let (trailers, _) = raw_map(MapType::HttpRequestTrailers as u32);
                self.note("trailers-now", &trailers.to_string());
                self.note("body-now", &raw_buffer_status(0).to_string());
                self.note("config-now", &raw_buffer_status(7).to_string());
            }
            "body" => {}
            _ => {}
        }
        Action::Continue
    }
}

impl Context for Stream {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, trailers: usize) {
        // After a reset there is no response map at all: Envoy answers BadArgument (and the
        // SDK would panic), so only read it when the host said there are headers.
        let status = if headers > 0 {
            self.get_http_call_response_header(":status")
                .unwrap_or_else(|| "none".into())
        } else {
            "none".into()
        };
        let text = self
            .get_http_call_response_body(0, body)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let (code, message) = hostcalls::get_grpc_status().unwrap_or((99, None));
        let (tstatus, tempty) = raw_map(MapType::HttpCallResponseTrailers as u32);
        self.note("auth-status", &status);
        self.note("auth-body", &text);
        self.note(
            "call-counts",
            &format!("{token}:{headers}:{body}:{trailers}"),
        );
        self.note(
            "call-status",
            &format!("{code}:{}", message.unwrap_or_default()),
        );
        self.note("call-trailers", &format!("{tstatus}:{tempty}"));
        self.resume_http_request();
    }

    fn on_grpc_call_response(&mut self, token: u32, status_code: u32, response_size: usize) {
        let body = self
            .get_grpc_call_response_body(0, response_size)
            .map(|b| b.iter().map(|c| format!("{c:02x}")).collect::<String>())
            .unwrap_or_else(|| "none".into());
        let (code, message) = hostcalls::get_grpc_status().unwrap_or((99, None));
        self.note(
            "grpc-answer",
            &format!("{token}:{status_code}:{response_size}:{body}"),
        );
        self.note(
            "grpc-status",
            &format!("{code}:{}", message.unwrap_or_else(|| "none".into())),
        );
        self.resume_http_request();
    }

    fn on_grpc_stream_initial_metadata(&mut self, token: u32, n: u32) {
        let pairs = self.get_grpc_stream_initial_metadata();
        self.stream_events
            .push(format!("initial {token} {n} [{}]", pairs_text(&pairs)));
    }

    fn on_grpc_stream_message(&mut self, token: u32, size: usize) {
        let body = self
            .get_grpc_stream_message(0, size)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|| "none".into());
        self.stream_events
            .push(format!("message {token} {size} {body}"));
    }

    fn on_grpc_stream_trailing_metadata(&mut self, token: u32, n: u32) {
        let pairs = self.get_grpc_stream_trailing_metadata();
        self.stream_events
            .push(format!("trailing {token} {n} [{}]", pairs_text(&pairs)));
    }

    fn on_grpc_stream_close(&mut self, token: u32, status_code: u32) {
        let (code, message) = hostcalls::get_grpc_status().unwrap_or((99, None));
        self.stream_events.push(format!(
            "close {token} {status_code} status {code}:{}",
            message.unwrap_or_else(|| "none".into())
        ));
        self.note("grpc-stream", &self.stream_events.join(" | "));
        self.resume_http_request();
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.ops = self
            .get_http_request_header("x-probe-op")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        for op in self.ops.clone() {
            if self.op(&op) == Action::Pause {
                return Action::Pause;
            }
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !self.ops.iter().any(|o| o == "body") {
            return Action::Continue;
        }
        let (headers, _) = raw_map(MapType::HttpRequestHeaders as u32);
        info(&format!(
            "body {size} eos={end_of_stream} headers-status={headers}"
        ));
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        let upper = body.to_ascii_uppercase();
        self.set_http_request_body(0, size, &upper);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let (request_headers, _) = raw_map(MapType::HttpRequestHeaders as u32);
        self.set_http_response_header("x-probe-outside", Some(&request_headers.to_string()));
        if self.ops.iter().any(|o| o == "local") {
            self.set_http_response_header("x-probe-local-seen", Some("yes"));
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let status = self.get_http_response_header(":status").unwrap_or_default();
        let code = match hostcalls::get_property(vec!["response", "code"]) {
            Ok(Some(v)) if v.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&v);
                i64::from_le_bytes(b).to_string()
            }
            other => format!("{other:?}"),
        };
        let op = self
            .get_http_request_header("x-probe-op")
            .unwrap_or_default();
        info(&format!(
            "on_log ctx={} status={status} code={code} op={op}",
            self.context_id
        ));
    }
}
