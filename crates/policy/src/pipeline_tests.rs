//! The request pipeline against a fake host: a real [`MemStore`] (Envoy's CAS rules), a
//! settable clock, and counted metrics and host calls.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;

use super::*;
use crate::breaker::Phase;
use crate::ratelimit::global::GlobalCache;
use crate::store::{MemStore, StoreError};

const MS: u64 = 1_000_000;
const S: u64 = 1_000 * MS;

#[derive(Default)]
struct Fake {
    store: MemStore,
    now: Cell<u64>,
    addr: Option<IpAddr>,
    flags: Cell<u64>,
    metrics: RefCell<HashMap<u32, i64>>,
    records: RefCell<Vec<(u32, u64)>>,
    /// Every host call the pipeline made.
    calls: Cell<u32>,
}

impl Fake {
    fn new() -> Fake {
        let f = Fake {
            addr: "10.0.0.7".parse().ok(),
            ..Fake::default()
        };
        f.now.set(1_000 * S);
        f
    }
    fn call(&self) {
        self.calls.set(self.calls.get() + 1);
    }
    fn metric(&self, id: u32) -> i64 {
        self.metrics.borrow().get(&id).copied().unwrap_or(0)
    }
    fn advance(&self, ns: u64) {
        self.now.set(self.now.get() + ns);
    }
}

impl SharedStore for Fake {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.call();
        self.store.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        self.call();
        self.store.set(key, value, cas)
    }
}

impl Host for Fake {
    fn now_ns(&self) -> u64 {
        self.call();
        self.now.get()
    }
    fn client_addr(&self) -> Option<IpAddr> {
        self.call();
        self.addr
    }
    fn response_flags(&self) -> u64 {
        self.call();
        self.flags.get()
    }
    fn increment(&self, id: u32, n: i64) {
        self.call();
        *self.metrics.borrow_mut().entry(id).or_default() += n;
    }
    fn record(&self, id: u32, value: u64) {
        self.call();
        self.records.borrow_mut().push((id, value));
    }
}

/// A worker for `json` with distinct metric ids, as the glue's `Runtime::new` builds it.
fn worker(json: &str) -> Worker {
    let policy = Policy::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let next = Cell::new(0);
    let id = || {
        next.set(next.get() + 1);
        next.get()
    };
    Worker {
        variants: policy
            .variants
            .iter()
            .map(|_| VariantIds {
                requests: id(),
                classes: [id(), id(), id(), id(), id()],
                network_errors: id(),
                latency_ms: id(),
            })
            .collect(),
        rate_limited: policy.rate_limits.iter().map(|_| id()).collect(),
        limit_ids: policy
            .rate_limits
            .iter()
            .map(|_| LimitIds {
                shadow_limited: id(),
                rls_ok: id(),
                rls_over_limit: id(),
                rls_unavailable: id(),
                rls_timeout: id(),
                rls_invalid: id(),
            })
            .collect(),
        globals: RefCell::new(
            policy
                .rate_limits
                .iter()
                .map(|_| GlobalCache::default())
                .collect(),
        ),
        breaker_ids: policy
            .breakers
            .iter()
            .map(|_| BreakerIds {
                state: id(),
                trips: id(),
                fallback: id(),
            })
            .collect(),
        breakers: RefCell::new(policy.breakers.iter().map(|b| b.local()).collect()),
        leases: RefCell::new(
            policy
                .rate_limits
                .iter()
                .map(|_| Leases::default())
                .collect(),
        ),
        policy,
    }
}

fn pairs<'a>(h: &'a [(&str, &str)]) -> Vec<(&'a [u8], &'a [u8])> {
    h.iter()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect()
}

fn index(w: &Worker, name: &str) -> usize {
    w.policy
        .variants
        .iter()
        .position(|v| v.name == name)
        .unwrap()
}

