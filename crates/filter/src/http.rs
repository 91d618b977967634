//! One request through the filter: reads what the pipeline needs from Envoy and carries out
//! its plan (the logic is [`rollgate_policy::pipeline`], tested natively).

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

use super::host::{request_header_bytes, response_status, EnvoyStore};
use super::Runtime;
use rollgate_policy::pipeline::{Exchange, HeaderOp, Plan, RlsFailure};
use rollgate_policy::request::Request;
use rollgate_policy::rls;

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

impl Filter {
    /// Runs the request pipeline and carries out its plan; `resume` when the stream is paused
    /// on a rate-limit service's answer.
    fn run(&mut self, resume: bool) -> Action {
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
                if resume {
                    self.resume_http_request();
                }
                Action::Continue
            }
            Plan::Ask {
                cluster,
                message,
                timeout_ms,
            } => {
                let call = self.dispatch_grpc_call(
                    cluster,
                    rls::SERVICE,
                    rls::METHOD,
                    Vec::new(),
                    Some(&message),
                    Duration::from_millis(timeout_ms),
                );
                if call.is_ok() {
                    return Action::Pause;
                }
                // Unknown cluster or refused at once: the limit's failure mode decides now.
                // The retried pipeline cannot ask again for the same limit (its ask is
                // answered), so this recursion is at most one level per global limit.
                self.exchange.on_rls_answer(Err(RlsFailure::Unavailable));
                self.run(resume)
            }
        }
    }
}

impl Context for Filter {
    fn on_grpc_call_response(&mut self, _token: u32, status_code: u32, response_size: usize) {
        // gRPC DEADLINE_EXCEEDED is how Envoy reports the call's timeout.
        let answer = match status_code {
            // One byte past the decoder's bound is enough to refuse an oversized answer.
            0 => Ok(self
                .get_grpc_call_response_body(0, response_size.min(rls::MAX_ANSWER_BYTES + 1))
                .unwrap_or_default()),
            4 => Err(RlsFailure::Timeout),
            _ => Err(RlsFailure::Unavailable),
        };
        self.exchange
            .on_rls_answer(answer.as_deref().map_err(|e| *e));
        // Paused again (another ask) or answered: nothing more here; forwarded: `run` resumed.
        let _ = self.run(true);
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        // Test builds only (`make wasm-test-trap`): a request that kills the VM serving it.
        #[cfg(feature = "test-trap")]
        if let Ok(Some(_)) =
            hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-rollgate-test-trap")
        {
            core::arch::wasm32::unreachable();
        }
        self.run(false)
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
