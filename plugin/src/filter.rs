//! The proxy-wasm glue: a thin layer between Envoy and [`crate::policy::Policy`].

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::policy::Policy;
use crate::request::Request;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    // A panic aborts the VM; at least say why in Envoy's log.
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

#[derive(Default)]
struct Root {
    policy: Option<Rc<Policy>>,
    /// Cleared once Envoy says it lacks `clear_route_cache`, so we stop asking.
    clear_route_cache: Rc<std::cell::Cell<bool>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        self.clear_route_cache.set(true);
        true
    }

    fn on_configure(&mut self, _: usize) -> bool {
        let Some(config) = self.get_plugin_configuration() else {
            log(
                LogLevel::Error,
                "invalid policy: no plugin configuration given",
            );
            return false;
        };
        match Policy::from_json(&config) {
            Ok(p) => {
                log(
                    LogLevel::Info,
                    &format!(
                        "policy '{}' loaded: {} variants, {} routes",
                        p.spec.name,
                        p.variants.len(),
                        p.spec.routes.len()
                    ),
                );
                self.policy = Some(Rc::new(p));
                true
            }
            Err(e) => {
                // Envoy rejects the configuration; a policy we already run keeps serving.
                log(LogLevel::Error, &format!("invalid policy: {e}"));
                false
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            context_id,
            policy: self.policy.clone(),
            clear_route_cache: self.clear_route_cache.clone(),
            variant: None,
            set_cookie: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    context_id: u32,
    policy: Option<Rc<Policy>>,
    clear_route_cache: Rc<std::cell::Cell<bool>>,
    /// Index of the chosen variant, for the response phase.
    variant: Option<usize>,
    set_cookie: Option<String>,
}

impl Context for Filter {}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
}

/// The request headers in the proxy's serialized form, read in one host call. The SDK's
/// getters would allocate a `String` and a `Vec` per header; we borrow from this buffer.
fn request_header_bytes() -> Vec<u8> {
    let mut ptr: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host allocated `size` bytes at `ptr` through our allocator
    // (`proxy_on_memory_allocate`, a `Vec<u8>` of that capacity) and hands us ownership,
    // exactly as the SDK's own getters assume.
    unsafe {
        if proxy_get_header_map_pairs(0, &mut ptr, &mut size) != 0 || ptr.is_null() || size == 0 {
            return Vec::new();
        }
        Vec::from_raw_parts(ptr, size, size)
    }
}

fn client_addr() -> Option<IpAddr> {
    let raw = hostcalls::get_property(vec!["source", "address"]).ok()??;
    let text = std::str::from_utf8(&raw).ok()?;
    text.parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| text.parse::<IpAddr>())
        .ok()
}

impl Filter {
    /// A random-enough id for `assign_cookie`: not a secret, only a stable bucket key.
    fn new_id(&self) -> String {
        let now = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        let mut x = now ^ (u64::from(self.context_id) << 32) ^ 0x9e37_79b9_7f4a_7c15;
        // splitmix64 finaliser.
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        format!("{:016x}", x ^ (x >> 31))
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(policy) = self.policy.clone() else {
            return Action::Continue;
        };
        let raw = request_header_bytes();
        let pairs = Request::parse_header_map(&raw);
        let (ch, vh) = (
            policy.cluster_header.as_bytes(),
            policy.variant_header.as_bytes(),
        );
        let spoofed = pairs.iter().any(|(k, _)| *k == ch || *k == vh);
        let loader = client_addr;
        let req = Request::lazy(pairs, Some(&loader));
        let decision = policy.decide(&req, &mut || self.new_id());
        let mut mutated = false;
        if spoofed {
            // Never let a client pick its own variant.
            let _ = hostcalls::set_map_value(
                proxy_wasm::types::MapType::HttpRequestHeaders,
                &policy.cluster_header,
                None,
            );
            let _ = hostcalls::set_map_value(
                proxy_wasm::types::MapType::HttpRequestHeaders,
                &policy.variant_header,
                None,
            );
            mutated = true;
        }
        if let Some(v) = decision.variant {
            self.set_http_request_header(&policy.cluster_header, Some(&v.cluster));
            self.set_http_request_header(&policy.variant_header, Some(&v.name));
            self.variant = policy.variants.iter().position(|x| std::ptr::eq(x, v));
            mutated = true;
        }
        if let Some((name, id)) = decision.set_cookie {
            self.set_cookie = Some(format!(
                "{name}={id}; Path=/; Max-Age=31536000; SameSite=Lax"
            ));
        }
        if mutated && self.clear_route_cache.get() {
            // Envoy clears the route cache itself for ABI 0.2.1 filters today; asking
            // explicitly keeps the routing header effective on hosts that stop doing so.
            if let Err(proxy_wasm::types::Status::NotFound) =
                hostcalls::call_foreign_function("clear_route_cache", None)
            {
                self.clear_route_cache.set(false);
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if let Some(cookie) = self.set_cookie.take() {
            self.add_http_response_header("set-cookie", &cookie);
        }
        if let (Some(policy), Some(i)) = (&self.policy, self.variant) {
            if policy.spec.expose_variant {
                if let Some(v) = policy.variants.get(i) {
                    self.set_http_response_header(&policy.variant_header, Some(&v.name));
                }
            }
        }
        Action::Continue
    }
}
