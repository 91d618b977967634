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
    let d = p.decide(&req, &mut no_id);
    // The index names the same variant as the reference.
    assert_eq!(
        d.index.and_then(|i| p.variants.get(i)).map(|v| &v.name),
        d.variant.map(|v| &v.name)
    );
    d.variant.map(|v| v.name.clone())
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

fn minimal(extra: &str) -> String {
    format!(r#"{{"name":"s","variants":{{"a":"ca"}},"default":"a"{extra}}}"#)
}

#[test]
fn an_empty_header_name_means_the_filter_does_not_write_it() {
    // Plain Envoy: the cluster header alone.
    let p = policy(&minimal(r#","variant_header":"""#));
    assert_eq!(
        (p.cluster_header.as_str(), p.variant_header.as_str()),
        ("x-rollgate-cluster", "")
    );
    // Istio: the variant header alone, which may also go back on the response.
    let p = policy(&minimal(r#","cluster_header":"","expose_variant":true"#));
    assert_eq!(
        (p.cluster_header.as_str(), p.variant_header.as_str()),
        ("", "x-rollgate-variant")
    );
    assert!(p.spec.expose_variant);
    let p = policy(&minimal(
        r#","cluster_header":"","variant_header":"X-Side""#,
    ));
    assert_eq!(p.variant_header, "x-side");
}

#[test]
fn header_names_must_leave_the_filter_something_to_write() {
    assert_eq!(
        errors(&minimal(r#","cluster_header":"","variant_header":"""#)),
        [
            "cluster_header: must not be empty when variant_header is empty too: the filter would \
          write no header"
        ]
    );
    assert_eq!(
        errors(&minimal(r#","variant_header":"","expose_variant":true"#)),
        ["expose_variant: needs a non-empty variant_header to return the variant in"]
    );
    // Both problems at once, and the usual checks still apply to a non-empty name.
    assert_eq!(
        errors(&minimal(
            r#","cluster_header":"","variant_header":"","expose_variant":true"#
        ))
        .len(),
        2
    );
    assert_eq!(
        errors(&minimal(r#","cluster_header":"","variant_header":"a b""#)),
        ["variant_header: invalid header name 'a b'"]
    );
    assert_eq!(
        errors(&minimal(
            r#","cluster_header":"X-A","variant_header":"x-a""#
        )),
        ["variant_header: must differ from cluster_header"]
    );
}

#[test]
fn absent_fields_take_their_defaults() {
    let p = parse_spec(
        br#"{"rate_limits":[{"name":"r","average":5}],
             "circuit_breakers":[{"name":"b","expression":"NetworkErrorRatio() > 0.5"}],
             "source":{"cluster":"c","path":"/p"}}"#,
    )
    .unwrap();
    assert_eq!(p.name, "");
    assert!(p.variants.is_empty() && p.routes.is_empty() && p.default.is_none());
    assert_eq!(p.cluster_header, spec::DEFAULT_CLUSTER_HEADER);
    assert_eq!(p.variant_header, spec::DEFAULT_VARIANT_HEADER);
    assert!(!p.expose_variant);
    let l = &p.rate_limits[0];
    assert_eq!((l.average, l.period.as_str(), l.slots), (5.0, "1s", 65_536));
    assert_eq!(
        (&l.rule, l.burst, &l.source, l.headers),
        (&None, None, &None, false)
    );
    let b = &p.circuit_breakers[0];
    assert_eq!(
        [
            &b.check_period,
            &b.fallback_duration,
            &b.recovery_duration,
            &b.window
        ],
        ["100ms", "10s", "10s", "10s"]
    );
    assert_eq!(
        (b.response_code, &b.variant, &b.fallback_variant),
        (503, &None, &None)
    );
    let s = p.source.unwrap();
    assert_eq!(
        (s.poll.as_str(), s.wait.as_str(), s.authority),
        ("1s", "20s", None)
    );
    // `null` is the same as absent for an optional field.
    let p = policy(&minimal(
        r#","routes":[{"match":null,"variant":"a","split":null}]"#,
    ));
    assert_eq!(p.spec.routes[0].rule, None);
}

#[test]
fn decoding_errors_name_the_path_and_all_are_reported() {
    let errs = errors(&minimal(
        r#","routes":[{"split":[{"variant":"a"}],"sticky":{"source_ip":{"xff_depth":-1}}}],
           "rate_limits":[{"name":"r","average":"5","slots":1.5,"source":{"host":{"x":1}},
                           "burst":18446744073709551616}],
           "circuit_breakers":[{"name":"b","expression":"x","response_code":70000}],
           "expose_variant":"yes","name":"again""#,
    ));
    assert_eq!(
        errs,
        [
            "routes[0].split[0]: missing field `weight`",
            "routes[0].sticky.source_ip.xff_depth: invalid value: integer `-1`, expected an \
             integer from 0 to 4294967295",
            "rate_limits[0].average: invalid type: string \"5\", expected a number",
            "rate_limits[0].slots: invalid type: floating point `1.5`, expected an integer",
            "rate_limits[0].source.host.x: unknown field `x`, there are no fields",
            "rate_limits[0].burst: invalid type: floating point `1.844674407370955e19`, expected \
             an integer",
            "circuit_breakers[0].response_code: invalid value: integer `70000`, expected an \
             integer from 0 to 65535",
            "expose_variant: invalid type: string \"yes\", expected a boolean",
            "name: duplicate field `name`",
        ]
    );
    assert_eq!(
        errors(r#"{"name":"s","variants":{"a":"ca","a":"cb"},"routes":{}}"#),
        [
            "variants.a: duplicate key `a`",
            "routes: invalid type: map, expected a sequence"
        ]
    );
    assert_eq!(
        errors(r#"{"name":"s","variants":{"a":1},"source":[]}"#),
        [
            "variants.a: invalid type: integer `1`, expected a string",
            "source: invalid type: sequence, expected an object"
        ]
    );
    let unknown = errors(&minimal(r#","routes":[{"variant":"a","wieght":1}]"#));
    assert_eq!(
        unknown,
        [
            "routes[0].wieght: unknown field `wieght`, expected one of `match`, `variant`, \
          `split`, `sticky`, `default`, `rule_syntax`, `mirror`"
        ]
    );
    // A syntax error names where, in the document and in the text.
    assert_eq!(
        errors("{\"name\": \"s\",\n \"routes\": [{\"variant\": a}]}"),
        ["routes[0].variant: expected value at line 2 column 25"]
    );
}

/// A policy with every field set away from its default, to check that nothing is dropped
/// between the spec types' `Serialize` and the decoder.
const EVERY_FIELD: &str = r#"{
  "name": "all", "variants": {"a": "ca", "b": "cb"}, "default": "a",
  "routes": [
    {"match": "Host(`x`)", "variant": "b", "rule_syntax": "v3"},
    {"split": [{"variant": "b", "weight": 12.5}], "default": "a",
     "sticky": {"header": "x-u", "salt": "s2", "assign_cookie": "rg"}},
    {"split": [], "sticky": {"cookie": "c"}}, {"split": [], "sticky": {"query": "q"}},
    {"split": [], "sticky": {"source_ip": {"xff_depth": 2}}},
    {"variant": "a", "mirror": {"variant": "b", "percent": 12.5, "max_body": 1024,
     "max_in_flight": 7, "host_suffix": "", "timeout": "2s"}}
  ],
  "cluster_header": "x-c", "variant_header": "x-v", "expose_variant": true,
  "rule_syntax": "v2",
  "rate_limits": [
    {"name": "r1", "match": "PathPrefix(`/api`)", "rule_syntax": "v3", "average": 0.5, "period": "1m", "burst": 7,
     "source": {"client_ip": {"xff_depth": 1, "ipv6_prefix": 64}}, "headers": true, "slots": 8},
    {"name": "r2", "average": 1.5, "period": "2s", "source": {"host": {}}},
    {"name": "r3", "average": 1.5, "period": "2s", "source": {"header": "h"}},
    {"name": "r4", "average": 1.5, "period": "2s", "source": {"cookie": "c"}},
    {"name": "r5", "average": 1.5, "period": "2s", "source": {"query": "q"}}
  ],
  "circuit_breakers": [
    {"name": "cb", "variant": "b", "expression": "NetworkErrorRatio() > 0.5",
     "check_period": "1s", "fallback_duration": "2s", "recovery_duration": "3s",
     "window": "4s", "response_code": 502, "fallback_variant": "a"}
  ],
  "source": {"cluster": "rg", "path": "/v1/policies/all", "poll": "2s", "wait": "5s",
             "authority": "sidecar"},
  "tcp": {"allow": ["127.0.0.0/8", "::1/128"], "in_flight": {"per_source": 3, "total": 9},
          "rate": {"average": 20.0, "period": "2s", "burst": 5}}
}"#;

#[test]
fn every_field_survives_serialize_then_decode() {
    let spec = parse_spec(EVERY_FIELD.as_bytes()).unwrap();
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(parse_spec(json.as_bytes()).unwrap(), spec);
    // The decoder read every field: the text and the serialized spec hold the same values.
    let text: serde_json::Value = serde_json::from_str(EVERY_FIELD).unwrap();
    assert_eq!(serde_json::to_value(&spec).unwrap(), text);
    assert!(crate::config::parse_config(EVERY_FIELD.as_bytes()).is_ok());
}

#[test]
fn each_spec_type_declares_each_key_once() {
    // Two fields under one key would both be set from it, and serialize it twice.
    for fields in [
        PolicySpec::FIELDS,
        spec::SourceSpec::FIELDS,
        spec::RouteSpec::FIELDS,
        spec::SplitSpec::FIELDS,
        spec::StickySpec::FIELDS,
        spec::SourceIpSpec::FIELDS,
        spec::RateLimitSpec::FIELDS,
        spec::LimitSourceSpec::FIELDS,
        spec::Empty::FIELDS,
        spec::ClientIpSpec::FIELDS,
        spec::BreakerSpec::FIELDS,
        spec::TcpSpec::FIELDS,
        spec::InFlightSpec::FIELDS,
        spec::TcpRateSpec::FIELDS,
    ] {
        let mut keys = fields.to_vec();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), fields.len(), "{fields:?}");
    }
    assert_eq!(spec::RouteSpec::FIELDS[0], "match");
}

#[test]
fn deserialize_runs_the_same_decoder() {
    // What the CLI and the controller read (status files, rendered defaults) is what the
    // filter reads.
    let via_serde: PolicySpec = serde_json::from_str(EVERY_FIELD).unwrap();
    assert_eq!(via_serde, parse_spec(EVERY_FIELD.as_bytes()).unwrap());
    let route: spec::RouteSpec = serde_json::from_str("{}").unwrap();
    assert_eq!(route.split, None);
    let limit: spec::RateLimitSpec = serde_json::from_str(r#"{"name":"","average":0}"#).unwrap();
    assert_eq!((limit.period.as_str(), limit.slots), ("1s", 65_536));
    let err = serde_json::from_str::<PolicySpec>(r#"{"name":"s","routes":[{"wieght":1}]}"#)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("routes[0].wieght: unknown field `wieght`"),
        "{err}"
    );
    let err = serde_json::from_str::<spec::BreakerSpec>(r#"{"name":"b"}"#).unwrap_err();
    assert!(
        err.to_string().starts_with("missing field `expression`"),
        "{err}"
    );
}

/// `rule_syntax` (Traefik's `ruleSyntax`) per policy, route and rate limit; issue 13.
const SYNTAX: &str = r#"{
  "name": "s", "variants": {"a": "ca", "b": "cb"},
  "rule_syntax": "v2",
  "routes": [
    {"match": "Path(`/api/{version}/users`)", "variant": "b"},
    {"match": "Path(`/v3/{version}/users`)", "variant": "a", "rule_syntax": "v3"}
  ],
  "rate_limits": [
    {"name": "q", "match": "Query(`mobile`)", "rule_syntax": "v3", "average": 1}
  ]
}"#;

#[test]
fn rule_syntax_per_policy_route_and_rate_limit() {
    let p = policy(SYNTAX);
    let path = |path: &str| decide(&p, &[(":authority", "x"), (":path", path)], None);
    // v2 (the policy's): a gorilla/mux template (traefik pkg/muxer/http/matcher_v2.go:28-52).
    assert_eq!(path("/api/v1/users").as_deref(), Some("b"));
    assert_eq!(path("/api/v1/x/users"), None);
    // v3 (the route's own): braces are literal (traefik pkg/muxer/http/matcher.go:144-157).
    assert_eq!(path("/v3/{version}/users").as_deref(), Some("a"));
    assert_eq!(path("/v3/v1/users"), None);
    // The rate limit's v3 Query(`k`) wants an empty value (matcher.go:215-233).
    let limit = &p.rate_limits[0];
    let applies = |path: &str| {
        let pairs = vec![(&b":path"[..], path.as_bytes())];
        limit.applies(&Request::new(pairs, None))
    };
    assert!(applies("/?mobile"));
    assert!(!applies("/?mobile=true"));
    // The same rule without a syntax is guessed: valid v3, so v3 (literal braces).
    let guessed = policy(&SYNTAX.replace(r#""rule_syntax": "v2","#, ""));
    assert_eq!(
        decide(
            &guessed,
            &[(":authority", "x"), (":path", "/api/v1/users")],
            None
        ),
        None
    );
}

#[test]
fn rule_syntax_errors_name_the_field_and_what_each_syntax_expected() {
    assert_eq!(
        errors(&SYNTAX.replace(r#""rule_syntax": "v2","#, r#""rule_syntax": "V2","#)),
        ["rule_syntax: expected `v3` or `v2`, got `V2`"]
    );
    assert_eq!(
        errors(&SYNTAX.replace(
            r#""variant": "a", "rule_syntax": "v3""#,
            r#""variant": "a", "rule_syntax": "v4""#
        )),
        ["routes[1].rule_syntax: expected `v3` or `v2`, got `v4`"]
    );
    // Stated v2, v3's Query(`k`) is refused as v2 refuses it (matcher_v2_test.go:1313).
    assert_eq!(
        errors(&SYNTAX.replace(
            r#""match": "Query(`mobile`)", "rule_syntax": "v3""#,
            r#""match": "Query(`mobile`)""#
        )),
        ["rate_limits[0].match: column 1: Query takes key=value pairs, got 1 parts: 'mobile'"]
    );
    // Stated v3, the seed's v2 Headers is an unknown matcher.
    let v3_seed = SEED.replace(
        r#""default": "stable","#,
        r#""default": "stable", "rule_syntax": "v3","#,
    );
    assert_eq!(
        errors(&v3_seed),
        ["routes[1].match: column 23: unknown matcher 'Headers' in rule syntax v3 (a v2 matcher)"]
    );
    // Without one, a rule valid in neither syntax says what each expected.
    let neither = SEED.replace(
        "Headers(`location`, `shenzhen`)",
        "Header(`a`, `b`) && HostHeader(`x`)",
    );
    assert_eq!(
        errors(&neither),
        [
            "routes[1].match: column 43: as v3: unknown matcher 'HostHeader' in rule syntax v3 (a \
          v2 matcher); as v2, column 23: unknown matcher 'Header' in rule syntax v2 (a v3 matcher)"
        ]
    );
}

#[test]
fn decision_carries_the_variant_index() {
    let p = policy(SEED);
    for (authority, user) in [("dev.coding", "u1"), ("pro.coding", "u2"), ("other", "u3")] {
        let pairs = vec![
            (&b":authority"[..], authority.as_bytes()),
            (&b"x-user-id"[..], user.as_bytes()),
        ];
        let req = Request::new(pairs, None);
        let d = p.decide(&req, &mut no_id);
        let i = d.index.unwrap();
        assert!(
            std::ptr::eq(&p.variants[i], d.variant.unwrap()),
            "{authority}"
        );
    }
}

#[test]
fn global_limits_are_validated_with_every_error_at_once() {
    let limits = r#"[
      {"name": "a", "scope": "regional", "average": 1},
      {"name": "b", "scope": "global", "average": 1},
      {"name": "c", "scope": "global", "average": 2.5, "period": "1500ms", "burst": 3,
       "slots": 8, "service": {"cluster": "", "timeout": "0s", "failure_mode": "maybe"}},
      {"name": "d", "average": 1, "service": {"cluster": "rls"}}
    ]"#;
    let json = format!(r#"{{"name": "p", "variants": {{"s": "s"}}, "rate_limits": {limits}}}"#);
    let errs = errors(&json);
    for want in [
        "rate_limits[0].scope: must be 'local' or 'global', got 'regional'",
        "rate_limits[1].service: a global limit needs the rate-limit service",
        "rate_limits[2].burst: does not apply to a global limit",
        "rate_limits[2].slots: does not apply to a global limit",
        "rate_limits[2].average: a global limit counts whole requests",
        "rate_limits[2].period: a global limit's window is whole seconds",
        "rate_limits[2].service.cluster: must name the service's Envoy cluster",
        "rate_limits[2].service.timeout: must be longer than 0",
        "rate_limits[2].service.failure_mode: must be 'allow' or 'deny', got 'maybe'",
        "rate_limits[3].service: only a 'global' limit asks a service",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {errs:#?}"
        );
    }
    // A valid one compiles with its defaults: domain = the policy's name, 20 ms, allow.
    let p = policy(
        r#"{"name": "shop", "variants": {"s": "s"}, "rate_limits": [
          {"name": "api", "scope": "global", "average": 180, "period": "3s",
           "service": {"cluster": "rls"}, "shadow": true}]}"#,
    );
    let l = &p.rate_limits[0];
    assert!(l.shadow);
    assert_eq!(
        l.global,
        Some(crate::ratelimit::Global {
            cluster: "rls".into(),
            domain: "shop".into(),
            timeout_ms: 20,
            deny: false,
            max: 180,
            window_secs: 3
        })
    );
    // And serializes back to what it read (the CLI and the controller print specs).
    let spec = p.spec.rate_limits[0].clone();
    assert_eq!((spec.scope.as_str(), spec.shadow), ("global", true));
}

fn with_mirror(mirror: &str) -> String {
    SEED.replace(
        r#""sticky": { "header": "x-user-id" } }"#,
        &format!(r#""sticky": {{ "header": "x-user-id" }}, "mirror": {mirror} }}"#),
    )
}

#[test]
fn a_mirror_takes_its_defaults() {
    let p = policy(&with_mirror(r#"{"variant": "dev", "percent": 10}"#));
    let m = p.mirror(2).unwrap();
    assert_eq!(p.variants[m.variant].name, "dev");
    assert_eq!(m.buckets, 1000);
    assert_eq!((m.max_body, m.max_in_flight), (64 << 10, 50));
    assert_eq!(m.host_suffix, "-shadow");
    assert_eq!(m.timeout_ns, 5_000_000_000);
    assert!(p.mirror(0).is_none() && p.mirror(1).is_none() && p.mirror(9).is_none());
    assert_eq!(p.mirrors().count(), 1);
    // Old policies keep their meaning: no mirror anywhere, and none serialized.
    let seed = policy(SEED);
    assert_eq!(seed.mirrors().count(), 0);
    assert!(!serde_json::to_string(&seed.spec)
        .unwrap()
        .contains("mirror"));
}

#[test]
fn mirror_errors_name_their_path() {
    let e = errors(&with_mirror(
        r#"{"variant": "nope", "percent": 100.5, "max_body": 2000000, "max_in_flight": 0,
            "host_suffix": "-a b", "timeout": "0"}"#,
    ));
    assert_eq!(
        e,
        [
            "routes[2].mirror.variant: unknown variant 'nope' (known: canary, dev, stable)",
            "routes[2].mirror.percent: must be between 0 and 100, got 100.5",
            "routes[2].mirror.max_body: may be at most 1048576 bytes, got 2000000",
            "routes[2].mirror.max_in_flight: must be between 1 and 1000, got 0",
            "routes[2].mirror.host_suffix: may hold letters, digits, '-', '.', '_' and '~' only, got '-a b'",
            "routes[2].mirror.timeout: must be longer than 0",
        ]
    );
    assert_eq!(
        errors(&with_mirror(r#"{"variant": "dev", "percent": 1.005}"#)),
        ["routes[2].mirror.percent: at most two decimals, got 1.005"]
    );
    assert_eq!(
        errors(&with_mirror(
            r#"{"variant": "dev", "percent": 1, "max_body": 1048576, "max_in_flight": 100}"#
        )),
        ["routes[2].mirror.max_in_flight: max_in_flight × max_body may be at most 67108864 bytes (the bodies one worker holds), got 104857600"]
    );
    assert_eq!(
        errors(&with_mirror(
            r#"{"variant": "dev", "percent": 1, "timeout": "2m"}"#
        )),
        ["routes[2].mirror.timeout: may be at most 1m"]
    );
    // Unknown and missing fields are refused, with the path.
    let e = errors(&with_mirror(r#"{"variant": "dev", "pecent": 1}"#));
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with(
            "routes[2].mirror.pecent: unknown field `pecent`, expected one of `variant`, `percent`"
        ),
        "{e:?}"
    );
    assert_eq!(e[1], "routes[2].mirror: missing field `percent`");
    // A route that sends everything to the mirror's variant has nothing to compare.
    let json = SEED.replace(
        r#""variant": "dev" }"#,
        r#""variant": "dev", "mirror": {"variant": "dev", "percent": 5} }"#,
    );
    assert_eq!(
        errors(&json),
        ["routes[0].mirror.variant: is the variant the route sends every request to: nothing to compare"]
    );
}

#[test]
fn a_mirror_selects_its_share_and_sticks_to_the_bucket() {
    let p = policy(&with_mirror(r#"{"variant": "dev", "percent": 20}"#));
    let m = p.mirror(2).unwrap();
    let by_bucket = (0..10_000).filter(|&b| m.selects(Some(b), 0)).count();
    assert!((1_800..=2_200).contains(&by_bucket), "{by_bucket}");
    // Independent of the split: of the buckets a 20 % canary split owns, about a fifth.
    let in_split = (0..2_000).filter(|&b| m.selects(Some(b), 0)).count();
    assert!((300..=500).contains(&in_split), "{in_split}");
    // A bucket's answer never depends on the random draw.
    for b in [0, 17, 4_242, 9_999] {
        let first = m.selects(Some(b), 0);
        assert!((1..50).all(|r| m.selects(Some(b), r * 7_919) == first));
    }
    let by_random = (0..10_000u64).filter(|&r| m.selects(None, r)).count();
    assert_eq!(by_random, 2_000);
    let none = policy(&with_mirror(r#"{"variant": "dev", "percent": 0}"#));
    assert!((0..10_000).all(|b| !none.mirror(2).unwrap().selects(Some(b), u64::from(b))));
}

#[test]
fn a_version_is_a_whole_number_kept_through_serialization() {
    let p = policy(&minimal(r#","version":42"#));
    assert_eq!(p.spec.version, Some(42));
    let json = serde_json::to_string(&p.spec).unwrap();
    assert!(json.ends_with(r#","version":42}"#), "{json}");
    // Absent: left out, so an unnumbered policy serializes as it always did.
    let plain = serde_json::to_string(&policy(&minimal("")).spec).unwrap();
    assert!(!plain.contains("version"), "{plain}");
    for bad in [r#""7""#, "-1", "1.5"] {
        let e = errors(&minimal(&format!(r#","version":{bad}"#)));
        assert!(e.iter().any(|m| m.starts_with("version: ")), "{bad}: {e:?}");
    }
}

#[test]
fn route_default_needs_a_default_and_a_cluster_header() {
    let no_default = r#"{"name":"f","variants":{"s":"c"},"route_default":true}"#;
    assert_eq!(
        errors(no_default),
        ["route_default: needs default: it names the variant Envoy's route sends requests without \
          the cluster header to"]
    );
    let with_default = r#"{"name":"f","variants":{"s":"c"},"default":"s","route_default":true"#;
    assert_eq!(
        errors(&format!(r#"{with_default},"cluster_header":""}}"#)),
        ["route_default: needs a non-empty cluster_header (it saves writing that header)"]
    );
    let p = policy(&format!("{with_default}}}"));
    assert!(p.spec.route_default);
    // Kept through serialization, and absent when off.
    let json = serde_json::to_string(&p.spec).unwrap();
    assert!(json.contains(r#""route_default":true"#), "{json}");
    let plain = serde_json::to_string(&policy(&minimal("")).spec).unwrap();
    assert!(!plain.contains("route_default"), "{plain}");
}
