//! End to end, no cluster: `rollgate serve --dir` (in process) + a real Envoy whose filter
//! long-polls it + upstreams. The seed's Rollout drives the traffic: the header route, the
//! manual gate, the 50 % split, an abort by analysis, 200 pushes under load, an invalid
//! rollout, and a sidecar that goes away.

mod rollout_support;

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use rollgate_e2e::{sticky, Client, Envoy, EnvoyOptions, Load, Upstream, CANARY, DEV, STABLE};
use rollout_support::{seed_fast, seed_with_strategy, wait_until, Sidecar, TempDir};

const VERSION_STAT: &str = "wasmcustom.rollgate.flask.policy.version";
const SOURCE: &str =
    r#"{"source":{"cluster":"rollgate","path":"/v1/policies/flask","poll":"200ms","wait":"20s"}}"#;

struct Stack {
    // Field order is drop order: Envoy first, then the sidecar and upstreams.
    envoy: Envoy,
    sidecar: Sidecar,
    upstreams: Vec<Upstream>,
    dir: TempDir,
}

impl Stack {
    /// A sidecar on an empty directory and an Envoy whose filter polls it, and whose stats
    /// the sidecar reads.
    fn start() -> Stack {
        Stack::start_reading(true)
    }

    /// The same; `read_stats: false` leaves the gateway unknown to the sidecar, so steps
    /// apply as soon as the policy is pushed rather than once the gateway serves it
    /// (tests/acknowledge.rs).
    fn start_reading(read_stats: bool) -> Stack {
        let dir = TempDir::new("e2e");
        let sidecar = Sidecar::start(&dir.0, &[]);
        let upstreams: Vec<Upstream> = [STABLE, CANARY, DEV]
            .iter()
            .map(|n| Upstream::start(n))
            .collect();
        let mut opts = EnvoyOptions::new(SOURCE).cluster("rollgate", sidecar.server.addr().port());
        for u in &upstreams {
            opts = opts.cluster(u.name(), u.port());
        }
        let envoy = Envoy::start(&opts).unwrap();
        if read_stats {
            sidecar
                .server
                .set_envoy_admin(vec![format!("http://127.0.0.1:{}", envoy.admin_port())])
                .unwrap();
        }
        Stack {
            envoy,
            sidecar,
            upstreams,
            dir,
        }
    }

    fn upstream(&self, name: &str) -> &Upstream {
        self.upstreams.iter().find(|u| u.name() == name).unwrap()
    }

    /// Who serves `user` on `host`, with extra headers.
    fn served(&self, c: &mut Client, host: &str, user: &str, extra: &[(&str, &[u8])]) -> String {
        let mut headers: Vec<(&str, &[u8])> = vec![("x-user-id", user.as_bytes())];
        headers.extend_from_slice(extra);
        let r = c.get(host, "/", &headers);
        r.header_str("x-upstream")
            .unwrap_or_else(|| format!("status {} {}", r.status, r.body_str()))
    }

    /// Waits until every worker runs policy `version` (the stat is the newest any applied;
    /// workers adopt a published version within 100 ms).
    fn wait_applied(&self, version: u64, timeout: Duration) -> Duration {
        let t = wait_until(
            &format!("Envoy to apply policy v{version}"),
            timeout,
            || self.envoy.stat(VERSION_STAT).is_some_and(|v| v >= version),
        );
        thread::sleep(Duration::from_millis(200));
        t
    }

    /// The rollout reaches its pause step. With the gateway known (`read_stats`), the step
    /// before it completes only once Envoy reports serving its policy (the sidecar reads that
    /// from Envoy's stats), which can come after the route is already live.
    fn wait_paused(&self) -> Duration {
        wait_until("the rollout to pause", Duration::from_secs(10), || {
            self.sidecar.rollout("flask")["status"]["phase"] == "Paused"
        })
    }

    fn sidecar_version(&self) -> u64 {
        self.sidecar.rollout("flask")["status"]["policyVersion"]
            .as_u64()
            .unwrap()
    }

    /// Users `prefix-0..n` on pro.coding through a few keep-alive connections: who served each.
    fn split(&self, prefix: &str, n: usize) -> Vec<(String, String)> {
        let mut clients: Vec<Client> = (0..8).map(|_| self.envoy.client()).collect();
        (0..n)
            .map(|i| {
                let user = format!("{prefix}-{i}");
                let c = &mut clients[i % 8];
                let who = self.served(c, "pro.coding", &user, &[]);
                (user, who)
            })
            .collect()
    }
}

