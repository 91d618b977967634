//! Differential tests for a filter that is not rollgate's (issue 14): the ABI probe
//! (`crates/abi-probe`, a small proxy-wasm module of our own driven by `x-probe-op`) runs in
//! this host and in a real Envoy 1.40 with the same raw HTTP/1.1 requests, and each test
//! asserts identical observations: the request header map the filter sees (order and repeats
//! included), what the upstream receives (headers, body), the answer, and the plugin's log
//! lines. Ignored as environmental: the random `x-request-id` value, the client's ephemeral
//! port, `x-envoy-expected-rq-timeout-ms` (added by Envoy's router after the filters),
//! `content-length` and `host`/`:authority` spelling on the upstream side (the codec's
//! framing), and `date`/`server` on answers.

#[path = "../../wasmhost/tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use rollgate::wasmhost::{Exchange, Host, HttpRequest, LogLevel, PluginConfig};
use rollgate_e2e::{Envoy, EnvoyOptions, Received, Upstream};

/// Envoy running the probe, routing every request to `upstream`.
fn envoy_with_probe(upstream: &Upstream) -> Envoy {
    let opts = EnvoyOptions::new("")
        .cluster(upstream.name(), upstream.port())
        .fallback_cluster(upstream.name());
    let yaml = rollgate_e2e::render_config(&opts, &common::probe_path());
    Envoy::start_yaml(&yaml, 1).expect("Envoy starts with the probe")
}

/// The probe in this host, configured as the Envoy above (plugin name and root id
/// `rollgate`, empty configuration).
fn host_probe() -> (Host, rollgate::wasmhost::Plugin) {
    let host = Host::new();
    let plugin = host
        .start(
            common::probe(),
            PluginConfig::new("").name("rollgate").root_id("rollgate"),
        )
        .expect("the probe starts");
    (host, plugin)
}

/// An answer as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

/// Sends `raw` (a whole HTTP/1.1 request) to Envoy on a fresh connection; the answer and the
/// client's local port.
fn send_raw(envoy: &Envoy, raw: &[u8]) -> (Answer, u16) {
    let mut s = TcpStream::connect(("127.0.0.1", envoy.port())).expect("connect to Envoy");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let port = s.local_addr().unwrap().port();
    s.write_all(raw).expect("send");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("header");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').expect("name: value");
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
        if k == "content-length" {
            length = v.parse().unwrap();
        }
        headers.push((k, v));
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).expect("body");
    let headers = headers
        .into_iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "date" | "server" | "content-length" | "connection"
            )
        })
        .collect();
    let body = String::from_utf8_lossy(&body).into_owned();
    (
        Answer {
            status,
            headers,
            body,
        },
        port,
    )
}

/// The host's answer, as [`send_raw`] reports Envoy's.
fn answer_of(ex: &Exchange) -> Answer {
    let resp = ex.response.as_ref().expect("an answer");
    Answer {
        status: resp.status,
        headers: resp
            .headers
            .pairs()
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .filter(|(k, _)| {
                !k.starts_with(':') && !matches!(k.as_str(), "date" | "server" | "content-length")
            })
            .collect(),
        body: String::from_utf8_lossy(&resp.body).into_owned(),
    }
}

/// The probe's `seen` note with the random request id blanked.
fn seen(note: &str) -> Vec<String> {
    note.split(' ')
        .map(|p| {
            if p.starts_with("x-request-id=") {
                "x-request-id=*".to_string()
            } else {
                p.to_string()
            }
        })
        .collect()
}

fn received_header(r: &Received, name: &str) -> Option<String> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// Digits (context ids, the stream's numbers) blanked.
fn normalized(lines: Vec<(String, String)>) -> Vec<(String, String)> {
    lines
        .into_iter()
        .map(|(l, m)| (l, m.replace(|c: char| c.is_ascii_digit(), "#")))
        .collect()
}

/// The plugin's own lines of the stream at Envoy's default level (info) and above, as
/// `rollgate try` prints them.
fn stream_logs(ex: &Exchange) -> Vec<(String, String)> {
    normalized(
        ex.logs
            .iter()
            .filter(|l| l.context_id == ex.context_id && !l.from_host && l.level >= LogLevel::Info)
            .map(|l| (level_name(l.level).to_string(), l.message.clone()))
            .collect(),
    )
}