const ROUTES: &str = r#"{
  "name": "flask",
  "variants": { "stable": "k8s-flask", "canary": "k8s-flask-canary", "dev": "k8s-flask-dev" },
  "default": "stable",
  "routes": [
    { "match": "Host(`dev.coding`)", "variant": "dev" },
    { "match": "Host(`pro.coding`) && Headers(`location`, `shenzhen`)", "variant": "canary" },
    { "match": "Host(`pro.coding`)", "split": [ { "variant": "canary", "weight": 100 } ],
      "sticky": { "header": "x-user-id" } },
    { "match": "Host(`new.coding`)", "split": [ { "variant": "canary", "weight": 100 } ],
      "sticky": { "header": "x-u", "assign_cookie": "rg" } }
  ],
  "cluster_header": "x-rollgate-cluster",
  "variant_header": "x-rollgate-variant"
}"#;

fn forward(v: &[(&'static str, &'static str)]) -> Plan<'static> {
    Plan::Forward(v.iter().map(|(k, v)| (*k, Some(*v))).collect())
}

#[test]
fn a_decision_per_route_kind() {
    let w = worker(ROUTES);
    let host = Fake::new();
    // (request headers, cluster, variant)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case; 4] = [
        (&[(":authority", "dev.coding")], "k8s-flask-dev", "dev"),
        (
            &[(":authority", "pro.coding"), ("location", "shenzhen")],
            "k8s-flask-canary",
            "canary",
        ),
        (
            &[(":authority", "pro.coding"), ("x-user-id", "u1")],
            "k8s-flask-canary",
            "canary",
        ),
        (&[(":authority", "other")], "k8s-flask", "stable"),
    ];
    for (headers, cluster, variant) in cases {
        let mut ex = Exchange::new(1);
        let plan = ex.on_request(&w, pairs(headers), &host);
        assert_eq!(
            plan,
            forward(&[
                ("x-rollgate-cluster", cluster),
                ("x-rollgate-variant", variant)
            ]),
            "{headers:?}"
        );
        assert_eq!(ex.variant(), Some(index(&w, variant)));
        // No cookie to assign, no limit headers, variant not exposed: nothing to write back.
        assert_eq!(ex.on_response(&w, || 200, &host), vec![]);
    }
    for v in ["stable", "canary", "dev"] {
        let ids = &w.variants[index(&w, v)];
        let want = if v == "canary" { 2 } else { 1 };
        assert_eq!(host.metric(ids.requests), want, "{v}");
        assert_eq!(host.metric(ids.classes[1]), want, "{v}");
    }
    // A split route assigning a cookie: the id comes from the clock, the cookie goes back.
    let mut ex = Exchange::new(9);
    let plan = ex.on_request(&w, pairs(&[(":authority", "new.coding")]), &host);
    assert_eq!(
        plan,
        forward(&[
            ("x-rollgate-cluster", "k8s-flask-canary"),
            ("x-rollgate-variant", "canary")
        ])
    );
    let ops = ex.on_response(&w, || 200, &host);
    assert!(
        matches!(&ops[..], [HeaderOp::Add("set-cookie", c)]
            if c.starts_with("rg=") && c.ends_with("; Path=/; Max-Age=31536000; SameSite=Lax")),
        "{ops:?}"
    );
}