fn rollgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_seed_rollout_drives_envoy_and_a_failing_canary_is_aborted() {
    let _serial = rollgate_e2e::timing_lock();
    let s = Stack::start();
    let mut c = s.envoy.client();

    // Writing the Rollout activates the header route.
    let written = Instant::now();
    s.dir.write("flask.yaml", &seed_fast());
    wait_until("the header route", Duration::from_secs(5), || {
        s.served(&mut c, "pro.coding", "u1", &[("location", b"shenzhen")]) == CANARY
    });
    println!(
        "header route live {:?} after the file was written",
        written.elapsed()
    );
    assert_eq!(s.served(&mut c, "pro.coding", "u1", &[]), STABLE);
    assert_eq!(
        s.served(&mut c, "pro.coding", "u1", &[("location", b"beijing")]),
        STABLE
    );
    assert_eq!(s.served(&mut c, "dev.coding", "u1", &[]), DEV);

    let paused = s.wait_paused();
    println!("paused {paused:?} after the header route was live");
    // `rollgate promote` releases the pause: 50 % of distinct users, within 2 s.
    let o = rollgate(&["promote", "flask", "--server", &s.sidecar.url()]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let promoted = Instant::now();
    s.wait_applied(s.sidecar_version(), Duration::from_secs(2));
    let users = s.split("user", 1000);
    let took = promoted.elapsed();
    let canary = users.iter().filter(|(_, w)| w == CANARY).count();
    println!("{canary}/1000 distinct users on the canary, sampled {took:?} after the promote");
    assert!((450..=550).contains(&canary), "{canary}/1000 on the canary");
    assert!(
        took < Duration::from_secs(2) + Duration::from_millis(1500),
        "{took:?}"
    );
    for (user, who) in &users {
        let predicted = if sticky::bucket("flask", user.as_bytes()) < 5000 {
            CANARY
        } else {
            STABLE
        };
        assert_eq!(who, predicted, "{user} lands where its sticky bucket says");
    }
    // Shenzhen still goes to the canary, whatever the bucket.
    assert_eq!(
        s.served(&mut c, "pro.coding", "user-1", &[("location", b"shenzhen")]),
        CANARY
    );

    // The canary answers 500s: aborted within two analysis intervals (1 s each, failureLimit
    // 1), and everyone is back on stable.
    let load = Load::start(
        s.envoy.port(),
        "pro.coding",
        "/",
        4,
        Duration::from_millis(20),
    );
    thread::sleep(Duration::from_millis(1500));
    s.upstream(CANARY).set_status(500);
    let failing = Instant::now();
    wait_until("the abort", Duration::from_secs(10), || {
        s.sidecar.rollout("flask")["status"]["phase"] == "Aborted"
    });
    let abort_after = failing.elapsed();
    println!("aborted {abort_after:?} after the canary started failing");
    assert!(
        abort_after < Duration::from_secs(2) + Duration::from_millis(2500),
        "{abort_after:?}"
    );
    let message = s.sidecar.rollout("flask")["status"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("analysis failed 2 times (failureLimit 1): success-rate 0"),
        "{message}"
    );
    assert!(message.contains("< min 0.99"), "{message}");
    s.wait_applied(s.sidecar_version(), Duration::from_secs(2));
    let back = load.elapsed();
    thread::sleep(Duration::from_secs(1));
    let samples = load.stop();
    let after: Vec<_> = samples.iter().filter(|x| x.sent > back).collect();
    assert!(after.len() > 50, "{} samples after the abort", after.len());
    assert!(
        after
            .iter()
            .all(|x| x.status == 200 && x.upstream.as_deref() == Some(STABLE)),
        "after the abort everyone is on stable: {:?}",
        after.iter().find(|x| x.upstream.as_deref() != Some(STABLE))
    );
    assert_eq!(
        s.served(&mut c, "pro.coding", "u1", &[("location", b"shenzhen")]),
        STABLE
    );
}

#[test]
fn two_hundred_policy_pushes_under_load_lose_no_request() {
    let _serial = rollgate_e2e::timing_lock();
    // Promotes come every 15 ms: with the gateway known, each would find its step still
    // waiting for the gateway to serve the last push, and be refused.
    let s = Stack::start_reading(false);
    // 200 weights, each behind a pause: every promote is one push.
    let mut steps = String::from("    steps:\n");
    for i in 0..200 {
        steps.push_str(&format!(
            "      - setWeight: {}\n      - pause: {{}}\n",
            (i * 37) % 101
        ));
    }
    s.dir.write("flask.yaml", &seed_with_strategy(&steps));
    // Every worker runs the first policy before the load starts.
    s.wait_applied(1, Duration::from_secs(5));
    let first = s.sidecar_version();
    // 300 requests/s from one client address: under the seed's 500/s rate limit.
    let load = Load::start(
        s.envoy.port(),
        "pro.coding",
        "/",
        6,
        Duration::from_millis(20),
    );
    thread::sleep(Duration::from_millis(500));
    let pushes = Instant::now();
    for _ in 0..199 {
        assert_eq!(s.sidecar.post("/v1/rollouts/flask/promote").status, 200);
        thread::sleep(Duration::from_millis(15));
    }
    // The last promote completes the rollout (weight 100): the 200th push.
    assert_eq!(s.sidecar.post("/v1/rollouts/flask/promote").status, 200);
    let last = s.sidecar_version();
    println!("pushed v{first}..v{last} in {:?}", pushes.elapsed());
    assert!(last - first >= 200, "{first}..{last}");
    s.wait_applied(last, Duration::from_secs(3));
    thread::sleep(Duration::from_millis(500));
    let samples = load.stop();
    let bad: Vec<_> = samples
        .iter()
        .filter(|x| x.status != 200 || !matches!(x.upstream.as_deref(), Some(STABLE | CANARY)))
        .collect();
    println!(
        "{} requests under {} pushes, {} not from an upstream",
        samples.len(),
        last - first,
        bad.len()
    );
    assert!(samples.len() > 1000, "{} samples", samples.len());
    assert!(
        bad.is_empty(),
        "every response from an upstream: {:?}",
        &bad[..bad.len().min(5)]
    );
    assert_eq!(s.sidecar.rollout("flask")["status"]["phase"], "Promoted");
    // Fully promoted: everyone on the canary.
    assert!(s.split("after", 50).iter().all(|(_, w)| w == CANARY));
}

#[test]
fn an_invalid_rollout_is_refused_and_a_stopped_sidecar_changes_nothing() {
    let _serial = rollgate_e2e::timing_lock();
    let mut s = Stack::start();
    s.dir.write("flask.yaml", &seed_fast());
    assert_eq!(
        s.sidecar.get("/v1/policies/flask?wait=2s").status,
        200,
        "the rollout is loaded"
    );
    s.wait_paused();
    assert_eq!(s.sidecar.post("/v1/rollouts/flask/promote").status, 200);
    let v = s.sidecar_version();
    s.wait_applied(v, Duration::from_secs(3));
    let before = s.split("user", 200);

    // An invalid rollout: refused, the last good one keeps serving.
    s.dir.write(
        "flask.yaml",
        &seed_fast().replace("- setWeight: 100", "- setWeight: 1000"),
    );
    wait_until("the error", Duration::from_secs(5), || {
        s.sidecar.rollout("flask")["error"].is_string()
    });
    let error = s.sidecar.rollout("flask")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("spec.strategy.steps[4].setWeight: must be between 0 and 100, got 1000"),
        "{error}"
    );
    thread::sleep(Duration::from_millis(500));
    assert_eq!(s.envoy.stat(VERSION_STAT), Some(v));
    assert_eq!(s.split("user", 200), before);

    // The sidecar goes away: traffic does not notice.
    let load = Load::start(
        s.envoy.port(),
        "pro.coding",
        "/",
        4,
        Duration::from_millis(20),
    );
    thread::sleep(Duration::from_millis(500));
    s.sidecar.server.stop();
    let stopped = load.elapsed();
    thread::sleep(Duration::from_secs(3));
    let samples = load.stop();
    let after: Vec<_> = samples.iter().filter(|x| x.sent > stopped).collect();
    assert!(after.len() > 100, "{} samples", after.len());
    assert!(
        after
            .iter()
            .all(|x| x.status == 200 && matches!(x.upstream.as_deref(), Some(STABLE | CANARY))),
        "every response from an upstream"
    );
    assert_eq!(s.split("user", 200), before, "same users, same sides");
    assert_eq!(s.envoy.stat(VERSION_STAT), Some(v));
    assert!(
        s.envoy
            .stat("wasmcustom.rollgate.flask.policy.fetch_errors")
            .unwrap_or(0)
            >= 1
    );
}

