//! One request through the filter: reads what the pipeline needs from Envoy and carries out
//! its plan (the logic is [`rollgate_policy::pipeline`], tested natively).

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use super::host::{grpc_status_message, now_ns, request_header_bytes, response_status, EnvoyStore};
use super::shadow::Shadow;
use super::Runtime;
use rollgate_policy::pipeline::{Exchange, HeaderOp, Plan, RlsFailure};
use rollgate_policy::request::Request;
use rollgate_policy::rls;
use rollgate_policy::shadow::{copy_headers, BodyHash, Copy};

pub(crate) struct Filter {
    rt: Option<Rc<Runtime>>,
    exchange: Exchange,
    shadow: Rc<Shadow>,
    /// The copy of this request being read, while its body passes.
    copy: Option<Copy>,
    max_body: usize,
    /// The book's id of this request's copy, for the primary's status.
    copy_id: Option<u64>,
    /// The request headers ended the stream (no body): kept while a global limit's ask
    /// holds the request, for the copy begun after it.
    headers_end: bool,
    /// The primary's response body, hashed as it passes when the mirror compares bodies:
    /// (copy id, the largest body compared, the hash so far).
    body_hash: Option<(u64, usize, BodyHash)>,
}

impl Filter {
    pub(crate) fn new(context_id: u32, rt: Option<Rc<Runtime>>, shadow: Rc<Shadow>) -> Filter {
        Filter {
            rt,
            exchange: Exchange::new(context_id),
            shadow,
            copy: None,
            max_body: 0,
            copy_id: None,
            headers_end: false,
            body_hash: None,
        }
    }

    /// The primary's body ended (`Some`: its hash, `None`: over the limit), or the stream did
    /// without it (`None`): the book can join the copy.
    fn finish_body_hash(&mut self, ended: bool) {
        if let Some((id, limit, hash)) = self.body_hash.take() {
            let hash = if ended { hash.finish(limit) } else { None };
            if let Ok(mut book) = self.shadow.book.try_borrow_mut() {
                book.primary_body(id, hash, &EnvoyStore);
            }
        }
    }

    /// Opens this request's copy when its route's mirror chose it.
    fn begin_copy(&mut self, rt: &Runtime, raw: &[u8], end_of_stream: bool) {
        let policy = &rt.worker.policy;
        let Some(m) = self.exchange.mirror().and_then(|r| policy.mirror(r)) else {
            return;
        };
        let (Some(ids), Some(variant)) =
            (rt.shadow_ids.get(m.variant), policy.variants.get(m.variant))
        else {
            return;
        };
        let Ok(mut book) = self.shadow.book.try_borrow_mut() else {
            return;
        };
        let Some(id) = book.start(m, ids, now_ns(), &EnvoyStore) else {
            return;
        };
        let pairs = Request::parse_header_map(raw);
        let Some(headers) = copy_headers(&pairs, policy, m) else {
            book.skip(id, &EnvoyStore);
            return;
        };
        drop(book);
        self.copy_id = Some(id);
        self.max_body = m.max_body;
        self.copy = Some(Copy {
            id,
            cluster: variant.cluster.clone(),
            headers,
            body: Vec::new(),
            timeout_ns: m.timeout_ns,
        });
        if end_of_stream {
            self.finish_copy();
        }
    }

    /// The request is complete: its copy goes to the root to be sent.
    fn finish_copy(&mut self) {
        let Some(copy) = self.copy.take() else {
            return;
        };
        let first = match self.shadow.book.try_borrow_mut() {
            Ok(mut book) => book.ready(copy),
            Err(_) => false,
        };
        if first && !self.shadow.wake() {
            // No queue: sent from here; an answer after this request ends is lost (and the
            // copy's slot freed at its deadline).
            self.shadow.send_ready();
        }
    }

