//! Issue 13 in a real Envoy: requests that Traefik 3.7 routes differently from what rollgate
//! did, sent through Envoy 1.40 with the real filter, decided as Traefik decides them. Each
//! expectation cites the Traefik source (traefik/traefik fd5a576df2, a merge of v3.7).

#[path = "../../wasmhost/tests/common/mod.rs"]
mod common;

use rollgate_e2e::{Stack, ECHO_PREFIX, SEED_CLUSTERS};

const POLICY: &str = r#"{
  "name": "traefik",
  "variants": { "stable": "k8s-flask", "canary": "k8s-flask-canary", "dev": "k8s-flask-dev" },
  "routes": [
    { "match": "Path(`/foo bar`)", "variant": "canary" },
    { "match": "Host(`dotted.example.`)", "variant": "dev" },
    { "match": "Host(`flags.example`) && Query(`mobile`)", "variant": "canary" },
    { "match": "Host(`flags.example`) && Method(`get`)", "variant": "dev" },
    { "match": "Host(`*.wild.example`)", "variant": "canary" },
    { "match": "HostRegexp(`^up\\.example$`)", "variant": "dev" },
    { "match": "PATHPREFIX(`/shout`)", "variant": "dev" },
    { "match": "PathRegexp(`^/{path:(css|js)}$`)", "variant": "canary" },
    { "match": "Path(`/api/{v}/users`)", "rule_syntax": "v2", "variant": "dev" },
    { "match": "Query(`a=1`, `b=2`)", "variant": "canary" }
  ]
}"#;

/// The variant Envoy's upstream saw, or `None` when the filter routed nowhere (404).
fn variant(stack: &Stack, method: &str, authority: &str, path: &str) -> Option<String> {
    let r = stack
        .client()
        .request(method, authority, path, &[], b"")
        .unwrap_or_else(|e| panic!("{method} {authority}{path}: {e}"));
    if r.status == 404 && r.body_str() == "no variant" {
        return None;
    }
    assert_eq!(
        r.status,
        200,
        "{method} {authority}{path}: {}",
        r.body_str()
    );
    r.header_str(&format!("{ECHO_PREFIX}x-rollgate-variant"))
}

#[test]
fn envoy_routes_as_traefik_would() {
    let stack = Stack::try_start(POLICY, &SEED_CLUSTERS, None).expect("Envoy starts");
    let cases: &[(&str, &str, &str, Option<&str>)] = &[
        // pkg/muxer/http/mux.go:135-176: non-reserved %XX decoded before path matching.
        ("GET", "a.example", "/foo%20bar", Some("canary")),
        // pkg/muxer/http/matcher.go:102-108: a trailing dot in the rule is ignored.
        ("GET", "dotted.example", "/", Some("dev")),
        // matcher.go:215-233: Query(`k`) wants an empty value.
        ("POST", "flags.example", "/?mobile", Some("canary")),
        ("POST", "flags.example", "/?mobile=true", None),
        // matcher.go:61-69: the rule's method upper-cased, the request's compared exactly.
        ("GET", "flags.example", "/", Some("dev")),
        // pkg/muxer/muxer.go:23-31: `*.` matches one first label.
        ("GET", "a.wild.example", "/", Some("canary")),
        ("GET", "wild.example", "/", None),
        // matcher.go:136-139: HostRegexp on the lower-cased host.
        ("GET", "UP.Example", "/", Some("dev")),
        // pkg/rules/parser.go:43-46: names in UPPER case.
        ("GET", "a.example", "/shout/x", Some("dev")),
        // Go regexp: a `{` that starts no repetition is literal (matcher_test.go:535-550).
        ("GET", "a.example", "/%7Bpath:css%7D", Some("canary")),
        ("GET", "a.example", "/css", None),
        // matcher_v2.go:28-52: a v2 Path template.
        ("GET", "a.example", "/api/v1/users", Some("dev")),
        // matcher_v2.go:187-204: v2 Query pairs, every one required.
        ("GET", "a.example", "/q?a=1&b=2", Some("canary")),
        ("GET", "a.example", "/q?a=1", None),
    ];
    let mut wrong = Vec::new();
    for &(method, authority, path, want) in cases {
        let got = variant(&stack, method, authority, path);
        if got.as_deref() != want {
            wrong.push(format!(
                "{method} {authority}{path}: got {got:?}, Traefik {want:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