/// The stream contexts' wasm log lines in Envoy's log (info and above, Envoy's default):
/// (level, message). Envoy prefixes a stream's lines with the plugin name and root id
/// (`wasm log rollgate rollgate: `), the root context's with the name alone.
fn envoy_plugin_logs(envoy: &Envoy) -> Vec<(String, String)> {
    envoy
        .log()
        .lines()
        .filter_map(|l| {
            let (_, msg) = l.split_once("wasm log rollgate rollgate: ")?;
            // `[time][thread][level][wasm] [file:line] wasm log …`
            let level = l.split('[').nth(3)?.split(']').next()?.to_string();
            Some((level, msg.to_string()))
        })
        .collect()
}

use rollgate::try_cmd::level_name;

/// The stream's lines once `on_log` wrote its own (it runs after the answer is sent).
fn envoy_logs_through_on_log(envoy: &Envoy) -> Vec<(String, String)> {
    for _ in 0..50 {
        let lines = envoy_plugin_logs(envoy);
        if lines.iter().any(|(_, m)| m.starts_with("on_log")) {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no on_log line in Envoy's log:\n{}", envoy.log());
}

/// Header order and interleaved repeats reach the filter as the client sent them; the
/// hop-by-hop headers Envoy's codec removes (`connection`, `keep-alive`,
/// `proxy-connection`, `upgrade`, `transfer-encoding`) never reach it.
#[test]
fn the_filter_sees_the_clients_header_order_without_hop_by_hop_headers() {
    let upstream = Upstream::start("echo");
    let envoy = envoy_with_probe(&upstream);
    let raw =
        "GET /p?q=1 HTTP/1.1\r\nHost: probe.test\r\nX-B: 1\r\nConnection: keep-alive, x-drop\r\n\
               Keep-Alive: timeout=5\r\nX-A: 2\r\nx-b: 3\r\nProxy-Connection: keep-alive\r\n\
               TE: trailers, deflate\r\nx-drop: 1\r\nUpgrade: foo\r\n\
               Upgrade-Insecure-Requests: 1\r\nx-probe-op: seen\r\n\r\n";
    let (in_envoy, _) = send_raw(&envoy, raw.as_bytes());
    let got = upstream.received();
    assert_eq!(got.len(), 1, "{}", envoy.log());
    let envoy_seen = seen(&received_header(&got[0], "x-probe-seen").expect("the probe's note"));

    let (_host, plugin) = host_probe();
    let mut req = HttpRequest::new("GET", "probe.test", "/p?q=1");
    for (k, v) in [
        ("x-b", "1"),
        ("connection", "keep-alive, x-drop"),
        ("keep-alive", "timeout=5"),
        ("x-a", "2"),
        ("x-b", "3"),
        ("proxy-connection", "keep-alive"),
        ("te", "trailers, deflate"),
        ("x-drop", "1"),
        ("upgrade", "foo"),
        ("upgrade-insecure-requests", "1"),
        ("x-probe-op", "seen"),
    ] {
        req = req.header(k, v);
    }
    let ex = plugin.run(req).expect("no trap");
    let host_seen = seen(&ex.request_header("x-probe-seen").expect("the probe's note"));
    assert_eq!(host_seen, envoy_seen, "filter's view: host vs Envoy");
    // What Envoy 1.40 did (and the host now does): the hop-by-hop headers and the one
    // `connection` names are gone, `te` keeps its `trailers` token, order and repeats stay.
    assert_eq!(
        envoy_seen,
        [
            ":authority=probe.test",
            ":path=/p?q=1",
            ":method=GET",
            ":scheme=http",
            "x-b=1",
            "x-a=2",
            "x-b=3",
            "te=trailers",
            "upgrade-insecure-requests=1",
            "x-probe-op=seen",
            "x-forwarded-proto=http",
            "x-request-id=*",
        ]
    );
    let answer = answer_of(&ex);
    assert_eq!(answer.status, in_envoy.status);
}

/// A request whose path carries a fragment is answered 400 (no body) by Envoy's connection
/// manager before the filter's request callbacks (the probe's `seen` never runs, the upstream
/// sees nothing); the filter's `on_log` still runs.
#[test]
fn a_path_with_a_fragment_is_refused_before_the_filter() {
    let upstream = Upstream::start("echo");
    let envoy = envoy_with_probe(&upstream);
    let raw = "GET /p#frag HTTP/1.1\r\nHost: probe.test\r\nx-probe-op: seen\r\n\r\n";
    let (in_envoy, _) = send_raw(&envoy, raw.as_bytes());
    assert_eq!(upstream.received().len(), 0);
    let envoy_logs = envoy_logs_through_on_log(&envoy);

    let (_host, plugin) = host_probe();
    let ex = plugin
        .run(HttpRequest::new("GET", "probe.test", "/p#frag").header("x-probe-op", "seen"))
        .expect("no trap");
    assert!(!ex.forwarded);
    assert_eq!(answer_of(&ex), in_envoy, "answer: host vs Envoy");
    assert_eq!(in_envoy.status, 400);
    assert_eq!(
        stream_logs(&ex),
        normalized(envoy_logs),
        "log lines: host vs Envoy"
    );
}

/// The filter rewrites the request body (the probe upper-cases it); the upstream receives what
/// the filter left, in both.
#[test]
fn a_body_rewrite_reaches_the_upstream() {
    let upstream = Upstream::start("echo");
    let envoy = envoy_with_probe(&upstream);
    let raw = "POST /b HTTP/1.1\r\nHost: probe.test\r\nx-probe-op: body\r\n\
               content-length: 11\r\n\r\nhello world";
    let (in_envoy, _) = send_raw(&envoy, raw.as_bytes());
    let got = upstream.received();
    assert_eq!(got.len(), 1, "{}", envoy.log());

    let (_host, plugin) = host_probe();
    let ex = plugin
        .run(
            HttpRequest::new("POST", "probe.test", "/b")
                .header("x-probe-op", "body")
                .header("content-length", "11")
                .body("hello world"),
        )
        .expect("no trap");
    assert_eq!(got[0].body, b"HELLO WORLD");
    assert_eq!(ex.request_body, got[0].body, "body: host vs Envoy");
    assert_eq!(answer_of(&ex).status, in_envoy.status);
}

/// The plugin's log lines at Envoy's default level (info) and above, in order: what Envoy
/// writes to its log, the host keeps per request.
#[test]
fn log_lines_like_envoys() {
    let upstream = Upstream::start("echo");
    let envoy = envoy_with_probe(&upstream);
    let raw = "GET /l HTTP/1.1\r\nHost: probe.test\r\nx-probe-op: warn\r\n\r\n";
    let (in_envoy, _) = send_raw(&envoy, raw.as_bytes());
    assert_eq!(in_envoy.status, 200);
    let envoy_logs = envoy_logs_through_on_log(&envoy);
    let envoy_logs = normalized(envoy_logs);

    let (_host, plugin) = host_probe();
    let ex = plugin
        .run(HttpRequest::new("GET", "probe.test", "/l").header("x-probe-op", "warn"))
        .expect("no trap");
    let host_logs = stream_logs(&ex);
    assert_eq!(host_logs, envoy_logs, "log lines: host vs Envoy");
    assert!(host_logs
        .iter()
        .any(|(l, m)| l == "warning" && m == "probe: a warning"));
}

/// The probe's notes about its call-out (`x-probe-auth-status`, `-auth-body`,
/// `-call-counts` as token:headers:body-size:trailers, `-call-status`) as the upstream got
/// them; the count of response headers is left out (Envoy adds its own: date, server,
/// x-envoy-upstream-service-time).
fn call_notes(headers: &[(String, Vec<u8>)]) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(k, _)| k.starts_with("x-probe-auth-") || k.starts_with("x-probe-call-"))
        .map(|(k, v)| {
            let v = String::from_utf8_lossy(v).into_owned();
            let v = if k == "x-probe-call-counts" {
                let parts: Vec<&str> = v.split(':').collect();
                format!("{}:*:{}:{}", parts[0], parts[2], parts[3])
            } else {
                v
            };
            (k.clone(), v)
        })
        .collect()
}