    fn skip_copy(&mut self) {
        if let Some(copy) = self.copy.take() {
            self.copy_id = None;
            if let Ok(mut book) = self.shadow.book.try_borrow_mut() {
                book.skip(copy.id, &EnvoyStore);
            }
        }
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        // The response ended without its body's end (reset): not compared.
        self.finish_body_hash(false);
        // The request ended (reset) before its body did: its copy is never sent.
        if let Some(copy) = self.copy.take() {
            if let Ok(mut book) = self.shadow.book.try_borrow_mut() {
                book.abandon(copy.id);
            }
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
                self.begin_copy(&rt, &raw, self.headers_end);
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
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        // Only without a wake-up queue are copies sent from a request's context.
        self.shadow.answer(token, body_size);
    }

    fn on_grpc_call_response(&mut self, _token: u32, status_code: u32, response_size: usize) {
        let answer = match status_code {
            // One byte past the decoder's bound is enough to refuse an oversized answer.
            0 => Ok(self
                .get_grpc_call_response_body(0, response_size.min(rls::MAX_ANSWER_BYTES + 1))
                .unwrap_or_default()),
            // Envoy 1.40 reports the call's own timeout as 14 UNAVAILABLE with the router's
            // "upstream request timeout{response_timeout}" (observed in
            // crates/rollgate/tests/try_grpc_like_envoy.rs), not DEADLINE_EXCEEDED; a
            // service's own DEADLINE_EXCEEDED is a timeout too.
            4 => Err(RlsFailure::Timeout),
            14 if grpc_status_message().starts_with(b"upstream request timeout") => {
                Err(RlsFailure::Timeout)
            }
            _ => Err(RlsFailure::Unavailable),
        };
        self.exchange
            .on_rls_answer(answer.as_deref().map_err(|e| *e));
        // Paused again (another ask) or answered: nothing more here; forwarded: `run` resumed.
        let _ = self.run(true);
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        // Test builds only (`make wasm-test-trap`): a request that kills the VM serving it.
        #[cfg(feature = "test-trap")]
        if let Ok(Some(_)) =
            hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-rollgate-test-trap")
        {
            core::arch::wasm32::unreachable();
        }
        self.headers_end = end_of_stream;
        self.run(false)
    }

    // The body is copied chunk by chunk as it passes, and the stream is never paused for it:
    // pausing (`StopIterationAndBuffer`) would hold the primary until the client sent the last
    // byte, delaying every mirrored upload by its own transfer time. Each chunk costs one copy
    // into the VM, and only while a copy is being read.
    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(copy) = self.copy.as_mut() else {
            return Action::Continue;
        };
        if copy.body.len().saturating_add(body_size) > self.max_body {
            self.skip_copy();
            return Action::Continue;
        }
        if body_size > 0 {
            match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size) {
                Ok(Some(chunk)) => copy.body.extend_from_slice(&chunk),
                Ok(None) => {}
                Err(_) => {
                    self.skip_copy();
                    return Action::Continue;
                }
            }
        }
        if end_of_stream {
            self.finish_copy();
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _: usize) -> Action {
        // Trailers end the request; they are not copied.
        self.finish_copy();
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
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
        if let Some(id) = self.copy_id {
            if let Ok(mut book) = self.shadow.book.try_borrow_mut() {
                let limit = book.compare_body(id);
                if limit > 0 {
                    self.body_hash = Some((id, limit, BodyHash::default()));
                }
                book.primary(id, response_status(), &EnvoyStore);
            }
            if end_of_stream {
                self.finish_body_hash(true);
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        // Only a mirrored request whose bodies are compared reads its response body; each
        // chunk passes on at once (Continue), so `body_size` is this chunk's.
        let Some((_, limit, seen)) = self.body_hash.as_ref().map(|(i, l, h)| (*i, *l, h.len()))
        else {
            return Action::Continue;
        };
        if seen <= limit && body_size > 0 {
            // Past the limit the body is not compared: one byte over is enough to know.
            let chunk = self.get_http_response_body(0, body_size.min(limit + 1 - seen));
            if let (Some(chunk), Some((_, _, hash))) = (chunk, self.body_hash.as_mut()) {
                hash.add(&chunk);
            }
        }
        if end_of_stream {
            self.finish_body_hash(true);
        }
        Action::Continue
    }
}
