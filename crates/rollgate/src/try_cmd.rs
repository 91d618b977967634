//! `rollgate try`: runs requests through the compiled filter in the in-process proxy-wasm host
//! ([`crate::wasmhost`]) and prints, as JSON, what the filter did with each.
//!
//! One request comes from flags (`--authority`, `--path`, `--method`, `-H 'name: value'`,
//! `--source ip:port`), or many from `--requests FILE` (or `-`): one JSON object per line,
//! `{"authority":…,"path":…,"method":…,"headers":…,"body":…,"response":…,"source":"ip:port"}`
//! (headers as `{name: value or [values]}` or, to keep the client's order and interleaved
//! repeats, `[[name, value], …]`; `body` a string or a list of chunks; `response` the
//! upstream's answer `{"status", "headers", "body"}`), each answered by one JSON line, in
//! order, with the plugin's log lines at `--log-level` and above. A bad line gets `{"line": N, "error": …}`; the
//! others still run. Blank lines are skipped.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use serde_json::Value;

use crate::wasmhost::{
    Direction, Exchange, FailurePolicy, Headers, Host, HostError, HttpCallRecord, HttpRequest,
    LogEntry, LogLevel, Plugin, PluginConfig, Response, Wasm,
};

/// Most bytes of `--requests` read: far above any hand-written or generated test set, far
/// below what would exhaust a laptop's memory.
pub const MAX_REQUESTS_BYTES: usize = 64 << 20;

/// What `rollgate try --help` adds after the options.
pub const AFTER_HELP: &str = "\
Runs requests through the compiled filter (default: the workspace's `make wasm` build) in
rollgate's in-process proxy-wasm host and prints one JSON line per request. One request comes
from the flags, or many from --requests. Past --timeout or --max-memory a VM fails, as a trap
fails it in Envoy: that request gets Envoy's answer, 503 wasm_fail_stream, its line says why
in \"trap\", and the next requests get what Envoy's --failure-policy gives them (fail_closed:
503 wasm_fail_stream; fail_open: they pass the filter; fail_reload: a fresh VM serves them);
the exit status is then 1.

Output: {\"variant\", \"cluster\", \"request_headers\", \"request_body\", \"local_response\",
\"response\" (status, headers, body as the client got them), \"worker\", \"mirror\" (the copy a
route's mirror sent: cluster, authority, headers, body_size, sent or refused), \"http_calls\", \"logs\"
([[level, message], …] from --log-level up)} and \"trap\" when the VM failed on that request.

--requests reads one JSON request per line:
{\"authority\":…,\"path\":…,\"method\":…,\"headers\":{name: value or [values]} or [[name, value], …],
 \"body\": text or [chunks], \"response\": {\"status\", \"headers\", \"body\"}, \"source\":\"ip:port\"}
--tcp runs the filter as a network filter (a policy with a `tcp` section); each line is a
connection event: {\"open\": \"IP:PORT\"} (with \"worker\": N to pick a VM), {\"close\": N} (N the
\"connection\" its open printed), {\"send\": N, \"data\": text} (the client's bytes) or
{\"reply\": N, \"data\": text} (the upstream's), either with \"end\": true for a half-close, or
{\"advance\": \"500ms\"} (the host's clock); each answered {\"line\", \"event\", \"connection\",
\"source\", \"worker\", \"admitted\", \"to_upstream\", \"to_client\", \"held\", \"closed_by\", \"logs\"}.
Once both sides have ended, Envoy closes the connection (\"closed_by\": \"envoy\").

Envoy's codec is applied before the filter sees a request: Host becomes :authority,
x-forwarded-proto and x-request-id are added, hop-by-hop headers are removed, and a path with
a fragment is answered 400 without running the filter.";

/// Where the requests come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requests {
    /// One request from flags.
    Single(Box<RequestSpec>),
    /// JSON lines from a file, or standard input for `-`.
    Lines(String),
    /// `--tcp`: connection events as JSON lines from a file, or standard input for `-`.
    Connections(String),
}

/// One `--tcp` line: exactly one of `open`, `close`, `send`, `reply`, `advance`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSpec {
    /// A new connection from `IP:PORT` (the filter's `source.address`).
    pub open: Option<String>,
    /// The client closes connection N (the `connection` its open printed).
    pub close: Option<u64>,
    /// The client sends `data` on connection N.
    pub send: Option<u64>,
    /// The upstream sends `data` on connection N.
    pub reply: Option<u64>,
    /// The bytes of a `send` or `reply` (text).
    pub data: Option<String>,
    /// With `send` or `reply`: the sender half-closes after `data`.
    pub end: Option<bool>,
    /// Moves the host's clock (ticks fire; rate limits refill), e.g. `"500ms"`.
    pub advance: Option<String>,
    /// The worker VM that takes an `open` (default: round-robin).
    pub worker: Option<usize>,
}

/// What `rollgate try` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TryOptions {
    /// The policy (plugin configuration) file; `-` is standard input.
    pub policy: String,
    /// The filter module; `None` locates the workspace's build.
    pub wasm: Option<PathBuf>,
    /// Worker VMs (requests go round-robin).
    pub workers: usize,
    /// How long one call into the filter may run.
    pub timeout: Duration,
    /// Linear memory one VM may use, in bytes.
    pub max_memory: usize,
    /// What Envoy does with a request whose VM trapped, and with the next ones.
    pub failure_policy: FailurePolicy,
    /// The plugin's log level (`proxy_get_log_level`); log lines below it are not printed.
    pub log_level: LogLevel,
    /// Properties other filters would have set (`--property PATH=VALUE`): path segments, value.
    pub properties: Vec<(Vec<String>, String)>,
    /// Call-out clusters (`--cluster NAME=URL`): the filter's `proxy_http_call`s, unary
    /// `proxy_grpc_call`s and gRPC streams to NAME are sent to URL for real.
    pub clusters: Vec<(String, String)>,
    /// The requests.
    pub requests: Requests,
}

/// Headers of a request line: a map (sorted by name; a list of values for repeats) or a list
/// of pairs in the client's order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum HeaderSpec {
    /// `{"name": "value" or ["v1", "v2"]}`.
    Map(BTreeMap<String, OneOrMany>),
    /// `[["name", "value"], …]`, in order.
    Pairs(Vec<(String, String)>),
}

impl Default for HeaderSpec {
    fn default() -> HeaderSpec {
        HeaderSpec::Pairs(Vec::new())
    }
}

impl HeaderSpec {
    /// The pairs, in the order they are sent.
    pub fn pairs(&self) -> Vec<(String, String)> {
        match self {
            HeaderSpec::Pairs(p) => p.clone(),
            HeaderSpec::Map(m) => m
                .iter()
                .flat_map(|(k, v)| match v {
                    OneOrMany::One(v) => vec![(k.clone(), v.clone())],
                    OneOrMany::Many(vs) => vs.iter().map(|v| (k.clone(), v.clone())).collect(),
                })
                .collect(),
        }
    }

    /// Every value of `name`, in order.
    pub fn get_all(&self, name: &str) -> Vec<String> {
        self.pairs()
            .into_iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v)
            .collect()
    }
}

/// The upstream's answer to a request line (default: 200, no headers, empty body).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseSpec {
    /// The status (default 200).
    pub status: Option<u16>,
    /// Its headers.
    #[serde(default)]
    pub headers: HeaderSpec,
    /// Its body: a string, or a list of chunks as the proxy receives them.
    pub body: Option<OneOrMany>,
}

