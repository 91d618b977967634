//! Differential test for gRPC streams (`proxy_grpc_stream`, `proxy_grpc_send`,
//! `proxy_grpc_close`, `proxy_grpc_cancel` and the four `proxy_on_grpc_*` callbacks; issue 14).
//! The ABI probe (`crates/abi-probe`) opens a stream to cluster `grpc` (op `grpc-stream`: two
//! messages, then it closes its side), notes every callback the stream gets — token, number of
//! metadata entries and the entries in order, message sizes and bytes (GrpcReceiveBuffer), the
//! close status and `proxy_get_status` — in one `x-probe-grpc-stream` request header, which the
//! upstream receives. Op `grpc-stream-cancel` notes the statuses around a cancel and for tokens
//! of other kinds; `grpc-stream-missing` a stream to a cluster Envoy does not have. The same
//! requests run in this host (the cluster served by `rollgate try`'s real HTTP/2 client,
//! `try_cmd::grpc_stream_url_cluster`, and by a closure) and in a real Envoy 1.40, against the
//! same small gRPC server below (hyper, HTTP/2: answers at once with initial metadata
//! `x-echo-initial`, echoes each message as it comes, ends with trailers `grpc-status: 0` and
//! `x-echo-trailer` when the client ends its side). Also a server that refuses the connection.
//!
//! Where the host's behaviour comes from (besides what the Envoy below shows):
//! - tokens 6, 10, 14, … per VM: proxy-wasm-cpp-host include/proxy-wasm/wasm.h:197
//!   (`nextGrpcStreamId`, `next_grpc_stream_id_ = GrpcStream (2)` at :310, step 4 at :179);
//! - ParseFailure, and no token, for a missing cluster; NotFound for an unknown stream token;
//!   BadArgument for a token of another kind; a closed stream kept until both sides closed;
//!   cancel forgets it: Envoy's source/extensions/common/wasm/context.cc, `Context::grpcStream`,
//!   `grpcSend`, `grpcClose`, `grpcCancel`, `onGrpcCloseWrapper`, and context.h,
//!   `GrpcStreamClientHandler` (Envoy's tree is too large to bring here whole, so these are
//!   cited by function rather than line);
//! - callbacks on the root context: cpp-host src/exports.cc:605-647 (`root_context()`) and
//!   src/context.cc:430-459;
//! - the order initial metadata, messages, trailing metadata, close, the trailers-only shape of
//!   a failure (empty initial metadata, the headers as trailing metadata) and the close message
//!   (`grpc-message{details}`, or the details alone): Envoy's
//!   source/common/grpc/async_client_impl.cc, `AsyncStreamImpl::onHeaders`, `onTrailers`,
//!   `streamError` and `enhancedGrpcMessage`.
//!
//! Ignored, because they are environmental: the values (not the names, order or number) of the
//! `date` metadata entry (the server's clock) and of `x-envoy-upstream-service-time` (Envoy's
//! router times the upstream).

#[path = "../../wasmhost/tests/common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use rollgate::wasmhost::{
    GrpcStreamCall, GrpcStreamReply, GrpcStreamSent, Headers, Host, HttpRequest, PluginConfig,
};
use rollgate_e2e::{Envoy, EnvoyOptions, Upstream};

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// One stream as the echo server saw it: path, `x-probe-meta`, the messages.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    path: String,
    meta: String,
    messages: Vec<Vec<u8>>,
}

/// The gRPC echo server on `port`, in a thread of its own; what it saw goes to `seen`.
fn echo_server(seen: Arc<Mutex<Vec<Seen>>>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| echo(req, seen.clone()));
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
                });
            }
        });
    });
    port
}

type EchoBody = StreamBody<futures::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

