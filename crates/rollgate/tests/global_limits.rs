//! Global rate limits end to end, with real parts: Redis (Debian's `redis-server`), the real
//! `rollgate ratelimit` binary, and Envoy 1.40 processes, either with rollgate's filter
//! (`scope: global` limits, asked through `proxy_grpc_call`) or with Envoy's own
//! `envoy.filters.http.ratelimit` (protocol conformance). Counts come from Envoy's stats and
//! Redis, not from client samples alone.

use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rollgate_e2e::{timing_lock, wasm_path, yaml_quote, Envoy, Load, Redis, Upstream};

/// `rollgate ratelimit`, killed on drop.
struct Service {
    child: Child,
    port: u16,
}

impl Service {
    fn start(redis: &Redis, policy_file: &std::path::Path) -> Service {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Service::start_on(redis, policy_file, port)
    }

    fn start_on(redis: &Redis, policy_file: &std::path::Path, port: u16) -> Service {
        let child = Command::new(env!("CARGO_BIN_EXE_rollgate"))
            .args(["ratelimit", "--redis", &redis.url()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--policy")
            .arg(policy_file)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start rollgate ratelimit");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "rollgate ratelimit not listening"
            );
            thread::sleep(Duration::from_millis(20));
        }
        // It reads the policy right after binding; give that read a moment.
        thread::sleep(Duration::from_millis(300));
        Service { child, port }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rollgate-global-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The clusters every config here has: the upstream, and the service over HTTP/2.
fn clusters(upstream: u16, rls: u16) -> String {
    format!(
        r#"  clusters:
  - name: stable
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: stable
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }} }} }}] }}]
  - name: rls
    type: STATIC
    connect_timeout: 0.25s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: rls
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {rls} }} }} }} }}] }}]
"#
    )
}

fn listener(http_filters: &str, route_extra: &str) -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
stats_flush_interval: 1s
static_resources:
  listeners:
  - name: main
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: main
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route:
                  cluster: stable
{route_extra}
          http_filters:
{http_filters}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
}

/// Envoy with rollgate's filter serving `policy` (routes everything to `stable`).
fn rollgate_envoy(policy: &str, upstream: u16, rls: u16) -> Envoy {
    let filters = format!(
        r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: rollgate
                root_id: rollgate
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {policy}
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {wasm} }} }}
                failure_policy: FAIL_CLOSED"#,
        policy = yaml_quote(policy),
        wasm = yaml_quote(&wasm_path().to_string_lossy()),
    );
    let yaml = listener(&filters, "") + &clusters(upstream, rls);
    Envoy::start_yaml(&yaml, 2).unwrap_or_else(|e| panic!("{e}"))
}

fn policy(scope: &str, extra: &str) -> String {
    let global = if scope == "global" {
        r#""scope": "global", "service": {"cluster": "rls", "domain": "shop", "timeout": "250ms"FM},"#
    } else {
        // Room for ten: arrivals every 11 ms against a token every 16.7 ms would otherwise
        // lose tokens to aliasing and admit less than 60/s.
        r#""burst": 10,"#
    };
    format!(
        r#"{{"name": "shop", "variants": {{"stable": "stable"}}, "default": "stable",
            "rate_limits": [{{"name": "api", {global} "average": 180, "period": "3s"}}]}}"#
    )
    .replace("FM", extra)
}