/// One request as `--requests` lines (and the flags) describe it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// `:authority` (default `localhost`).
    pub authority: Option<String>,
    /// `:path` (default `/`).
    pub path: Option<String>,
    /// `:method` (default `GET`).
    pub method: Option<String>,
    /// Headers: a map, or pairs in order.
    #[serde(default)]
    pub headers: HeaderSpec,
    /// The body: a string, or a list of chunks as the proxy receives them (the filter's body
    /// callbacks run once per chunk, `end_of_stream` on the last).
    pub body: Option<OneOrMany>,
    /// The upstream's answer.
    pub response: Option<ResponseSpec>,
    /// The client address `ip:port` (default the host's `127.0.0.1:50000`).
    pub source: Option<String>,
    /// Properties other filters set on this request (dynamic metadata, filter state):
    /// `{"metadata.tenant": "acme"}`, dotted paths as `--property` takes them; they hide a
    /// `--property` at the same path for this request.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// A header value, or several for a repeated header.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One value.
    One(String),
    /// Repeated.
    Many(Vec<String>),
}

fn chunks(body: Option<&OneOrMany>) -> Vec<String> {
    match body {
        None => Vec::new(),
        Some(OneOrMany::One(b)) => vec![b.clone()],
        Some(OneOrMany::Many(bs)) => bs.clone(),
    }
}

impl RequestSpec {
    fn to_request(&self) -> HttpRequest {
        let mut r = HttpRequest::new(
            self.method.as_deref().unwrap_or("GET"),
            self.authority.as_deref().unwrap_or("localhost"),
            self.path.as_deref().unwrap_or("/"),
        );
        for (name, value) in self.headers.pairs() {
            r = r.header(&name, value);
        }
        for chunk in chunks(self.body.as_ref()) {
            r = r.body(chunk);
        }
        if let Some(spec) = &self.response {
            let mut resp = Response::new(spec.status.unwrap_or(200));
            for (name, value) in spec.headers.pairs() {
                resp = resp.header(&name, value);
            }
            resp = resp.body(chunks(spec.body.as_ref()).concat());
            r = r.response(resp);
        }
        if let Some(s) = &self.source {
            r = r.source(s);
        }
        for (path, value) in &self.properties {
            let path: Vec<&str> = path.split('.').collect();
            r = r.property(&path, value.as_bytes());
        }
        r
    }
}

/// Why `rollgate try` could not run at all (per-request failures are reported inline).
#[derive(Debug, thiserror::Error)]
pub enum TryError {
    /// Bad command line.
    #[error("{0}")]
    Usage(String),
    /// A file could not be read.
    #[error("reading {path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    /// No filter module was given and none is built.
    #[error("the rollgate filter is not built (looked for {}): run `make wasm`, or pass --wasm FILE", .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NoWasm(Vec<PathBuf>),
    /// The filter refused the policy (its `on_configure` returned false).
    #[error("the filter rejected the policy:\n{0}")]
    Rejected(String),
    /// A file is larger than `try` reads.
    #[error("reading {path}: more than the limit of {limit} bytes")]
    TooLarge {
        /// The file.
        path: String,
        /// The limit.
        limit: usize,
    },
    /// A VM grew its memory past `--max-memory`.
    #[error("the filter needed more than --max-memory {} MiB in {callback} and was stopped; Envoy would answer 503 (wasm_fail_stream) on that worker", max_memory >> 20)]
    Memory {
        /// The limit in bytes.
        max_memory: usize,
        /// The export that was running.
        callback: &'static str,
    },
    /// A call into the filter ran past `--timeout`.
    #[error("the filter ran longer than --timeout {timeout:?} in {callback} and was stopped; Envoy would answer 503 (wasm_fail_stream) on that worker")]
    Timeout {
        /// The limit.
        timeout: Duration,
        /// The export that was running.
        callback: &'static str,
    },
    /// The host failed to load the filter.
    #[error(transparent)]
    Host(#[from] HostError),
}

/// Parses the arguments after `try` (what `rollgate try …` does, for tests and embedders).
pub fn parse_args(args: &[String]) -> Result<TryOptions, TryError> {
    let args = crate::args::TryArgs::try_parse_from(
        std::iter::once("try").chain(args.iter().map(String::as_str)),
    )
    .map_err(|e| TryError::Usage(e.to_string()))?;
    TryOptions::try_from(args)
}

impl TryFrom<crate::args::TryArgs> for TryOptions {
    type Error = TryError;

    fn try_from(a: crate::args::TryArgs) -> Result<TryOptions, TryError> {
        let single_given = a.authority.is_some()
            || a.path.is_some()
            || a.method.is_some()
            || a.source.is_some()
            || !a.header.is_empty();
        let mut headers = Vec::new();
        for h in &a.header {
            // A pseudo-header's name starts with ':'; split after it.
            let skip = usize::from(h.starts_with(':'));
            let colon = h[skip..]
                .find(':')
                .map(|i| i + skip)
                .ok_or_else(|| TryError::Usage(format!("-H takes 'name: value', not '{h}'")))?;
            let (name, value) = (h[..colon].trim(), h[colon + 1..].trim_start());
            if name.is_empty() {
                return Err(TryError::Usage(format!("-H '{h}' has no header name")));
            }
            headers.push((name.to_ascii_lowercase(), value.to_string()));
        }
        let single = RequestSpec {
            authority: a.authority,
            path: a.path,
            method: a.method,
            headers: HeaderSpec::Pairs(headers),
            body: None,
            response: None,
            source: a.source,
            properties: BTreeMap::new(),
        };
        let mut properties = Vec::new();
        for p in &a.property {
            let (path, value) = p
                .split_once('=')
                .filter(|(path, _)| !path.is_empty())
                .ok_or_else(|| {
                    TryError::Usage(format!("--property takes PATH=VALUE, not '{p}'"))
                })?;
            properties.push((
                path.split('.').map(str::to_string).collect(),
                value.to_string(),
            ));
        }
        let mut clusters = Vec::new();
        for c in &a.cluster {
            let (name, url) = c
                .split_once('=')
                .filter(|(name, url)| !name.is_empty() && !url.is_empty())
                .ok_or_else(|| TryError::Usage(format!("--cluster takes NAME=URL, not '{c}'")))?;
            crate::rollout::url::HttpUrl::parse(url)
                .map_err(|e| TryError::Usage(format!("--cluster {name}: {e}")))?;
            clusters.push((name.to_string(), url.to_string()));
        }
        let requests = match a.requests {
            // clap refuses the combination already; kept for callers building TryArgs.
            Some(_) if single_given => {
                return Err(TryError::Usage(
                    "--requests cannot be combined with single-request flags".into(),
                ))
            }
            Some(file) if a.tcp => Requests::Connections(file),
            Some(file) => Requests::Lines(file),
            None => Requests::Single(Box::new(single)),
        };
        Ok(TryOptions {
            policy: a.policy,
            wasm: a.wasm,
            workers: a.workers,
            timeout: a.timeout,
            max_memory: a.max_memory,
            failure_policy: a.failure_policy,
            log_level: a.log_level,
            properties,
            clusters,
            requests,
        })
    }
}

/// Where the workspace's filter build may be: `$ROLLGATE_WASM`, next to this executable's
/// target directory (`target/{debug,release}/rollgate` and test binaries in `deps/`), and
/// the workspace this crate was built in.
pub fn default_wasm_candidates() -> Vec<PathBuf> {
    const ARTIFACT: &str = "wasm32-wasip1/release/rollgate_plugin.wasm";
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("ROLLGATE_WASM") {
        out.push(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        for target in exe.ancestors().skip(2).take(2) {
            out.push(target.join(ARTIFACT));
        }
    }
    out.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target")
            .join(ARTIFACT),
    );
    out
}

fn locate_wasm(given: Option<&Path>) -> Result<PathBuf, TryError> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let candidates = default_wasm_candidates();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or(TryError::NoWasm(candidates))
}

