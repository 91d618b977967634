//! End-to-end routing through a real Envoy running the real filter.
//!
//! Each test owns its Envoy and upstreams (tests run in parallel) and its own pool of user ids.
//! Where a user's variant is predictable, it is predicted with the harness's own MurmurHash3
//! (`rollgate_e2e::sticky`), not the plugin's: an independent check of the bucketing contract
//! `murmur3_x86_32("flask:<key>", 0) % 10000 < weight * 100 → canary`.

use std::collections::HashMap;

use rollgate_e2e::sticky::in_split;
use rollgate_e2e::{Client, Envoy, EnvoyOptions, Response, Stack};
use rollgate_e2e::{CANARY, DEV, SEED_CLUSTERS, SEED_POLICY, STABLE};

/// The seed policy with the `pro.coding` split at `weight` percent.
fn seed_with_weight(weight: &str) -> String {
    assert!(
        SEED_POLICY.contains(r#""weight": 50"#),
        "seed policy has no 50% split"
    );
    SEED_POLICY.replace(r#""weight": 50"#, &format!(r#""weight": {weight}"#))
}

/// A policy whose only route splits `pro.coding` 50/50 on the given sticky key spec.
fn split_policy(sticky: &str) -> String {
    format!(
        r#"{{
  "name": "flask",
  "variants": {{ "stable": "{STABLE}", "canary": "{CANARY}" }},
  "default": "stable",
  "routes": [
    {{ "match": "Host(`pro.coding`)", "split": [ {{ "variant": "canary", "weight": 50 }} ],
      "sticky": {sticky} }}
  ]
}}"#
    )
}

/// Extra request headers: names and raw values.
type Headers<'a> = &'a [(&'a str, &'a [u8])];

fn user(n: u32) -> String {
    format!("user-{n}")
}

/// Asserts a 200 from one of the upstreams and returns its name (the cluster that served it).
fn served_by(r: &Response) -> String {
    assert_eq!(
        r.status,
        200,
        "unexpected response: {r:?} / {}",
        r.body_str()
    );
    let body = r.body_str();
    assert_eq!(r.header_str("x-upstream").as_deref(), Some(body.as_str()));
    body
}

