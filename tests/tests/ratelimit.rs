//! Rate limiting in a real Envoy with two workers: the bucket is shared, keys are separate,
//! keyless requests are limited by client address, refusals carry the headers.

use std::thread;
use std::time::{Duration, Instant};

use rollgate_e2e::{Client, Response, Stack};

fn policy(limit: &str) -> String {
    format!(
        r#"{{"name":"flask","variants":{{"stable":"k8s-flask","canary":"k8s-flask-canary","dev":"k8s-flask-dev"}},
            "default":"stable","rate_limits":[{limit}]}}"#
    )
}

/// Sends `rate` requests per second for `dur`, spread over `conns` connections (so Envoy's two
/// workers both serve them), each paced on its own schedule. Returns (admitted, refused, elapsed).
fn paced(
    stack: &Stack,
    key: Option<&str>,
    rate: u32,
    dur: Duration,
    conns: u32,
) -> (u32, u32, Duration) {
    let port = stack.envoy.port();
    let start = Instant::now();
    let handles: Vec<_> = (0..conns)
        .map(|c| {
            let key = key.map(str::to_string);
            thread::spawn(move || {
                let mut client = Client::new(port);
                let interval = Duration::from_secs_f64(f64::from(conns) / f64::from(rate));
                let mut next = start + interval.mul_f64(f64::from(c) / f64::from(conns));
                let (mut ok, mut refused) = (0, 0);
                while next < start + dur {
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                    let headers: Vec<(&str, &[u8])> =
                        key.iter().map(|k| ("x-api-key", k.as_bytes())).collect();
                    match client.get("pro.coding", "/api/x", &headers).status {
                        200 => ok += 1,
                        429 => refused += 1,
                        s => panic!("unexpected status {s}"),
                    }
                    next += interval;
                }
                (ok, refused)
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for h in handles {
        let (o, r) = h.join().unwrap();
        ok += o;
        refused += r;
    }
    (ok, refused, start.elapsed())
}

#[test]
fn one_key_at_four_times_its_rate_gets_burst_plus_average_times_elapsed() {
    let _serial = rollgate_e2e::timing_lock();
    let stack = Stack::start(&policy(
        r#"{"name":"api","match":"PathPrefix(`/api`)","average":100,"period":"1s","burst":100,
            "source":{"header":"x-api-key"}}"#,
    ));
    let (ok, refused, elapsed) = paced(&stack, Some("key-1"), 400, Duration::from_secs(5), 8);
    let expected = 100.0 + 100.0 * elapsed.as_secs_f64();
    let share = f64::from(ok) / expected;
    println!(
        "admitted {ok}, refused {refused} in {elapsed:?}: expected {expected:.0} ({share:.3})"
    );
    assert!(
        (0.95..=1.05).contains(&share),
        "admitted {ok}, expected {expected:.0} ± 5 %"
    );
    assert!(
        refused > 1000,
        "about three quarters are refused: {refused}"
    );
    let limited = stack
        .envoy
        .stat("wasmcustom.rollgate.flask.ratelimit.api.limited")
        .unwrap();
    assert_eq!(limited, u64::from(refused), "the stat counts every refusal");
}

#[test]
fn leased_tokens_keep_a_large_bucket_within_its_leases_of_exact() {
    // Burst 640: each worker leases 10 tokens at a time (burst / 64), so the two workers may
    // fall short of the exact count by at most 2 × 10, and never exceed it.
    let _serial = rollgate_e2e::timing_lock();
    let stack = Stack::start(&policy(
        r#"{"name":"api","match":"PathPrefix(`/api`)","average":100,"period":"1s","burst":640,
            "source":{"header":"x-api-key"}}"#,
    ));
    let (ok, refused, elapsed) = paced(&stack, Some("key-1"), 600, Duration::from_secs(4), 8);
    let expected = 640.0 + 100.0 * elapsed.as_secs_f64();
    println!("admitted {ok}, refused {refused} in {elapsed:?}: expected {expected:.0}");
    // Timing slack as in the exact test above (a late request sees a little more refill).
    let slack = 0.03 * expected;
    assert!(
        f64::from(ok) <= expected + slack,
        "admitted {ok}: more than the bucket allows ({expected:.0})"
    );
    assert!(
        f64::from(ok) >= expected - 20.0 - slack,
        "admitted {ok}: short of {expected:.0} by more than two leases"
    );
    assert!(refused > 800, "most of the excess is refused: {refused}");
}

#[test]
fn two_keys_are_limited_independently_and_keyless_requests_by_client_address() {
    let stack = Stack::start(&policy(
        r#"{"name":"api","average":1,"period":"1m","burst":3,"source":{"header":"x-api-key"}}"#,
    ));
    let mut c = stack.client();
    let get = |c: &mut Client, key: Option<&str>| {
        let h: Vec<(&str, &[u8])> = key.iter().map(|k| ("x-api-key", k.as_bytes())).collect();
        c.get("pro.coding", "/", &h).status
    };
    let a: Vec<u16> = (0..5).map(|_| get(&mut c, Some("a"))).collect();
    assert_eq!(a, [200, 200, 200, 429, 429]);
    let b: Vec<u16> = (0..4).map(|_| get(&mut c, Some("b"))).collect();
    assert_eq!(b, [200, 200, 200, 429], "key b has its own bucket");
    // Without the key: the client address (127.0.0.1) is the key, on any connection.
    let mut other = stack.client();
    let anon: Vec<u16> = (0..3)
        .map(|_| get(&mut other, None))
        .chain((0..2).map(|_| get(&mut c, None)))
        .collect();
    assert_eq!(
        anon,
        [200, 200, 200, 429, 429],
        "keyless requests share the client's bucket, not key a's"
    );
}

fn header(r: &Response, name: &str) -> Option<String> {
    r.header_str(name)
}

#[test]
fn refusals_and_admitted_responses_carry_the_limit_headers() {
    let stack = Stack::start(&policy(
        r#"{"name":"api","average":1,"period":"10s","burst":2,"headers":true}"#,
    ));
    let mut c = stack.client();
    let r1 = c.get("pro.coding", "/", &[]);
    assert_eq!(r1.status, 200);
    assert_eq!(header(&r1, "x-ratelimit-limit").as_deref(), Some("2"));
    assert_eq!(header(&r1, "x-ratelimit-remaining").as_deref(), Some("1"));
    assert_eq!(header(&r1, "x-ratelimit-reset").as_deref(), Some("10"));
    let r2 = c.get("pro.coding", "/", &[]);
    assert_eq!(header(&r2, "x-ratelimit-remaining").as_deref(), Some("0"));
    let r3 = c.get("pro.coding", "/", &[]);
    assert_eq!(r3.status, 429);
    assert_eq!(r3.body_str(), "Too Many Requests");
    let retry: u64 = header(&r3, "retry-after").unwrap().parse().unwrap();
    assert!(
        (9..=10).contains(&retry),
        "whole seconds until one token: {retry}"
    );
    assert_eq!(header(&r3, "x-ratelimit-limit").as_deref(), Some("2"));
    assert_eq!(header(&r3, "x-ratelimit-remaining").as_deref(), Some("0"));
    let reset: u64 = header(&r3, "x-ratelimit-reset").unwrap().parse().unwrap();
    assert!((19..=20).contains(&reset), "{reset}");
    assert_eq!(r3.header("x-upstream"), None, "refused before any upstream");
}

#[test]
fn limits_with_a_match_apply_only_to_matching_requests() {
    let stack = Stack::start(&policy(
        r#"{"name":"api","match":"PathPrefix(`/api`)","average":1,"period":"1m","burst":1}"#,
    ));
    let mut c = stack.client();
    assert_eq!(c.get("pro.coding", "/api/a", &[]).status, 200);
    assert_eq!(c.get("pro.coding", "/api/b", &[]).status, 429);
    for _ in 0..5 {
        assert_eq!(c.get("pro.coding", "/static/x", &[]).status, 200);
    }
}