/// Envoy's own rate-limit filter, pointed at `rollgate ratelimit`, limits as the service says:
/// its descriptors (`generic_key` naming the limit, `request_headers` giving the key) are the
/// ones rollgate's filter sends. Envoy's filter answers OVER_LIMIT with 429 and counts
/// `cluster.stable.ratelimit.over_limit` (envoy source/extensions/filters/http/ratelimit/
/// ratelimit.cc, `Filter::complete`).
#[test]
fn envoys_own_ratelimit_filter_limits_through_rollgate_ratelimit() {
    let _t = timing_lock();
    let redis = Redis::start();
    let dir = scratch("conformance");
    let file = dir.join("policy.json");
    std::fs::write(
        &file,
        r#"{"name": "shop", "variants": {"stable": "stable"}, "rate_limits": [
             {"name": "api", "scope": "global", "average": 10, "period": "1m",
              "service": {"cluster": "rls"}}]}"#,
    )
    .unwrap();
    let svc = Service::start(&redis, &file);
    let upstream = Upstream::start("stable");
    let filters = r#"          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: shop
              timeout: 2s
              rate_limit_service:
                transport_api_version: V3
                grpc_service: { envoy_grpc: { cluster_name: rls } }"#;
    let actions = r#"                  rate_limits:
                  - actions:
                    - generic_key: { descriptor_key: limit, descriptor_value: api }
                    - request_headers: { header_name: x-user, descriptor_key: key }"#;
    let yaml = listener(filters, actions) + &clusters(upstream.port(), svc.port);
    let envoy = Envoy::start_yaml(&yaml, 1).unwrap_or_else(|e| panic!("{e}"));
    let mut client = envoy.client();
    let statuses: Vec<u16> = (0..15)
        .map(|_| client.get("shop", "/", &[("x-user", b"alice")]).status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert!(statuses[10..].iter().all(|s| *s == 429), "{statuses:?}");
    // Another key has its own counter.
    assert_eq!(client.get("shop", "/", &[("x-user", b"bob")]).status, 200);
    assert_eq!(envoy.stat("cluster.stable.ratelimit.over_limit"), Some(5));
    assert_eq!(envoy.stat("cluster.stable.ratelimit.ok"), Some(11));
    // Redis holds the counters: alice's reached the limit, refusals did not count.
    let values: Vec<u64> = redis
        .command(&["KEYS", "*"])
        .lines()
        .filter(|k| k.contains("alice"))
        .map(|k| redis.command(&["GET", k]).parse().unwrap_or(0))
        .collect();
    assert_eq!(values, [10], "alice's counter in Redis");
}

/// Admitted requests per window of `window` from the first sample on, from 200 answers.
fn admitted_per_window(samples: &[(Duration, u16)], window: Duration, windows: u32) -> Vec<u64> {
    let first = samples.iter().map(|s| s.0).min().unwrap_or_default();
    let mut out = vec![0; windows as usize];
    for (t, status) in samples {
        let i = ((*t - first).as_secs_f64() / window.as_secs_f64()) as usize;
        if *status == 200 && i < out.len() {
            out[i] += 1;
        }
    }
    out
}

/// Drives `envoys` with 90 requests/s each (3 connections every 33 ms) for `run`; returns
/// every (sent, status) on one clock, and how many requests timed out client-side.
fn drive(envoys: &[Envoy], run: Duration) -> (Vec<(Duration, u16)>, usize) {
    let t0 = Instant::now();
    let loads: Vec<Load> = envoys
        .iter()
        .map(|e| Load::start(e.port(), "shop", "/", 3, Duration::from_millis(33)))
        .collect();
    let offsets: Vec<Duration> = loads.iter().map(|_| t0.elapsed()).collect();
    thread::sleep(run);
    let mut all = Vec::new();
    let mut timeouts = 0;
    for (load, offset) in loads.into_iter().zip(offsets) {
        for s in load.stop() {
            if s.status == 0 {
                timeouts += 1;
            }
            all.push((s.sent + offset, s.status));
        }
    }
    (all, timeouts)
}