#[test]
fn forged_internal_headers_are_stripped_or_overwritten() {
    let no_default = ROUTES.replace(r#""default": "stable","#, "");
    let w = worker(&no_default);
    let host = Fake::new();
    let forged = [
        (":authority", "other"),
        ("x-rollgate-cluster", "k8s-flask-canary"),
        ("x-rollgate-variant", "canary"),
    ];
    // Nothing chosen: the forged headers go.
    let mut ex = Exchange::new(1);
    assert_eq!(
        ex.on_request(&w, pairs(&forged), &host),
        Plan::Forward(vec![
            ("x-rollgate-cluster", None),
            ("x-rollgate-variant", None)
        ])
    );
    assert_eq!(ex.variant(), None);
    // Nothing chosen and nothing forged: the request passes untouched.
    let mut ex = Exchange::new(2);
    assert_eq!(
        ex.on_request(&w, pairs(&forged[..1]), &host),
        Plan::Forward(vec![])
    );
    // A variant chosen: the forged values are overwritten with the chosen ones.
    let forged_dev = [
        (":authority", "dev.coding"),
        ("x-rollgate-cluster", "k8s-flask-canary"),
    ];
    let mut ex = Exchange::new(3);
    assert_eq!(
        ex.on_request(&w, pairs(&forged_dev), &host),
        forward(&[
            ("x-rollgate-cluster", "k8s-flask-dev"),
            ("x-rollgate-variant", "dev")
        ])
    );
}

#[test]
fn limits_refuse_with_429_and_their_headers() {
    let w = worker(
        r#"{"name":"flask","variants":{"a":"ca"},"default":"a","expose_variant":true,
            "cluster_header":"x-c","variant_header":"x-v",
            "rate_limits":[{"name":"api","average":1,"period":"1h","burst":2,"headers":true}]}"#,
    );
    let host = Fake::new();
    let req = [(":authority", "x"), (":path", "/")];
    let mut admitted = Vec::new();
    for n in 0..2 {
        let mut ex = Exchange::new(n);
        assert_eq!(
            ex.on_request(&w, pairs(&req), &host),
            forward(&[("x-c", "ca"), ("x-v", "a")])
        );
        admitted.push(ex.on_response(&w, || 200, &host));
    }
    let set = |k: &'static str, v: &str| HeaderOp::Set(k, v.to_string());
    assert_eq!(
        admitted[1],
        vec![
            set("x-ratelimit-limit", "2"),
            set("x-ratelimit-remaining", "0"),
            // Until the bucket is full again: two tokens at one an hour.
            set("x-ratelimit-reset", "7200"),
            set("x-v", "a"),
        ]
    );
    let mut ex = Exchange::new(3);
    let Plan::Reply {
        status,
        headers,
        body,
    } = ex.on_request(&w, pairs(&req), &host)
    else {
        panic!("the third request in the hour passed");
    };
    assert_eq!((status, body), (429, "Too Many Requests"));
    let names: Vec<_> = headers.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        names,
        [
            "retry-after",
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset"
        ]
    );
    assert_eq!(headers[1].1, "2");
    assert_eq!(headers[2].1, "0");
    assert!(headers[0].1.parse::<u64>().unwrap() > 0, "{headers:?}");
    assert_eq!(host.metric(w.rate_limited[0]), 1);
    // Our own answer is not the variant's: nothing counted, nothing written.
    let requests = host.metric(w.variants[0].requests);
    assert_eq!(ex.on_response(&w, || 200, &host), vec![]);
    assert_eq!(host.metric(w.variants[0].requests), requests);
    assert_eq!(requests, 2);
}

const BREAKER: &str = r#"{"name":"flask","variants":{"stable":"s","canary":"c"},"default":"canary",
    "cluster_header":"x-c","variant_header":"x-v",
    "circuit_breakers":[{"name":"net","variant":"canary","expression":"NetworkErrorRatio() > 0.5",
      "check_period":"100ms","fallback_duration":"10s","recovery_duration":"10s",
      "fallback_variant":"stable"}]}"#;

/// One request and its response with `status`; returns the cluster it went to.
fn exchange(w: &Worker, host: &Fake, status: u16) -> Option<&'static str> {
    let mut ex = Exchange::new(1);
    let cluster = match ex.on_request(w, pairs(&[(":authority", "x")]), host) {
        Plan::Forward(h) => match h.first() {
            Some(("x-c", Some("s"))) => Some("s"),
            Some(("x-c", Some("c"))) => Some("c"),
            other => panic!("{other:?}"),
        },
        Plan::Reply { .. } | Plan::Ask { .. } => None,
    };
    host.advance(MS);
    ex.on_response(w, || status, host);
    cluster
}

fn tick(w: &Worker, host: &Fake) -> Option<Phase> {
    let b = &w.policy.breakers[0];
    let mut locals = w.breakers.borrow_mut();
    b.tick(&mut locals[0], host, host.now.get()).map(|t| t.to)
}

