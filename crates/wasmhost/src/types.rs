//! The values the test API exchanges: requests, responses, what happened to a request, the
//! ABI's status codes and log lines.

use std::fmt;
use std::time::Duration;

use super::maps::Headers;

/// The ABI's status codes (spec "Types"; Envoy's `WasmResult`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The thing asked for does not exist.
    NotFound = 1,
    /// An argument is wrong, or the call is out of its phase.
    BadArgument = 2,
    /// A value could not be serialized.
    SerializationFailure = 3,
    /// Input could not be parsed.
    ParseFailure = 4,
    /// A pointer or length is outside guest memory.
    InvalidMemoryAccess = 6,
    /// A queue is empty.
    Empty = 7,
    /// Shared-data compare-and-swap failed.
    CasMismatch = 8,
    /// The host failed.
    InternalFailure = 10,
    /// A callout's connection broke (`proxy_get_status` after a failed HTTP call).
    BrokenConnection = 11,
    /// Not implemented by the host.
    Unimplemented = 12,
}

/// Log levels, numbered as in the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Trace.
    Trace = 0,
    /// Debug.
    Debug = 1,
    /// Info.
    Info = 2,
    /// Warn.
    Warn = 3,
    /// Error.
    Error = 4,
    /// Critical (the SDK logs panics at this level).
    Critical = 5,
}

impl LogLevel {
    pub(crate) fn from_abi(v: u32) -> Option<LogLevel> {
        Some(match v {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }
}

/// One captured log line. Every level is captured, whatever `proxy_get_log_level` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Level.
    pub level: LogLevel,
    /// Text (lossily decoded).
    pub message: String,
    /// The worker VM that logged it.
    pub worker: usize,
    /// The context it was logged on (0 during `_initialize`).
    pub context_id: u32,
    /// Logged by the host about the guest (e.g. a failed call), not by the guest.
    pub from_host: bool,
}

impl fmt::Display for LogEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:?}] {}", self.level, self.message)
    }
}

/// A `proxy_http_call` the plugin made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    /// The worker VM that made it.
    pub worker: usize,
    /// The token the plugin got (per VM).
    pub token: u32,
    /// The upstream cluster name.
    pub cluster: String,
    /// Request headers (`:method`, `:path`, `:authority` included; `content-length` added
    /// for a body, as Envoy does).
    pub headers: Headers,
    /// Request body.
    pub body: Vec<u8>,
    /// Request trailers.
    pub trailers: Headers,
    /// The timeout, if any (0 means none, as in Envoy).
    pub timeout: Option<Duration>,
}

/// A `proxy_http_call` the plugin made while a request ran ([`Exchange::http_calls`]): sent,
/// or refused at once as Envoy refuses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCallRecord {
    /// The call (token 0 when refused).
    pub call: HttpCall,
    /// The status `proxy_http_call` returned instead of a token, if it refused the call:
    /// BadArgument for a cluster Envoy does not have, or a call without `:path`, `:method` or
    /// `:authority` (Envoy's `Context::httpCall`, source/extensions/common/wasm/context.cc).
    pub refused: Option<Status>,
    /// The `:status` of the answer delivered to the plugin while the request ran, if any
    /// (none for a reset, or an answer still pending).
    pub answer_status: Option<u32>,
}

/// A unary `proxy_grpc_call` the plugin made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCall {
    /// The worker VM that made it.
    pub worker: usize,
    /// The token the plugin got (per VM: 5, 9, 13, … as in Envoy 1.40).
    pub token: u32,
    /// The cluster name (the `grpc_service` argument).
    pub cluster: String,
    /// The gRPC service, e.g. `pkg.Service`.
    pub service: String,
    /// The method, e.g. `Check`.
    pub method: String,
    /// The initial metadata the plugin passed.
    pub metadata: Headers,
    /// The request message (serialized, without gRPC framing).
    pub message: Vec<u8>,
    /// The timeout, if any (0 means none, as in Envoy).
    pub timeout: Option<Duration>,
}

/// How a test answers a [`GrpcCall`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcReply {
    /// The server answered this message with `grpc-status: 0`: the plugin's
    /// `proxy_on_grpc_receive` gets its size, the GrpcReceiveBuffer holds it, and
    /// `proxy_get_status` says 0 with no message.
    Message(Vec<u8>),
    /// The call ended without a message: the server's non-zero `grpc-status` and
    /// `grpc-message`, or the client's own failure. `proxy_on_grpc_close` gets `status`, and
    /// `proxy_get_status` says `status` and `message`.
    Close {
        /// The gRPC status code.
        status: u32,
        /// The status message as the filter reads it (empty for none). Envoy 1.40 appends
        /// the stream's response code details to a server's `grpc-message`:
        /// `denied{via_upstream}`.
        message: String,
    },
}