/// Issue 16's release: mirror first, judge the canary on its answers to the copies, and abort
/// a canary that answers unlike stable before any user request is routed to it.
#[test]
fn a_mirrored_canary_answering_unlike_stable_is_aborted_before_any_user_reaches_it() {
    aborted_on_copies(
        |s| s.upstream(CANARY).set_status(500),
        "{ name: shadow-mismatch, max: 0.05 }",
        "shadow-mismatch 1 > max 0.05",
    );
}

/// The same with the usual metrics: success rate and latency judge the copies' answers while
/// no user reaches the canary.
#[test]
fn a_mirrored_canary_failing_its_copies_is_aborted_by_success_rate() {
    aborted_on_copies(
        |s| s.upstream(CANARY).set_status(503),
        "{ name: success-rate, min: 0.95 }",
        "success-rate 0 < min 0.95",
    );
}

#[test]
fn a_mirrored_canary_slow_on_its_copies_is_aborted_by_latency() {
    aborted_on_copies(
        |s| s.upstream(CANARY).set_delay(Duration::from_millis(300)),
        "{ name: latency-p90, max: 100 }",
        "latency-p90",
    );
}

/// Mirrors half the requests to a canary `prepare` breaks, with analysis by `metric`; the
/// rollout must abort with `expect` in its message before any user request reaches the canary.
fn aborted_on_copies(prepare: impl Fn(&Stack), metric: &str, expect: &str) {
    let _serial = rollgate_e2e::timing_lock();
    let s = Stack::start();
    prepare(&s);
    let strategy = format!(
        "    steps:\n      - setMirror: {{ percent: 50 }}\n      \
         - pause: {{ duration: 10m }}\n      - setWeight: 50\n    analysis:\n      \
         interval: 1s\n      minRequests: 5\n      metrics:\n        - {metric}\n"
    );
    s.dir.write("flask.yaml", &seed_with_strategy(&strategy));
    s.wait_applied(1, Duration::from_secs(5));
    assert_eq!(s.sidecar.rollout("flask")["status"]["mirrorPercent"], 50.0);
    let mut c = s.envoy.client();
    let mut n = 0;
    let started = Instant::now();
    wait_until("the abort", Duration::from_secs(15), || {
        for _ in 0..20 {
            let user = format!("u{n}");
            assert_eq!(s.served(&mut c, "pro.coding", &user, &[]), STABLE, "{user}");
            n += 1;
            thread::sleep(Duration::from_millis(10));
        }
        s.sidecar.rollout("flask")["status"]["phase"] == "Aborted"
    });
    println!(
        "aborted {:?} after the first policy, {n} user requests",
        started.elapsed()
    );
    let status = &s.sidecar.rollout("flask")["status"];
    let message = status["message"].as_str().unwrap().to_string();
    assert!(message.contains(expect), "{message}");
    assert_eq!(status["canaryWeight"], 0.0);
    assert!(
        status.get("mirrorPercent").is_none(),
        "mirroring ended: {status}"
    );
    // The canary saw copies only: no user request was ever routed to it.
    let got = s.upstream(CANARY).received();
    assert!(got.len() >= 5, "{} copies", got.len());
    for r in &got {
        let shadow = r.headers.iter().find(|(k, _)| k == "x-rollgate-shadow");
        assert_eq!(
            shadow.map(|(_, v)| v.as_slice()),
            Some(b"1".as_slice()),
            "{r:?}"
        );
    }
    // Once the aborted policy is applied, nothing more is copied.
    s.wait_applied(s.sidecar_version(), Duration::from_secs(2));
    let copies = s.upstream(CANARY).requests();
    for i in 0..50 {
        let user = format!("after-{i}");
        assert_eq!(s.served(&mut c, "pro.coding", &user, &[]), STABLE);
    }
    thread::sleep(Duration::from_millis(300));
    assert_eq!(s.upstream(CANARY).requests(), copies);
}