#[test]
fn breaker_opens_on_counted_responses_falls_back_then_ramps() {
    let w = worker(BREAKER);
    let host = Fake::new();
    let (stable, canary) = (index(&w, "stable"), index(&w, "canary"));
    for _ in 0..50 {
        assert_eq!(exchange(&w, &host, 502), Some("c"));
    }
    // The responses were counted for the variant and for its breaker, whose check opens it.
    assert_eq!(host.metric(w.variants[canary].network_errors), 50);
    assert_eq!(host.metric(w.variants[canary].classes[4]), 50);
    host.advance(200 * MS);
    assert_eq!(tick(&w, &host), Some(Phase::Open));
    // Open: canary traffic falls back to stable, counted as stable's and as fallbacks.
    for _ in 0..10 {
        assert_eq!(exchange(&w, &host, 200), Some("s"));
    }
    assert_eq!(host.metric(w.breaker_ids[0].fallback), 10);
    assert_eq!(host.metric(w.variants[stable].requests), 10);
    assert_eq!(host.metric(w.variants[stable].classes[1]), 10);
    // Recovering (half-open): a growing share goes back to canary, and its responses count.
    host.advance(10 * S + 2 * S);
    let to_canary = (0..100)
        .filter(|_| exchange(&w, &host, 200) == Some("c"))
        .count();
    assert!((1..100).contains(&to_canary), "{to_canary} of 100");
    assert_eq!(
        host.metric(w.variants[canary].requests),
        50 + to_canary as i64
    );
    // After the ramp, all of it.
    host.advance(20 * S);
    assert!((0..20).all(|_| exchange(&w, &host, 200) == Some("c")));
}