/// Default `--timeout`: a filter call takes microseconds; a second means it is stuck.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default `--max-memory`: far above the filter's few MiB, far below a machine's memory.
pub const DEFAULT_MAX_MEMORY: usize = 256 << 20;

/// Reads `path` (`-`: standard input), at most `limit` bytes: a larger file is refused
/// unread past the limit (a 10 MB policy used to take 366 MB of memory, a 50 MB one 4.8 GB).
fn read_source(path: &str, stdin: &mut dyn BufRead, limit: usize) -> Result<Vec<u8>, TryError> {
    let io = |error| TryError::Io {
        path: path.to_string(),
        error,
    };
    let mut buf = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    if path == "-" {
        Read::take(&mut *stdin, cap)
            .read_to_end(&mut buf)
            .map_err(io)?;
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(cap).read_to_end(&mut buf))
            .map_err(io)?;
    }
    if buf.len() > limit {
        return Err(TryError::TooLarge {
            path: path.to_string(),
            limit,
        });
    }
    Ok(buf)
}

/// A JSON string literal.
fn jstr(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// A JSON object with fields in the given order (the output reads in the order the issue
/// documents, headers in the order the proxy holds them).
fn object(fields: &[(&str, String)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", jstr(k)))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// Headers as a JSON object: a string per name, an array for a repeated name, in first
/// appearance order. Values that are not UTF-8 are decoded lossily.
fn headers_json(h: &Headers) -> String {
    let mut names: Vec<(String, Vec<String>)> = Vec::new();
    for (k, v) in h.pairs() {
        let k = String::from_utf8_lossy(k).into_owned();
        let v = jstr(&String::from_utf8_lossy(v));
        match names.iter_mut().find(|(n, _)| *n == k) {
            Some((_, vs)) => vs.push(v),
            None => names.push((k, vec![v])),
        }
    }
    let fields: Vec<String> = names
        .into_iter()
        .map(|(k, vs)| {
            let value = if vs.len() == 1 {
                vs.concat()
            } else {
                format!("[{}]", vs.join(","))
            };
            format!("{}:{value}", jstr(&k))
        })
        .collect();
    format!("{{{}}}", fields.join(","))
}

fn opt_str(v: Option<String>) -> String {
    v.map_or_else(|| "null".into(), |s| jstr(&s))
}

/// The JSON fields answering one request: `variant`, `cluster` (from the policy's headers,
/// null when the filter left the request unrouted), `request_headers` (as forwarded),
/// `local_response` (null, or status, headers, body, details), `response` (what the client
/// got: status and headers; null if the stream never answered) and `worker`.
pub fn exchange_fields(
    ex: &Exchange,
    cluster_header: &str,
    variant_header: &str,
) -> Vec<(&'static str, String)> {
    let local = ex.local_response.as_ref().map_or_else(
        || "null".to_string(),
        |l| {
            object(&[
                ("status", l.status.to_string()),
                ("headers", headers_json(&l.headers)),
                ("body", jstr(&String::from_utf8_lossy(&l.body))),
                ("details", jstr(&l.details)),
            ])
        },
    );
    let response = ex.response.as_ref().map_or_else(
        || "null".to_string(),
        |r| {
            object(&[
                ("status", r.status.to_string()),
                ("headers", headers_json(&r.headers)),
                ("body", jstr(&String::from_utf8_lossy(&r.body))),
            ])
        },
    );
    vec![
        ("variant", opt_str(ex.request_header(variant_header))),
        ("cluster", opt_str(ex.request_header(cluster_header))),
        ("request_headers", headers_json(&ex.request_headers)),
        (
            "request_body",
            jstr(&String::from_utf8_lossy(&ex.request_body)),
        ),
        ("local_response", local),
        ("response", response),
        ("worker", ex.worker.to_string()),
    ]
}

/// One HTTP call the filter made while a request ran: where it went, what it carried, and
/// what became of it (`sent` with the answer's status, or `refused` with the status Envoy's
/// `proxy_http_call` returns, BadArgument for a cluster it does not have).
pub fn http_call_json(r: &HttpCallRecord) -> String {
    let c = &r.call;
    let header = |name: &str| opt_str(c.headers.get_str(name));
    object(&[
        ("cluster", jstr(&c.cluster)),
        ("method", header(":method")),
        ("path", header(":path")),
        ("authority", header(":authority")),
        ("headers", headers_json(&c.headers)),
        ("body_size", c.body.len().to_string()),
        (
            "timeout_ms",
            c.timeout
                .map_or_else(|| "null".into(), |t| t.as_millis().to_string()),
        ),
        ("sent", r.refused.is_none().to_string()),
        (
            "refused",
            r.refused
                .map_or_else(|| "null".into(), |s| jstr(&format!("{s:?}"))),
        ),
        (
            "answer_status",
            r.answer_status
                .map_or_else(|| "null".into(), |s| s.to_string()),
        ),
    ])
}

/// `mirror` (the copy of this request the filter sent for its route's `mirror`, recognised by
/// its `x-rollgate-shadow` header, or null: not copied) and `http_calls` (every call made
/// while the request ran).
pub fn call_fields(ex: &Exchange) -> Vec<(&'static str, String)> {
    let shadow = rollgate_policy::shadow::SHADOW_HEADER;
    let mirror = ex
        .http_calls
        .iter()
        .find(|r| r.call.headers.contains(shadow))
        .map_or_else(|| "null".into(), http_call_json);
    let all: Vec<String> = ex.http_calls.iter().map(http_call_json).collect();
    vec![
        ("mirror", mirror),
        ("http_calls", format!("[{}]", all.join(","))),
    ]
}

/// How long a call-out may take when the filter gives no timeout (Envoy's async client has
/// none; a stuck `try` helps nobody).
const CALLOUT_TIMEOUT: Duration = Duration::from_secs(30);

/// A call-out cluster answered by the server at `base`: the call's method, path, headers and
/// body are sent there (the path appended to `base`'s), within the call's timeout. A server
/// that cannot be reached gets Envoy's answer for a cluster whose endpoint refuses: a local
/// 503 from its router (`upstream connect error or disconnect/reset before headers…`); a
/// server that does not answer in time, a reset.
pub fn url_cluster(
    base: &str,
) -> impl Fn(&crate::wasmhost::HttpCall) -> crate::wasmhost::CalloutReply + Send + Sync + 'static {
    use crate::rollout::client::{self, ClientError};
    use crate::wasmhost::CalloutReply;
    let base = base.trim_end_matches('/').to_string();
    move |call| {
        let text = |name: &str| {
            call.headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let url = format!("{base}{}", text(":path"));
        let headers: Vec<(String, String)> = call
            .headers
            .pairs()
            .iter()
            .filter(|(k, _)| !k.starts_with(b":") && k.as_slice() != b"content-length")
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let body = (!call.body.is_empty()).then_some(call.body.as_slice());
        let timeout = call.timeout.unwrap_or(CALLOUT_TIMEOUT);
        match client::request_with(&text(":method"), &url, &headers, body, timeout, None) {
            Ok(r) => {
                let mut resp = Response::new(r.status);
                for (k, v) in &r.headers {
                    if !matches!(
                        k.as_str(),
                        "connection" | "transfer-encoding" | "keep-alive"
                    ) {
                        resp = resp.header(k, v);
                    }
                }
                CalloutReply::Respond(resp.body(r.body))
            }
            Err(ClientError::NoAnswer { .. }) => CalloutReply::Reset,
            Err(_) => {
                // Envoy 1.40's words for a refused connection, as a call-out gets them
                // (try_like_envoy.rs, http_call_outs_like_envoys).
                let body = "upstream connect error or disconnect/reset before headers. reset \
                            reason: remote connection failure";
                CalloutReply::Respond(
                    Response::new(503)
                        .header("content-length", body.len().to_string())
                        .header("content-type", "text/plain")
                        .body(body),
                )
            }
        }
    }
}

/// A gRPC cluster served by the server at `base` (`http://HOST:PORT`): the filter's unary
/// `proxy_grpc_call`s are sent there as Envoy's gRPC client sends them to a cluster with
/// HTTP/2 (prior knowledge): `POST /SERVICE/METHOD`, `content-type: application/grpc`,
/// `te: trailers`, the initial metadata, and the message in one gRPC frame, within the
/// call's timeout. The answer is read as Envoy's `Grpc::AsyncStreamImpl` reads it: a
/// non-200 status without `grpc-status` maps to a gRPC status (`httpToGrpcStatus`), a
/// missing `grpc-status` is 2 UNKNOWN, OK without a message is 13 INTERNAL; a server's
/// non-zero status comes with its message as sent (not percent-decoded) followed by
/// `{via_upstream}` (observed). A refused
/// connection gets [`GrpcReply::refused`](crate::wasmhost::GrpcReply::refused) (Envoy's
/// words, observed), a timeout [`GrpcReply::timed_out`](crate::wasmhost::GrpcReply::timed_out)
/// (observed), other failures 14 UNAVAILABLE with words of our own (not compared with Envoy's).
pub fn grpc_url_cluster(
    base: &str,
) -> impl Fn(&crate::wasmhost::GrpcCall) -> crate::wasmhost::GrpcReply + Send + Sync + 'static {
    use crate::wasmhost::GrpcReply;
    let base = base.trim_end_matches('/').to_string();
    move |call| {
        let timeout = call.timeout.unwrap_or(CALLOUT_TIMEOUT);
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                return GrpcReply::Close {
                    status: 13,
                    message: format!("rollgate try: no async runtime: {e}"),
                }
            }
        };
        // The timer must be made inside the runtime.
        match rt.block_on(async { tokio::time::timeout(timeout, grpc_request(&base, call)).await })
        {
            Ok(Ok(reply)) => reply,
            Ok(Err(GrpcFailure::Connect)) => GrpcReply::refused(),
            Ok(Err(GrpcFailure::Other(message))) => GrpcReply::Close {
                status: 14,
                message,
            },
            Err(_) => GrpcReply::timed_out(),
        }
    }
}

