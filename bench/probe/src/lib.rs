//! The bench's probe: the pass-through filter plus the host calls its configuration names,
//! on every request. Envoy with the probe, next to Envoy with the pass-through filter, gives
//! what those calls cost inside Envoy's V8 — the calls rollgate makes, one kind at a time.
//!
//! Configuration: comma-separated operations, each optionally repeated (`shared*10`):
//!
//! | op | per request | rollgate's use |
//! |---|---|---|
//! | `headers` | read the request header map in one call (`proxy_get_header_map_pairs`) | every request |
//! | `time` | read the clock | request start, response |
//! | `shared` | read and compare-and-swap a 26-byte shared-data value (10,000 keys in turn) | rate limit |
//! | `shared-get` | only the read | |
//! | `set-headers` | write two request headers | cluster and variant headers |
//! | `clear-route` | call the `clear_route_cache` foreign function | after writing them |
//! | `counter` | increment a counter | requests per variant, responses per class |
//! | `histogram` | record a histogram value (response phase) | latency per variant |
//! | `status` | read `:status` (response phase) | response classes, breaker |
//! | `property` | read `source.address` | keyless sticky keys |
//!
//! Natively the crate is empty.

#[cfg(target_arch = "wasm32")]
mod filter {
    use std::rc::Rc;

    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::<Root>::default() });
    }}

    /// How many times to do each operation per request.
    #[derive(Default)]
    struct Ops {
        headers: u32,
        time: u32,
        shared: u32,
        shared_get: u32,
        set_headers: u32,
        clear_route: u32,
        counter: u32,
        histogram: u32,
        status: u32,
        property: u32,
        counter_id: u32,
        histogram_id: u32,
    }

    impl Ops {
        fn parse(config: &str) -> Result<Ops, String> {
            let mut ops = Ops::default();
            for item in config.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (name, n) = match item.split_once('*') {
                    Some((name, n)) => {
                        (name, n.parse().map_err(|_| format!("bad count in {item}"))?)
                    }
                    None => (item, 1),
                };
                let slot = match name {
                    "headers" => &mut ops.headers,
                    "time" => &mut ops.time,
                    "shared" => &mut ops.shared,
                    "shared-get" => &mut ops.shared_get,
                    "set-headers" => &mut ops.set_headers,
                    "clear-route" => &mut ops.clear_route,
                    "counter" => &mut ops.counter,
                    "histogram" => &mut ops.histogram,
                    "status" => &mut ops.status,
                    "property" => &mut ops.property,
                    other => return Err(format!("unknown op {other}")),
                };
                *slot += n;
            }
            Ok(ops)
        }
    }

    #[derive(Default)]
    struct Root {
        ops: Rc<Ops>,
    }

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, _: usize) -> bool {
            let config = self.get_plugin_configuration().unwrap_or_default();
            match Ops::parse(&String::from_utf8_lossy(&config)) {
                Ok(mut ops) => {
                    ops.counter_id =
                        hostcalls::define_metric(MetricType::Counter, "probe.counter").unwrap_or(0);
                    ops.histogram_id =
                        hostcalls::define_metric(MetricType::Histogram, "probe.histogram")
                            .unwrap_or(0);
                    self.ops = Rc::new(ops);
                    true
                }
                Err(e) => {
                    let _ = hostcalls::log(LogLevel::Error, &format!("probe: {e}"));
                    false
                }
            }
        }

        fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Probe {
                ops: self.ops.clone(),
                id: context_id,
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Probe {
        ops: Rc<Ops>,
        id: u32,
    }

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_pairs(
            map_type: u32,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
    }

    /// The request header map in one call, as rollgate reads it.
    fn header_bytes() -> Vec<u8> {
        let mut ptr: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the host allocated `size` bytes at `ptr` with our allocator and hands them
        // over, as the SDK's own getters assume.
        unsafe {
            if proxy_get_header_map_pairs(0, &mut ptr, &mut size) != 0 || ptr.is_null() || size == 0
            {
                return Vec::new();
            }
            Vec::from_raw_parts(ptr, size, size)
        }
    }

    impl Context for Probe {}

    impl HttpContext for Probe {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            let ops = &self.ops;
            for _ in 0..ops.headers {
                std::hint::black_box(header_bytes());
            }
            for _ in 0..ops.time {
                std::hint::black_box(hostcalls::get_current_time().ok());
            }
            for _ in 0..ops.property {
                std::hint::black_box(hostcalls::get_property(vec!["source", "address"]).ok());
            }
            let key = format!("probe/{}", self.id % 10_000);
            for _ in 0..ops.shared_get {
                std::hint::black_box(hostcalls::get_shared_data(&key).ok());
            }
            for _ in 0..ops.shared {
                let cas = hostcalls::get_shared_data(&key).ok().and_then(|(_, c)| c);
                let value = [7u8; 26];
                let _ = hostcalls::set_shared_data(&key, Some(&value), cas);
            }
            for _ in 0..ops.set_headers {
                self.set_http_request_header("x-rollgate-cluster", Some("k8s-flask"));
                self.set_http_request_header("x-rollgate-variant", Some("stable"));
            }
            for _ in 0..ops.clear_route {
                let _ = hostcalls::call_foreign_function("clear_route_cache", None);
            }
            for _ in 0..ops.counter {
                let _ = hostcalls::increment_metric(ops.counter_id, 1);
            }
            Action::Continue
        }

        fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
            let ops = &self.ops;
            for _ in 0..ops.status {
                std::hint::black_box(
                    hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status").ok(),
                );
            }
            for _ in 0..ops.histogram {
                let _ = hostcalls::record_metric(ops.histogram_id, 3);
            }
            Action::Continue
        }
    }
}