/// `proxy_http_call` to a cluster served for real (`rollgate try --cluster NAME=URL`), and to
/// one whose endpoint refuses connections: the filter gets what it gets in Envoy (status,
/// body, body size, gRPC status of the call), and the cluster's server gets the same call.
#[test]
fn http_call_outs_like_envoys() {
    let upstream = Upstream::start("echo");
    let auth = Upstream::start("auth");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    for (label, port) in [("answered", auth.port()), ("refused", dead)] {
        let opts = EnvoyOptions::new("")
            .cluster(upstream.name(), upstream.port())
            .cluster("auth", port)
            .fallback_cluster(upstream.name());
        let yaml = rollgate_e2e::render_config(&opts, &common::probe_path());
        let envoy = Envoy::start_yaml(&yaml, 1).expect("Envoy starts with the probe");
        let raw = "GET /c HTTP/1.1\r\nHost: probe.test\r\nx-probe-op: http\r\n\r\n";
        let (in_envoy, _) = send_raw(&envoy, raw.as_bytes());
        let got = upstream.received();
        let envoy_notes = call_notes(&got.last().expect("forwarded").headers);

        let (_host, plugin) = {
            let host = Host::new();
            let plugin = host
                .start(
                    common::probe(),
                    PluginConfig::new("")
                        .name("rollgate")
                        .root_id("rollgate")
                        .cluster(
                            "auth",
                            rollgate::try_cmd::url_cluster(&format!("http://127.0.0.1:{port}")),
                        ),
                )
                .expect("the probe starts");
            (host, plugin)
        };
        let ex = plugin
            .run(HttpRequest::new("GET", "probe.test", "/c").header("x-probe-op", "http"))
            .expect("no trap");
        let host_headers: Vec<(String, Vec<u8>)> = ex
            .request_headers
            .pairs()
            .iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.clone()))
            .collect();
        assert_eq!(
            call_notes(&host_headers),
            envoy_notes,
            "{label}: the filter's view"
        );
        assert!(!envoy_notes.is_empty(), "{label}: {}", envoy.log());
        assert_eq!(answer_of(&ex).status, in_envoy.status, "{label}");
        println!("{label}: {envoy_notes:?}");
    }
    // The cluster's server got the same call from both: POST /check, body "ping".
    let calls = auth.received();
    assert_eq!(calls.len(), 2, "{calls:?}");
    for c in &calls {
        assert_eq!(
            (c.method.as_str(), c.target.as_str(), c.body.as_slice()),
            ("POST", "/check", &b"ping"[..])
        );
    }
}