enum GrpcFailure {
    Connect,
    Other(String),
}

async fn grpc_request(
    base: &str,
    call: &crate::wasmhost::GrpcCall,
) -> Result<crate::wasmhost::GrpcReply, GrpcFailure> {
    use crate::wasmhost::GrpcReply;
    use http_body_util::BodyExt;
    let other = |what: &str, e: &dyn std::fmt::Display| {
        GrpcFailure::Other(format!("rollgate try: gRPC call to {base}: {what}: {e}"))
    };
    let uri: hyper::Uri = format!("{base}/{}/{}", call.service, call.method)
        .parse()
        .map_err(|e| other("the cluster URL", &e))?;
    let host = uri.host().unwrap_or("127.0.0.1").to_string();
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|_| GrpcFailure::Connect)?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .map_err(|e| other("HTTP/2 handshake", &e))?;
    tokio::spawn(conn);
    // gRPC's length-prefixed message: not compressed, 4-byte big-endian length.
    let mut frame = Vec::with_capacity(call.message.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&(call.message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&call.message);
    let mut req = hyper::Request::post(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in call.metadata.pairs() {
        req = req.header(k.as_slice(), v.as_slice());
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(frame)))
        .map_err(|e| other("the request", &e))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| other("the request", &e))?;
    let (parts, body) = resp.into_parts();
    let grpc_status = |h: &hyper::HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
    };
    let grpc_message = |h: &hyper::HeaderMap| {
        h.get("grpc-message")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    };
    let status = parts.status.as_u16();
    if status != 200 && grpc_status(&parts.headers).is_none() {
        return Ok(GrpcReply::Close {
            status: crate::wasmhost::http_to_grpc_status(status.into()),
            message: String::new(),
        });
    }
    let collected = body
        .collect()
        .await
        .map_err(|e| other("the response", &e))?;
    // Trailers-only: the status is in the headers.
    let trailers = collected
        .trailers()
        .cloned()
        .unwrap_or_else(|| parts.headers.clone());
    let data = collected.to_bytes();
    let Some(code) = grpc_status(&trailers) else {
        return Ok(GrpcReply::Close {
            status: 2,
            message: String::new(),
        });
    };
    if code != 0 {
        // Envoy 1.40 hands the filter the message followed by the stream's response code
        // details (observed: try_grpc_like_envoy.rs, "denied{via_upstream}").
        return Ok(GrpcReply::Close {
            status: code,
            message: format!("{}{{via_upstream}}", grpc_message(&trailers)),
        });
    }
    match data.get(1..5).zip(data.first()) {
        Some((len, 0)) => {
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            match data.get(5..5 + len) {
                Some(m) => Ok(GrpcReply::Message(m.to_vec())),
                None => Ok(GrpcReply::Close {
                    status: 13,
                    message: String::new(),
                }),
            }
        }
        _ => Ok(GrpcReply::Close {
            status: 13,
            message: String::new(),
        }),
    }
}

/// How long `rollgate try` waits for more from a gRPC stream's server after the filter acted
/// on it, while the filter's side is still open (Envoy would keep listening; the host asks
/// again after the filter's next action on the stream).
const GRPC_STREAM_QUIET: Duration = Duration::from_millis(200);

/// Most bytes of one message a gRPC stream's server may send (the host's bound).
pub const MAX_GRPC_STREAM_MESSAGE: usize = 16 << 20;

/// A gRPC cluster served by the server at `base` (`http://HOST:PORT`, plain-text HTTP/2 with
/// prior knowledge, as Envoy's gRPC client talks to a cluster with `http2_protocol_options`),
/// for the filter's gRPC streams (`proxy_grpc_stream`): `POST /SERVICE/METHOD`,
/// `content-type: application/grpc`, `te: trailers` and the filter's metadata, each message the
/// filter sends in a gRPC frame as it sends it, the end of the request when it closes its side,
/// a reset when it cancels. What the server sends is read as Envoy's `Grpc::AsyncStreamImpl`
/// reads it (source/common/grpc/async_client_impl.cc, `onHeaders`, `onData`, `onTrailers`,
/// `streamError`): the response headers as initial metadata, each message, the trailers as
/// trailing metadata, and a close with `grpc-status` (2 UNKNOWN when missing) and `grpc-message`
/// followed by `{via_upstream}` (`via_upstream` alone for no message); a trailers-only answer gives
/// empty initial metadata, a non-200 without `grpc-status` the mapped status (`httpToGrpcStatus`)
/// after empty metadata. After the filter acted on a stream, the server's answers are read until
/// the stream ends (the filter closed its side: up to 30 s) or nothing more comes for 200 ms
/// (its side still open); later ones wait for the filter's next action on the stream. A refused
/// connection gets [`GrpcStreamReply::refused`](crate::wasmhost::GrpcStreamReply::refused)
/// (Envoy's, observed). The response headers carry `x-envoy-upstream-service-time` (the
/// milliseconds until they came), as Envoy's router adds it. Other failures 14 UNAVAILABLE with words of our own (not compared with
/// Envoy's).
pub fn grpc_stream_url_cluster(
    base: &str,
) -> impl Fn(&crate::wasmhost::GrpcStreamCall) -> UrlGrpcStream + Send + Sync + 'static {
    let base = base.trim_end_matches('/').to_string();
    move |call| UrlGrpcStream {
        base: base.clone(),
        call: call.clone(),
        rt: None,
        state: UrlStreamState::Idle,
    }
}