/// Answers at once with the initial metadata, then echoes each message as it arrives (5-byte
/// gRPC prefix), and ends with trailers when the client ends its side.
async fn echo(
    req: hyper::Request<hyper::body::Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<hyper::Response<EchoBody>, Infallible> {
    let index = {
        let mut seen = seen.lock().unwrap();
        seen.push(Seen {
            path: req.uri().path().to_string(),
            meta: req
                .headers()
                .get("x-probe-meta")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default(),
            messages: Vec::new(),
        });
        seen.len() - 1
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Frame<Bytes>>();
    let mut body = req.into_body();
    tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while buf.len() >= 5 {
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if buf.len() < 5 + len {
                    break;
                }
                let framed: Vec<u8> = buf.drain(..5 + len).collect();
                seen.lock().unwrap()[index]
                    .messages
                    .push(framed[5..].to_vec());
                let _ = tx.send(Frame::data(Bytes::from(framed)));
            }
        }
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("x-echo-trailer", "t1".parse().unwrap());
        let _ = tx.send(Frame::trailers(trailers));
    });
    let stream =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|f| (Ok(f), rx)) },
        );
    let body: EchoBody = StreamBody::new(Box::pin(stream));
    Ok(hyper::Response::builder()
        .header("content-type", "application/grpc")
        .header("x-echo-initial", "i1")
        .body(body)
        .unwrap())
}

/// Envoy running the probe, with cluster `grpc` (HTTP/2, prior knowledge) at `grpc_port`.
fn envoy_with_grpc(upstream: &Upstream, grpc_port: u16) -> Envoy {
    let opts = EnvoyOptions::new("")
        .cluster(upstream.name(), upstream.port())
        .fallback_cluster(upstream.name());
    let mut yaml = rollgate_e2e::render_config(&opts, &common::probe_path());
    rollgate_e2e::static_cluster(&mut yaml, "grpc", grpc_port, true);
    Envoy::start_yaml(&yaml, 1).expect("Envoy starts with the probe and cluster grpc")
}

/// The probe's `x-probe-grpc-stream` note, environmental values masked.
fn stream_note(headers: &[(String, Vec<u8>)]) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k == "x-probe-grpc-stream")
        .map(|(_, v)| mask(&String::from_utf8_lossy(v)))
}

/// Replaces the values of `date` and `x-envoy-upstream-service-time` in the noted metadata
/// lists (`[k=v;k=v]`) with `*`.
fn mask(note: &str) -> String {
    note.split(" | ")
        .map(|event| match event.split_once('[') {
            Some((head, list)) => {
                let list = list.trim_end_matches(']');
                let entries: Vec<String> = list
                    .split(';')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| match kv.split_once('=') {
                        Some((k @ ("date" | "x-envoy-upstream-service-time"), _)) => {
                            format!("{k}=*")
                        }
                        _ => kv.to_string(),
                    })
                    .collect();
                format!("{head}[{}]", entries.join(";"))
            }
            None => event.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// What the probe noted for `op` in Envoy (through its upstream), and the answer's status.
fn in_envoy(envoy: &Envoy, upstream: &Upstream, op: &str) -> (Option<String>, u16) {
    let r = envoy
        .client()
        .get("probe.test", "/g", &[("x-probe-op", op.as_bytes())]);
    let note = upstream
        .received()
        .last()
        .and_then(|g| stream_note(&g.headers));
    (note, r.status)
}

/// What the probe noted for each of `ops`, run in turn on one plugin (one VM) of this host.
fn in_host(config: PluginConfig, ops: &[&str]) -> Vec<(Option<String>, u16)> {
    let host = Host::new();
    let plugin = host
        .start(common::probe(), config.name("rollgate").root_id("rollgate"))
        .expect("the probe starts");
    ops.iter()
        .map(|op| {
            let ex = plugin
                .run(HttpRequest::new("GET", "probe.test", "/g").header("x-probe-op", *op))
                .expect("no trap");
            let headers: Vec<(String, Vec<u8>)> = ex
                .request_headers
                .pairs()
                .iter()
                .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.clone()))
                .collect();
            (
                stream_note(&headers),
                ex.response.as_ref().map_or(0, |r| r.status),
            )
        })
        .collect()
}

type Sent = Arc<Mutex<Vec<(GrpcStreamCall, Vec<GrpcStreamSent>)>>>;

