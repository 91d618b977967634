//! One HTTP stream through the filter, in Envoy's order: `on_context_create`, request
//! headers, body chunks, trailers, the upstream, response headers, body, trailers, then
//! `on_log`, `on_done`, `on_delete`. Pauses are honoured: a paused phase waits for
//! `proxy_continue_stream` from an event delivered meanwhile (a callout response, a queue),
//! and a local response ends the request side and runs the response side on the local reply.

use super::maps::Headers;
use super::plugin::PluginInner;
use super::shared::lock;
use super::vm::{Callback, StreamState, ROOT_CONTEXT_ID};
use super::{
    Exchange, FailurePolicy, HostError, HttpRequest, LocalResponse, Phase, Response, TrapError,
};

/// How a phase ended.
enum Next {
    /// Go on with the next phase.
    Go,
    /// The filter sent a local response.
    Local,
    /// The filter closed the stream.
    Reset,
    /// The filter paused and nothing resumed it.
    Stalled(Phase),
}

/// Action values of the ABI.
const CONTINUE: i32 = 0;

impl PluginInner {
    fn stream_mut(&mut self, w: usize, ctx: u32) -> &mut StreamState {
        self.vms[w].store.data_mut().streams.entry(ctx).or_default()
    }

    /// Calls a stream callback, delivers what it caused, and says how the phase ended.
    fn phase(
        &mut self,
        w: usize,
        ctx: u32,
        phase: Phase,
        call: impl FnOnce(&mut super::vm::Vm) -> Option<Result<i32, TrapError>>,
    ) -> Result<Next, HostError> {
        let action = call(&mut self.vms[w]).transpose()?.unwrap_or(CONTINUE);
        self.pump()?;
        let request_side = matches!(
            phase,
            Phase::RequestHeaders | Phase::RequestBody | Phase::RequestTrailers
        );
        let s = self.stream_mut(w, ctx);
        if s.local_reply.is_some() {
            return Ok(Next::Local);
        }
        if s.closed {
            return Ok(Next::Reset);
        }
        let resumed = if request_side {
            std::mem::take(&mut s.continue_request)
        } else {
            std::mem::take(&mut s.continue_response)
        };
        Ok(if action == CONTINUE || resumed {
            Next::Go
        } else {
            Next::Stalled(phase)
        })
    }

    /// Runs one request (see [`super::Plugin::run`]).
    pub(crate) fn run(&mut self, req: HttpRequest) -> Result<Exchange, HostError> {
        let workers = self.vms.len();
        let w = match req.worker {
            Some(w) if w < workers => w,
            Some(worker) => return Err(HostError::NoSuchWorker { worker, workers }),
            None => {
                let w = self.next_worker % workers;
                self.next_worker = self.next_worker.wrapping_add(1);
                w
            }
        };
        let log_start = lock(&self.shared.logs).len();
        if self.vms[w].failed.is_some() {
            match self.failure_policy() {
                FailurePolicy::FailClosed => return Ok(self.fail_closed(w, &req, log_start)),
                FailurePolicy::FailOpen => return Ok(self.bypass(w, &req, log_start)),
                FailurePolicy::FailReload => {
                    if self.reload(w).is_err() {
                        return Ok(self.fail_closed(w, &req, log_start));
                    }
                }
            }
        }
        // The calls this request causes are reported with it (`Exchange::http_calls`).
        lock(&self.shared.calls).clear();
        let ctx = self.vms[w].next_context_id();
        let result = self.drive(w, ctx, req, log_start);
        if result.is_err() {
            // The VM trapped: Envoy stops calling it, so the stream is simply dropped.
            self.vms[w].store.data_mut().streams.remove(&ctx);
        }
        result
    }

