//! Differential tests for `proxy_grpc_call` (issue 14): the ABI probe
//! (`crates/abi-probe`, ops `grpc` and `grpc-missing`) makes a unary gRPC call in this host
//! and in a real Envoy 1.40 with the same request, and each test asserts that the filter
//! observes the same thing: the dispatch status, the token, the status code and size
//! `on_grpc_call_response` gets, the response message bytes (GrpcReceiveBuffer), and
//! `proxy_get_status` (code and message). The probe writes them as `x-probe-grpc-*` request
//! headers, which the upstream receives. Nothing is ignored.
//!
//! In Envoy the gRPC server is a second listener of the same Envoy with an HTTP/2 codec and
//! `grpc_http1_reverse_bridge`, in front of a third listener whose route answers the message
//! bytes with a `direct_response`: the bridge frames the message and adds `grpc-status: 0`
//! trailers, so no gRPC library is involved on either side.

#[path = "../../wasmhost/tests/common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};

use rollgate::wasmhost::{GrpcCall, GrpcReply, Host, HttpRequest, PluginConfig};
use rollgate_e2e::{Envoy, EnvoyOptions, Upstream};

/// The message the test server answers (protobuf: field 1, string "hello").
const ANSWER: &[u8] = b"\x0a\x05hello";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Envoy running the probe, with cluster `grpc` (HTTP/2) at `grpc_port`; when `serve` is set,
/// that port is this Envoy's own gRPC server listener.
fn envoy_with_grpc(upstream: &Upstream, grpc_port: u16, serve: bool) -> Envoy {
    let opts = EnvoyOptions::new("")
        .cluster(upstream.name(), upstream.port())
        .fallback_cluster(upstream.name());
    let mut yaml = rollgate_e2e::render_config(&opts, &common::probe_path());
    let backend_port = free_port();
    let listeners = format!(
        r#"  - name: grpc_server
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {grpc_port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: grpc_server
          codec_type: HTTP2
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/probe.Echo/Say" }}
                route: {{ cluster: grpc_backend }}
              # Envoy turns a direct response to a gRPC request into a trailers-only answer:
              # grpc-status 7 (from 403), grpc-message the body.
              - match: {{ prefix: "/probe.Echo/Deny" }}
                direct_response: {{ status: 403, body: {{ inline_string: "denied é%" }} }}
                typed_per_filter_config:
                  envoy.filters.http.grpc_http1_reverse_bridge:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_http1_reverse_bridge.v3.FilterConfigPerRoute
                    disabled: true
          http_filters:
          - name: envoy.filters.http.grpc_http1_reverse_bridge
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_http1_reverse_bridge.v3.FilterConfig
              content_type: application/x-protobuf
              withhold_grpc_frames: true
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: grpc_backend
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {backend_port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: grpc_backend
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: "\n\u0005hello" }} }}
              response_headers_to_add:
              - header: {{ key: content-type, value: application/x-protobuf }}
                append_action: OVERWRITE_IF_EXISTS_OR_ADD
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    );
    if serve {
        yaml = yaml.replacen("  clusters:\n", &format!("{listeners}  clusters:\n"), 1);
    }
    rollgate_e2e::static_cluster(&mut yaml, "grpc", grpc_port, true);
    rollgate_e2e::static_cluster(&mut yaml, "grpc_backend", backend_port, false);
    Envoy::start_yaml(&yaml, 1).expect("Envoy starts with the probe and the gRPC server")
}

/// The `x-probe-grpc-*` notes among request headers, in order.
fn grpc_notes(headers: &[(String, Vec<u8>)]) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(k, _)| k.starts_with("x-probe-grpc"))
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}

/// The notes without the call's token (which counts the VM's earlier calls).
fn untokened(notes: &[(String, String)]) -> Vec<(String, String)> {
    notes
        .iter()
        .filter(|(k, _)| k != "x-probe-grpc-token")
        .map(|(k, v)| match v.split_once(':') {
            Some((_, rest)) if k == "x-probe-grpc-answer" => (k.clone(), rest.to_string()),
            _ => (k.clone(), v.clone()),
        })
        .collect()
}