type StreamFrame = Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>;
type BodyTx = tokio::sync::mpsc::UnboundedSender<StreamFrame>;
type Pending =
    tokio::task::JoinHandle<Result<hyper::Response<hyper::body::Incoming>, hyper::Error>>;

/// One gRPC stream `rollgate try` runs against a real server ([`grpc_stream_url_cluster`]).
pub struct UrlGrpcStream {
    base: String,
    call: crate::wasmhost::GrpcStreamCall,
    /// The stream's own runtime: its connection makes progress while the host asks.
    rt: Option<tokio::runtime::Runtime>,
    state: UrlStreamState,
}

enum UrlStreamState {
    Idle,
    Waiting {
        tx: Option<BodyTx>,
        response: Pending,
        started: std::time::Instant,
    },
    Reading {
        tx: Option<BodyTx>,
        body: hyper::body::Incoming,
        buf: Vec<u8>,
    },
    Done,
}

impl crate::wasmhost::GrpcStreamHandler for UrlGrpcStream {
    fn exchange(
        &mut self,
        sent: &[crate::wasmhost::GrpcStreamSent],
    ) -> Vec<crate::wasmhost::GrpcStreamReply> {
        use crate::wasmhost::{GrpcStreamReply, GrpcStreamSent};
        if matches!(self.state, UrlStreamState::Done) {
            return Vec::new();
        }
        if sent.contains(&GrpcStreamSent::Cancel) {
            // Dropping the runtime drops the request: hyper resets the HTTP/2 stream.
            self.state = UrlStreamState::Done;
            self.rt = None;
            return Vec::new();
        }
        if matches!(self.state, UrlStreamState::Idle) {
            if let Err(replies) = self.open() {
                self.state = UrlStreamState::Done;
                return replies;
            }
        }
        let tx = match &mut self.state {
            UrlStreamState::Waiting { tx, .. } | UrlStreamState::Reading { tx, .. } => tx,
            _ => return Vec::new(),
        };
        for event in sent {
            match event {
                GrpcStreamSent::Message(m) => {
                    if let Some(t) = tx {
                        let _ = t.send(Ok(hyper::body::Frame::data(grpc_frame(m).into())));
                    }
                }
                // Dropping the sender ends the request body (END_STREAM).
                GrpcStreamSent::Close => *tx = None,
                GrpcStreamSent::Cancel => {}
            }
        }
        let wait = if tx.is_none() {
            CALLOUT_TIMEOUT
        } else {
            GRPC_STREAM_QUIET
        };
        let Some(rt) = self.rt.take() else {
            self.state = UrlStreamState::Done;
            return vec![
                GrpcStreamReply::TrailingMetadata(crate::wasmhost::Headers::new()),
                GrpcStreamReply::Close {
                    status: 14,
                    message: "rollgate try: the stream's runtime is gone".into(),
                },
            ];
        };
        let replies = rt.block_on(self.read(wait));
        self.rt = Some(rt);
        if replies
            .iter()
            .any(|r| matches!(r, GrpcStreamReply::Close { .. }))
        {
            self.state = UrlStreamState::Done;
        }
        replies
    }
}