/// The probe's `props` notes: what the filter reads of Envoy's attributes.
fn prop_notes(headers: &[(String, Vec<u8>)]) -> Vec<(String, String)> {
    let skip = ["x-probe-op", "x-probe-seen", "x-probe-outside"];
    headers
        .iter()
        .filter(|(k, _)| k.starts_with("x-probe-") && !skip.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}

/// Properties the filter reads (source address and port, request path, url_path, host,
/// method, plugin name, root id, vm id, a missing path, one set by the filter itself, and one
/// another filter would set, given to the host as `--property` does) are what Envoy answers.
#[test]
fn properties_read_like_envoys() {
    let upstream = Upstream::start("echo");
    let envoy = envoy_with_probe(&upstream);
    let raw = "GET /p/q?x=1 HTTP/1.1\r\nHost: probe.test\r\nx-probe-op: props\r\n\r\n";
    let (in_envoy, port) = send_raw(&envoy, raw.as_bytes());
    let got = upstream.received();
    assert_eq!(got.len(), 1, "{}", envoy.log());
    let envoy_notes = prop_notes(&got[0].headers);

    let host = Host::new();
    // What Envoy's cluster_name property holds here, as another filter's would be given.
    let custom = envoy_notes
        .iter()
        .find(|(k, _)| k == "x-probe-custom")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let mut config = PluginConfig::new("").name("rollgate").root_id("rollgate");
    if custom != "None" {
        config = config.property(&["xds", "cluster_name"], custom.as_bytes());
    }
    let plugin = host
        .start(common::probe(), config)
        .expect("the probe starts");
    let ex = plugin
        .run(
            HttpRequest::new("GET", "probe.test", "/p/q?x=1")
                .header("x-probe-op", "props")
                .source(&format!("127.0.0.1:{port}")),
        )
        .expect("no trap");
    let host_headers: Vec<(String, Vec<u8>)> = ex
        .request_headers
        .pairs()
        .iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.clone()))
        .collect();
    assert_eq!(
        prop_notes(&host_headers),
        envoy_notes,
        "properties: host vs Envoy"
    );
    assert!(envoy_notes.len() >= 10, "{envoy_notes:?}");
    assert_eq!(answer_of(&ex).status, in_envoy.status);
}