/// A global limit of 180 requests per 3 s window, driven through three gateways (two workers
/// each) at 270 requests/s for 9 s: each window admits 180 ± 5 %, Redis's counter agrees, and
/// most requests never left the gateway. The same limit kept local admits about three times
/// as much (each gateway has its own).
#[test]
fn a_global_limit_holds_across_three_gateways_and_a_local_one_does_not() {
    let _t = timing_lock();
    let redis = Redis::start();
    let dir = scratch("three");
    let file = dir.join("policy.json");
    let global = policy("global", "");
    std::fs::write(&file, &global).unwrap();
    let svc = Service::start(&redis, &file);
    let upstream = Upstream::start("stable");
    let envoys: Vec<Envoy> = (0..3)
        .map(|_| rollgate_envoy(&global, upstream.port(), svc.port))
        .collect();
    let window = Duration::from_secs(3);
    let (samples, timeouts) = drive(&envoys, Duration::from_millis(8_900));
    let per_window = admitted_per_window(&samples, window, 3);
    let sent = samples.len();
    if std::env::var_os("ROLLGATE_DEBUG_WINDOWS").is_some() {
        let fine = admitted_per_window(&samples, Duration::from_millis(250), 36);
        eprintln!("admitted per 250 ms: {fine:?}");
    }
    for (i, n) in per_window.iter().enumerate() {
        assert!(
            (171..=189).contains(n),
            "window {i} admitted {n}, expected 180 ± 5 % ({per_window:?}; {sent} sent, \
             {timeouts} client timeouts)"
        );
    }
    // Envoy's own counters: every gateway's refusals and service calls.
    let stat = |name: &str| -> u64 {
        envoys
            .iter()
            .map(|e| {
                e.stat(&format!("wasmcustom.rollgate.shop.ratelimit.api.{name}"))
                    .unwrap_or(0)
            })
            .sum()
    };
    let (limited, ok, over) = (stat("limited"), stat("rls_ok"), stat("rls_over_limit"));
    let admitted: u64 = per_window.iter().sum();
    let refused = samples.iter().filter(|s| s.1 == 429).count() as u64;
    assert!(
        limited.abs_diff(refused) <= timeouts as u64 + 5,
        "Envoy counted {limited} refusals, clients saw {refused} 429s"
    );
    let calls = ok + over;
    eprintln!(
        "global: admitted {per_window:?} of {sent} sent; {calls} service calls ({ok} OK, \
         {over} OVER_LIMIT) for {sent} requests: {:.1} % asked; {timeouts} client timeouts",
        100.0 * calls as f64 / sent as f64
    );
    assert!(
        (calls as f64) < 0.5 * sent as f64,
        "batches and remembered refusals should keep most requests off the network: {calls} \
         calls for {sent} requests"
    );
    assert_eq!(
        stat("rls_unavailable") + stat("rls_timeout") + stat("rls_invalid"),
        0
    );
    drop(envoys);

    // The same limit, local: each gateway admits its own 60/s.
    let local = policy("local", "");
    let envoys: Vec<Envoy> = (0..3)
        .map(|_| rollgate_envoy(&local, upstream.port(), svc.port))
        .collect();
    let (samples, _) = drive(&envoys, Duration::from_millis(8_900));
    let local_admitted = samples.iter().filter(|s| s.1 == 200).count() as f64;
    let ratio = local_admitted / admitted as f64;
    eprintln!("local: admitted {local_admitted} = {ratio:.2} × the global limit's {admitted}");
    assert!(
        (2.5..=3.5).contains(&ratio),
        "a local limit on three gateways should admit about 3× the global one: {ratio:.2}"
    );
}

