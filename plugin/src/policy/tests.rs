//! Policy validation and decision tests.

use super::*;

const SEED: &str = r#"{
  "name": "flask",
  "variants": { "stable": "k8s-flask", "canary": "k8s-flask-canary", "dev": "k8s-flask-dev" },
  "default": "stable",
  "routes": [
    { "match": "Host(`dev.coding`)", "variant": "dev" },
    { "match": "Host(`pro.coding`) && Headers(`location`, `shenzhen`)", "variant": "canary" },
    { "match": "Host(`pro.coding`)", "split": [ { "variant": "canary", "weight": 50 } ],
      "sticky": { "header": "x-user-id" } }
  ],
  "cluster_header": "x-rollgate-cluster",
  "variant_header": "x-rollgate-variant"
}"#;

fn policy(json: &str) -> Policy {
    Policy::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn errors(json: &str) -> Vec<String> {
    Policy::from_json(json.as_bytes())
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn seed_with_weight(w: &str) -> String {
    SEED.replace(r#""weight": 50"#, &format!(r#""weight": {w}"#))
}

fn no_id() -> String {
    panic!("no cookie should be assigned")
}

fn decide(p: &Policy, headers: &[(&str, &str)], ip: Option<&str>) -> Option<String> {
    let pairs = headers
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect();
    let req = Request::new(pairs, ip.map(|i| i.parse().unwrap()));
    p.decide(&req, &mut no_id).variant.map(|v| v.name.clone())
}

fn user(p: &Policy, n: u32) -> String {
    let id = format!("user-{n}");
    decide(p, &[(":authority", "pro.coding"), ("x-user-id", &id)], None).unwrap()
}

#[test]
fn seed_story() {
    let p = policy(SEED);
    assert_eq!(p.cluster_header, "x-rollgate-cluster");
    assert_eq!(
        decide(&p, &[(":authority", "dev.coding")], None).as_deref(),
        Some("dev")
    );
    let shenzhen = [
        (":authority", "pro.coding"),
        ("location", "shenzhen"),
        ("x-user-id", "u1"),
    ];
    assert_eq!(decide(&p, &shenzhen, None).as_deref(), Some("canary"));
    assert_eq!(
        decide(&p, &[(":authority", "other")], None).as_deref(),
        Some("stable")
    );
    let canary = (0..10_000).filter(|n| user(&p, *n) == "canary").count();
    assert!((4_700..=5_300).contains(&canary), "{canary}");
}

#[test]
fn split_follows_bucket_ranges_exactly() {
    let p = policy(SEED);
    for n in 0..2_000 {
        let b = crate::sticky::bucket(b"flask", format!("user-{n}").as_bytes());
        let want = if b < 5_000 { "canary" } else { "stable" };
        assert_eq!(user(&p, n), want, "user-{n} bucket {b}");
    }
}

#[test]
fn raising_weight_only_moves_users_into_canary() {
    let weights = ["0", "10", "33.33", "50", "80", "99.99", "100"];
    let policies: Vec<_> = weights
        .iter()
        .map(|w| policy(&seed_with_weight(w)))
        .collect();
    for n in 0..5_000 {
        let sides: Vec<_> = policies.iter().map(|p| user(p, n)).collect();
        for pair in sides.windows(2) {
            assert!(
                !(pair[0] == "canary" && pair[1] != "canary"),
                "user-{n} left canary: {sides:?}"
            );
        }
        assert_eq!(sides[0], "stable");
        assert_eq!(sides[6], "canary");
    }
}

#[test]
fn multi_variant_split_and_route_default() {
    let p = policy(
        r#"{"name":"s","variants":{"a":"ca","b":"cb","c":"cc","d":"cd"},"default":"d",
            "routes":[{"split":[{"variant":"a","weight":25},{"variant":"b","weight":25}],
                       "default":"c","sticky":{"header":"u"}}]}"#,
    );
    let mut counts = std::collections::BTreeMap::new();
    for n in 0..8_000 {
        let id = n.to_string();
        *counts
            .entry(decide(&p, &[("u", &id)], None).unwrap())
            .or_insert(0) += 1;
    }
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["a", "b", "c"],
        "route default beats policy default"
    );
    for c in counts.values() {
        let share = f64::from(*c) / 8_000.0;
        assert!(share > 0.2, "{counts:?}");
    }
}

#[test]
fn no_default_passes_untouched() {
    let p = policy(
        r#"{"name":"s","variants":{"a":"ca"},"routes":[{"match":"Host(`x`)","variant":"a"}]}"#,
    );
    assert_eq!(decide(&p, &[(":authority", "y")], None), None);
    assert_eq!(
        decide(&p, &[(":authority", "x")], None).as_deref(),
        Some("a")
    );
    // A split whose remainder has no default leaves those users untouched too.
    let p = policy(
        r#"{"name":"s","variants":{"a":"ca"},"routes":[{"split":[{"variant":"a","weight":0}]}]}"#,
    );
    assert_eq!(decide(&p, &[], Some("10.0.0.1")), None);
}

#[test]
fn missing_key_falls_back_to_client_address() {
    let p = policy(SEED);
    let by_ip = |ip: &str| decide(&p, &[(":authority", "pro.coding")], Some(ip)).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..200 {
        let ip = format!("10.0.{}.{}", i / 250, i % 250);
        let first = by_ip(&ip);
        assert_eq!(by_ip(&ip), first, "an address keeps its side");
        let b = crate::sticky::bucket(b"flask", ip.as_bytes());
        assert_eq!(first == "canary", b < 5_000);
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2);
    // An empty key counts as missing.
    let empty = decide(
        &p,
        &[(":authority", "pro.coding"), ("x-user-id", "")],
        Some("10.9.9.9"),
    );
    assert_eq!(empty.unwrap(), by_ip("10.9.9.9"));
}

#[test]
fn assign_cookie_gives_an_id_then_buckets_on_it() {
    let p = policy(
        r#"{"name":"s","variants":{"a":"ca","b":"cb"},"default":"b",
            "routes":[{"split":[{"variant":"a","weight":50}],"sticky":{"header":"x-u","assign_cookie":"rg"}}]}"#,
    );
    let req = Request::new(vec![], None);
    let mut calls = 0;
    let d = p.decide(&req, &mut || {
        calls += 1;
        "id-123".to_string()
    });
    assert_eq!(calls, 1);
    assert_eq!(d.set_cookie, Some(("rg", "id-123".to_string())));
    assert_eq!(d.bucket, Some(crate::sticky::bucket(b"s", b"id-123")));
    // The next request carries the cookie: same bucket, no new id.
    let req = Request::new(vec![(b"cookie", b"rg=id-123")], None);
    let d2 = p.decide(&req, &mut no_id);
    assert_eq!((d2.bucket, d2.set_cookie), (d.bucket, None));
    // The configured key still wins when present.
    let req = Request::new(vec![(b"x-u", b"k")], None);
    assert_eq!(
        p.decide(&req, &mut no_id).bucket,
        Some(crate::sticky::bucket(b"s", b"k"))
    );
}