    fn envoy_request_headers(&mut self, w: usize, req: &HttpRequest) -> Headers {
        let mut h = req.headers.clone();
        if !req.envoy_headers {
            return h;
        }
        // The HTTP/1 codec drops whitespace around header values (RFC 9110 OWS).
        h = h
            .pairs()
            .iter()
            .map(|(k, v)| (k.clone(), v.trim_ascii().to_vec()))
            .collect();
        // Hop-by-hop headers never reach a filter: Envoy's HTTP/1 codec and connection manager
        // remove `connection`, `keep-alive`, `proxy-connection`, `transfer-encoding`,
        // `upgrade` (without an upgrade route) and every header the `connection` header names,
        // and keep only the `trailers` token of `te` (observed against Envoy 1.40:
        // crates/rollgate/tests/try_like_envoy.rs).
        let nominated: Vec<Vec<u8>> = h
            .get_all("connection")
            .flat_map(|v| v.split(|b| *b == b','))
            .map(|t| t.trim_ascii().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect();
        h = h
            .pairs()
            .iter()
            .filter_map(|(k, v)| match k.as_slice() {
                b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding"
                | b"upgrade" => None,
                _ if nominated.contains(k) => None,
                b"te" => v
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
                    .then(|| (k.clone(), b"trailers".to_vec())),
                _ => Some((k.clone(), v.clone())),
            })
            .collect();
        // HTTP/1.1: Envoy's codec turns Host into :authority.
        if !h.contains(":authority") {
            if let Some(host) = h.get("host").map(<[u8]>::to_vec) {
                h.remove("host");
                h = Headers::from_pairs(
                    std::iter::once((b":authority".to_vec(), host))
                        .chain(h.pairs().iter().cloned()),
                );
            }
        }
        if !h.contains(":scheme") {
            let at = h
                .pairs()
                .iter()
                .take_while(|(k, _)| k.starts_with(b":"))
                .count();
            let mut pairs = h.pairs().to_vec();
            pairs.insert(at, (b":scheme".to_vec(), b"http".to_vec()));
            h = Headers::from_pairs(pairs);
        }
        if !h.contains("x-forwarded-proto") {
            h.add("x-forwarded-proto", "http");
        }
        if !h.contains("x-request-id") {
            let st = self.vms[w].store.data_mut();
            let (a, b) = (st.next_random(), st.next_random());
            let id = format!(
                "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                a >> 32,
                (a >> 16) & 0xffff,
                a & 0xfff,
                0x8000 | (b >> 48) & 0x3fff,
                b & 0xffff_ffff_ffff
            );
            h.add("x-request-id", id);
        }
        h
    }

    /// The downstream address Envoy reports as `source.address`: with `use_remote_address`
    /// false (the connection manager's default) and no trusted hops, the last
    /// `X-Forwarded-For` entry (port 0) when it is an IP address, else the connection's peer.
    fn downstream_address(&self, req: &HttpRequest, headers: &Headers) -> Option<String> {
        if !req.envoy_headers || self.shared.config.use_remote_address {
            return req.source.clone();
        }
        let last = headers
            .get("x-forwarded-for")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|ip| ip.trim().parse::<std::net::IpAddr>().ok());
        match last {
            Some(ip) => Some(std::net::SocketAddr::new(ip, 0).to_string()),
            None => req.source.clone(),
        }
    }