/// The service's storage or the service itself down: `allow` admits, `deny` answers 500, each
/// counted; back up, the limit counts again within a second.
#[test]
fn redis_or_the_service_down_follows_failure_mode_and_recovers() {
    let _t = timing_lock();
    let mut redis = Redis::start();
    let dir = scratch("down");
    let file = dir.join("policy.json");
    std::fs::write(&file, policy("global", "")).unwrap();
    let svc = Service::start(&redis, &file);
    let upstream = Upstream::start("stable");
    let allow = rollgate_envoy(&policy("global", ""), upstream.port(), svc.port);
    let deny = rollgate_envoy(
        &policy("global", r#", "failure_mode": "deny""#),
        upstream.port(),
        svc.port,
    );
    let burst = |e: &Envoy, n: usize| -> Vec<u16> {
        let mut c = e.client();
        (0..n).map(|_| c.get("shop", "/", &[]).status).collect()
    };
    let stat = |e: &Envoy, n: &str| {
        e.stat(&format!("wasmcustom.rollgate.shop.ratelimit.api.{n}"))
            .unwrap_or(0)
    };

    // Up: both count (the first request of each asks).
    assert_eq!(burst(&allow, 1), [200]);
    assert_eq!(burst(&deny, 1), [200]);

    redis.stop();
    // Held hits may admit a few without asking; past them every request asks and fails.
    let a = burst(&allow, 40);
    let d = burst(&deny, 40);
    assert!(a.iter().all(|s| *s == 200), "allow admits: {a:?}");
    assert!(
        d[20..].iter().all(|s| *s == 500),
        "deny refuses with 500: {d:?}"
    );
    // Down storage is an error status from the service, or its answer too late.
    let failures = |e: &Envoy| stat(e, "rls_unavailable") + stat(e, "rls_timeout");
    assert!(failures(&allow) > 0, "failures counted");
    assert!(failures(&deny) >= 20, "failures counted");

    redis.restart();
    thread::sleep(Duration::from_millis(1_000));
    let d = burst(&deny, 5);
    assert!(
        d.iter().all(|s| *s == 200),
        "counting again a second after Redis is back: {d:?}"
    );
    let keys = redis.command(&["KEYS", "*"]);
    assert!(!keys.is_empty(), "the counter is back in Redis");

    // The service alive but silent (paused): each ask outlives its 250 ms timeout. Envoy
    // reports that as 14 UNAVAILABLE "upstream request timeout", which the filter counts as
    // a timeout, not as the service being down.
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &svc.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    let (timeouts, unavailable) = (stat(&deny, "rls_timeout"), stat(&deny, "rls_unavailable"));
    signal("-STOP");
    let d = burst(&deny, 30);
    signal("-CONT");
    // Hits still held are spent first, also by requests whose ask ahead timed out: at most
    // a batch and a half (a batch is at most a sixteenth of 180, 11).
    assert!(
        d[16..].iter().all(|s| *s == 500),
        "deny refuses while the service is silent: {d:?}"
    );
    let timed_out = stat(&deny, "rls_timeout") - timeouts;
    assert!(
        timed_out >= 14,
        "timeouts counted as timeouts: {timed_out}, unavailable {} -> {}",
        unavailable,
        stat(&deny, "rls_unavailable")
    );
    assert_eq!(
        stat(&deny, "rls_unavailable"),
        unavailable,
        "a timeout is not counted as unavailable"
    );

    // The service itself down: the same.
    let port = svc.port;
    drop(svc);
    let a = burst(&allow, 40);
    let d = burst(&deny, 40);
    assert!(a.iter().all(|s| *s == 200), "allow admits: {a:?}");
    assert!(d[20..].iter().all(|s| *s == 500), "deny refuses: {d:?}");
    let _svc = Service::start_on(&redis, &file, port);
    thread::sleep(Duration::from_millis(1_000));
    let d = burst(&deny, 5);
    assert!(
        d.iter().all(|s| *s == 200),
        "counting again after the service is back: {d:?}"
    );
}

/// `rollgate try` runs a global limit on a laptop: `--cluster rls=http://…` sends the filter's
/// gRPC asks to a real `rollgate ratelimit`, and the answers are Envoy's (200, then 429 with
/// `Retry-After` once the window is full).
#[test]
fn rollgate_try_asks_a_real_rate_limit_service() {
    let _t = timing_lock();
    let redis = Redis::start();
    let dir = scratch("try");
    let file = dir.join("policy.json");
    std::fs::write(
        &file,
        r#"{"name": "shop", "variants": {"stable": "stable"}, "default": "stable",
            "rate_limits": [{"name": "api", "scope": "global", "average": 3, "period": "1m",
                             "service": {"cluster": "rls", "timeout": "2s"}}]}"#,
    )
    .unwrap();
    let svc = Service::start(&redis, &file);
    let requests = dir.join("requests.jsonl");
    std::fs::write(&requests, "{}\n".repeat(5)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .env("ROLLGATE_WASM", wasm_path())
        .arg("try")
        .arg("--policy")
        .arg(&file)
        .args(["--cluster", &format!("rls=http://127.0.0.1:{}", svc.port)])
        .arg("--requests")
        .arg(&requests)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let statuses: Vec<u64> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["response"]["status"].as_u64().unwrap_or(0)
        })
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429], "{stdout}");
    assert!(stdout.contains("retry-after"), "{stdout}");
}
