//! One request through the filter: reads what the pipeline needs from Envoy and carries out
//! its plan (the logic is [`rollgate_policy::pipeline`], tested natively).

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

use super::host::{request_header_bytes, response_status, EnvoyStore};
use super::Runtime;
use rollgate_policy::pipeline::{Exchange, HeaderOp, Plan};
use rollgate_policy::request::Request;

pub(crate) struct Filter {
    rt: Option<Rc<Runtime>>,
    exchange: Exchange,
}

impl Filter {
    pub(crate) fn new(context_id: u32, rt: Option<Rc<Runtime>>) -> Filter {
        Filter {
            rt,
            exchange: Exchange::new(context_id),
        }
    }
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        // Test builds only (`make wasm-test-trap`): a request that kills the VM serving it.
        #[cfg(feature = "test-trap")]
        if let Ok(Some(_)) =
            hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-rollgate-test-trap")
        {
            core::arch::wasm32::unreachable();
        }
        let Some(rt) = self.rt.clone() else {
            return Action::Continue;
        };
        let raw = request_header_bytes();
        let pairs = Request::parse_header_map(&raw);
        match self.exchange.on_request(&rt.worker, pairs, &EnvoyStore) {
            Plan::Reply {
                status,
                headers,
                body,
            } => {
                let headers = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                self.send_http_response(u32::from(status), headers, Some(body.as_bytes()));
                Action::Pause
            }
            // Envoy re-matches the route after any request-header change by a filter of ABI
            // 0.2.1 (which the SDK declares), so the cluster header takes effect without a
            // `clear_route_cache` call (Envoy 1.33 only stopped clearing for ABIs above
            // 0.2.1; the Envoy routing tests hold us to it).
            Plan::Forward(changes) => {
                for (name, value) in changes {
                    match value {
                        Some(value) => self.set_http_request_header(name, Some(value)),
                        None => {
                            let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
                        }
                    }
                }
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(rt) = self.rt.clone() else {
            return Action::Continue;
        };
        for op in self
            .exchange
            .on_response(&rt.worker, response_status, &EnvoyStore)
        {
            match op {
                HeaderOp::Set(name, value) => self.set_http_response_header(name, Some(&value)),
                HeaderOp::Add(name, value) => self.add_http_response_header(name, &value),
            }
        }
        Action::Continue
    }
}
