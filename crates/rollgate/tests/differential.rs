//! Differential test: the same 2,400 generated requests through the filter in this host and
//! through the filter in a real Envoy (the e2e harness) must get the same variant decisions
//! and the same local responses.
//!
//! The policy exercises every decision input the requests vary: hosts (case, ports), paths,
//! queries, headers, cookies, sticky splits keyed by header, cookie, query and
//! `X-Forwarded-For`, spoofed internal headers, bytes that are not UTF-8, no route at all
//! (Envoy answers `404 no variant`), and a rate limit whose refusals are the filter's local
//! responses (1 token per hour: deterministic however long the run takes).

#[path = "../../wasmhost/tests/common/mod.rs"]
mod common;

use rollgate::wasmhost::{Exchange, Host, HttpRequest, PluginConfig};
use rollgate_e2e::{Response, Stack, ECHO_PREFIX, SEED_CLUSTERS};

const POLICY: &str = r#"{
  "name": "diff",
  "variants": { "stable": "k8s-flask", "canary": "k8s-flask-canary", "dev": "k8s-flask-dev" },
  "routes": [
    { "match": "Host(`dev.coding`) || PathPrefix(`/dev/`)", "variant": "dev" },
    { "match": "Host(`pro.coding`) && Headers(`location`, `shenzhen`)", "variant": "canary" },
    { "match": "Host(`pro.coding`) && Query(`beta`, `1`)", "variant": "canary" },
    { "match": "Host(`pro.coding`) && Cookie(`tier`, `gold`)", "variant": "canary" },
    { "match": "Host(`pro.coding`)", "split": [ { "variant": "canary", "weight": 30 } ],
      "sticky": { "header": "x-user-id" }, "default": "stable" },
    { "match": "Host(`cookie.coding`)",
      "split": [ { "variant": "canary", "weight": 50 }, { "variant": "dev", "weight": 20 } ],
      "sticky": { "cookie": "uid" }, "default": "stable" },
    { "match": "Host(`query.coding`)", "split": [ { "variant": "canary", "weight": 40 } ],
      "sticky": { "query": "user" }, "default": "stable" },
    { "match": "Host(`xff.coding`)", "split": [ { "variant": "canary", "weight": 50 } ],
      "sticky": { "source_ip": { "xff_depth": 1 } }, "default": "stable" },
    { "match": "Host(`limited.coding`)", "variant": "stable" }
  ],
  "rate_limits": [
    { "name": "tenants", "match": "Host(`limited.coding`)", "average": 1, "period": "1h",
      "burst": 3, "source": { "header": "x-tenant" } }
  ]
}"#;

const REQUESTS: usize = 2400;

/// splitmix64: a fixed seed makes the request set reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct Generated {
    method: &'static str,
    authority: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
}

fn generate(n: usize) -> Vec<Generated> {
    let mut rng = Rng(0x00d1_ff00);
    let hosts = [
        "pro.coding",
        "pro.coding",
        "pro.coding",
        "PRO.Coding",
        "pro.coding:8080",
        "dev.coding",
        "cookie.coding",
        "cookie.coding",
        "query.coding",
        "query.coding",
        "xff.coding",
        "limited.coding",
        "other.example",
        "pro.coding.evil",
    ];
    (0..n)
        .map(|_| {
            let authority = rng.pick(&hosts).to_string();
            let user = format!("u{}", rng.below(400));
            let mut path = rng
                .pick(&["/", "/api/items", "/dev/tools", "/static/app.js", "/a/b"])
                .to_string();
            let mut query = Vec::new();
            if rng.chance(25) {
                query.push(format!("beta={}", rng.pick(&["1", "0", "true"])));
            }
            if rng.chance(40) {
                query.push(format!(
                    "user={}",
                    user.replace('u', rng.pick(&["u", "%75"]))
                ));
            }
            if !query.is_empty() {
                path = format!("{path}?{}", query.join("&"));
            }
            let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
            let mut add = |k: &str, v: &[u8]| headers.push((k.to_string(), v.to_vec()));
            if rng.chance(20) {
                let loc = rng.pick(&["shenzhen", "beijing", "ShenZhen", "shenzhen "]);
                add("location", loc.as_bytes());
            }
            if rng.chance(60) {
                add("x-user-id", user.as_bytes());
            }
            if rng.chance(45) {
                let tier = rng.pick(&["gold", "silver", "GOLD"]);
                let cookie = match rng.below(3) {
                    0 => format!("uid={user}"),
                    1 => format!("theme=dark; uid=\"{user}\"; tier={tier}"),
                    _ => format!("tier={tier}"),
                };
                add("cookie", cookie.as_bytes());
            }
            if rng.chance(40) {
                let xff = format!(
                    "203.0.113.{}, 10.0.{}.{}",
                    rng.below(255),
                    rng.below(4),
                    rng.below(255)
                );
                add("x-forwarded-for", xff.as_bytes());
            }
            if rng.chance(50) {
                add("x-tenant", format!("t{}", rng.below(25)).as_bytes());
            }
            if rng.chance(8) {
                add("x-rollgate-cluster", b"k8s-flask-dev");
                add("x-rollgate-variant", b"dev");
            }
            if rng.chance(5) {
                add("x-user-id", b"\xff\xfe\x80user");
            }
            if rng.chance(5) {
                add("location", b"shen\xe9zhen");
            }
            Generated {
                method: if rng.chance(80) { "GET" } else { "POST" },
                authority,
                path,
                headers,
            }
        })
        .collect()
}