#[test]
fn salt_reshuffles() {
    let salted = policy(&SEED.replace(
        r#""header": "x-user-id""#,
        r#""header": "x-user-id", "salt": "v2""#,
    ));
    let p = policy(SEED);
    let moved = (0..2_000)
        .filter(|n| user(&p, *n) != user(&salted, *n))
        .count();
    assert!(moved > 600, "{moved}");
}

#[test]
fn errors_name_json_path() {
    assert_eq!(
        errors(&seed_with_weight("150")),
        ["routes[2].split[0].weight: must be between 0 and 100, got 150"]
    );
    assert_eq!(
        errors(&seed_with_weight("-1")),
        ["routes[2].split[0].weight: must be between 0 and 100, got -1"]
    );
    assert_eq!(
        errors(&seed_with_weight("10.005")),
        ["routes[2].split[0].weight: at most two decimals, got 10.005"]
    );
    assert_eq!(
        errors(&SEED.replace(
            "Host(`pro.coding`) && Headers(`location`, `shenzhen`)",
            "Host(`pro.coding`) && Headers(`location` `shenzhen`)"
        )),
        ["routes[1].match: column 42: expected ',' or ')'"]
    );
    assert_eq!(
        errors(&SEED.replace(r#""variant": "dev""#, r#""variant": "qa""#)),
        ["routes[0].variant: unknown variant 'qa' (known: canary, dev, stable)"]
    );
    let unknown = errors(&SEED.replace(r#""variant": "dev""#, r#""variant": "dev", "weight": 3"#));
    assert_eq!(unknown.len(), 1);
    assert!(
        unknown[0].starts_with("routes[0].weight: unknown field `weight`"),
        "{unknown:?}"
    );
    let top = errors(&SEED.replace(r#""name": "flask","#, r#""name": "flask", "nmae": 1,"#));
    assert!(top[0].starts_with("nmae: unknown field `nmae`"), "{top:?}");
    let typed = errors(&seed_with_weight(r#""50""#));
    assert!(
        typed[0].starts_with("routes[2].split[0].weight: invalid type: string"),
        "{typed:?}"
    );
    let syntax = errors("{\"name\": ");
    assert!(syntax[0].contains("EOF while parsing"), "{syntax:?}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let errs = errors(
        r#"{"name":"","variants":{"a":""},"default":"z","cluster_header":"bad header",
            "routes":[{"variant":"a","split":[]},{},
                      {"split":[{"variant":"a","weight":60},{"variant":"y","weight":50}],
                       "sticky":{"header":"h","cookie":"c"}}]}"#,
    );
    assert_eq!(
        errs,
        [
            "name: must not be empty",
            "variants.a: must be a non-empty cluster name",
            "default: unknown variant 'z' (known: a)",
            "cluster_header: invalid header name 'bad header'",
            "routes[0]: has both 'variant' and 'split'; give one",
            "routes[1]: needs 'variant' or 'split'",
            "routes[2].split[1].variant: unknown variant 'y' (known: a)",
            "routes[2].split: weights add up to 110, more than 100",
            "routes[2].sticky: give exactly one of 'header', 'cookie', 'query', 'source_ip'",
        ]
    );
}

#[test]
fn spec_round_trips_through_json() {
    let p = policy(SEED);
    let json = serde_json::to_string(&p.spec).unwrap();
    assert_eq!(policy(&json).spec, p.spec);
}