    fn drive(
        &mut self,
        w: usize,
        ctx: u32,
        req: HttpRequest,
        log_start: usize,
    ) -> Result<Exchange, HostError> {
        let request_headers = self.envoy_request_headers(w, &req);
        let source = self.downstream_address(&req, &request_headers);
        let start_ns = self.process.realtime_ns();
        self.vms[w].store.data_mut().streams.insert(
            ctx,
            StreamState {
                source,
                request_headers,
                start_ns,
                given: req.properties.clone(),
                ..StreamState::default()
            },
        );
        if let Some(f) = self.vms[w].exports.on_context_create.clone() {
            self.vms[w].invoke(
                &f,
                ctx,
                Callback::Stream,
                "proxy_on_context_create",
                (ctx as i32, ROOT_CONTEXT_ID as i32),
            )?;
        }
        self.pump()?;

        let mut ex = Exchange {
            worker: w,
            context_id: ctx,
            request_headers: Headers::new(),
            request_body: Vec::new(),
            forwarded: false,
            response: None,
            local_response: None,
            route_cache_clears: 0,
            stalled: None,
            reset: false,
            logs: Vec::new(),
            http_calls: Vec::new(),
        };
        // Envoy's connection manager answers a path with a fragment 400 (no body) before any
        // filter's request callbacks; the filters' `on_log` still runs (observed against Envoy
        // 1.40: crates/rollgate/tests/try_like_envoy.rs).
        let fragment = req.envoy_headers
            && self
                .stream_mut(w, ctx)
                .request_headers
                .get(":path")
                .is_some_and(|p| p.contains(&b'#'));
        if fragment {
            self.stream_mut(w, ctx).response_headers = Some(Headers::from_pairs([
                (":status", "400"),
                ("content-length", "0"),
            ]));
        } else {
            let next = self.decode(w, ctx, &req)?;
            let next = match next {
                Next::Go => {
                    ex.forwarded = true;
                    let s = self.stream_mut(w, ctx);
                    ex.request_headers = s.request_headers.clone();
                    let body = s.request_body_out.clone();
                    let response = match (&req.response, &self.shared.config.upstream) {
                        (Some(r), _) => r.clone(),
                        (None, Some(upstream)) => upstream(&ex.request_headers, &body),
                        (None, None) => Response::new(200).header("content-length", "0"),
                    };
                    self.encode(w, ctx, response)?
                }
                other => other,
            };
            match next {
                Next::Go => {}
                Next::Local => self.local_reply(w, ctx, !ex.forwarded, &mut ex)?,
                Next::Reset => ex.reset = true,
                Next::Stalled(phase) => ex.stalled = Some(phase),
            }
        }
        let s = self.stream_mut(w, ctx);
        if !ex.forwarded {
            ex.request_headers = s.request_headers.clone();
        }
        ex.request_body = s.request_body_out.clone();
        ex.route_cache_clears = s.route_cache_clears;
        if !ex.reset && ex.stalled.is_none() {
            if let Some(h) = &s.response_headers {
                let trailers = s.response_trailers.clone().unwrap_or_default();
                ex.response = Some(Response::from_map(h, s.response_body_out.clone(), trailers));
            }
        }
        self.complete(w, ctx)?;
        ex.logs = lock(&self.shared.logs)[log_start..].to_vec();
        ex.http_calls = std::mem::take(&mut *lock(&self.shared.calls));
        Ok(ex)
    }

    /// The request side; `Go` means the request goes upstream.
    fn decode(&mut self, w: usize, ctx: u32, req: &HttpRequest) -> Result<Next, HostError> {
        let c = ctx as i32;
        let no_body = req.body.is_empty() && req.trailers.is_none();
        let n = {
            let s = self.stream_mut(w, ctx);
            s.open_request_headers = true;
            s.request_headers.len() as i32
        };
        let next = self.phase(w, ctx, Phase::RequestHeaders, |vm| {
            let f = vm.exports.on_request_headers.clone()?;
            Some(vm.invoke(
                &f,
                ctx,
                Callback::Stream,
                "proxy_on_request_headers",
                (c, n, no_body as i32),
            ))
        })?;
        self.stream_mut(w, ctx).open_request_headers = false;
        if !matches!(next, Next::Go) {
            return Ok(next);
        }
        let chunks = req.body.len();
        for (i, chunk) in req.body.iter().enumerate() {
            let eos = i + 1 == chunks && req.trailers.is_none();
            let size = {
                let s = self.stream_mut(w, ctx);
                s.request_body.extend_from_slice(chunk);
                s.open_request_body = true;
                s.request_body.len() as i32
            };
            let next = self.phase(w, ctx, Phase::RequestBody, |vm| {
                let f = vm.exports.on_request_body.clone()?;
                Some(vm.invoke(
                    &f,
                    ctx,
                    Callback::Stream,
                    "proxy_on_request_body",
                    (c, size, eos as i32),
                ))
            })?;
            let s = self.stream_mut(w, ctx);
            s.open_request_body = false;
            match next {
                Next::Go => {
                    let data = std::mem::take(&mut s.request_body);
                    s.request_body_out.extend(data);
                }
                // Paused before the end: Envoy buffers and calls again with everything so far.
                Next::Stalled(_) if !eos => {}
                other => return Ok(other),
            }
        }
        if let Some(trailers) = &req.trailers {
            let n = {
                let s = self.stream_mut(w, ctx);
                s.request_trailers = Some(trailers.clone());
                s.open_request_trailers = true;
                trailers.len() as i32
            };
            let next = self.phase(w, ctx, Phase::RequestTrailers, |vm| {
                let f = vm.exports.on_request_trailers.clone()?;
                Some(vm.invoke(
                    &f,
                    ctx,
                    Callback::Stream,
                    "proxy_on_request_trailers",
                    (c, n),
                ))
            })?;
            self.stream_mut(w, ctx).open_request_trailers = false;
            return Ok(next);
        }
        Ok(Next::Go)
    }