/// What a client observes of the filter's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Routed to a variant's cluster.
    Routed { variant: String, cluster: String },
    /// No variant: the route without a cluster header answers 404 "no variant".
    Unrouted,
    /// The filter's local response: status, body, header names it added.
    Local {
        status: u16,
        body: String,
        headers: Vec<String>,
    },
}

fn from_host(ex: &Exchange) -> Outcome {
    if let Some(l) = &ex.local_response {
        let mut headers: Vec<String> = l
            .headers
            .pairs()
            .iter()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect();
        headers.sort();
        return Outcome::Local {
            status: l.status as u16,
            body: String::from_utf8_lossy(&l.body).into_owned(),
            headers,
        };
    }
    match (
        ex.request_header("x-rollgate-variant"),
        ex.request_header("x-rollgate-cluster"),
    ) {
        (Some(variant), Some(cluster)) => Outcome::Routed { variant, cluster },
        _ => Outcome::Unrouted,
    }
}

fn from_envoy(r: &Response, expected_local_headers: &[String]) -> Outcome {
    let body = r.body_str();
    if r.status == 200 && r.header("x-upstream").is_some() {
        return Outcome::Routed {
            variant: r
                .header_str(&format!("{ECHO_PREFIX}x-rollgate-variant"))
                .unwrap_or_default(),
            cluster: body,
        };
    }
    if r.status == 404 && body == "no variant" {
        return Outcome::Unrouted;
    }
    // Only the header names the host saw are compared: Envoy adds its own (date, server…).
    let mut headers: Vec<String> = expected_local_headers
        .iter()
        .filter(|h| r.header(h).is_some())
        .cloned()
        .collect();
    headers.sort();
    Outcome::Local {
        status: r.status,
        body,
        headers,
    }
}

#[test]
fn host_and_envoy_decide_alike() {
    let requests = generate(REQUESTS);

    let host = Host::new();
    let plugin = host
        .start(common::filter(), PluginConfig::new(POLICY).workers(2))
        .expect("the filter accepts the differential policy");
    let in_host: Vec<Outcome> = requests
        .iter()
        .map(|g| {
            let mut r = HttpRequest::new(g.method, &g.authority, &g.path).source("127.0.0.1:40000");
            for (k, v) in &g.headers {
                r = r.header(k, v);
            }
            from_host(&plugin.run(r).expect("no trap in the host"))
        })
        .collect();

    let stack = Stack::try_start(POLICY, &SEED_CLUSTERS, None).expect("Envoy starts");
    let mut clients = [stack.client(), stack.client()];
    let mut mismatches = Vec::new();
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for (i, (g, expected)) in requests.iter().zip(&in_host).enumerate() {
        let headers: Vec<(&str, &[u8])> = g
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let response = clients[i % 2]
            .request(g.method, &g.authority, &g.path, &headers, b"")
            .unwrap_or_else(|e| panic!("request {i} to Envoy: {e}"));
        let local_headers = match expected {
            Outcome::Local { headers, .. } => headers.clone(),
            _ => Vec::new(),
        };
        let in_envoy = from_envoy(&response, &local_headers);
        let label = match expected {
            Outcome::Routed { variant, .. } => variant.clone(),
            Outcome::Unrouted => "unrouted".into(),
            Outcome::Local { status, .. } => format!("local {status}"),
        };
        *counts.entry(label).or_default() += 1;
        if in_envoy != *expected {
            mismatches.push(format!(
                "#{i} {} {}{} {:?}:\n  host:  {expected:?}\n  envoy: {in_envoy:?}",
                g.method,
                g.authority,
                g.path,
                g.headers
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v)))
                    .collect::<Vec<_>>()
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {REQUESTS} requests decided differently (first 10):\n{}",
        mismatches.len(),
        mismatches
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The generated set really covers every kind of outcome.
    for label in ["stable", "canary", "dev", "unrouted", "local 429"] {
        assert!(
            counts.get(label).copied().unwrap_or(0) >= 20,
            "too few '{label}' outcomes: {counts:?}"
        );
    }
}

/// What a client sees of one request around a trap: the cluster that served it, no route,
/// or a local answer's status.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Served(String),
    Unrouted,
    /// Status and `grpc-status`.
    Local(u16, Option<String>),
}

