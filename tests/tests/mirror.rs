//! Shadow traffic (`routes[].mirror`) in a real Envoy with two workers: the share of copies the
//! canary receives and what they hold, the comparison of their answers with stable's, and the
//! bounds under slow copies. Every figure is read from the upstreams and Envoy's own counters.

use std::thread;
use std::time::{Duration, Instant};

use rollgate_e2e::{Client, Stack, CANARY, STABLE};

const STAT: &str = "wasmcustom.rollgate.flask.variant.canary.";

fn stat(stack: &Stack, name: &str) -> u64 {
    let full = format!("{STAT}{name}");
    stack
        .envoy
        .stat(&full)
        .unwrap_or_else(|| panic!("Envoy has no stat {full}"))
}

/// The seed's variants; `pro.coding` is a sticky split keeping everyone on stable (weight 0),
/// with `mirror` on that route.
fn policy(mirror: &str) -> String {
    format!(
        r#"{{"name":"flask",
  "variants":{{"stable":"k8s-flask","canary":"k8s-flask-canary","dev":"k8s-flask-dev"}},
  "default":"stable",
  "routes":[{{"match":"Host(`pro.coding`)","split":[{{"variant":"canary","weight":0}}],
    "sticky":{{"header":"x-user-id"}},"mirror":{mirror}}}]}}"#
    )
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Waits until every copy Envoy sent has reached `canary` and been answered 2xx, and no more
/// arrive: a copy leaves in the event-loop turn after its request, possibly after the client
/// got its answer, so one quiet check is not enough.
fn all_answered(stack: &Stack, canary: &rollgate_e2e::Upstream) {
    let mut last = u64::MAX;
    wait_until("every copy answered", Duration::from_secs(10), || {
        let sent = stat(stack, "shadow_rq_total");
        let done = sent > 0 && canary.requests() == sent && stat(stack, "shadow_rs_2xx") == sent;
        let settled = done && sent == last;
        last = if done { sent } else { u64::MAX };
        if done && !settled {
            thread::sleep(Duration::from_millis(300));
        }
        settled
    });
}

/// A 10 KB body that differs per request, so a copy carries its own request's body.
fn body(i: usize) -> Vec<u8> {
    (0..10_240)
        .map(|j| b'a' + ((i * 7 + j) % 26) as u8)
        .collect()
}

fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
        .collect()
}

