//! `make demo`: the whole release story on a real Envoy running the real filter, driven by the
//! real `rollgate` sidecar and CLI, narrated with what it measures rather than what it assumes.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rollgate_e2e::{
    mariadb_client, query, render_tcp, wasm_path, workspace_root, Client, Envoy, EnvoyOptions,
    Load, MariaDb, Upstream, CANARY, DEV, STABLE,
};

/// Who an upstream is, in the story's words.
fn label(cluster: &str) -> &str {
    match cluster {
        STABLE => "v1 (stable)",
        CANARY => "v2 (canary)",
        DEV => "dev",
        other => other,
    }
}

fn step(n: u32, title: &str) {
    println!("\n\x1b[1m{n}. {title}\x1b[0m");
}

fn progress() {
    print!(".");
    let _ = std::io::stdout().flush();
}

/// The `rollgate` binary `make demo` built.
fn rollgate_bin() -> PathBuf {
    let bin = workspace_root().join("target/debug/rollgate");
    assert!(
        bin.exists(),
        "{} is missing: run `make demo` (it builds it)",
        bin.display()
    );
    bin
}

/// The sidecar's bearer token for this run: 16 random bytes in hex, handed to `serve` and
/// to every command through `ROLLGATE_TOKEN` (never printed).
fn demo_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        use std::io::Read;
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .expect("random bytes from /dev/urandom for the demo's token");
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// Runs `rollgate ARGS --server URL`, returning its standard output.
fn rollgate(server: &str, args: &[&str]) -> String {
    let out = Command::new(rollgate_bin())
        .env("ROLLGATE_TOKEN", demo_token())
        .args(args)
        .args(["--server", server])
        .output()
        .expect("run rollgate");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("   │ {l}\n")).collect()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    print!("   waiting for {what} ");
    while start.elapsed() < timeout {
        if f() {
            println!(" {:.1} s", start.elapsed().as_secs_f64());
            return;
        }
        progress();
        thread::sleep(Duration::from_millis(250));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Sends one request per user `demo-<tag>-0..n` at most `rate` per second; who served each.
fn place(c: &mut Client, tag: &str, n: u32, rate: u32, extra: &[(&str, &[u8])]) -> Vec<String> {
    let start = Instant::now();
    (0..n)
        .map(|i| {
            let due = start + Duration::from_secs_f64(f64::from(i) / f64::from(rate));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            let user = format!("demo-{tag}-{i}");
            let mut headers = extra.to_vec();
            headers.push(("x-user-id", user.as_bytes()));
            let r = c.get("pro.coding", "/", &headers);
            r.header_str("x-upstream")
                .unwrap_or_else(|| format!("status {}", r.status))
        })
        .collect()
}

/// The policy version the sidecar serves for `flask` (from its API).
fn sidecar_version(port: u16) -> u64 {
    let Ok(r) = Client::new(port).request("GET", "127.0.0.1", "/v1/rollouts/flask", &[], b"")
    else {
        return 0; // not listening yet
    };
    let body = r.body_str();
    let after = body.split("\"policyVersion\"").nth(1).unwrap_or("");
    let digits = after.trim_start_matches([':', ' ']);
    digits
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

/// Waits until Envoy runs the sidecar's current policy.
fn wait_applied(envoy: &Envoy, sidecar_port: u16, what: &str) {
    let version = sidecar_version(sidecar_port);
    let needle = format!("policy 'flask' version {version} applied");
    wait_for(what, Duration::from_secs(10), || {
        envoy.log().contains(&needle)
    });
    thread::sleep(Duration::from_millis(200)); // the other worker adopts it on its next tick
}

fn counts(placement: &[String]) -> String {
    let mut m: HashMap<&str, u32> = HashMap::new();
    for p in placement {
        *m.entry(p.as_str()).or_insert(0) += 1;
    }
    let mut v: Vec<_> = m.into_iter().collect();
    v.sort();
    v.iter()
        .map(|(k, n)| format!("{}: {n}", label(k)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The sidecar, stopped when the demo ends however it ends.
struct Sidecar(Child);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The seed Rollout at demo speed (analysis every 2 s instead of 10 s), with a shadow step
/// first: 20 % of users' requests copied to v2 until a promote.
fn demo_rollout() -> String {
    let seed = std::fs::read_to_string(workspace_root().join("examples/rollout.yaml"))
        .expect("examples/rollout.yaml");
    seed.replace("interval: 10s", "interval: 2s").replacen(
        "    steps:\n",
        "    steps:\n      # Shadow: copies of 20 % of users' requests go to v2; v1 answers all.\n      \
         - setMirror: { percent: 20 }\n      - pause: {}\n      - setMirror: { percent: 0 }\n",
        1,
    )
}

/// A counter of the filter's in Envoy (0 when absent).
fn filter_stat(envoy: &Envoy, name: &str) -> u64 {
    envoy
        .stat(&format!("wasmcustom.rollgate.flask.{name}"))
        .unwrap_or(0)
}

/// Step 9: the same filter as a network filter in front of `tcp_proxy` to a real MariaDB.
fn mysql_step() {
    let db = MariaDb::start();
    let policy = r#"{"name":"db","tcp":{"in_flight":{"per_source":3}}}"#;
    let envoy = Envoy::start_yaml(&render_tcp(policy, &wasm_path(), db.port()), 2)
        .expect("envoy with tcp_proxy");
    println!("   policy: {policy}");
    query(db.port(), "FLUSH STATUS").expect("FLUSH STATUS");
    let sessions: Vec<Child> = (0..3)
        .map(|_| {
            mariadb_client(envoy.port(), "SELECT SLEEP(2)")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("mariadb client")
        })
        .collect();
    wait_for("three sessions to run", Duration::from_secs(10), || {
        query(
            db.port(),
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT SLEEP%'",
        )
        .is_ok_and(|n| n.trim() == "3")
    });
    println!("   three sessions run SELECT SLEEP(2) through Envoy");
    let t = Instant::now();
    let fourth = query(envoy.port(), "SELECT 1");
    let took = t.elapsed();
    match fourth {
        Ok(_) => println!("   a fourth session was admitted (unexpected)"),
        Err(e) => println!(
            "   a fourth session, refused at connect in {} ms: {}",
            took.as_millis(),
            e.trim()
        ),
    }
    for mut s in sessions {
        let _ = s.wait();
    }
    wait_for("a place to free", Duration::from_secs(5), || {
        query(envoy.port(), "SELECT 1").is_ok()
    });
    println!("   the three finished; a new session gets in");
    let stat = |n: &str| envoy.stat(n).unwrap_or(0);
    println!(
        "   MariaDB Max_used_connections {} (three sessions and this checker); Envoy opened {} \
         connections to it (cluster.db.upstream_cx_total), refused {} (rollgate_db_tcp_refused_in_flight)",
        query(db.port(), "SHOW GLOBAL STATUS LIKE 'Max_used_connections'")
            .unwrap_or_default()
            .split_whitespace()
            .nth(1)
            .unwrap_or("?"),
        stat("cluster.db.upstream_cx_total"),
        stat("wasmcustom.rollgate.db.tcp.refused_in_flight"),
    );
}

fn main() {
    let started = Instant::now();
    println!("rollgate demo: Envoy 1.40 (2 workers) + the rollgate filter + the rollgate sidecar,");
    println!("upstreams v1 (stable), v2 (canary) and dev; the seed's Rollout drives the release.");

    let upstreams: Vec<Upstream> = [STABLE, CANARY, DEV]
        .iter()
        .map(|n| Upstream::start(n))
        .collect();
    let sidecar_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = r#"{"source":{"cluster":"rollgate","path":"/v1/policies/flask","poll":"500ms","wait":"20s"}}"#;
    let mut opts = EnvoyOptions::new(config).cluster("rollgate", sidecar_port);
    for u in &upstreams {
        opts = opts.cluster(u.name(), u.port());
    }
    let envoy = Envoy::start(&opts).expect("Envoy starts");
    let dir = std::env::temp_dir().join(format!("rollgate-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("demo directory");
    let server = format!("http://127.0.0.1:{sidecar_port}");
    let sidecar = Sidecar(
        Command::new(rollgate_bin())
            .env("ROLLGATE_TOKEN", demo_token())
            .args([
                "serve",
                "--dir",
                &dir.to_string_lossy(),
                "--listen",
                &format!("127.0.0.1:{sidecar_port}"),
            ])
            .args([
                "--envoy-admin",
                &format!("http://127.0.0.1:{}", envoy.admin_port()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rollgate serve"),
    );
    println!(
        "Envoy on 127.0.0.1:{}, `rollgate serve --dir {}` on {server}",
        envoy.port(),
        dir.display()
    );
    println!(
        "the sidecar takes commands only with the token this run generated (the CLI gets it \
         in $ROLLGATE_TOKEN; see README \"Security\")"
    );
    std::fs::write(dir.join("flask.yaml"), demo_rollout()).expect("write the Rollout");
    println!(
        "wrote the seed Rollout (examples/rollout.yaml, analysis every 2 s) into the directory"
    );
    wait_for(
        "the sidecar to serve the Rollout",
        Duration::from_secs(10),
        || sidecar_version(sidecar_port) > 0,
    );
    wait_applied(&envoy, sidecar_port, "Envoy to apply it");
    let mut c = envoy.client();

    step(
        1,
        "Shadow traffic: 20 % of users' requests are copied to v2; v1 answers every user",
    );
    let shadowed = place(&mut c, "shadow", 500, 400, &[]);
    wait_for("the copies' answers", Duration::from_secs(10), || {
        filter_stat(&envoy, "variant.canary.shadow_rs_2xx") > 0
    });
    thread::sleep(Duration::from_millis(500));
    let copies = upstreams[1]
        .received()
        .iter()
        .filter(|r| {
            r.headers
                .iter()
                .any(|(k, v)| k == "x-rollgate-shadow" && v == b"1")
        })
        .count();
    println!("   500 users -> answered by {}", counts(&shadowed));
    println!(
        "   v2 received {copies} copies marked x-rollgate-shadow: 1 ({:.1} %; the step says 20 %)",
        copies as f64 / 5.0
    );
    println!(
        "   Envoy: {} copies, {} answered 2xx, {} answers whose class differed from v1's",
        filter_stat(&envoy, "variant.canary.shadow_rq_total"),
        filter_stat(&envoy, "variant.canary.shadow_rs_2xx"),
        filter_stat(&envoy, "variant.canary.shadow_mismatch")
    );
    println!("   $ rollgate promote flask");
    print!("{}", indent(&rollgate(&server, &["promote", "flask"])));
    wait_applied(&envoy, sidecar_port, "the A/B policy in Envoy");

    step(2, "dev.coding reaches the dev environment");
    let r = c.get("dev.coding", "/", &[]);
    println!(
        "   GET http://dev.coding/ -> served by {}",
        label(&r.header_str("x-upstream").unwrap_or_default())
    );

    step(
        3,
        "A/B test: `location: shenzhen` reaches the canary, everyone else stable",
    );
    let sz = place(&mut c, "sz", 200, 400, &[("location", b"shenzhen")]);
    let others = place(&mut c, "ab", 200, 400, &[]);
    println!("   200 users from shenzhen -> {}", counts(&sz));
    println!("   200 other users         -> {}", counts(&others));

    step(4, "Manual gate: the rollout waits for a human");
    print!("{}", indent(&rollgate(&server, &["status", "flask"])));
    println!("   $ rollgate promote flask");
    print!("{}", indent(&rollgate(&server, &["promote", "flask"])));
    wait_applied(&envoy, sidecar_port, "the 50 % policy in Envoy");

    step(
        5,
        "Canary at 50 %: distinct users, the observed split, each user stays on one side",
    );
    let first = place(&mut c, "split", 1000, 400, &[]);
    let canary = first.iter().filter(|s| *s == CANARY).count();
    println!(
        "   1000 users -> {} ({:.1} % canary; the policy says 50 %)",
        counts(&first),
        canary as f64 / 10.0
    );
    let again = place(&mut c, "split", 1000, 400, &[]);
    let moved = first.iter().zip(&again).filter(|(a, b)| a != b).count();
    println!("   the same 1000 users again: {moved} changed side");

    step(6, "Full promotion: everyone on v2");
    println!("   $ rollgate promote flask");
    print!("{}", indent(&rollgate(&server, &["promote", "flask"])));
    wait_applied(&envoy, sidecar_port, "the 100 % policy in Envoy");
    println!(
        "   500 users -> {}",
        counts(&place(&mut c, "full", 500, 400, &[]))
    );

    step(
        7,
        "Rate limit: a burst from one client against average 500/s, burst 1000",
    );
    thread::sleep(Duration::from_secs(2)); // let the bucket refill after the steps above
    let burst_start = Instant::now();
    let (mut ok, mut limited) = (0u32, 0u32);
    for _ in 0..3000 {
        match c.get("pro.coding", "/", &[]).status {
            200 => ok += 1,
            429 => limited += 1,
            _ => {}
        }
    }
    let secs = burst_start.elapsed().as_secs_f64();
    println!("   3000 requests in {secs:.2} s: {ok} admitted, {limited} answered 429");
    println!(
        "   the policy promises burst + average × elapsed = 1000 + 500 × {secs:.2} = {:.0}",
        1000.0 + 500.0 * secs
    );
    println!(
        "   (each Envoy worker leases up to burst/64 tokens at a time, fewer shared-data writes; \
         a worker's unspent lease is the most it can be short)"
    );

    step(
        8,
        "Circuit breaker: v2 turns slow; traffic falls back to v1; the rollout aborts itself",
    );
    thread::sleep(Duration::from_secs(2));
    let load = Load::start(
        envoy.port(),
        "pro.coding",
        "/",
        20,
        Duration::from_millis(200),
    );
    thread::sleep(Duration::from_secs(3));
    let slow_at = load.elapsed();
    upstreams[1].set_delay(Duration::from_millis(150));
    println!("   100 requests/s of users; v2 now answers in 150 ms (the breaker: LatencyAtQuantileMS(50.0) > 100)");
    wait_for("the breaker to open", Duration::from_secs(15), || {
        envoy.log().contains("closed -> open")
    });
    wait_for("the rollout to abort", Duration::from_secs(15), || {
        rollgate(&server, &["status", "flask"]).contains("Aborted")
    });
    thread::sleep(Duration::from_secs(2));
    upstreams[1].set_delay(Duration::ZERO);
    let samples = load.stop();
    let before = samples
        .iter()
        .filter(|s| s.sent < slow_at)
        .map(|s| s.upstream.clone().unwrap_or_default())
        .collect::<Vec<_>>();
    let tail = samples
        .iter()
        .rev()
        .take(100)
        .map(|s| s.upstream.clone().unwrap_or_default())
        .collect::<Vec<_>>();
    let errors = samples.iter().filter(|s| s.status != 200).count();
    println!("   before: {}", counts(&before));
    println!("   last 100 requests: {}", counts(&tail));
    println!(
        "   {} requests in all, {errors} errors seen by users",
        samples.len()
    );
    let log = envoy.log();
    if let Some(line) = log.lines().find(|l| l.contains("closed -> open")) {
        println!(
            "   Envoy: {}",
            line.split("wasm log")
                .last()
                .unwrap_or(line)
                .trim_start_matches([' ', ':'])
        );
    }
    print!("{}", indent(&rollgate(&server, &["status", "flask"])));

    drop(sidecar);
    drop(envoy);
    drop(upstreams);
    let _ = std::fs::remove_dir_all(&dir);

    step(9, "MySQL behind the gateway: connection limit");
    mysql_step();
    println!(
        "\nDone in {:.0} s; nothing left running.",
        started.elapsed().as_secs_f64()
    );
    println!("Next: README.md — \"The policy\" (rules, sticky splits), \"Rate limits\", \"Circuit breakers\",");
    println!("\"Rollouts\" (`rollgate serve`, promote/abort/retry/status) and \"Running it in Envoy\" / \"Istio\".");
}
