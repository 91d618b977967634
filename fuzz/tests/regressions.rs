//! Every finding fuzzing made, as the input that showed it: each fails on the code before its
//! fix and passes after. The inputs also sit in the corpus, so the loop starts from them.

use rollgate_fuzz::runner::run_on_stack;
use rollgate_fuzz::targets::by_name;
use rollgate_policy::policy::accept_policy;

fn passes(target: &str, input: &[u8]) -> String {
    let t = by_name(target).expect("target");
    let (verdict, _) = run_on_stack(t, input.to_vec());
    verdict.unwrap_or_else(|e| panic!("{target}: {e}"))
}

/// Policy target: `{"":1}` was refused with an error whose path was empty, so it named no
/// position ("unknown field ``, expected one of …").
#[test]
fn an_empty_json_key_is_named_in_the_error_path() {
    passes("policy", br#"{"":1}"#);
    let e = accept_policy(br#"{"":1}"#).unwrap_err();
    assert_eq!(e.0[0].path, r#"[""]"#);
    let e = accept_policy(br#"{"name":"f","variants":{"a":"c"},"routes":[{"":1}]}"#).unwrap_err();
    assert_eq!(e.0[0].path, r#"routes[0][""]"#);
    // A key cannot forge a path either.
    let e = accept_policy(br#"{"name":"f","variants":{"a":"c"},"routes[1]":1}"#).unwrap_err();
    assert_eq!(e.0[0].path, r#"["routes[1]"]"#);
}

/// Longest error line found for each regression input, path and message.
fn longest_error(e: &rollgate_policy::policy::PolicyErrors) -> usize {
    e.0.iter()
        .map(|e| e.to_string().chars().count())
        .max()
        .unwrap_or(0)
}

/// Policy target: a variant name of 43,000 characters came back whole in "unknown variant
/// '…' (known: …)", an error of 43,310 characters (and up to 100 such in one answer).
#[test]
fn an_unknown_variant_is_quoted_as_a_short_excerpt() {
    let input = include_bytes!("regressions/policy-43310-char-error");
    passes("policy", input);
    let e = accept_policy(input).unwrap_err();
    assert!(longest_error(&e) <= 300, "{}", longest_error(&e));
    // The list of known variants is bounded too: 250 names of 200 bytes.
    let variants: Vec<String> = (0..250)
        .map(|i| format!(r#""{}{i}":"c""#, "v".repeat(200)))
        .collect();
    let doc = format!(
        r#"{{"name":"f","variants":{{{}}},"default":"nope"}}"#,
        variants.join(",")
    );
    let e = accept_policy(doc.as_bytes()).unwrap_err();
    assert!(longest_error(&e) <= 1024, "{}", longest_error(&e));
    assert!(e.to_string().contains("(250 in all)"), "{e}");
}

/// Rule and breaker targets: an identifier of a few thousand characters came back whole in
/// "expected '(' after …" (3,065 characters) and "unknown function '…'" (5,496).
#[test]
fn rule_and_expression_errors_quote_short_excerpts() {
    for (target, file) in [
        (
            "rule",
            &include_bytes!("regressions/rule-long-identifier")[..],
        ),
        (
            "breaker",
            include_bytes!("regressions/breaker-long-identifier"),
        ),
        (
            "breaker",
            include_bytes!("regressions/breaker-unknown-function"),
        ),
    ] {
        passes(target, file);
    }
    let e = rollgate_policy::rule::parse(&"Cook".repeat(10_000)).unwrap_err();
    assert!(e.message.len() < 120, "{}", e.message);
    let e = rollgate_policy::breaker::expr::parse(&format!("{}() > 1", "X".repeat(10_000)))
        .unwrap_err();
    assert!(e.message.len() < 200, "{}", e.message);
    // Control and bidirectional characters are escaped, not passed to a terminal.
    let e = rollgate_policy::rule::compile("Headers(`x\u{202e}y`, `v`)").unwrap_err();
    assert!(e.message.contains("\\u{202e}"), "{}", e.message);
}

/// HTTP target: the sidecar answered a bad 16 KB request line with a 400 quoting all of it
/// (an error of 16,313 characters; without a newline, as long as the line).
#[test]
fn the_sidecar_quotes_a_bad_request_line_as_a_short_excerpt() {
    let input = include_bytes!("regressions/http-16k-request-line-echo");
    passes("http", input);
    // Now hyper reads heads: it answers a bad head without a body (this one, cut by the
    // client's end, without an answer), so nothing of the line comes back.
    let served = rollgate_fuzz::http::serve(input).unwrap();
    let answer = String::from_utf8_lossy(&served.answer);
    assert!(answer.len() < 300 && !answer.contains("aaaa"), "{answer}");
    assert!(served.requests.is_empty());
}

/// Policy target: a bad `source` beside a policy with over 100 problems gave 102 errors: the
/// two lists were joined past the bound (at most 100 and a count of the rest).
#[test]
fn a_bad_source_beside_many_problems_stays_within_the_error_bound() {
    let input = include_bytes!("regressions/policy-102-errors");
    passes("policy", input);
    let e = rollgate_policy::config::accept_config(input).unwrap_err();
    assert_eq!(e.0.len(), rollgate_policy::limits::MAX_ERRORS + 1);
    assert!(e.0[0].path.starts_with("source."), "{}", e.0[0]);
    let last = &e.0[e.0.len() - 1].message;
    assert!(
        last.starts_with("and ") && last.ends_with(" more problems"),
        "{last}"
    );
}

/// Rollout target, step property: `spec.match` of 3,000 matchers and a header route of 1,500
/// each compiled alone, so the Rollout validated; the sidecar then refused the policy of the
/// header-route step (the two joined: "more than 4096 matchers in one rule"), in the middle
/// of a release. Now `validate` refuses it, at the step.
#[test]
fn a_header_route_too_big_once_joined_to_the_match_is_refused_at_its_step() {
    let input = include_bytes!("regressions/rollout-header-route-4500-terms.yaml");
    passes("rollout", input);
    let e = rollgate::rollout::load(std::str::from_utf8(input).unwrap()).unwrap_err();
    assert_eq!(e.0[0].path, "spec.strategy.steps[0].setHeaderRoute.match");
    assert!(
        e.0[0].message.contains("more than 4096 matchers"),
        "{}",
        e.0[0]
    );
    // The same for nesting: a match with `||` 32 levels deep is parenthesised when joined,
    // one level past the bound.
    let input = include_bytes!("regressions/rollout-header-route-nesting-33.yaml");
    passes("rollout", input);
    let e = rollgate::rollout::load(std::str::from_utf8(input).unwrap()).unwrap_err();
    assert_eq!(e.0[0].path, "spec.strategy.steps[0].setHeaderRoute.match");
    assert!(
        e.0[0].message.contains("nesting deeper than 32"),
        "{}",
        e.0[0]
    );
}

/// Policy target (a 7-minute run): keys nested in objects, each quoted as an excerpt, made
/// a path of 1,100 characters (an error of 1,168). Paths are shortened in the middle.
#[test]
fn a_path_of_many_quoted_keys_is_shortened() {
    let input = include_bytes!("regressions/policy-1168-char-path");
    passes("policy", input);
    let e = accept_policy(input).unwrap_err();
    assert!(e.0.iter().all(|e| e.path.chars().count() <= 201), "{e}");
}

/// Rule target (a 7-minute run): `ClientIP` quoted a whole invalid prefix length ("invalid
/// prefix length '/.0.0/.0.0/…'", an error of 1,781 characters).
#[test]
fn an_invalid_prefix_length_is_quoted_as_an_excerpt() {
    passes(
        "rule",
        include_bytes!("regressions/rule-long-prefix-length"),
    );
    let e = rollgate_policy::rule::compile(&format!("ClientIP(`10.0.0.0/{}`)", "1".repeat(5000)))
        .unwrap_err();
    assert!(e.message.len() < 150, "{}", e.message);
}

/// Rule and breaker targets, after the v2/v3 rule syntaxes landed: v2 `Query` quoted every
/// argument whole ("takes key=value pairs, got 1 parts: '…'", 21,446 characters) and a
/// breaker quoted a whole out-of-range number ("quantile must be above 0 and at most 100,
/// got 816.6579254254…", 1,899).
#[test]
fn query_pairs_and_numbers_are_quoted_as_excerpts() {
    passes("rule", include_bytes!("regressions/rule-long-query-pairs"));
    passes(
        "breaker",
        include_bytes!("regressions/breaker-long-quantile"),
    );
    // And `path '…' does not start with a '/'` (9,306 characters), found in make test's run.
    passes("rule", include_bytes!("regressions/rule-long-path"));
}