/// Every value of response header `name`, lossily decoded.
fn all_values(r: &Response, name: &str) -> Vec<String> {
    r.headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// Sends `pro.coding` requests with `x-user-id` for each user; returns user → cluster.
fn route_by_header(client: &mut Client, users: &[String]) -> HashMap<String, String> {
    users
        .iter()
        .map(|u| {
            let r = client.get("pro.coding", "/", &[("x-user-id", u.as_bytes())]);
            (u.clone(), served_by(&r))
        })
        .collect()
}

/// Asserts that every user landed where the independent hash predicts for `weight`.
fn assert_predicted(placement: &HashMap<String, String>, weight: u32) {
    let wrong: Vec<_> = placement
        .iter()
        .filter(|(u, cluster)| {
            let expected = if in_split("flask", u.as_bytes(), weight) {
                CANARY
            } else {
                STABLE
            };
            cluster.as_str() != expected
        })
        .take(5)
        .collect();
    assert!(
        wrong.is_empty(),
        "users off their predicted bucket at {weight}%: {wrong:?}"
    );
}

fn canary_share(placement: &HashMap<String, String>) -> f64 {
    let canary = placement.values().filter(|c| c.as_str() == CANARY).count();
    canary as f64 / placement.len() as f64
}

#[test]
fn hosts_and_headers_pick_variants() {
    let stack = Stack::start(SEED_POLICY);
    let mut c = stack.client();

    let r = c.get("dev.coding", "/", &[]);
    assert_eq!(served_by(&r), DEV);
    assert_eq!(
        r.header("x-rollgate-variant"),
        None,
        "variant exposed without expose_variant"
    );

    let r = c.get("pro.coding", "/", &[("location", b"shenzhen")]);
    assert_eq!(served_by(&r), CANARY);

    // No user id: the split keys on the client address (127.0.0.1), whatever the connection.
    let expected = if in_split("flask", b"127.0.0.1", 50) {
        CANARY
    } else {
        STABLE
    };
    for _ in 0..6 {
        let mut fresh = stack.client();
        for _ in 0..3 {
            assert_eq!(served_by(&fresh.get("pro.coding", "/", &[])), expected);
        }
    }

    // No route matches: the policy's default.
    assert_eq!(served_by(&c.get("other.example", "/", &[])), STABLE);
    assert_eq!(stack.upstream(DEV).requests(), 1);
    let dev_total = format!("cluster.{DEV}.upstream_rq_total");
    assert_eq!(
        stack.envoy.stat(&dev_total),
        Some(1),
        "{}",
        stack.envoy.stats()
    );
}

#[test]
fn upstream_sees_variant_header() {
    let stack = Stack::start(SEED_POLICY);
    let mut c = stack.client();
    let cases: [(&str, Headers, &str, &str); 3] = [
        ("dev.coding", &[], "dev", DEV),
        ("pro.coding", &[("location", b"shenzhen")], "canary", CANARY),
        ("nothing.example", &[], "stable", STABLE),
    ];
    for (host, headers, variant, cluster) in cases {
        let r = c.get(host, "/", headers);
        assert_eq!(served_by(&r), cluster);
        assert_eq!(
            all_values(&r, "x-echo-x-rollgate-variant"),
            [variant],
            "{host}"
        );
        assert_eq!(
            all_values(&r, "x-echo-x-rollgate-cluster"),
            [cluster],
            "{host}"
        );
    }
}

#[test]
fn fifty_percent_split_is_balanced_and_sticky() {
    let stack = Stack::start(SEED_POLICY);
    let users: Vec<String> = (0..2000).map(user).collect();
    let placement = route_by_header(&mut stack.client(), &users);

    let share = canary_share(&placement);
    assert!(
        (share - 0.5).abs() <= 0.03,
        "canary share {share:.3} not within 50% ± 3%"
    );
    assert_predicted(&placement, 50);

    // A sample of 200 users, three more times each, on new connections (other workers).
    for round in 0..3 {
        let mut c = stack.client();
        for u in users.iter().step_by(10) {
            let again = served_by(&c.get("pro.coding", "/", &[("x-user-id", u.as_bytes())]));
            assert_eq!(again, placement[u], "{u} moved on round {round}");
        }
    }
}

#[test]
fn raising_weight_only_moves_users_to_canary() {
    let users: Vec<String> = (10_000..12_000).map(user).collect();
    let at_50 = {
        let stack = Stack::start(SEED_POLICY);
        route_by_header(&mut stack.client(), &users)
    };
    let at_80 = {
        let stack = Stack::start(&seed_with_weight("80"));
        route_by_header(&mut stack.client(), &users)
    };
    let moved_back: Vec<&String> = users
        .iter()
        .filter(|u| at_50[*u] == CANARY && at_80[*u] != CANARY)
        .collect();
    assert!(
        moved_back.is_empty(),
        "left canary when its weight rose: {moved_back:?}"
    );
    let share = canary_share(&at_80);
    assert!(
        (share - 0.8).abs() <= 0.03,
        "canary share {share:.3} not within 80% ± 3%"
    );
    assert_predicted(&at_80, 80);
}

#[test]
fn weights_100_and_0_are_absolute() {
    let users: Vec<String> = (20_000..20_300).map(user).collect();
    for (weight, cluster) in [("100", CANARY), ("0", STABLE)] {
        let stack = Stack::start(&seed_with_weight(weight));
        let placement = route_by_header(&mut stack.client(), &users);
        let off: Vec<_> = placement
            .iter()
            .filter(|(_, c)| c.as_str() != cluster)
            .collect();
        assert!(off.is_empty(), "weight {weight}: not on {cluster}: {off:?}");
    }
}

#[test]
fn client_internal_headers_cannot_steer() {
    let stack = Stack::start(SEED_POLICY);
    let mut c = stack.client();
    let forged: [Headers; 3] = [
        &[("x-rollgate-cluster", CANARY.as_bytes())],
        &[("x-rollgate-variant", b"canary")],
        &[
            ("x-rollgate-cluster", CANARY.as_bytes()),
            ("x-rollgate-variant", b"canary"),
            ("X-Rollgate-Cluster", STABLE.as_bytes()),
        ],
    ];
    for headers in forged {
        let r = c.get("dev.coding", "/", headers);
        assert_eq!(served_by(&r), DEV, "steered by {headers:?}");
        assert_eq!(all_values(&r, "x-echo-x-rollgate-cluster"), [DEV]);
        assert_eq!(all_values(&r, "x-echo-x-rollgate-variant"), ["dev"]);
    }
}

#[test]
fn a_policy_may_route_on_the_cluster_header_alone() {
    // Plain Envoy routes on the cluster header only; the variant header is then not ours,
    // neither written nor stripped (one host call less per request).
    let written = r#""variant_header": "x-rollgate-variant""#;
    assert!(SEED_POLICY.contains(written));
    let policy = SEED_POLICY.replace(written, r#""variant_header": """#);
    let stack = Stack::start(&policy);
    let mut c = stack.client();
    let r = c.get(
        "dev.coding",
        "/",
        &[("x-rollgate-cluster", CANARY.as_bytes())],
    );
    assert_eq!(served_by(&r), DEV, "forged cluster header steered");
    assert_eq!(all_values(&r, "x-echo-x-rollgate-cluster"), [DEV]);
    assert!(all_values(&r, "x-echo-x-rollgate-variant").is_empty());
    let r = c.get("pro.coding", "/", &[("location", b"shenzhen")]);
    assert_eq!(served_by(&r), CANARY);
    assert!(all_values(&r, "x-echo-x-rollgate-variant").is_empty());
}

/// A policy with no `default`: requests no route matches pass through untouched.
const NO_DEFAULT_POLICY: &str = r#"{
  "name": "flask",
  "variants": { "stable": "k8s-flask", "canary": "k8s-flask-canary", "dev": "k8s-flask-dev" },
  "routes": [ { "match": "Host(`dev.coding`)", "variant": "dev" } ]
}"#;

#[test]
fn unrouted_requests_lose_forged_internal_headers() {
    let stack = Stack::try_start(NO_DEFAULT_POLICY, &SEED_CLUSTERS, Some("fallback")).unwrap();
    let mut c = stack.client();
    let forged: Headers = &[
        ("x-rollgate-cluster", CANARY.as_bytes()),
        ("x-rollgate-variant", b"canary"),
    ];
    let r = c.get("other.example", "/", forged);
    assert_eq!(served_by(&r), "fallback");
    let echoed: Vec<&String> = r
        .headers
        .iter()
        .map(|(n, _)| n)
        .filter(|n| n.starts_with("x-echo-"))
        .collect();
    assert!(
        echoed.is_empty(),
        "upstream saw client's internal headers: {echoed:?}"
    );
    // The route that does match still works on the same connection.
    assert_eq!(served_by(&c.get("dev.coding", "/", forged)), DEV);
}

#[test]
fn unrouted_requests_without_fallback_get_404() {
    let stack = Stack::start(NO_DEFAULT_POLICY);
    let mut c = stack.client();
    let r = c.get(
        "other.example",
        "/",
        &[("x-rollgate-cluster", CANARY.as_bytes())],
    );
    assert_eq!((r.status, r.body_str().as_str()), (404, "no variant"));
    assert_eq!(stack.upstream(CANARY).requests(), 0);
}

#[test]
fn non_utf8_header_values_do_not_break_the_filter() {
    // Seed routes plus splits keyed on a cookie and a query parameter, so every key source
    // meets bytes that are not UTF-8.
    let policy = r#"{
  "name": "flask",
  "variants": { "stable": "k8s-flask", "canary": "k8s-flask-canary", "dev": "k8s-flask-dev" },
  "default": "stable",
  "routes": [
    { "match": "Host(`dev.coding`)", "variant": "dev" },
    { "match": "Host(`pro.coding`) && Headers(`location`, `shenzhen`)", "variant": "canary" },
    { "match": "Host(`cookie.coding`)", "split": [ { "variant": "canary", "weight": 50 } ],
      "sticky": { "cookie": "a" } },
    { "match": "Host(`query.coding`)", "split": [ { "variant": "canary", "weight": 50 } ],
      "sticky": { "query": "uid" } },
    { "match": "Host(`pro.coding`)", "split": [ { "variant": "canary", "weight": 50 } ],
      "sticky": { "header": "x-user-id" } }
  ]
}"#;
    let stack = Stack::start(policy);
    let mut c = stack.client();
    let cases: [(&str, &str, Headers); 6] = [
        ("pro.coding", "/", &[("x-user-id", b"\xff\xfe\xfd")]),
        ("pro.coding", "/", &[("location", b"\xc3\x28")]),
        (
            "pro.coding",
            "/",
            &[("cookie", b"a=\xff"), ("x-user-id", b"\xc3\x28")],
        ),
        ("cookie.coding", "/", &[("cookie", b"a=\xff; b=\xfe\xfd")]),
        ("query.coding", "/?uid=%ff%fe", &[("x-user-id", b"\x80")]),
        (
            "dev.coding",
            "/",
            &[("x-other", b"\xff"), ("location", b"\xc3\x28")],
        ),
    ];
    for (host, path, headers) in cases {
        let first = served_by(&c.get(host, path, headers));
        assert!(
            [STABLE, CANARY, DEV].contains(&first.as_str()),
            "{host}: {first}"
        );
        // Same bytes, same answer; and the filter still works for a normal request.
        assert_eq!(
            served_by(&c.get(host, path, headers)),
            first,
            "{host} {headers:?}"
        );
        assert_eq!(served_by(&c.get("dev.coding", "/", &[])), DEV);
    }
    // Raw key bytes are hashed as they are.
    let expected = if in_split("flask", b"\xff\xfe\xfd", 50) {
        CANARY
    } else {
        STABLE
    };
    let r = c.get("pro.coding", "/", &[("x-user-id", b"\xff\xfe\xfd")]);
    assert_eq!(served_by(&r), expected);
    let expected = if in_split("flask", b"\xff", 50) {
        CANARY
    } else {
        STABLE
    };
    assert_eq!(
        served_by(&c.get("cookie.coding", "/", &[("cookie", b"a=\xff")])),
        expected
    );
}