#[test]
fn open_breaker_without_fallback_answers_itself() {
    let w = worker(&BREAKER.replace(r#""fallback_variant":"stable""#, r#""response_code":503"#));
    let host = Fake::new();
    for _ in 0..50 {
        exchange(&w, &host, 502);
    }
    host.advance(200 * MS);
    assert_eq!(tick(&w, &host), Some(Phase::Open));
    let mut ex = Exchange::new(1);
    assert_eq!(
        ex.on_request(&w, pairs(&[(":authority", "x")]), &host),
        Plan::Reply {
            status: 503,
            headers: vec![],
            body: "Service Unavailable"
        }
    );
    assert_eq!(ex.on_response(&w, || 200, &host), vec![]);
    assert_eq!(host.metric(w.breaker_ids[0].fallback), 1);
}

#[test]
fn responses_are_counted_per_variant_and_class() {
    let w = worker(ROUTES);
    let host = Fake::new();
    let dev = &w.variants[index(&w, "dev")];
    for (status, flags) in [(200, 0), (404, 0), (503, 0), (503, 0x20), (502, 0), (0, 0)] {
        host.flags.set(flags);
        let mut ex = Exchange::new(1);
        ex.on_request(&w, pairs(&[(":authority", "dev.coding")]), &host);
        host.advance(7 * MS);
        ex.on_response(&w, || status, &host);
    }
    let classes: Vec<_> = dev.classes.iter().map(|&c| host.metric(c)).collect();
    assert_eq!(classes, [0, 1, 0, 1, 3]);
    // 502 always, 503 only with an upstream-failure flag.
    assert_eq!(host.metric(dev.network_errors), 2);
    assert_eq!(host.metric(dev.requests), 6);
    // No limits or breakers: no clock at the request, so latency reads as 0 then.
    let latencies: Vec<_> = host.records.borrow().iter().map(|r| r.1).collect();
    assert_eq!(latencies, [0; 6]);
    let stable = &w.variants[index(&w, "stable")];
    assert_eq!(host.metric(stable.requests), 0);
}

#[test]
fn latency_is_measured_from_the_request_when_the_clock_was_read() {
    let w = worker(BREAKER);
    let host = Fake::new();
    let mut ex = Exchange::new(1);
    ex.on_request(&w, pairs(&[(":authority", "x")]), &host);
    host.advance(7 * MS);
    ex.on_response(&w, || 200, &host);
    assert_eq!(
        host.records.borrow()[..],
        [(w.variants[index(&w, "canary")].latency_ms, 7)]
    );
}

/// The host calls of one plain request (no limits, breakers or cookie), pipeline side: the
/// glue adds one header-map read, one write per internal header and one `:status` read.
#[test]
fn host_calls_per_plain_request() {
    let w = worker(ROUTES);
    let host = Fake::new();
    let mut ex = Exchange::new(1);
    ex.on_request(&w, pairs(&[(":authority", "dev.coding")]), &host);
    assert_eq!(host.calls.get(), 1, "the requests counter");
    ex.on_response(&w, || 200, &host);
    assert_eq!(host.calls.get(), 4, "+ clock, class counter, latency");
}

const GLOBAL: &str = r#"{"name": "g", "variants": {"stable": "s"}, "default": "stable",
  "rate_limits": [{"name": "api", "scope": "global", "average": 100, "period": "3s",
                   "service": {"cluster": "rls", "domain": "d", "failure_mode": "deny"}},
                  {"name": "local", "average": 1000, "burst": 1000}]}"#;

/// An OK or OVER_LIMIT answer as a service writes it (remaining, reset in whole seconds).
fn rls_answer(over: bool, remaining: u8, reset_ms: u16) -> Vec<u8> {
    let dur = [0x08, (reset_ms / 1000) as u8];
    let mut status = vec![
        0x08,
        if over { 2 } else { 1 },
        0x18,
        remaining,
        0x22,
        dur.len() as u8,
    ];
    status.extend(dur);
    let mut out = vec![0x08, if over { 2 } else { 1 }, 0x12, status.len() as u8];
    out.extend(status);
    out
}

#[test]
fn a_global_limit_asks_the_service_once_then_spends_its_batch_locally() {
    let w = worker(GLOBAL);
    let host = Fake::new();
    let req = [(":path", "/"), (":authority", "a")];
    let mut x = Exchange::new(1);
    let Plan::Ask {
        cluster,
        message,
        timeout_ms,
    } = x.on_request(&w, pairs(&req), &host)
    else {
        panic!("expected an ask");
    };
    assert_eq!((cluster, timeout_ms), ("rls", 20));
    assert!(message.windows(3).any(|m| m == b"api"));
    // The local limit after it has not been charged yet: it is checked once, after the answer.
    x.on_rls_answer(Ok(&rls_answer(false, 96, 3000)));
    assert!(matches!(
        x.on_request(&w, pairs(&req), &host),
        Plan::Forward(_)
    ));
    assert_eq!(host.metric(w.limit_ids[0].rls_ok), 1);
    // 96 / 16 = 6: the next ask reserves six hits; five are held for the next requests.
    let mut x = Exchange::new(2);
    let Plan::Ask { message, .. } = x.on_request(&w, pairs(&req), &host) else {
        panic!("expected a batch ask");
    };
    assert_eq!(message.last_chunk::<2>(), Some(&[0x18, 6]));
    x.on_rls_answer(Ok(&rls_answer(false, 90, 3000)));
    assert!(matches!(
        x.on_request(&w, pairs(&req), &host),
        Plan::Forward(_)
    ));
    // The next batch is 90 / 16 = 5: three requests spend held hits, the fourth asks ahead
    // for five with two still held, and the two after it spend those while it waits.
    let plans: Vec<bool> = (0..6)
        .map(|n| {
            matches!(
                Exchange::new(3 + n).on_request(&w, pairs(&req), &host),
                Plan::Forward(_)
            )
        })
        .collect();
    assert_eq!(plans, [true, true, true, false, true, true]);
    assert_eq!(host.metric(w.limit_ids[0].rls_ok), 2);
}

#[test]
fn over_limit_is_a_429_remembered_until_reset_and_failures_follow_failure_mode() {
    let w = worker(GLOBAL);
    let host = Fake::new();
    let req = [(":path", "/")];
    let mut x = Exchange::new(1);
    assert!(matches!(
        x.on_request(&w, pairs(&req), &host),
        Plan::Ask { .. }
    ));
    x.on_rls_answer(Ok(&rls_answer(true, 0, 2000)));
    let Plan::Reply {
        status, headers, ..
    } = x.on_request(&w, pairs(&req), &host)
    else {
        panic!("expected a refusal");
    };
    assert_eq!(status, 429);
    assert!(
        headers.contains(&("retry-after", "2".to_string())),
        "{headers:?}"
    );
    assert!(
        headers.contains(&("x-ratelimit-limit", "100".to_string())),
        "{headers:?}"
    );
    // Known to be over: refused without asking.
    let mut x = Exchange::new(2);
    assert!(matches!(
        x.on_request(&w, pairs(&req), &host),
        Plan::Reply { status: 429, .. }
    ));
    assert_eq!(host.metric(w.rate_limited[0]), 2);
    // After the reset the service is asked again; it fails, and `deny` answers 500.
    host.advance(2_000_000_000);
    for (failure, id) in [
        (Err(RlsFailure::Timeout), w.limit_ids[0].rls_timeout),
        (Err(RlsFailure::Unavailable), w.limit_ids[0].rls_unavailable),
        (Ok(&b"\xff"[..]), w.limit_ids[0].rls_invalid),
    ] {
        let mut x = Exchange::new(3);
        assert!(matches!(
            x.on_request(&w, pairs(&req), &host),
            Plan::Ask { .. }
        ));
        x.on_rls_answer(failure);
        assert!(matches!(
            x.on_request(&w, pairs(&req), &host),
            Plan::Reply { status: 500, .. }
        ));
        assert_eq!(host.metric(id), 1);
    }
    // `allow` (the default) admits.
    let w = worker(&GLOBAL.replace(r#", "failure_mode": "deny""#, ""));
    let mut x = Exchange::new(4);
    assert!(matches!(
        x.on_request(&w, pairs(&req), &host),
        Plan::Ask { .. }
    ));
    x.on_rls_answer(Err(RlsFailure::Unavailable));
    assert!(matches!(
        x.on_request(&w, pairs(&req), &host),
        Plan::Forward(_)
    ));
}

#[test]
fn a_failed_ask_ahead_under_deny_admits_from_the_hits_still_held() {
    let w = worker(GLOBAL);
    let host = Fake::new();
    let req = [(":path", "/")];
    let ask = |n| {
        let mut x = Exchange::new(n);
        let plan = x.on_request(&w, pairs(&req), &host);
        (x, plan)
    };
    // First ask for one, then 96 / 16 = 6: five held after the second answer, batch 5.
    for (n, remaining) in [(1, 96), (2, 90)] {
        let (mut x, plan) = ask(n);
        assert!(matches!(plan, Plan::Ask { .. }), "ask {n}");
        x.on_rls_answer(Ok(&rls_answer(false, remaining, 3000)));
        assert!(matches!(
            x.on_request(&w, pairs(&req), &host),
            Plan::Forward(_)
        ));
    }
    for n in 3..6 {
        assert!(
            matches!(ask(n).1, Plan::Forward(_)),
            "request {n} from the batch"
        );
    }
    // Two left: this one asks ahead, and the service times out.
    let (mut x, plan) = ask(6);
    assert!(matches!(plan, Plan::Ask { .. }));
    x.on_rls_answer(Err(RlsFailure::Timeout));
    assert!(
        matches!(x.on_request(&w, pairs(&req), &host), Plan::Forward(_)),
        "a held hit admits it despite failure_mode deny"
    );
    assert_eq!(host.metric(w.limit_ids[0].rls_timeout), 1);
    // The last held hit, then an ask that fails with none held: 500.
    assert!(matches!(ask(7).1, Plan::Forward(_)));
    let (mut x, plan) = ask(8);
    assert!(matches!(plan, Plan::Ask { .. }));
    x.on_rls_answer(Err(RlsFailure::Timeout));
    assert!(matches!(
        x.on_request(&w, pairs(&req), &host),
        Plan::Reply { status: 500, .. }
    ));
}

#[test]
fn a_shadow_limit_counts_what_it_would_refuse_and_admits_it() {
    let w = worker(
        r#"{"name": "s", "variants": {"stable": "s"}, "default": "stable",
            "rate_limits": [{"name": "tight", "average": 1, "period": "1h", "shadow": true}]}"#,
    );
    let host = Fake::new();
    for n in 0..5 {
        let mut x = Exchange::new(n);
        assert!(matches!(
            x.on_request(&w, pairs(&[(":path", "/")]), &host),
            Plan::Forward(_)
        ));
    }
    // The first request took the one token; four would have been refused.
    assert_eq!(host.metric(w.limit_ids[0].shadow_limited), 4);
    assert_eq!(host.metric(w.rate_limited[0]), 0);
}

#[test]
fn a_mirror_chooses_its_share_never_the_mirror_variant_itself() {
    let host = Fake::new();
    let chosen = |json: &str, user: &str| {
        let w = worker(json);
        let mut ex = Exchange::new(7);
        let plan = ex.on_request(
            &w,
            pairs(&[(":authority", "a"), ("x-user-id", user)]),
            &host,
        );
        assert!(matches!(plan, Plan::Forward(_)));
        ex.mirror()
    };
    let split = |mirror: &str| {
        format!(
            r#"{{"name":"f","variants":{{"stable":"s","canary":"c"}},"default":"stable",
            "routes":[{{"split":[{{"variant":"canary","weight":30}}],"sticky":{{"header":"x-user-id"}},
            "mirror":{mirror}}}]}}"#
        )
    };
    let all = split(r#"{"variant":"canary","percent":100}"#);
    let w = worker(&all);
    let canary = index(&w, "canary");
    let mut seen = [0; 2];
    for u in 0..1_000 {
        let user = format!("u{u}");
        let mut ex = Exchange::new(7);
        ex.on_request(
            &w,
            pairs(&[(":authority", "a"), ("x-user-id", &user)]),
            &host,
        );
        let to_canary = ex.variant() == Some(canary);
        // Everyone the split keeps on stable is copied; the canary's own users are not.
        assert_eq!(ex.mirror().is_some(), !to_canary, "{user}");
        seen[usize::from(to_canary)] += 1;
    }
    assert!(seen[0] > 600 && seen[1] > 200, "{seen:?}");
    // Sticky by the split's key: a user is copied on every request or on none.
    let some = split(r#"{"variant":"canary","percent":40}"#);
    let mut copied = 0;
    for u in 0..500 {
        let user = format!("u{u}");
        let first = chosen(&some, &user);
        assert!((0..5).all(|_| chosen(&some, &user) == first));
        copied += usize::from(first.is_some());
    }
    // 40 % of the ~70 % on stable.
    assert!((100..=180).contains(&copied), "{copied}");
    assert_eq!(
        chosen(&split(r#"{"variant":"canary","percent":0}"#), "u1"),
        None
    );
    // No mirror: nothing chosen, and no extra host call.
    let plain = r#"{"name":"f","variants":{"stable":"s"},"default":"stable","routes":[{"variant":"stable"}]}"#;
    let before = host.calls.get();
    assert_eq!(chosen(plain, "u1"), None);
    assert_eq!(host.calls.get() - before, 1, "only the request counter");
}

#[test]
fn a_keyless_route_mirrors_a_random_share() {
    let host = Fake::new();
    let w = worker(
        r#"{"name":"f","variants":{"stable":"s","canary":"c"},"default":"stable",
        "routes":[{"variant":"stable","mirror":{"variant":"canary","percent":20}}]}"#,
    );
    let mut n = 0;
    for i in 0..2_000u32 {
        host.advance(1_000 + u64::from(i % 7));
        let mut ex = Exchange::new(i);
        ex.on_request(&w, pairs(&[(":authority", "a")]), &host);
        n += usize::from(ex.mirror() == Some(0));
    }
    assert!((340..=460).contains(&n), "{n}");
}

#[test]
fn route_default_writes_no_cluster_header_for_the_default_and_still_strips_a_forged_one() {
    let policy = |extra: &str| {
        format!(
            r#"{{"name": "f", "variants": {{"stable": "s", "canary": "c"}}, "default": "stable",
                "variant_header": ""{extra},
                "routes": [{{"match": "Host(`canary`)", "variant": "canary"}}]}}"#
        )
    };
    let host = Fake::new();
    let forward = |w: &Worker, h: &[(&str, &str)]| -> Vec<(String, Option<String>)> {
        match Exchange::new(1).on_request(w, pairs(h), &host) {
            Plan::Forward(ops) => ops
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect(),
            other => panic!("expected a forward: {other:?}"),
        }
    };
    let set = |v: &str| vec![("x-rollgate-cluster".to_string(), Some(v.to_string()))];
    let w = worker(&policy(r#", "route_default": true"#));
    assert!(forward(&w, &[(":authority", "other")]).is_empty());
    assert_eq!(
        forward(&w, &[(":authority", "other"), ("x-rollgate-cluster", "c")]),
        [("x-rollgate-cluster".to_string(), None)]
    );
    assert_eq!(forward(&w, &[(":authority", "canary")]), set("c"));
    // Without the flag the default's cluster is written, as before.
    let w = worker(&policy(""));
    assert_eq!(forward(&w, &[(":authority", "other")]), set("s"));
}
