//! The bench's case (b): a proxy-wasm filter that lets every request through untouched.
//!
//! It has what every Rust-SDK filter has — a root context, one HTTP context per request and the
//! SDK's dispatch of each callback — and nothing else: no configuration, no header reads, no
//! host calls of its own. Envoy with it, next to Envoy without it, prices Wasm itself (the V8
//! VM, the context bookkeeping, the calls across the boundary); rollgate's own work is what
//! (d) adds on top. Built only for `wasm32`; natively the crate is empty.

#[cfg(target_arch = "wasm32")]
mod filter {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{ContextType, LogLevel};

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
    }}

    struct Root;

    impl Context for Root {}

    impl RootContext for Root {
        fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Pass))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Pass;

    impl Context for Pass {}

    /// Every callback keeps the SDK's default: `Action::Continue`.
    impl HttpContext for Pass {}
}