#[test]
fn a_fifth_of_requests_reach_the_canary_intact_and_clients_see_only_stable() {
    let _serial = rollgate_e2e::timing_lock();
    let stack = Stack::start(&policy(r#"{"variant":"canary","percent":20}"#));
    let mut client = stack.client();
    const N: usize = 2_000;
    for i in 0..N {
        let (user, trace, path) = (
            format!("u{i}"),
            format!("t{i}"),
            format!("/api/orders/{i}?q={i}"),
        );
        let r = client
            .request(
                "POST",
                "pro.coding",
                &path,
                &[
                    ("x-user-id", user.as_bytes()),
                    ("x-trace", trace.as_bytes()),
                ],
                &body(i),
            )
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(
            r.header_str("x-upstream").as_deref(),
            Some(STABLE),
            "request {i}"
        );
    }
    assert_eq!(stack.upstream(STABLE).requests(), N as u64);
    let canary = stack.upstream(CANARY);
    // Copies are sent after their request and answered on their own time: wait until every copy
    // Envoy counted as sent has reached the canary and been answered.
    all_answered(&stack, canary);
    let copies = canary.received();
    let share = copies.len() as f64 / N as f64;
    assert!(
        (0.17..=0.23).contains(&share),
        "canary got {} copies of {N}",
        copies.len()
    );
    for c in &copies {
        // Which request this is a copy of, from its path.
        let i: usize = c
            .target
            .strip_prefix("/api/orders/")
            .and_then(|t| t.split('?').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected copy of {}", c.target));
        assert_eq!(c.method, "POST");
        assert_eq!(c.target, format!("/api/orders/{i}?q={i}"));
        assert_eq!(
            header(&c.headers, "x-user-id"),
            [format!("u{i}").as_bytes()]
        );
        assert_eq!(header(&c.headers, "x-trace"), [format!("t{i}").as_bytes()]);
        assert_eq!(header(&c.headers, "x-rollgate-shadow"), [b"1".as_slice()]);
        // Envoy's own mirror suffixes the host the same way (see shadow_tests.rs for its source).
        assert_eq!(
            header(&c.headers, "host"),
            [b"pro.coding-shadow".as_slice()]
        );
        for internal in ["x-rollgate-cluster", "x-rollgate-variant"] {
            assert!(header(&c.headers, internal).is_empty(), "{internal} copied");
        }
        assert!(c.body == body(i), "body of the copy of request {i} differs");
    }
    let first: std::collections::BTreeSet<String> = copies
        .iter()
        .filter_map(|c| String::from_utf8(header(&c.headers, "x-user-id").first()?.to_vec()).ok())
        .collect();
    assert_eq!(first.len(), copies.len(), "a user was copied twice");
    // Sticky by the route's key: a second round of the first 500 users copies the same users.
    for i in 0..500 {
        let user = format!("u{i}");
        client.get("pro.coding", "/again", &[("x-user-id", user.as_bytes())]);
    }
    all_answered(&stack, canary);
    // By path, not by arrival: a first-round copy may arrive after the first wait ended.
    let users = |round: &dyn Fn(&str) -> bool| -> std::collections::BTreeSet<String> {
        canary
            .received()
            .iter()
            .filter(|c| round(&c.target))
            .filter_map(|c| {
                String::from_utf8(header(&c.headers, "x-user-id").first()?.to_vec()).ok()
            })
            .collect()
    };
    let first = users(&|t| t.starts_with("/api/orders/"));
    let again = users(&|t| t == "/again");
    let expected: std::collections::BTreeSet<String> = (0..500)
        .map(|i| format!("u{i}"))
        .filter(|u| first.contains(u))
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(again, expected);
    assert_eq!(stat(&stack, "shadow_mismatch"), 0);
    assert_eq!(stat(&stack, "shadow_skipped"), 0);
    assert_eq!(stat(&stack, "shadow_dropped"), 0);
    assert_eq!(stat(&stack, "shadow_failed"), 0);
    eprintln!(
        "mirror share: {} copies of {N} ({:.1} %)",
        copies.len(),
        share * 100.0
    );
}

#[test]
fn a_canary_answering_500_is_counted_as_mismatch_and_bodies_over_max_body_are_skipped() {
    let _serial = rollgate_e2e::timing_lock();
    let stack = Stack::start(&policy(
        r#"{"variant":"canary","percent":100,"max_body":4096}"#,
    ));
    let canary = stack.upstream(CANARY);
    canary.set_status(500);
    canary.set_delay(Duration::from_millis(300));
    let mut client = stack.client();
    let started = Instant::now();
    for i in 0..50 {
        let user = format!("u{i}");
        let r = client.get("pro.coding", "/", &[("x-user-id", user.as_bytes())]);
        assert_eq!(
            (r.status, r.body_str().as_str()),
            (200, STABLE),
            "request {i}"
        );
    }
    // The copies take 300 ms each: clients waiting for them would need 15 s in all.
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "50 requests took {elapsed:?}"
    );
    wait_until("50 answers compared", Duration::from_secs(10), || {
        stat(&stack, "shadow_mismatch") >= 50
    });
    assert_eq!(stat(&stack, "shadow_rq_total"), 50);
    assert_eq!(stat(&stack, "shadow_rs_5xx"), 50);
    assert_eq!(stat(&stack, "shadow_rs_2xx"), 0);
    assert_eq!(stat(&stack, "shadow_mismatch"), 50);
    assert_eq!(canary.requests(), 50);
    // Over max_body: served, not copied, counted (sent once the 50 copies above have left
    // their slots, so none of these is dropped instead).
    let big = vec![b'x'; 5_000];
    for i in 0..3 {
        let user = format!("big{i}");
        let r = client
            .request(
                "PUT",
                "pro.coding",
                "/up",
                &[("x-user-id", user.as_bytes())],
                &big,
            )
            .unwrap();
        assert_eq!((r.status, r.body_str().as_str()), (200, STABLE));
    }
    assert_eq!(stat(&stack, "shadow_skipped"), 3);
    assert_eq!(stat(&stack, "shadow_dropped"), 0);
    assert_eq!(stat(&stack, "shadow_rq_total"), 50);
    assert!(canary.received().iter().all(|c| c.method == "GET"));
    // The histogram holds each copy's latency: at least the canary's 300 ms.
    wait_until(
        "the latency histogram flushed",
        Duration::from_secs(5),
        || {
            let prom = stack.envoy.admin("/stats/prometheus").body_str();
            let value = |name: &str| {
                prom.lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            };
            let count = value("rollgate_flask_variant_canary_shadow_latency_ms_count{} ");
            let sum = value("rollgate_flask_variant_canary_shadow_latency_ms_sum{} ");
            matches!((count, sum), (Some(c), Some(s)) if c == 50.0 && s >= 50.0 * 300.0)
        },
    );
}

/// `compare_body`: the primary's and the copy's response bodies compared by hash as they pass
/// (20 KB: Envoy may hand the primary's to the filter in several chunks), counted in
/// `shadow_body_compared` and `shadow_body_mismatch`; bodies over the limit are not compared.
#[test]
fn response_bodies_are_compared_by_hash_under_compare_body() {
    let _serial = rollgate_e2e::timing_lock();
    let stack = Stack::start(&policy(
        r#"{"variant":"canary","percent":100,"compare_body":32768}"#,
    ));
    let (stable, canary) = (stack.upstream(STABLE), stack.upstream(CANARY));
    let same = body(1).repeat(2);
    let mut changed = same.clone();
    *changed.last_mut().unwrap() ^= 1;
    let mut client = stack.client();
    let mut run = |from: usize, n: usize| {
        for i in from..from + n {
            let user = format!("u{i}");
            let r = client.get("pro.coding", "/", &[("x-user-id", user.as_bytes())]);
            assert_eq!(r.status, 200, "request {i}");
        }
    };
    let settled = |compared: u64| {
        wait_until(
            &format!("{compared} bodies compared"),
            Duration::from_secs(10),
            || stat(&stack, "shadow_body_compared") >= compared,
        );
        // No more arrive after the last join.
        thread::sleep(Duration::from_millis(300));
    };
    // The same 20 KB body from both: compared, equal.
    stable.set_body(&same);
    canary.set_body(&same);
    run(0, 30);
    settled(30);
    assert_eq!(stat(&stack, "shadow_body_compared"), 30);
    assert_eq!(stat(&stack, "shadow_body_mismatch"), 0);
    // The canary's last byte differs: every body a mismatch, the statuses still agree.
    canary.set_body(&changed);
    run(30, 30);
    settled(60);
    assert_eq!(stat(&stack, "shadow_body_compared"), 60);
    assert_eq!(stat(&stack, "shadow_body_mismatch"), 30);
    assert_eq!(stat(&stack, "shadow_mismatch"), 0);
    // Over compare_body on the primary's side, then on the copy's: not compared, still joined.
    stable.set_body(&body(2).repeat(4));
    run(60, 10);
    stable.set_body(&same);
    canary.set_body(&body(3).repeat(4));
    run(70, 10);
    all_answered_n(&stack, 80);
    assert_eq!(stat(&stack, "shadow_body_compared"), 60);
    assert_eq!(stat(&stack, "shadow_body_mismatch"), 30);
    assert_eq!(stat(&stack, "shadow_rs_2xx"), 80);
}

/// Waits until `n` copies were answered and no more arrive.
fn all_answered_n(stack: &Stack, n: u64) {
    wait_until(
        &format!("{n} copies answered"),
        Duration::from_secs(10),
        || stat(stack, "shadow_rs_2xx") >= n,
    );
    thread::sleep(Duration::from_millis(300));
}

fn vm_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

#[test]
fn slow_copies_beyond_max_in_flight_are_dropped_and_memory_stays_bounded() {
    let _serial = rollgate_e2e::timing_lock();
    let stack = Stack::start(&policy(
        r#"{"variant":"canary","percent":100,"max_in_flight":50}"#,
    ));
    let canary = stack.upstream(CANARY);
    canary.set_delay(Duration::from_secs(2));
    // Warm up (both workers' VMs, connections), then measure from there.
    let mut warm = stack.client();
    for i in 0..20 {
        let user = format!("w{i}");
        warm.get("pro.coding", "/", &[("x-user-id", user.as_bytes())]);
    }
    wait_until("warm-up copies answered", Duration::from_secs(10), || {
        stat(&stack, "shadow_rs_2xx") + stat(&stack, "shadow_dropped") == 20
    });
    let before = vm_rss_kb(stack.envoy.pid());
    let (warm_sent, warm_dropped) = (
        stat(&stack, "shadow_rq_total"),
        stat(&stack, "shadow_dropped"),
    );
    // 1,000 requests from 10 clients, each pacing itself to at most 100 requests/s: about a
    // second of load, far below what two cores serve, while every copy takes 2 s.
    const CLIENTS: usize = 10;
    const EACH: usize = 100;
    // Just under the default max_body: copies held without the bound would be 1,000 × 60 KB.
    const BODY: usize = 60_000;
    let port = stack.envoy.port();
    let load_started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|t| {
            thread::spawn(move || {
                let mut c = Client::new(port);
                let mut served = Vec::new();
                for i in 0..EACH {
                    let user = format!("c{t}-{i}");
                    let body = vec![b'b'; BODY];
                    let r = c
                        .request(
                            "POST",
                            "pro.coding",
                            "/slow",
                            &[("x-user-id", user.as_bytes())],
                            &body,
                        )
                        .unwrap_or_else(|e| panic!("client {t} request {i}: {e}"));
                    served.push((r.status, r.body_str()));
                    thread::sleep(Duration::from_millis(10));
                }
                served
            })
        })
        .collect();
    let mut answered = 0;
    for t in threads {
        for (status, body) in t.join().unwrap() {
            assert_eq!((status, body.as_str()), (200, STABLE));
            answered += 1;
        }
    }
    assert_eq!(answered, CLIENTS * EACH, "every client answered");
    let load = load_started.elapsed();
    // Resident memory hardly ever shrinks: read right after the load, it holds its peak.
    let peak = vm_rss_kb(stack.envoy.pid());
    wait_until(
        "every copy answered or dropped",
        Duration::from_secs(15),
        || {
            let sent = stat(&stack, "shadow_rq_total") - warm_sent;
            let dropped = stat(&stack, "shadow_dropped") - warm_dropped;
            sent + dropped == (CLIENTS * EACH) as u64
                && stat(&stack, "shadow_rs_2xx") == stat(&stack, "shadow_rq_total")
        },
    );
    let sent = stat(&stack, "shadow_rq_total") - warm_sent;
    let dropped = stat(&stack, "shadow_dropped") - warm_dropped;
    // Two workers, at most 50 copies in flight each, every copy taking 2 s: a slot is reused at
    // most once per 2 s of load (plus the first round), so most copies are dropped.
    let rounds = load.as_secs() / 2 + 2;
    assert!(dropped > 0, "nothing dropped ({sent} sent)");
    assert!(
        sent <= 100 * rounds,
        "{sent} copies sent in {load:?} with 100 slots of 2 s"
    );
    assert_eq!(canary.requests() - warm_sent, sent);
    let after = vm_rss_kb(stack.envoy.pid());
    let growth_mb = (peak.max(after).saturating_sub(before)) as f64 / 1024.0;
    assert!(growth_mb < 50.0, "Envoy grew by {growth_mb:.1} MB");
    eprintln!(
        "slow mirrors: {sent} sent, {dropped} dropped of {} in {load:?}; VmRSS {before} kB -> peak {peak} kB, after {after} kB (+{growth_mb:.1} MB)",
        CLIENTS * EACH
    );
}

#[test]
fn copies_past_their_timeout_or_to_a_dead_canary_are_answered_5xx_and_fail_no_client() {
    let _serial = rollgate_e2e::timing_lock();
    let mut stack = Stack::start(&policy(
        r#"{"variant":"canary","percent":100,"timeout":"200ms"}"#,
    ));
    let canary = stack.upstream(CANARY);
    canary.set_delay(Duration::from_secs(1));
    let mut client = stack.client();
    for i in 0..5 {
        let user = format!("u{i}");
        let r = client.get("pro.coding", "/", &[("x-user-id", user.as_bytes())]);
        assert_eq!((r.status, r.body_str().as_str()), (200, STABLE));
    }
    // Envoy's async client answers a call past its timeout itself, with a 5xx status (the
    // filter sees an answer, not a failure), and counts the timeout on the cluster.
    wait_until(
        "5 timed-out copies answered",
        Duration::from_secs(5),
        || stat(&stack, "shadow_rs_5xx") == 5,
    );
    assert_eq!(
        stack
            .envoy
            .stat("cluster.k8s-flask-canary.upstream_rq_timeout"),
        Some(5)
    );
    assert_eq!(stat(&stack, "shadow_failed"), 0);
    assert_eq!(stat(&stack, "shadow_mismatch"), 5);
    // A dead canary (nothing listening): clients are served, the copies answered 5xx by Envoy.
    let at = stack
        .upstreams
        .iter()
        .position(|u| u.name() == CANARY)
        .unwrap();
    drop(stack.upstreams.remove(at));
    for i in 0..5 {
        let user = format!("d{i}");
        let r = client.get("pro.coding", "/", &[("x-user-id", user.as_bytes())]);
        assert_eq!((r.status, r.body_str().as_str()), (200, STABLE));
    }
    wait_until(
        "5 copies to a dead canary answered",
        Duration::from_secs(5),
        || stat(&stack, "shadow_rs_5xx") == 10,
    );
    assert_eq!(stat(&stack, "shadow_rq_total"), 10);
    assert_eq!(stat(&stack, "shadow_mismatch"), 10);
}