#[test]
fn expose_variant_returns_variant_header() {
    let policy = SEED_POLICY.replacen('{', r#"{ "expose_variant": true,"#, 1);
    let stack = Stack::start(&policy);
    let mut c = stack.client();
    let r = c.get("dev.coding", "/", &[]);
    assert_eq!(served_by(&r), DEV);
    assert_eq!(all_values(&r, "x-rollgate-variant"), ["dev"]);
    let r = c.get("pro.coding", "/", &[("location", b"shenzhen")]);
    assert_eq!(all_values(&r, "x-rollgate-variant"), ["canary"]);
}

#[test]
fn invalid_policy_is_refused_with_its_path() {
    let mut opts = EnvoyOptions::new(seed_with_weight("150"));
    for (i, name) in SEED_CLUSTERS.iter().enumerate() {
        // Nothing is ever sent: Envoy must refuse before serving.
        opts = opts.cluster(name, 9 + i as u16);
    }
    let log = Envoy::start_expect_failure(&opts);
    assert!(
        log.contains("routes[2].split[0].weight"),
        "error path missing from log:\n{log}"
    );
    assert!(
        log.contains("invalid policy"),
        "no `invalid policy` message in log:\n{log}"
    );
}

#[test]
fn cookie_sticky_key() {
    let stack = Stack::start(&split_policy(r#"{ "cookie": "uid" }"#));
    let users: Vec<String> = (30_000..30_400).map(user).collect();
    let mut placement = HashMap::new();
    let mut c = stack.client();
    for u in &users {
        let cookie = format!("theme=dark; uid={u}; other=1");
        let r = c.get("pro.coding", "/", &[("cookie", cookie.as_bytes())]);
        placement.insert(u.clone(), served_by(&r));
    }
    assert_predicted(&placement, 50);
    let mut again = stack.client();
    for u in users.iter().step_by(4) {
        let cookie = format!("uid={u}");
        let r = again.get("pro.coding", "/", &[("cookie", cookie.as_bytes())]);
        assert_eq!(served_by(&r), placement[u], "{u} moved");
    }
}

#[test]
fn query_sticky_key() {
    let stack = Stack::start(&split_policy(r#"{ "query": "uid" }"#));
    let users: Vec<String> = (40_000..40_400).map(user).collect();
    let mut placement = HashMap::new();
    let mut c = stack.client();
    for u in &users {
        let r = c.get("pro.coding", &format!("/items?page=2&uid={u}"), &[]);
        placement.insert(u.clone(), served_by(&r));
    }
    assert_predicted(&placement, 50);
    let mut again = stack.client();
    for u in users.iter().step_by(4) {
        let r = again.get("pro.coding", &format!("/?uid={u}"), &[]);
        assert_eq!(served_by(&r), placement[u], "{u} moved");
    }
}

#[test]
fn variant_naming_an_unknown_cluster_is_not_served() {
    let policy = SEED_POLICY.replace(r#""dev": "k8s-flask-dev""#, r#""dev": "k8s-missing""#);
    let stack = Stack::start(&policy);
    let mut c = stack.client();
    let r = c.get("dev.coding", "/", &[]);
    assert!(
        r.header("x-upstream").is_none(),
        "served by {:?}",
        r.header_str("x-upstream")
    );
    // Envoy 1.40 answers 503 (`cluster_not_found_response_code`'s default), not the 404 the
    // `cluster_header` docs mention.
    assert_eq!(r.status, 503);
    // Other variants are unaffected.
    assert_eq!(
        served_by(&c.get("pro.coding", "/", &[("location", b"shenzhen")])),
        CANARY
    );
}

/// `route_default`: requests decided for the default variant go out with no cluster header
/// (Envoy's fallback route sends them to its cluster, one host call saved), a forged one is
/// still removed, and every other variant's header is written as before.
#[test]
fn route_default_leaves_the_default_to_envoys_route() {
    let written = r#""variant_header": "x-rollgate-variant""#;
    assert!(SEED_POLICY.contains(written) && SEED_POLICY.contains(r#""default": "stable""#));
    let policy = SEED_POLICY.replace(written, r#""variant_header": "", "route_default": true"#);
    let stack = Stack::try_start(&policy, &SEED_CLUSTERS, Some(STABLE)).unwrap();
    let mut c = stack.client();
    for forged in [&[][..], &[("x-rollgate-cluster", CANARY.as_bytes())][..]] {
        let r = c.get("other.example", "/", forged);
        assert_eq!(served_by(&r), STABLE, "forged: {forged:?}");
        assert!(
            all_values(&r, "x-echo-x-rollgate-cluster").is_empty(),
            "no cluster header reaches the default's upstream: {forged:?}"
        );
    }
    let r = c.get("pro.coding", "/", &[("location", b"shenzhen")]);
    assert_eq!(served_by(&r), CANARY);
    assert_eq!(all_values(&r, "x-echo-x-rollgate-cluster"), [CANARY]);
    let r = c.get(
        "dev.coding",
        "/",
        &[("x-rollgate-cluster", CANARY.as_bytes())],
    );
    assert_eq!(served_by(&r), DEV);
    assert_eq!(all_values(&r, "x-echo-x-rollgate-cluster"), [DEV]);
}