/// Token, cluster, service, method, `x-probe-meta`, and what one exchange was sent.
type Asked<'a> = (
    u32,
    &'a str,
    &'a str,
    &'a str,
    Option<String>,
    Vec<GrpcStreamSent>,
);

/// The echo server as a closure: what each stream was sent goes to `log`.
fn echo_closure(log: Sent) -> PluginConfig {
    PluginConfig::new("").grpc_stream_cluster("grpc", move |call: &GrpcStreamCall| {
        let (call, log) = (call.clone(), log.clone());
        let mut started = false;
        move |sent: &[GrpcStreamSent]| -> Vec<GrpcStreamReply> {
            log.lock().unwrap().push((call.clone(), sent.to_vec()));
            let mut out = Vec::new();
            if !started {
                started = true;
                out.push(GrpcStreamReply::InitialMetadata(Headers::from_pairs([
                    (":status", "200"),
                    ("content-type", "application/grpc"),
                    ("x-echo-initial", "i1"),
                    ("date", "Thu, 01 Jan 2026 00:00:00 GMT"),
                    ("x-envoy-upstream-service-time", "1"),
                ])));
            }
            for s in sent {
                match s {
                    GrpcStreamSent::Message(m) => out.push(GrpcStreamReply::Message(m.clone())),
                    GrpcStreamSent::Close => {
                        out.push(GrpcStreamReply::TrailingMetadata(Headers::from_pairs([
                            ("grpc-status", "0"),
                            ("x-echo-trailer", "t1"),
                        ])));
                        out.push(GrpcStreamReply::Close {
                            status: 0,
                            message: "via_upstream".into(),
                        });
                    }
                    GrpcStreamSent::Cancel => {}
                }
            }
            out
        }
    })
}

const OPS: [&str; 4] = [
    "grpc-stream",
    "grpc-stream",
    "grpc-stream-cancel",
    "grpc-stream-missing",
];