impl GrpcReply {
    /// What Envoy 1.40's gRPC client reports when the cluster's endpoint refuses the
    /// connection: 14 UNAVAILABLE and the router's reset words (observed:
    /// crates/rollgate/tests/try_grpc_like_envoy.rs).
    pub fn refused() -> GrpcReply {
        GrpcReply::Close {
            status: 14,
            message: "upstream connect error or disconnect/reset before headers. reset reason: \
                      remote connection failure{upstream_reset_before_response_started\
                      {remote_connection_failure|delayed_connect_error:_Connection_refused}}"
                .into(),
        }
    }

    /// What Envoy 1.40's gRPC client reports when the call's timeout passes without an
    /// answer: 14 UNAVAILABLE, `upstream request timeout{response_timeout}` (observed:
    /// crates/rollgate/tests/try_grpc_like_envoy.rs).
    pub fn timed_out() -> GrpcReply {
        GrpcReply::Close {
            status: 14,
            message: "upstream request timeout{response_timeout}".into(),
        }
    }
}

/// How a test answers a [`HttpCall`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalloutReply {
    /// A response, delivered right after the current callback returns.
    Respond(Response),
    /// A reset connection: `on_http_call_response` with nothing, and `proxy_get_status`
    /// = BrokenConnection "reset".
    Reset,
    /// No answer yet: answer later with [`Plugin::respond_http_call`], or let the timeout fire
    /// on [`Host::advance`] (a 504 "upstream request timeout", as Envoy's async client).
    Pending,
}

/// A response: from the upstream, from a callout, or as the client got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code (`:status`).
    pub status: u16,
    /// Headers, without `:status`.
    pub headers: Headers,
    /// Body.
    pub body: Vec<u8>,
    /// Trailers.
    pub trailers: Headers,
}

impl Response {
    /// A response with `status`, no headers and no body.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Headers::new(),
            body: Vec::new(),
            trailers: Headers::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Response {
        self.headers.add(name, value);
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// The headers with `:status` first, as the proxy's map holds them.
    pub(crate) fn header_map(&self) -> Headers {
        let mut h = Headers::from_pairs([(":status", self.status.to_string())]);
        for (k, v) in self.headers.pairs() {
            h.add(k, v);
        }
        h
    }

    /// Splits a proxy header map back into status and headers.
    pub(crate) fn from_map(map: &Headers, body: Vec<u8>, trailers: Headers) -> Response {
        let status = map
            .get(":status")
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(0);
        Response {
            status,
            headers: map
                .pairs()
                .iter()
                .filter(|(k, _)| k.as_slice() != b":status")
                .cloned()
                .collect(),
            body,
            trailers,
        }
    }
}

/// A `proxy_send_local_response`, as the plugin sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// Status code.
    pub status: u32,
    /// Body.
    pub body: Vec<u8>,
    /// The additional headers the plugin gave (names lower-cased, as Envoy stores them).
    pub headers: Headers,
    /// Response code details (whitespace replaced by `_`, as Envoy does).
    pub details: String,
    /// The gRPC status, if the plugin passed a known one (the SDK passes -1 for HTTP).
    pub grpc_status: Option<u32>,
}

/// The phases of an HTTP stream in which the filter can pause it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `on_request_headers`.
    RequestHeaders,
    /// `on_request_body`.
    RequestBody,
    /// `on_request_trailers`.
    RequestTrailers,
    /// `on_response_headers`.
    ResponseHeaders,
    /// `on_response_body`.
    ResponseBody,
    /// `on_response_trailers`.
    ResponseTrailers,
}

/// The default client address of a request (`source.address`).
pub const DEFAULT_SOURCE: &str = "127.0.0.1:50000";

/// One request as a client sends it to the proxy.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// Request headers, pseudo-headers first (names lower-case, as Envoy's codec makes them).
    pub headers: Headers,
    /// Body, in the chunks the proxy receives it.
    pub body: Vec<Vec<u8>>,
    /// Trailers, if any.
    pub trailers: Option<Headers>,
    /// The connection's peer `ip:port`, if it has one. The plugin's `source.address` is this,
    /// or the last `X-Forwarded-For` entry as Envoy derives it (see
    /// [`PluginConfig::use_remote_address`]).
    pub source: Option<String>,
    /// The worker to run on; round-robin when `None`.
    pub worker: Option<usize>,
    /// The upstream's answer for this request (else the plugin's upstream, else a 200).
    pub response: Option<Response>,
    /// Present the request as Envoy's HTTP/1 codec and connection manager would before the
    /// filters run: whitespace trimmed around header values, `Host` as `:authority`,
    /// `:scheme`, `x-forwarded-proto` and `x-request-id` added when absent, and the
    /// downstream address taken from `X-Forwarded-For`.
    pub envoy_headers: bool,
    /// Properties other filters set on this request (dynamic metadata, filter state): path
    /// segments joined by NUL, raw value. Read before the plugin's configured ones.
    pub properties: Vec<(Vec<u8>, Vec<u8>)>,
}