impl UrlGrpcStream {
    /// Connects and sends the request headers; on failure, what the filter gets instead.
    fn open(&mut self) -> Result<(), Vec<crate::wasmhost::GrpcStreamReply>> {
        use crate::wasmhost::{GrpcStreamReply, Headers};
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            vec![
                GrpcStreamReply::TrailingMetadata(Headers::new()),
                GrpcStreamReply::Close {
                    status: 14,
                    message: format!("rollgate try: gRPC stream to {}: {what}: {e}", self.base),
                },
            ]
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| fail("no async runtime", &e))?;
        let uri: hyper::Uri = format!("{}/{}/{}", self.base, self.call.service, self.call.method)
            .parse()
            .map_err(|e| fail("the cluster URL", &e))?;
        let host = uri.host().unwrap_or("127.0.0.1").to_string();
        let port = uri.port_u16().unwrap_or(80);
        let mut req = hyper::Request::post(uri)
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in self.call.metadata.pairs() {
            req = req.header(k.as_slice(), v.as_slice());
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<StreamFrame>();
        let body = http_body_util::StreamBody::new(Box::pin(futures::stream::unfold(
            rx,
            |mut rx| async { rx.recv().await.map(|f| (f, rx)) },
        )));
        let req = req.body(body).map_err(|e| fail("the request", &e))?;
        let response = rt.block_on(async {
            let tcp = tokio::time::timeout(
                CALLOUT_TIMEOUT,
                tokio::net::TcpStream::connect((host.as_str(), port)),
            )
            .await;
            let tcp = match tcp {
                Ok(Ok(tcp)) => tcp,
                _ => return Err(GrpcStreamReply::refused()),
            };
            let (mut sender, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tcp),
            )
            .await
            .map_err(|e| fail("HTTP/2 handshake", &e))?;
            tokio::spawn(conn);
            Ok(tokio::spawn(sender.send_request(req)))
        })?;
        self.rt = Some(rt);
        self.state = UrlStreamState::Waiting {
            tx: Some(tx),
            response,
            started: std::time::Instant::now(),
        };
        Ok(())
    }

    /// What the server sends until the stream ends or nothing comes for `wait`.
    async fn read(&mut self, wait: Duration) -> Vec<crate::wasmhost::GrpcStreamReply> {
        use crate::wasmhost::{GrpcStreamReply, Headers};
        use http_body_util::BodyExt;
        let mut out = Vec::new();
        // Envoy's words after a server's status: its message, then the response code details.
        let enhanced = |m: &str| {
            if m.is_empty() {
                "via_upstream".to_string()
            } else {
                format!("{m}{{via_upstream}}")
            }
        };
        let map = |status: Option<u16>, h: &hyper::HeaderMap| {
            let mut m = Headers::new();
            if let Some(s) = status {
                m.add(":status", s.to_string());
            }
            for (k, v) in h {
                m.add(k.as_str(), v.as_bytes());
            }
            m
        };
        let grpc_status = |h: &hyper::HeaderMap| {
            h.get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok())
        };
        let grpc_message = |h: &hyper::HeaderMap| {
            h.get("grpc-message")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default()
        };
        // `AsyncStreamImpl::streamError`: empty trailing metadata, then the close.
        let error = |out: &mut Vec<GrpcStreamReply>, status: u32, message: String| {
            out.push(GrpcStreamReply::TrailingMetadata(Headers::new()));
            out.push(GrpcStreamReply::Close { status, message });
        };
        loop {
            match std::mem::replace(&mut self.state, UrlStreamState::Done) {
                UrlStreamState::Waiting {
                    tx,
                    mut response,
                    started,
                } => {
                    let resp = match tokio::time::timeout(wait, &mut response).await {
                        Err(_) => {
                            self.state = UrlStreamState::Waiting {
                                tx,
                                response,
                                started,
                            };
                            return out;
                        }
                        Ok(Ok(Ok(resp))) => resp,
                        Ok(Ok(Err(e))) => {
                            error(&mut out, 14, format!("rollgate try: gRPC stream: {e}"));
                            return out;
                        }
                        Ok(Err(e)) => {
                            error(&mut out, 14, format!("rollgate try: gRPC stream: {e}"));
                            return out;
                        }
                    };
                    let (parts, body) = resp.into_parts();
                    let status = parts.status.as_u16();
                    let end = hyper::body::Body::is_end_stream(&body);
                    let code = grpc_status(&parts.headers);
                    if status != 200 && !(end && code.is_some()) {
                        out.push(GrpcStreamReply::InitialMetadata(Headers::new()));
                        let code = crate::wasmhost::http_to_grpc_status(status.into());
                        error(&mut out, code, enhanced(""));
                        return out;
                    }
                    if end {
                        // Trailers-only: the headers are the trailing metadata.
                        out.push(GrpcStreamReply::InitialMetadata(Headers::new()));
                        out.push(GrpcStreamReply::TrailingMetadata(map(
                            Some(status),
                            &parts.headers,
                        )));
                        out.push(GrpcStreamReply::Close {
                            status: code.unwrap_or(2),
                            message: enhanced(&grpc_message(&parts.headers)),
                        });
                        return out;
                    }
                    // Envoy's router adds the upstream's time to the headers it passes on.
                    let mut headers = map(Some(status), &parts.headers);
                    headers.add(
                        "x-envoy-upstream-service-time",
                        started.elapsed().as_millis().to_string(),
                    );
                    out.push(GrpcStreamReply::InitialMetadata(headers));
                    self.state = UrlStreamState::Reading {
                        tx,
                        body,
                        buf: Vec::new(),
                    };
                }
                UrlStreamState::Reading {
                    tx,
                    mut body,
                    mut buf,
                } => {
                    let frame = match tokio::time::timeout(wait, body.frame()).await {
                        Err(_) => {
                            self.state = UrlStreamState::Reading { tx, body, buf };
                            return out;
                        }
                        Ok(f) => f,
                    };
                    match frame {
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(data) => {
                                buf.extend_from_slice(&data);
                                while buf.len() >= 5 {
                                    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]])
                                        as usize;
                                    if len > MAX_GRPC_STREAM_MESSAGE {
                                        error(
                                            &mut out,
                                            8,
                                            format!(
                                                "rollgate try: a gRPC message of {len} bytes, more \
                                                 than {MAX_GRPC_STREAM_MESSAGE}"
                                            ),
                                        );
                                        return out;
                                    }
                                    if buf.len() < 5 + len {
                                        break;
                                    }
                                    if len > 0 && buf[0] != 0 {
                                        // Compressed or unknown flags (`onData`): 13 INTERNAL.
                                        error(&mut out, 13, String::new());
                                        return out;
                                    }
                                    let message: Vec<u8> = buf.drain(..5 + len).skip(5).collect();
                                    out.push(GrpcStreamReply::Message(message));
                                }
                                self.state = UrlStreamState::Reading { tx, body, buf };
                            }
                            Err(frame) => {
                                let trailers = frame.into_trailers().unwrap_or_default();
                                out.push(GrpcStreamReply::TrailingMetadata(map(None, &trailers)));
                                out.push(GrpcStreamReply::Close {
                                    status: grpc_status(&trailers).unwrap_or(2),
                                    message: enhanced(&grpc_message(&trailers)),
                                });
                                return out;
                            }
                        },
                        // The body ended without trailers (`onData` with end_stream): 2 UNKNOWN.
                        None => {
                            error(&mut out, 2, enhanced(""));
                            return out;
                        }
                        Some(Err(e)) => {
                            error(&mut out, 13, format!("rollgate try: gRPC stream: {e}"));
                            return out;
                        }
                    }
                }
                state => {
                    self.state = state;
                    return out;
                }
            }
        }
    }
}

/// gRPC's length-prefixed message: not compressed, 4-byte big-endian length.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(message.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// The plugin's own log lines at `level` and above, as `[[level, message], …]` (Envoy's level
/// names, as its log writes them).
pub fn logs_field(ex: &Exchange, level: LogLevel) -> String {
    let lines: Vec<String> = ex
        .logs
        .iter()
        .filter(|l| !l.from_host && l.level >= level)
        .map(|l| format!("[{},{}]", jstr(level_name(l.level)), jstr(&l.message)))
        .collect();
    format!("[{}]", lines.join(","))
}

/// Envoy's name of a log level.
pub fn level_name(l: LogLevel) -> &'static str {
    match l {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warning",
        LogLevel::Error => "error",
        LogLevel::Critical => "critical",
    }
}

struct Runner {
    plugin: Plugin,
    timeout: Duration,
    max_memory: usize,
    cluster_header: String,
    variant_header: String,
    log_level: LogLevel,
}