/// Answered, cancelled, cluster missing, and a server refusing the connection: the filter sees
/// the same callbacks, in the same order, with the same tokens, sizes, metadata and status.
#[test]
fn grpc_streams_like_envoys() {
    let _serial = rollgate_e2e::timing_lock();
    let upstream = Upstream::start("echo");
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let port = echo_server(seen.clone());
    let envoy = envoy_with_grpc(&upstream, port);
    let in_envoy_all: Vec<_> = OPS
        .iter()
        .map(|op| in_envoy(&envoy, &upstream, op))
        .collect();
    println!("Envoy: {in_envoy_all:#?}");
    let echoed = |token: u32| {
        format!(
            "open {token} | sent Ok Ok close Ok | initial {token} 5 [:status=200;\
             content-type=application/grpc;x-echo-initial=i1;date=*;\
             x-envoy-upstream-service-time=*] | message {token} 1 a | message {token} 2 bb | \
             trailing {token} 2 [grpc-status=0;x-echo-trailer=t1] | close {token} 0 status \
             0:via_upstream"
        )
    };
    // Envoy's own answers, pinned: stream tokens 6, 10, 14; after a cancel the token is
    // unknown (NotFound, 1); a token of another kind is BadArgument (2); a missing cluster is
    // ParseFailure without a token.
    assert_eq!(
        in_envoy_all,
        [
            (Some(echoed(6)), 200),
            (Some(echoed(10)), 200),
            (
                Some(
                    "open 14 | sent Ok cancel Ok | after 1 1 1 | http-token close 2 | \
                     call-token send 2"
                        .to_string()
                ),
                200
            ),
            (Some("open Err(ParseFailure)".to_string()), 200),
        ],
        "{}",
        envoy.log()
    );
    drop(envoy);
    let envoy_seen: Vec<Seen> = std::mem::take(&mut *seen.lock().unwrap());

    // `rollgate try --cluster grpc=URL`: the same server, for real.
    let url = format!("http://127.0.0.1:{port}");
    let by_url = PluginConfig::new("")
        .grpc_stream_cluster("grpc", rollgate::try_cmd::grpc_stream_url_cluster(&url));
    assert_eq!(in_host(by_url, &OPS), in_envoy_all, "by URL");
    // The server saw the same streams from both (the cancelled one aside: whether its message
    // left before the reset is a race in Envoy).
    let answered =
        |v: &[Seen]| -> Vec<Seen> { v.iter().filter(|s| s.meta == "m1").cloned().collect() };
    let host_seen: Vec<Seen> = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(answered(&host_seen), answered(&envoy_seen));
    assert_eq!(
        answered(&envoy_seen),
        vec![
            Seen {
                path: "/probe.Echo/Chat".into(),
                meta: "m1".into(),
                messages: vec![b"a".to_vec(), b"bb".to_vec()],
            };
            2
        ]
    );

    // A closure serving the cluster in the library: the same, and it is asked once per stream
    // with everything the probe did in its callback.
    let log: Sent = Arc::default();
    assert_eq!(
        in_host(echo_closure(log.clone()), &OPS),
        in_envoy_all,
        "by closure"
    );
    let log = log.lock().unwrap().clone();
    let asked: Vec<Asked> = log
        .iter()
        .map(|(c, sent)| {
            (
                c.token,
                c.cluster.as_str(),
                c.service.as_str(),
                c.method.as_str(),
                c.metadata.get_str("x-probe-meta"),
                sent.clone(),
            )
        })
        .collect();
    let both = vec![
        GrpcStreamSent::Message(b"a".to_vec()),
        GrpcStreamSent::Message(b"bb".to_vec()),
        GrpcStreamSent::Close,
    ];
    let m1 = Some("m1".to_string());
    assert_eq!(
        asked,
        [
            (6, "grpc", "probe.Echo", "Chat", m1.clone(), both.clone()),
            (10, "grpc", "probe.Echo", "Chat", m1, both),
            (
                14,
                "grpc",
                "probe.Echo",
                "Chat",
                None,
                vec![
                    GrpcStreamSent::Message(b"a".to_vec()),
                    GrpcStreamSent::Cancel
                ]
            ),
        ]
    );

    // The server refuses the connection: empty initial metadata, Envoy's trailers-only local
    // reply as trailing metadata, and 14 UNAVAILABLE with the router's reset words.
    let dead = free_port();
    let envoy = envoy_with_grpc(&upstream, dead);
    let envoy_refused = in_envoy(&envoy, &upstream, "grpc-stream");
    drop(envoy);
    println!("Envoy refused: {envoy_refused:?}");
    let words = "upstream connect error or disconnect/reset before headers. reset reason: \
                 remote connection failure";
    assert_eq!(
        envoy_refused,
        (
            Some(format!(
                "open 6 | sent Ok Ok close Ok | initial 6 0 [] | trailing 6 4 [:status=200;\
                 content-type=application/grpc;grpc-status=14;grpc-message={words}] | close 6 \
                 14 status 14:{words}{{upstream_reset_before_response_started\
                 {{remote_connection_failure|delayed_connect_error:_Connection_refused}}}}"
            )),
            200
        )
    );
    let url = format!("http://127.0.0.1:{dead}");
    let by_url = PluginConfig::new("")
        .grpc_stream_cluster("grpc", rollgate::try_cmd::grpc_stream_url_cluster(&url));
    assert_eq!(
        in_host(by_url, &["grpc-stream"]),
        std::slice::from_ref(&envoy_refused),
        "refused by URL"
    );
    let refused = PluginConfig::new("").grpc_stream_cluster("grpc", |_: &GrpcStreamCall| {
        let mut replies = Some(GrpcStreamReply::refused());
        move |_: &[GrpcStreamSent]| replies.take().unwrap_or_default()
    });
    assert_eq!(
        in_host(refused, &["grpc-stream"]),
        std::slice::from_ref(&envoy_refused),
        "refused"
    );
    // A cluster declared only for HTTP calls answers streams the same way.
    let http_only =
        PluginConfig::new("").cluster("grpc", |_| rollgate::wasmhost::CalloutReply::Reset);
    assert_eq!(
        in_host(http_only, &["grpc-stream"]),
        [envoy_refused],
        "HTTP-only cluster"
    );
}