impl HttpRequest {
    /// `method` `path` to `authority` (`:authority`, `:path`, `:method`), from
    /// [`DEFAULT_SOURCE`].
    pub fn new(method: &str, authority: &str, path: &str) -> HttpRequest {
        HttpRequest {
            headers: Headers::from_pairs([
                (":authority", authority),
                (":path", path),
                (":method", method),
            ]),
            body: Vec::new(),
            trailers: None,
            source: Some(DEFAULT_SOURCE.into()),
            worker: None,
            response: None,
            envoy_headers: true,
            properties: Vec::new(),
        }
    }

    /// `GET path` to `authority`.
    pub fn get(authority: &str, path: &str) -> HttpRequest {
        HttpRequest::new("GET", authority, path)
    }

    /// Adds a header (name lower-cased; the value is raw bytes, UTF-8 or not).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> HttpRequest {
        self.headers.add(name, value);
        self
    }

    /// Adds a body chunk.
    pub fn body(mut self, chunk: impl Into<Vec<u8>>) -> HttpRequest {
        self.body.push(chunk.into());
        self
    }

    /// Adds a trailer.
    pub fn trailer(mut self, name: &str, value: impl AsRef<[u8]>) -> HttpRequest {
        self.trailers
            .get_or_insert_with(Headers::new)
            .add(name, value);
        self
    }

    /// Sets the client address (`ip:port`).
    pub fn source(mut self, addr: &str) -> HttpRequest {
        self.source = Some(addr.into());
        self
    }

    /// No client address (`source.address` is NotFound).
    pub fn no_source(mut self) -> HttpRequest {
        self.source = None;
        self
    }

    /// Runs on this worker.
    pub fn worker(mut self, worker: usize) -> HttpRequest {
        self.worker = Some(worker);
        self
    }

    /// The upstream's response for this request.
    pub fn response(mut self, response: Response) -> HttpRequest {
        self.response = Some(response);
        self
    }

    /// A property at `path` for this request only, as a filter before this one would have set
    /// it (e.g. `["metadata", "tenant"]`); it hides a configured property at the same path.
    pub fn property(mut self, path: &[&str], value: impl Into<Vec<u8>>) -> HttpRequest {
        let joined: Vec<&[u8]> = path.iter().map(|p| p.as_bytes()).collect();
        self.properties.push((joined.join(&0u8), value.into()));
        self
    }

    /// Headers and address exactly as given: no Envoy codec or connection-manager treatment.
    pub fn raw(mut self) -> HttpRequest {
        self.envoy_headers = false;
        self
    }
}

/// What happened to one request.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The worker VM that ran it.
    pub worker: usize,
    /// Its stream context id.
    pub context_id: u32,
    /// The request headers as forwarded upstream (or as they stood when the stream ended
    /// without reaching the upstream).
    pub request_headers: Headers,
    /// The request body as forwarded.
    pub request_body: Vec<u8>,
    /// Whether the request reached the upstream.
    pub forwarded: bool,
    /// The response as the client got it (after the filter's response callbacks); `None`
    /// when the stream was reset or stalled.
    pub response: Option<Response>,
    /// The plugin's local response, or Envoy's fail-closed 503.
    pub local_response: Option<LocalResponse>,
    /// How many times the route cache was cleared (request-header mutations and the
    /// `clear_route_cache` foreign function).
    pub route_cache_clears: u32,
    /// The phase the filter paused in and never resumed; the host then ended the stream as
    /// a client disconnect (`on_log`, `on_done`, `on_delete`).
    pub stalled: Option<Phase>,
    /// The plugin closed the stream (`proxy_close_stream`).
    pub reset: bool,
    /// Log lines produced while this request ran (any context of the plugin).
    pub logs: Vec<LogEntry>,
    /// HTTP calls any context of the plugin made while this request ran (a copy of the
    /// request sent from the root context, say), in order, at most [`MAX_CALL_RECORDS`].
    pub http_calls: Vec<HttpCallRecord>,
}

/// Most HTTP call records a plugin keeps between two requests (calls made from ticks while
/// no request runs would otherwise pile up).
pub const MAX_CALL_RECORDS: usize = 1024;

impl Exchange {
    /// A forwarded request header, lossily decoded.
    pub fn request_header(&self, name: &str) -> Option<String> {
        self.request_headers.get_str(name)
    }

    /// A response header as the client got it, lossily decoded.
    pub fn response_header(&self, name: &str) -> Option<String> {
        self.response.as_ref()?.headers.get_str(name)
    }
}