    /// The response side, on the upstream's response.
    fn encode(&mut self, w: usize, ctx: u32, response: Response) -> Result<Next, HostError> {
        let c = ctx as i32;
        let headers = response.header_map();
        let n = headers.len() as i32;
        let no_body = response.body.is_empty() && response.trailers.is_empty();
        {
            let s = self.stream_mut(w, ctx);
            s.response_headers = Some(headers);
            s.open_response_headers = true;
            s.code_details = Some("via_upstream".into());
        }
        let next = self.phase(w, ctx, Phase::ResponseHeaders, |vm| {
            let f = vm.exports.on_response_headers.clone()?;
            Some(vm.invoke(
                &f,
                ctx,
                Callback::Stream,
                "proxy_on_response_headers",
                (c, n, no_body as i32),
            ))
        })?;
        self.stream_mut(w, ctx).open_response_headers = false;
        if !matches!(next, Next::Go) {
            return Ok(next);
        }
        if !response.body.is_empty() {
            let eos = response.trailers.is_empty();
            let size = {
                let s = self.stream_mut(w, ctx);
                s.response_body = response.body.clone();
                s.open_response_body = true;
                s.response_body.len() as i32
            };
            let next = self.phase(w, ctx, Phase::ResponseBody, |vm| {
                let f = vm.exports.on_response_body.clone()?;
                Some(vm.invoke(
                    &f,
                    ctx,
                    Callback::Stream,
                    "proxy_on_response_body",
                    (c, size, eos as i32),
                ))
            })?;
            let s = self.stream_mut(w, ctx);
            s.open_response_body = false;
            if !matches!(next, Next::Go) {
                return Ok(next);
            }
            let data = std::mem::take(&mut s.response_body);
            s.response_body_out.extend(data);
        }
        if !response.trailers.is_empty() {
            let n = {
                let s = self.stream_mut(w, ctx);
                s.response_trailers = Some(response.trailers.clone());
                s.open_response_trailers = true;
                response.trailers.len() as i32
            };
            let next = self.phase(w, ctx, Phase::ResponseTrailers, |vm| {
                let f = vm.exports.on_response_trailers.clone()?;
                Some(vm.invoke(
                    &f,
                    ctx,
                    Callback::Stream,
                    "proxy_on_response_trailers",
                    (c, n),
                ))
            })?;
            self.stream_mut(w, ctx).open_response_trailers = false;
            return Ok(next);
        }
        Ok(Next::Go)
    }

    /// Sends the filter's local response. Sent while decoding, it goes through the filter's
    /// own response callbacks, as Envoy's local replies do; sent while encoding, it replaces
    /// the response as is (simplification: Envoy would re-encode it).
    fn local_reply(
        &mut self,
        w: usize,
        ctx: u32,
        decoding: bool,
        ex: &mut Exchange,
    ) -> Result<(), HostError> {
        let s = self.stream_mut(w, ctx);
        let Some(local) = s.local_reply.take() else {
            return Ok(());
        };
        s.open_request_headers = false;
        s.open_request_body = false;
        s.open_request_trailers = false;
        s.code_details = Some(local.details.clone());
        let grpc = is_grpc(&s.request_headers);
        let (headers, body) = local_reply_message(&local, grpc);
        let n = headers.len() as i32;
        s.response_headers = Some(headers);
        s.response_trailers = None;
        s.response_body_out = body;
        ex.local_response = Some(local.clone());
        if !decoding {
            return Ok(());
        }
        let c = ctx as i32;
        s.open_response_headers = true;
        let eos = s.response_body_out.is_empty();
        self.phase(w, ctx, Phase::ResponseHeaders, |vm| {
            let f = vm.exports.on_response_headers.clone()?;
            Some(vm.invoke(
                &f,
                ctx,
                Callback::Stream,
                "proxy_on_response_headers",
                (c, n, eos as i32),
            ))
        })?;
        let s = self.stream_mut(w, ctx);
        s.open_response_headers = false;
        s.local_reply = None;
        if !eos {
            s.response_body = std::mem::take(&mut s.response_body_out);
            s.open_response_body = true;
            let size = s.response_body.len() as i32;
            self.phase(w, ctx, Phase::ResponseBody, |vm| {
                let f = vm.exports.on_response_body.clone()?;
                Some(vm.invoke(
                    &f,
                    ctx,
                    Callback::Stream,
                    "proxy_on_response_body",
                    (c, size, 1),
                ))
            })?;
            let s = self.stream_mut(w, ctx);
            s.open_response_body = false;
            s.local_reply = None;
            s.response_body_out = std::mem::take(&mut s.response_body);
        }
        Ok(())
    }