/// One request's answer: its JSON fields, and why the VM failed on it, if it did.
type Answer = (Vec<(&'static str, String)>, Option<String>);

impl Runner {
    /// Why a VM failed, in `try`'s words (a passed bound names its option).
    fn trap_reason(&self, t: &crate::wasmhost::TrapError) -> String {
        if t.trap.contains("interrupt") {
            TryError::Timeout {
                timeout: self.timeout,
                callback: t.callback,
            }
            .to_string()
        } else if t.trap.contains("forcing trap when growing memory") {
            TryError::Memory {
                max_memory: self.max_memory,
                callback: t.callback,
            }
            .to_string()
        } else {
            t.to_string()
        }
    }

    /// One `--tcp` line: its JSON fields, and why the VM failed on it, if it did. `open`
    /// remembers each connection under the next number (from 1), which `close` takes.
    fn connection_event(
        &self,
        spec: &ConnectionSpec,
        open: &mut BTreeMap<u64, OpenConnection>,
        next: &mut u64,
    ) -> Result<Answer, String> {
        let given = [
            spec.open.is_some(),
            spec.close.is_some(),
            spec.send.is_some(),
            spec.reply.is_some(),
            spec.advance.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(
                "a --tcp line has exactly one of \"open\", \"close\", \"send\", \"reply\", \"advance\""
                    .into(),
            );
        }
        if spec.worker.is_some() && spec.open.is_none() {
            return Err("\"worker\" goes with \"open\" only".into());
        }
        if (spec.data.is_some() || spec.end.is_some())
            && spec.send.is_none()
            && spec.reply.is_none()
        {
            return Err("\"data\" and \"end\" go with \"send\" or \"reply\" only".into());
        }
        if let Some(n) = spec.send.or(spec.reply) {
            return self.data_event(spec, n, open);
        }
        if let Some(d) = &spec.advance {
            let ns = rollgate_policy::duration::parse_duration(d)
                .map_err(|e| format!("\"advance\": {e}"))?;
            let by = Duration::from_nanos(ns);
            return match self.plugin.host().advance(by) {
                Ok(()) => Ok((
                    vec![
                        ("event", jstr("advance")),
                        (
                            "elapsed_ms",
                            self.plugin.host().elapsed().as_millis().to_string(),
                        ),
                    ],
                    None,
                )),
                Err(HostError::Trap(t)) => {
                    let why = self.trap_reason(&t);
                    Ok((
                        vec![("event", jstr("advance")), ("trap", jstr(&why))],
                        Some(why),
                    ))
                }
                Err(e) => Err(e.to_string()),
            };
        }
        let (event, number, source, result) = if let Some(source) = &spec.open {
            if source.parse::<std::net::SocketAddr>().is_err() {
                return Err(format!("\"open\" takes IP:PORT, not '{source}'"));
            }
            *next += 1;
            let n = *next;
            let r = self.plugin.open_connection(source, spec.worker);
            (
                "open",
                n,
                Some(source.clone()),
                r.inspect(|e| {
                    if !e.closed {
                        open.insert(
                            n,
                            OpenConnection {
                                worker: e.worker,
                                context_id: e.context_id,
                                ..OpenConnection::default()
                            },
                        );
                    }
                }),
            )
        } else {
            let n = spec.close.unwrap_or_default();
            let c = open
                .remove(&n)
                .ok_or_else(|| format!("no open connection {n}"))?;
            (
                "close",
                n,
                None,
                self.plugin.close_connection(c.worker, c.context_id),
            )
        };
        let mut fields = vec![("event", jstr(event)), ("connection", number.to_string())];
        if let Some(s) = source {
            fields.push(("source", jstr(&s)));
        }
        match result {
            Ok(e) => {
                fields.push(("worker", e.worker.to_string()));
                if event == "open" {
                    fields.push(("admitted", e.admitted.to_string()));
                    let by = if e.closed_by_filter {
                        jstr("filter")
                    } else if e.failed_vm && !e.admitted {
                        jstr("failed_vm")
                    } else {
                        "null".into()
                    };
                    fields.push(("closed_by", by));
                }
                let lines: Vec<String> = e
                    .logs
                    .iter()
                    .filter(|l| !l.from_host && l.level >= self.log_level)
                    .map(|l| format!("[{},{}]", jstr(level_name(l.level)), jstr(&l.message)))
                    .collect();
                fields.push(("logs", format!("[{}]", lines.join(","))));
                Ok((fields, None))
            }
            Err(HostError::Trap(t)) => {
                // The VM is failed: Envoy closes the connection whose callback trapped.
                let why = self.trap_reason(&t);
                fields.push(("worker", t.worker.to_string()));
                if event == "open" {
                    fields.push(("admitted", "false".into()));
                    fields.push(("closed_by", jstr("failed_vm")));
                }
                fields.push(("trap", jstr(&why)));
                Ok((fields, Some(why)))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// A `send` or `reply` line on open connection `n`.
    fn data_event(
        &self,
        spec: &ConnectionSpec,
        n: u64,
        open: &mut BTreeMap<u64, OpenConnection>,
    ) -> Result<Answer, String> {
        let (event, direction) = if spec.send.is_some() {
            ("send", Direction::Downstream)
        } else {
            ("reply", Direction::Upstream)
        };
        let c = *open
            .get(&n)
            .ok_or_else(|| format!("no open connection {n}"))?;
        let end = spec.end.unwrap_or(false);
        let ended = match direction {
            Direction::Downstream => c.client_ended,
            Direction::Upstream => c.upstream_ended,
        };
        if ended {
            return Err(format!(
                "connection {n}: the {event} side has already ended"
            ));
        }
        let data = spec.data.as_deref().unwrap_or("");
        let mut fields = vec![
            ("event", jstr(event)),
            ("connection", n.to_string()),
            ("worker", c.worker.to_string()),
        ];
        let logs = |logs: &[LogEntry]| -> Vec<String> {
            logs.iter()
                .filter(|l| !l.from_host && l.level >= self.log_level)
                .map(|l| format!("[{},{}]", jstr(level_name(l.level)), jstr(&l.message)))
                .collect()
        };
        match self
            .plugin
            .connection_data(c.worker, c.context_id, direction, data.as_bytes(), end)
        {
            Ok(e) => {
                let mut lines = logs(&e.logs);
                let mut closed_by = if e.closed_by_filter {
                    jstr("filter")
                } else if e.closed {
                    jstr("failed_vm")
                } else {
                    "null".into()
                };
                if e.closed {
                    open.remove(&n);
                } else if let Some(c) = open.get_mut(&n) {
                    match direction {
                        Direction::Downstream => c.client_ended |= end,
                        Direction::Upstream => c.upstream_ended |= end,
                    }
                    if c.client_ended && c.upstream_ended {
                        // Both halves closed: Envoy closes the connection (LocalClose).
                        let closed = self
                            .plugin
                            .end_connection(c.worker, c.context_id)
                            .map_err(|e| e.to_string())?;
                        lines.extend(logs(&closed.logs));
                        closed_by = jstr("envoy");
                        open.remove(&n);
                    }
                }
                fields.push((
                    "to_upstream",
                    jstr(&String::from_utf8_lossy(&e.to_upstream)),
                ));
                fields.push(("to_client", jstr(&String::from_utf8_lossy(&e.to_client))));
                fields.push(("held", e.held.to_string()));
                if e.upstream_closed_by_filter {
                    fields.push(("upstream_closed_by_filter", "true".into()));
                }
                fields.push(("closed_by", closed_by));
                fields.push(("logs", format!("[{}]", lines.join(","))));
                Ok((fields, None))
            }
            Err(HostError::Trap(t)) => {
                // The VM is failed: Envoy closes the connection whose callback trapped.
                open.remove(&n);
                let why = self.trap_reason(&t);
                fields.push(("closed_by", jstr("failed_vm")));
                fields.push(("trap", jstr(&why)));
                Ok((fields, Some(why)))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Runs `spec`. A trap is not an error of `try`: the line gets what Envoy answers on that
    /// stream, and a `trap` field saying why.
    fn answer(&self, spec: &RequestSpec) -> Result<Answer, TryError> {
        let ex = match self.plugin.run(spec.to_request()) {
            Ok(ex) => ex,
            Err(HostError::Trap(t)) => {
                let why = self.trap_reason(&t);
                let ex = self.plugin.trapped_answer(t.worker, &spec.to_request());
                let mut fields = exchange_fields(&ex, &self.cluster_header, &self.variant_header);
                fields.push(("logs", logs_field(&ex, self.log_level)));
                fields.push(("trap", jstr(&why)));
                return Ok((fields, Some(why)));
            }
            Err(e) => return Err(e.into()),
        };
        let mut fields = exchange_fields(&ex, &self.cluster_header, &self.variant_header);
        fields.extend(call_fields(&ex));
        fields.push(("logs", logs_field(&ex, self.log_level)));
        Ok((fields, None))
    }
}

/// A connection a `--tcp` script opened and has not closed.
#[derive(Debug, Clone, Copy, Default)]
struct OpenConnection {
    worker: usize,
    context_id: u32,
    /// The client half-closed (`send` with `end`).
    client_ended: bool,
    /// The upstream half-closed (`reply` with `end`).
    upstream_ended: bool,
}

/// Runs `opts`, reading standard input from `stdin` when asked to and writing JSON lines to
/// `out`. `Ok(false)` when some request failed (its line says why).
pub fn run(
    opts: &TryOptions,
    stdin: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<bool, TryError> {
    let policy = read_source(
        &opts.policy,
        stdin,
        rollgate_policy::limits::MAX_POLICY_BYTES,
    )?;
    let wasm = Wasm::interruptible_from_file(locate_wasm(opts.wasm.as_deref())?)?;
    // The header names come from the policy; the filter itself is the judge of validity.
    let (cluster_header, variant_header) = rollgate_policy::config::accept_config(&policy)
        .ok()
        .and_then(|c| c.policy)
        .map(|p| (p.cluster_header, p.variant_header))
        .unwrap_or_else(|| {
            (
                rollgate_policy::policy::spec::DEFAULT_CLUSTER_HEADER.to_string(),
                rollgate_policy::policy::spec::DEFAULT_VARIANT_HEADER.to_string(),
            )
        });
    let mut config = PluginConfig::new(policy)
        .workers(opts.workers)
        .call_timeout(opts.timeout)
        .max_memory(opts.max_memory)
        .failure_policy(opts.failure_policy)
        .log_level(opts.log_level);
    for (path, value) in &opts.properties {
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        config = config.property(&path, value.as_bytes());
    }
    for (name, url) in &opts.clusters {
        config = config
            .cluster(name, url_cluster(url))
            .grpc_cluster(name, grpc_url_cluster(url))
            .grpc_stream_cluster(name, grpc_stream_url_cluster(url));
    }
    let plugin = match Host::new().start(&wasm, config) {
        Ok(p) => p,
        Err(HostError::ConfigureFailed { logs, .. }) => {
            let lines: Vec<String> = logs
                .iter()
                .filter(|l| l.level >= crate::wasmhost::LogLevel::Warn)
                .map(|l| l.message.clone())
                .collect();
            return Err(TryError::Rejected(lines.join("\n")));
        }
        Err(e) => return Err(e.into()),
    };
    let runner = Runner {
        plugin,
        timeout: opts.timeout,
        max_memory: opts.max_memory,
        cluster_header,
        variant_header,
        log_level: opts.log_level,
    };
    match &opts.requests {
        Requests::Single(spec) => {
            let (answer, trap) = runner.answer(spec)?;
            writeln!(out, "{}", object(&answer))?;
            if let Some(why) = &trap {
                eprintln!("{why}");
            }
            Ok(trap.is_none())
        }
        Requests::Connections(file) => {
            let text = read_source(file, stdin, MAX_REQUESTS_BYTES)?;
            let mut all_ok = true;
            let mut open = BTreeMap::new();
            let mut next = 0;
            for (i, line) in String::from_utf8_lossy(&text).lines().enumerate() {
                let n = i + 1;
                if line.trim().is_empty() {
                    continue;
                }
                let answer = serde_json::from_str::<ConnectionSpec>(line)
                    .map_err(|e| e.to_string())
                    .and_then(|spec| runner.connection_event(&spec, &mut open, &mut next));
                let fields: Vec<(&str, String)> = match answer {
                    Ok((fields, trap)) => {
                        if let Some(why) = trap {
                            all_ok = false;
                            eprintln!("line {n}: {why}");
                        }
                        std::iter::once(("line", n.to_string()))
                            .chain(fields)
                            .collect()
                    }
                    Err(e) => {
                        all_ok = false;
                        vec![
                            ("line", n.to_string()),
                            ("error", jstr(&format!("line {n}: {e}"))),
                        ]
                    }
                };
                writeln!(out, "{}", object(&fields))?;
            }
            Ok(all_ok)
        }
        Requests::Lines(file) => {
            // Requests are read whole, up to a bound far above any test set.
            let text = read_source(file, stdin, MAX_REQUESTS_BYTES)?;
            let mut all_ok = true;
            for (i, line) in String::from_utf8_lossy(&text).lines().enumerate() {
                let n = i + 1;
                if line.trim().is_empty() {
                    continue;
                }
                let answer = serde_json::from_str::<RequestSpec>(line)
                    .map_err(|e| e.to_string())
                    .and_then(|spec| runner.answer(&spec).map_err(|e| e.to_string()));
                let fields = match answer {
                    Ok((fields, trap)) => {
                        if let Some(why) = trap {
                            all_ok = false;
                            eprintln!("line {n}: {why}");
                        }
                        std::iter::once(("line", n.to_string()))
                            .chain(fields)
                            .collect()
                    }
                    Err(e) => {
                        all_ok = false;
                        vec![
                            ("line", n.to_string()),
                            ("error", jstr(&format!("line {n}: {e}"))),
                        ]
                    }
                };
                writeln!(out, "{}", object(&fields))?;
            }
            Ok(all_ok)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn flags_make_one_request() {
        let o = parse_args(&args(&[
            "--policy",
            "p.json",
            "--authority",
            "pro.coding",
            "-H",
            "x-a: 1",
            "-H",
            "X-A:2",
            "-H",
            ":path: /z",
            "--source",
            "1.2.3.4:5",
            "--workers",
            "2",
        ]))
        .unwrap();
        assert_eq!(o.workers, 2);
        let Requests::Single(spec) = o.requests else {
            panic!("single expected")
        };
        assert_eq!(spec.authority.as_deref(), Some("pro.coding"));
        assert_eq!(spec.headers.get_all("x-a"), ["1", "2"]);
        assert_eq!(spec.headers.get_all(":path"), ["/z"]);
        let r = spec.to_request();
        assert_eq!(r.headers.get_all("x-a").count(), 2);
        assert_eq!(r.source.as_deref(), Some("1.2.3.4:5"));
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for bad in [
            &["--authority", "x"][..],
            &["--policy"],
            &["--policy", "p", "--workers", "0"],
            &["--policy", "p", "-H", "novalue"],
            &["--policy", "p", "--requests", "-", "--path", "/"],
            &["--policy", "p", "--frob"],
            &["--policy", "p", "--failure-policy", "fail_sometimes"],
            &["--policy", "p", "--log-level", "loud"],
            &["--policy", "p", "--property", "novalue"],
            &["--policy", "p", "--property", "=v"],
        ] {
            assert!(
                matches!(parse_args(&args(bad)), Err(TryError::Usage(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn request_lines_deny_unknown_fields() {
        let spec: RequestSpec =
            serde_json::from_str(r#"{"authority":"a","headers":{"x":["1","2"],"y":"3"}}"#).unwrap();
        assert_eq!(spec.to_request().headers.get_all("x").count(), 2);
        assert!(serde_json::from_str::<RequestSpec>(r#"{"authorty":"a"}"#).is_err());
        // Pairs keep the client's order and interleaved repeats.
        let spec: RequestSpec = serde_json::from_str(
            r#"{"headers":[["x-b","1"],["x-a","2"],["x-b","3"]],"body":["ab","cd"],
                "response":{"status":503,"headers":[["retry-after","1"]],"body":"busy"}}"#,
        )
        .unwrap();
        let r = spec.to_request();
        let names: Vec<&[u8]> = r
            .headers
            .pairs()
            .iter()
            .map(|(k, _)| k.as_slice())
            .collect();
        assert_eq!(&names[3..], [&b"x-b"[..], b"x-a", b"x-b"]);
        assert_eq!(r.body, [b"ab".to_vec(), b"cd".to_vec()]);
        let resp = r.response.expect("the upstream's answer");
        assert_eq!((resp.status, resp.body.as_slice()), (503, &b"busy"[..]));
        assert!(
            serde_json::from_str::<RequestSpec>(r#"{"response":{"status":200,"bogus":1}}"#)
                .is_err()
        );
    }
}