/// A trap on a request, then more requests, under each failure policy: `rollgate try`
/// (the CLI, one worker) answers each as a real Envoy 1.40 (the test-trap build of the filter,
/// `--concurrency 1`) does. Measured on Envoy 1.40: the trapping request gets 503 under every
/// policy (`Context::failStream`, details `wasm_fail_stream`; FAIL_OPEN too), then FAIL_CLOSED
/// keeps answering 503, FAIL_OPEN lets requests past the filter (unrouted here), and
/// FAIL_RELOAD serves them from a fresh VM after its 1 s reload backoff
/// (the Envoy run waits 1.5 s after the trap; `try` has no clock between requests and
/// reloads at once, the answer Envoy gives once the backoff passed).
/// Before `--failure-policy`, `try` printed the trap and exited 1 after the trapping request.
#[test]
fn a_trap_then_the_next_requests_like_envoy() {
    const TRAP_POLICY: &str = r#"{"name":"trap","variants":{"stable":"k8s-flask","canary":"k8s-flask-canary"},"default":"canary"}"#;
    // The last request is gRPC: a fail-closed answer to it is a trailers-only 200 with
    // grpc-status 14 (UNAVAILABLE, `Context::failStream`).
    let trap = [false, true, false, false, false];
    let grpc = [false, false, false, false, true];
    let lines: Vec<String> = trap
        .iter()
        .zip(grpc)
        .map(|(t, g)| {
            if *t {
                r#"{"authority":"pro.coding","headers":{"x-rollgate-test-trap":"1"}}"#.into()
            } else if g {
                r#"{"authority":"pro.coding","method":"POST","headers":{"content-type":"application/grpc"}}"#.into()
            } else {
                r#"{"authority":"pro.coding"}"#.to_string()
            }
        })
        .collect();
    let wasm = rollgate_e2e::test_trap_wasm_path();
    for policy in ["FAIL_CLOSED", "FAIL_OPEN", "FAIL_RELOAD"] {
        // In `rollgate try`.
        let dir = std::env::temp_dir().join(format!(
            "rollgate-diff-trap-{}-{policy}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let policy_file = dir.join("policy.json");
        let requests_file = dir.join("requests.jsonl");
        std::fs::write(&policy_file, TRAP_POLICY).expect("write policy");
        std::fs::write(&requests_file, lines.join("\n")).expect("write requests");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rollgate"))
            .args(["try", "--policy", &policy_file.to_string_lossy()])
            .args(["--requests", &requests_file.to_string_lossy()])
            .args(["--wasm", &wasm.to_string_lossy()])
            .args(["--failure-policy", &policy.to_ascii_lowercase()])
            .output()
            .expect("run rollgate try");
        let _ = std::fs::remove_dir_all(&dir);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "a trap exits 1 at the end: {stderr}"
        );
        assert!(
            stderr.contains("line 2: "),
            "the trap is named on stderr: {stderr}"
        );
        let answers: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(
            answers.len(),
            trap.len(),
            "every request answered: {answers:?}"
        );
        let in_try: Vec<Seen> = answers
            .iter()
            .map(|a| {
                if !a["local_response"].is_null() {
                    let status = a["response"]["status"].as_u64().unwrap_or_default();
                    let grpc = a["response"]["headers"]["grpc-status"]
                        .as_str()
                        .map(str::to_string);
                    return Seen::Local(status as u16, grpc);
                }
                match a["cluster"].as_str() {
                    Some(c) => Seen::Served(c.to_string()),
                    None => Seen::Unrouted,
                }
            })
            .collect();
        assert!(answers[1]["trap"].is_string(), "{:?}", answers[1]);
        assert!(answers[0]["trap"].is_null(), "{:?}", answers[0]);
        assert_eq!(
            answers[1]["local_response"]["details"], "wasm_fail_stream",
            "{policy}"
        );

        // In Envoy.
        let upstreams: Vec<rollgate_e2e::Upstream> = SEED_CLUSTERS
            .iter()
            .map(|n| rollgate_e2e::Upstream::start(n))
            .collect();
        let mut opts = rollgate_e2e::EnvoyOptions::new(TRAP_POLICY).concurrency(1);
        for u in &upstreams {
            opts = opts.cluster(u.name(), u.port());
        }
        let yaml = rollgate_e2e::render_config(&opts, &wasm);
        assert_eq!(yaml.matches("failure_policy: FAIL_CLOSED").count(), 1);
        let yaml = yaml.replace(
            "failure_policy: FAIL_CLOSED",
            &format!("failure_policy: {policy}"),
        );
        let envoy = rollgate_e2e::Envoy::start_yaml(&yaml, 1).expect("Envoy starts");
        let mut in_envoy = Vec::new();
        for (i, t) in trap.iter().enumerate() {
            if i > 0 && trap[i - 1] {
                std::thread::sleep(std::time::Duration::from_millis(1500));
            }
            let headers: &[(&str, &[u8])] = if *t {
                &[("x-rollgate-test-trap", b"1")]
            } else if grpc[i] {
                &[("content-type", b"application/grpc")]
            } else {
                &[]
            };
            let method = if grpc[i] { "POST" } else { "GET" };
            let r = rollgate_e2e::Client::new(envoy.port())
                .request(method, "pro.coding", "/", headers, b"")
                .expect("Envoy answers");
            in_envoy.push(if r.status == 200 && r.header("x-upstream").is_some() {
                Seen::Served(r.header_str("x-upstream").unwrap_or_default())
            } else if (r.status == 404 && r.body_str() == "no variant")
                || r.header_str("grpc-message").as_deref() == Some("no variant")
            {
                // The test config's catch-all direct response (as a gRPC answer for gRPC).
                Seen::Unrouted
            } else {
                Seen::Local(r.status, r.header_str("grpc-status"))
            });
        }
        assert_eq!(
            in_try,
            in_envoy,
            "{policy}: try vs Envoy\n{answers:?}\n{}",
            envoy.log()
        );
        println!("{policy}: {in_envoy:?}");
    }
}

/// Response headers Envoy adds on its own, left out of the comparison: `date`, `server`,
/// `x-request-id`, `x-envoy-*`, and the HTTP/1.1 codec's framing (`content-length`,
/// `transfer-encoding`, `connection`).
fn environmental(name: &str) -> bool {
    matches!(
        name,
        "date" | "server" | "x-request-id" | "content-length" | "transfer-encoding" | "connection"
    ) || name.starts_with("x-envoy-")
}

/// A local reply to a gRPC request (`content-type: application/grpc`): Envoy answers a
/// trailers-only 200 with `content-type: application/grpc`, `grpc-status` (the plugin's, else
/// mapped from the HTTP status: 429 → 14) and `grpc-message` (the percent-encoded body), no body
/// (Envoy `Http::Utility::prepareLocalReply`, source/common/http/utility.cc). The filter's rate
/// limit refusal (429 "Too Many Requests") is the local reply. Before, the host answered 429
/// `text/plain` with the body.
#[test]
fn a_local_reply_to_a_grpc_request_like_envoy() {
    const GRPC_POLICY: &str = r#"{"name":"grpc","variants":{"stable":"k8s-flask"},"default":"stable",
      "rate_limits":[{"name":"t","average":1,"period":"1h","burst":1,"source":{"header":"x-tenant"}}]}"#;
    let headers: &[(&str, &[u8])] = &[
        ("content-type", b"application/grpc"),
        ("te", b"trailers"),
        ("x-tenant", b"t1"),
    ];
    let observe = |status: u16, hs: Vec<(String, Vec<u8>)>, body: Vec<u8>| {
        let mut hs: Vec<(String, String)> = hs
            .into_iter()
            .filter(|(k, _)| !environmental(k))
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        hs.sort();
        (status, hs, String::from_utf8_lossy(&body).into_owned())
    };

    let plugin = Host::new()
        .start(common::filter(), PluginConfig::new(GRPC_POLICY))
        .expect("the filter accepts the policy");
    let in_host: Vec<_> = (0..2)
        .map(|_| {
            let mut r = HttpRequest::new("POST", "grpc.test", "/pkg.Svc/Call");
            for (k, v) in headers {
                r = r.header(k, v);
            }
            let ex = plugin.run(r).expect("no trap");
            let resp = ex.response.expect("answered");
            let hs = resp
                .headers
                .pairs()
                .iter()
                .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.clone()))
                .collect();
            observe(resp.status, hs, resp.body)
        })
        .collect();

    let stack = Stack::try_start(GRPC_POLICY, &SEED_CLUSTERS, None).expect("Envoy starts");
    let mut client = stack.client();
    let in_envoy: Vec<_> = (0..2)
        .map(|_| {
            let r = client
                .request("POST", "grpc.test", "/pkg.Svc/Call", headers, b"")
                .expect("Envoy answers");
            observe(r.status, r.headers, r.body)
        })
        .collect();
    println!("host:  {in_host:?}\nenvoy: {in_envoy:?}");
    // The first is the upstream's (an echo server: compared on status only); the second the
    // filter's local reply, compared whole.
    assert_eq!(in_host[0].0, 200);
    assert_eq!(in_envoy[0].0, 200);
    assert_eq!(in_host[1], in_envoy[1], "{}", stack.envoy.log());
    assert!(
        in_envoy[1]
            .1
            .contains(&("content-type".into(), "application/grpc".into())),
        "{in_envoy:?}"
    );
}