    /// The end of a stream: `on_log` (maps readable, read-only), `on_done`, `on_delete`.
    fn complete(&mut self, w: usize, ctx: u32) -> Result<(), HostError> {
        let c = ctx as i32;
        {
            let s = self.stream_mut(w, ctx);
            s.open_request_headers = false;
            s.open_request_body = false;
            s.open_request_trailers = false;
            s.open_response_headers = false;
            s.open_response_body = false;
            s.open_response_trailers = false;
            s.access_log = true;
        }
        let vm = &mut self.vms[w];
        if let Some(f) = vm.exports.on_log.clone() {
            vm.invoke(&f, ctx, Callback::Stream, "proxy_on_log", c)?;
        }
        self.stream_mut(w, ctx).access_log = false;
        let vm = &mut self.vms[w];
        if let Some(f) = vm.exports.on_done.clone() {
            vm.invoke(&f, ctx, Callback::Stream, "proxy_on_done", c)?;
        }
        if let Some(f) = vm.exports.on_delete.clone() {
            vm.invoke(&f, ctx, Callback::Stream, "proxy_on_delete", c)?;
        }
        vm.store.data_mut().streams.remove(&ctx);
        self.pump()
    }

    /// What Envoy answers on the stream during which worker `w`'s VM trapped: the 503
    /// `wasm_fail_stream` local reply of `Context::failStream` (Envoy
    /// `source/extensions/common/wasm/context.cc`) under every failure policy. Measured on
    /// Envoy 1.40 (crates/rollgate/tests/differential.rs `a_trap_then_the_next_requests_like_envoy`):
    /// even FAIL_OPEN answers the trapping request 503 and only lets the next ones through.
    pub(crate) fn trapped_answer(&mut self, w: usize, req: &HttpRequest) -> Exchange {
        let w = w.min(self.vms.len().saturating_sub(1));
        let log_start = lock(&self.shared.logs).len();
        self.fail_closed(w, req, log_start)
    }

    /// Envoy's FAIL_CLOSED answer on a failed VM: a 503 local reply, details
    /// `wasm_fail_stream`, gRPC UNAVAILABLE; the plugin is not called.
    fn fail_closed(&mut self, w: usize, req: &HttpRequest, log_start: usize) -> Exchange {
        let local = LocalResponse {
            status: 503,
            body: Vec::new(),
            headers: Headers::new(),
            details: "wasm_fail_stream".into(),
            grpc_status: Some(14),
        };
        let request_headers = self.envoy_request_headers(w, req);
        let (headers, body) = local_reply_message(&local, is_grpc(&request_headers));
        Exchange {
            worker: w,
            context_id: 0,
            request_headers,
            request_body: Vec::new(),
            forwarded: false,
            response: Some(Response::from_map(&headers, body, Headers::new())),
            local_response: Some(local),
            route_cache_clears: 0,
            stalled: None,
            reset: false,
            logs: lock(&self.shared.logs)[log_start..].to_vec(),
            http_calls: Vec::new(),
        }
    }

    /// FAIL_OPEN: the request goes upstream as if the filter were not there.
    fn bypass(&mut self, w: usize, req: &HttpRequest, log_start: usize) -> Exchange {
        let headers = self.envoy_request_headers(w, req);
        let body: Vec<u8> = req.body.concat();
        let response = match (&req.response, &self.shared.config.upstream) {
            (Some(r), _) => r.clone(),
            (None, Some(upstream)) => upstream(&headers, &body),
            (None, None) => Response::new(200).header("content-length", "0"),
        };
        Exchange {
            worker: w,
            context_id: 0,
            request_headers: headers,
            request_body: body,
            forwarded: true,
            response: Some(response),
            local_response: None,
            route_cache_clears: 0,
            stalled: None,
            reset: false,
            logs: lock(&self.shared.logs)[log_start..].to_vec(),
            http_calls: Vec::new(),
        }
    }
}