/// What the probe noted for `op` in Envoy (through its upstream), and its answer status.
fn in_envoy(envoy: &Envoy, upstream: &Upstream, op: &str) -> (Vec<(String, String)>, u16) {
    let r = envoy
        .client()
        .get("probe.test", "/g", &[("x-probe-op", op.as_bytes())]);
    let got = upstream.received();
    let notes = got
        .last()
        .map(|g| grpc_notes(&g.headers))
        .unwrap_or_default();
    (notes, r.status)
}

/// What the probe noted for `op` in this host, with `config` declaring the clusters.
fn in_host(config: PluginConfig, op: &str) -> (Vec<(String, String)>, u16) {
    let host = Host::new();
    let plugin = host
        .start(common::probe(), config.name("rollgate").root_id("rollgate"))
        .expect("the probe starts");
    let ex = plugin
        .run(HttpRequest::new("GET", "probe.test", "/g").header("x-probe-op", op))
        .expect("no trap");
    let headers: Vec<(String, Vec<u8>)> = ex
        .request_headers
        .pairs()
        .iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.clone()))
        .collect();
    (
        grpc_notes(&headers),
        ex.response.as_ref().map_or(0, |r| r.status),
    )
}

/// Answered, cluster missing, and server unreachable: the filter sees the same in both.
#[test]
fn grpc_calls_like_envoys() {
    let upstream = Upstream::start("echo");
    let grpc_port = free_port();
    let envoy = envoy_with_grpc(&upstream, grpc_port, true);
    let seen: Arc<Mutex<Vec<GrpcCall>>> = Arc::default();
    let calls = seen.clone();
    let answering = move || {
        let calls = calls.clone();
        PluginConfig::new("").grpc_cluster("grpc", move |call| {
            calls.lock().unwrap().push(call.clone());
            GrpcReply::Message(ANSWER.to_vec())
        })
    };

    // Answered: token 5 (Envoy numbers a VM's gRPC calls 5, 9, 13, …), status 0, the
    // message bytes, and no status message.
    let envoy_answered = in_envoy(&envoy, &upstream, "grpc");
    assert_eq!(
        envoy_answered.0,
        [
            ("x-probe-grpc-token".to_string(), "5".to_string()),
            ("x-probe-grpc-answer".into(), "5:0:7:0a0568656c6c6f".into()),
            ("x-probe-grpc-status".into(), "0:none".into()),
        ],
        "{}",
        envoy.log()
    );
    assert_eq!(in_host(answering(), "grpc"), envoy_answered, "answered");
    // `rollgate try --cluster grpc=URL` sends the call for real, here to Envoy's gRPC server
    // listener, and the filter sees the same.
    let url = format!("http://127.0.0.1:{grpc_port}");
    let by_url =
        PluginConfig::new("").grpc_cluster("grpc", rollgate::try_cmd::grpc_url_cluster(&url));
    assert_eq!(in_host(by_url, "grpc"), envoy_answered, "answered by URL");

    // The next call on the same VM gets token 9, in both.
    let envoy_twice = in_envoy(&envoy, &upstream, "grpc");
    let host = Host::new();
    let plugin = host
        .start(
            common::probe(),
            answering().name("rollgate").root_id("rollgate"),
        )
        .expect("the probe starts");
    let mut host_twice = None;
    for _ in 0..2 {
        let ex = plugin
            .run(HttpRequest::new("GET", "probe.test", "/g").header("x-probe-op", "grpc"))
            .expect("no trap");
        let headers: Vec<(String, Vec<u8>)> = ex
            .request_headers
            .pairs()
            .iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.clone()))
            .collect();
        host_twice = Some(grpc_notes(&headers));
    }
    assert_eq!(host_twice, Some(envoy_twice.0.clone()), "second call");
    assert_eq!(envoy_twice.0[0].1, "9");

    // The handler got the call as the probe made it.
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls.len(), 3);
    let c = &calls[0];
    assert_eq!(
        (c.cluster.as_str(), c.service.as_str(), c.method.as_str()),
        ("grpc", "probe.Echo", "Say")
    );
    assert_eq!(c.message, b"\x0a\x02hi");
    assert_eq!(c.metadata.get_str("x-probe-meta").as_deref(), Some("m1"));
    assert_eq!(c.timeout, Some(std::time::Duration::from_secs(1)));

    // The server refuses (grpc-status 7, grpc-message "denied é%", which it percent-encodes):
    // on_grpc_close with both, the message as sent (Envoy does not decode it) followed by
    // Envoy's response code details.
    let envoy_denied = in_envoy(&envoy, &upstream, "grpc-deny");
    let envoy_denied = untokened(&envoy_denied.0);
    assert_eq!(
        envoy_denied,
        [
            ("x-probe-grpc-answer".to_string(), "7:0:none".to_string()),
            (
                "x-probe-grpc-status".into(),
                "7:denied %C3%A9%25{via_upstream}".into()
            ),
        ],
    );
    let by_url =
        PluginConfig::new("").grpc_cluster("grpc", rollgate::try_cmd::grpc_url_cluster(&url));
    let denied = PluginConfig::new("").grpc_cluster("grpc", |_| GrpcReply::Close {
        status: 7,
        message: "denied %C3%A9%25{via_upstream}".into(),
    });
    assert_eq!(
        untokened(&in_host(by_url, "grpc-deny").0),
        envoy_denied,
        "denied by URL"
    );
    assert_eq!(
        untokened(&in_host(denied, "grpc-deny").0),
        envoy_denied,
        "denied"
    );

    // Cluster missing: the call is refused at once with ParseFailure (4), no token.
    let envoy_missing = in_envoy(&envoy, &upstream, "grpc-missing");
    assert_eq!(
        envoy_missing.0,
        [("x-probe-grpc-missing".to_string(), "4:0".to_string())]
    );
    assert_eq!(
        in_host(answering(), "grpc-missing"),
        envoy_missing,
        "missing"
    );
    drop(envoy);

    // Server unreachable: on_grpc_close with 14 UNAVAILABLE and the router's reset words.
    let dead = free_port();
    let envoy = envoy_with_grpc(&upstream, dead, false);
    let envoy_refused = in_envoy(&envoy, &upstream, "grpc");
    let refused = PluginConfig::new("").grpc_cluster("grpc", |_| GrpcReply::refused());
    assert_eq!(in_host(refused, "grpc"), envoy_refused, "unreachable");
    let url = format!("http://127.0.0.1:{dead}");
    let by_url =
        PluginConfig::new("").grpc_cluster("grpc", rollgate::try_cmd::grpc_url_cluster(&url));
    assert_eq!(in_host(by_url, "grpc"), envoy_refused, "unreachable by URL");
    // A cluster declared only for HTTP calls answers gRPC calls the same way.
    let http_only =
        PluginConfig::new("").cluster("grpc", |_| rollgate::wasmhost::CalloutReply::Reset);
    assert_eq!(
        in_host(http_only, "grpc"),
        envoy_refused,
        "HTTP-only cluster"
    );
    println!("answered {envoy_answered:?}\nmissing {envoy_missing:?}\nrefused {envoy_refused:?}");
}

/// A server that accepts the connection and never answers: the call's 1 s timeout ends it.
#[test]
fn a_grpc_call_that_times_out_like_envoys() {
    let upstream = Upstream::start("echo");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let envoy = envoy_with_grpc(&upstream, port, false);
    let envoy_timeout = in_envoy(&envoy, &upstream, "grpc");
    assert_eq!(
        untokened(&envoy_timeout.0),
        [
            ("x-probe-grpc-answer".to_string(), "14:0:none".to_string()),
            (
                "x-probe-grpc-status".into(),
                "14:upstream request timeout{response_timeout}".into()
            ),
        ]
    );
    let url = format!("http://127.0.0.1:{port}");
    let by_url =
        PluginConfig::new("").grpc_cluster("grpc", rollgate::try_cmd::grpc_url_cluster(&url));
    assert_eq!(in_host(by_url, "grpc"), envoy_timeout, "timed out by URL");
    let timed_out = PluginConfig::new("").grpc_cluster("grpc", |_| GrpcReply::timed_out());
    assert_eq!(in_host(timed_out, "grpc"), envoy_timeout, "timed out");
    drop(silent);
}