/// Whether Envoy treats the request as gRPC (`Grpc::Common::isGrpcRequestHeaders`): its
/// content-type is `application/grpc`, or that followed by `+` or `;`.
pub(crate) fn is_grpc(request_headers: &Headers) -> bool {
    request_headers.get("content-type").is_some_and(|v| {
        v.strip_prefix(b"application/grpc")
            .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
    })
}

/// gRPC's Percent-Byte-Unencoded is %x20-%x24 / %x26-%x7E (PROTOCOL-HTTP2.md, what Envoy's
/// `PercentEncoding::encode` follows): controls, `%` and non-ASCII bytes are encoded.
const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// Envoy's `Grpc::Utility::httpToGrpcStatus`.
pub fn http_to_grpc_status(status: u32) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// The headers and body of a local reply as Envoy's `Http::Utility::prepareLocalReply`
/// (source/common/http/utility.cc) builds them: `:status`, then the plugin's headers; for a
/// gRPC request a trailers-only answer instead — `:status` 200, `content-type:
/// application/grpc`, `grpc-status` (the plugin's, else mapped from the HTTP status, unless
/// the plugin set one), `grpc-message` the percent-encoded body, no content-length, no body.
pub(crate) fn local_reply_message(local: &LocalResponse, grpc: bool) -> (Headers, Vec<u8>) {
    let mut headers = Headers::from_pairs([(":status", local.status.to_string())]);
    for (k, v) in local.headers.pairs() {
        headers.add(k, v);
    }
    if grpc {
        headers.replace(":status", "200");
        headers.replace("content-type", "application/grpc");
        if headers.get("grpc-status").is_none_or(<[u8]>::is_empty) {
            let status = local
                .grpc_status
                .unwrap_or_else(|| http_to_grpc_status(local.status));
            headers.replace("grpc-status", status.to_string());
        }
        if !local.body.is_empty() {
            let message = percent_encoding::percent_encode(&local.body, GRPC_MESSAGE).to_string();
            headers.replace("grpc-message", message);
        }
        headers.remove("content-length");
        return (headers, Vec::new());
    }
    if local.body.is_empty() {
        headers.remove("content-length");
        headers.remove("content-type");
    } else {
        if !headers.contains("content-length") {
            headers.add("content-length", local.body.len().to_string());
        }
        if !headers.contains("content-type") {
            headers.add("content-type", "text/plain");
        }
    }
    (headers, local.body.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(status: u32, body: &[u8], grpc_status: Option<u32>) -> LocalResponse {
        LocalResponse {
            status,
            body: body.to_vec(),
            headers: Headers::from_pairs([("content-length", "9"), ("x-a", "1")]),
            details: String::new(),
            grpc_status,
        }
    }

    #[test]
    fn a_grpc_local_reply_is_trailers_only_with_the_message_percent_encoded() {
        // PROTOCOL-HTTP2.md: %x20-%x24 and %x26-%x7E stay; '%', controls and UTF-8 bytes go.
        let (h, body) = local_reply_message(&local(403, "né %~\n".as_bytes(), None), true);
        assert!(body.is_empty());
        let pairs: Vec<(String, String)> = h
            .pairs()
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = [
            (":status", "200"),
            ("x-a", "1"),
            ("content-type", "application/grpc"),
            ("grpc-status", "7"),
            ("grpc-message", "n%C3%A9 %25~%0A"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(pairs, want);
        // The plugin's gRPC status wins over the mapped one.
        let (h, _) = local_reply_message(&local(403, b"", Some(3)), true);
        assert_eq!(h.get_str("grpc-status").as_deref(), Some("3"));
        assert!(!h.contains("grpc-message"));
        let grpc = |ct: &str| is_grpc(&Headers::from_pairs([("content-type", ct)]));
        assert!(grpc("application/grpc") && grpc("application/grpc+proto"));
        assert!(grpc("application/grpc;x=1") && !grpc("application/grpc-web"));
    }
}
