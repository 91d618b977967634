//! Every limit of [`crate::limits`]: refused with the JSON path and column just past it,
//! accepted at it; the deepest and longest inputs allowed run on a small native stack; the
//! hostile inputs of issue 11 are refused quickly.

use std::time::{Duration, Instant};

use super::*;
use crate::breaker::expr;
use crate::config::accept_config;
use crate::policy::{accept_policy, Policy};
use crate::request::Request;
use crate::rule;

/// A policy routing `rule` to variant `a`.
fn with_rule(rule: &str) -> String {
    format!(
        r#"{{"name":"f","variants":{{"a":"ca"}},"routes":[{{"match":{},"variant":"a"}}]}}"#,
        json_string(rule)
    )
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn refused(json: &str) -> String {
    accept_policy(json.as_bytes()).unwrap_err().to_string()
}

fn rule_err(rule: &str) -> String {
    rule::compile(rule).unwrap_err().to_string()
}

/// `depth` levels: parentheses and `!` alternating, around one `Host`.
fn nested(depth: usize) -> String {
    let mut open = String::new();
    let mut close = String::new();
    for i in 0..depth {
        if i % 2 == 0 {
            open.push('(');
            close.push(')');
        } else {
            open.push('!');
        }
    }
    format!("{open}Host(`a`){close}")
}

/// Runs `f` on a thread with a 128 KiB stack: recursion that the limits do not bound would
/// overflow it (and abort the test binary).
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(128 << 10)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

fn quick<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let t = f();
    // Coarse on purpose (debug build, shared machine): the quadratic code took 13 s.
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{what} took {:?}",
        start.elapsed()
    );
    t
}

#[test]
fn eight_thousand_parentheses_are_refused_at_the_column_past_the_limit() {
    let deep = format!("{}Host(`a`){}", "(".repeat(8000), ")".repeat(8000));
    on_small_stack(move || {
        assert_eq!(
            refused(&with_rule(&deep)),
            "routes[0].match: column 33: nesting deeper than 32"
        );
    });
    let at_limit = format!("{}Host(`a`){}", "(".repeat(32), ")".repeat(32));
    assert!(rule::compile(&at_limit).is_ok());
    assert!(rule::compile(&nested(MAX_RULE_DEPTH)).is_ok());
    assert_eq!(
        rule_err(&nested(MAX_RULE_DEPTH + 1)),
        "column 33: nesting deeper than 32"
    );
}

#[test]
fn four_thousand_nots_are_refused() {
    let nots = format!("{}Host(`a`)", "!".repeat(4000));
    on_small_stack(move || {
        assert_eq!(rule_err(&nots), "column 33: nesting deeper than 32");
    });
    assert!(rule::compile(&format!("{}Host(`a`)", "!".repeat(32))).is_ok());
}

#[test]
fn long_chains_are_flat_and_bounded_in_terms_and_length() {
    let chain = |n: usize| vec!["Path(`/`)"; n].join("||");
    let m = rule::compile(&chain(MAX_RULE_TERMS)).unwrap();
    match &m {
        rule::Matcher::Any(items) => assert_eq!(items.len(), MAX_RULE_TERMS),
        other => panic!("{:?}", std::mem::discriminant(other)),
    }
    let over = chain(MAX_RULE_TERMS + 1);
    let column = over.len() - "Path(`/`)".len() + 1;
    assert_eq!(
        rule_err(&over),
        format!("column {column}: more than 4096 matchers in one rule")
    );
    // 10,000 terms overflowed `rollgate serve`'s stack; now the length refuses them first.
    let ten_thousand = vec!["Host(`a`)"; 10_000].join(" || ");
    on_small_stack(move || {
        assert_eq!(
            rule_err(&ten_thousand),
            "column 65537: a rule may be at most 65536 bytes, this one is 129996"
        );
    });
}

#[test]
fn arguments_are_bounded_and_many_compile_in_linear_time() {
    let host = |n: usize| {
        let args: Vec<String> = (0..n).map(|i| format!("`h{i}.example.com`")).collect();
        format!("Host({})", args.join(","))
    };
    assert!(rule::compile(&host(MAX_RULE_ARGS)).is_ok());
    let over = host(MAX_RULE_ARGS + 1);
    let column = over.rfind('`').unwrap() - "h1024.example.com".len();
    assert_eq!(
        rule_err(&over),
        format!("column {column}: more than 1024 arguments to Host")
    );
    // A `Host` with 200,000 arguments took 13 s: columns were counted from the start of the
    // rule for every argument.
    let huge = host(200_000);
    let e = quick("200,000 arguments", || rule_err(&huge));
    assert!(
        e.starts_with("column 65537: a rule may be at most 65536 bytes"),
        "{e}"
    );
    // The longest rule allowed, with the most matchers, compiles quickly too.
    let widest = vec!["Host(`h.example.com`,`i.example.com`)"; 1600].join("||");
    assert!(widest.len() <= MAX_RULE_BYTES);
    quick("the widest rule", || rule::compile(&widest).unwrap());
}

#[test]
fn the_deepest_and_widest_rule_allowed_runs_on_a_small_stack() {
    on_small_stack(|| {
        // Nested to the limit, each level an `||` of many matchers.
        let mut rule = String::from("Path(`/x`)");
        for i in 0..MAX_RULE_DEPTH {
            rule = if i % 2 == 0 {
                format!("Path(`/{i}`) || ({rule}) || Method(`PUT`)")
            } else {
                format!("!{rule}")
            };
        }
        let m = rule::compile(&rule).unwrap();
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":authority", b"a"),
            (b":path", b"/x"),
            (b":method", b"GET"),
        ];
        let req = Request::new(headers, None);
        let _ = m.matches(&req);
        let copy = m.clone();
        assert!(!format!("{copy:?}").is_empty());
        drop(copy);
        let p = accept_policy(with_rule(&rule).as_bytes()).unwrap();
        let _ = p.decide(&req, &mut String::new);
        drop(p);
    });
}

#[test]
fn breaker_expressions_are_bounded_like_rules() {
    let e = |s: &str| expr::parse(s).unwrap_err().to_string();
    let one = "NetworkErrorRatio() > 0.5";
    let deep = format!("{}{one}{}", "(".repeat(8000), ")".repeat(8000));
    let nots = format!("{}{one}", "!".repeat(4000));
    on_small_stack(move || {
        assert_eq!(e(&deep), "column 33: nesting deeper than 32");
        assert_eq!(e(&nots), "column 33: nesting deeper than 32");
    });
    let at_limit = format!("{}{one}{}", "(".repeat(32), ")".repeat(32));
    assert!(expr::parse(&at_limit).is_ok());
    // The length bounds the comparisons: 2,900 of the shortest fit, as one flat list.
    let chain = vec!["RequestThreshold()>1"; 2900].join("||");
    let c = expr::parse(&chain).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(&c, expr::Cond::Or(items) if items.len() == 2900));
    let long = format!("{one}{}", " ".repeat(MAX_RULE_BYTES));
    assert!(e(&long).starts_with("column 65537: an expression may be at most 65536 bytes"));
    // In a policy, the error names the field.
    let policy = format!(
        r#"{{"name":"f","variants":{{"a":"ca"}},"circuit_breakers":[{{"name":"b","expression":"{}{one}"}}]}}"#,
        "!".repeat(40)
    );
    assert_eq!(
        refused(&policy),
        "circuit_breakers[0].expression: column 33: nesting deeper than 32"
    );
}

#[test]
fn json_depth_strings_and_document_size_are_bounded() {
    // Deeper than the schema: the parser refuses it before the decoder sees it.
    let deep = format!(
        r#"{{"name":"f","variants":{{"a":"ca"}},"routes":[{}{}]}}"#,
        "[".repeat(40),
        "]".repeat(40)
    );
    on_small_stack(move || {
        assert_eq!(
            refused(&deep),
            "routes[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]: nesting deeper than 32 at line 1 column 75"
        );
    });
    let long = with_rule(&format!("Host(`{}`)", "a".repeat(MAX_STRING_BYTES)));
    assert_eq!(
        refused(&long),
        "routes[0].match: string longer than 65536 bytes at line 1 column 55"
    );
    let big = format!(
        r#"{{"name":"f","variants":{{"a":"ca"}}}}{}"#,
        " ".repeat(MAX_POLICY_BYTES)
    );
    assert_eq!(
        refused(&big),
        "the document may be at most 1048576 bytes, this one is 1048610"
    );
    assert!(accept_config(big.as_bytes())
        .unwrap_err()
        .to_string()
        .starts_with("the document may be at most 1048576 bytes"));
    assert!(accept_policy(big.trim_end().as_bytes()).is_ok());
}

#[test]
fn counts_of_routes_variants_splits_limits_and_breakers_are_bounded() {
    let policy = |variants: usize, routes: usize, limits: usize, breakers: usize| {
        let v: Vec<String> = (0..variants).map(|i| format!(r#""v{i}":"c""#)).collect();
        let r = vec![r#"{"variant":"v0"}"#; routes].join(",");
        let l: Vec<String> = (0..limits)
            .map(|i| format!(r#"{{"name":"l{i}","average":1}}"#))
            .collect();
        let b: Vec<String> = (0..breakers)
            .map(|i| format!(r#"{{"name":"b{i}","expression":"NetworkErrorRatio() > 0.5"}}"#))
            .collect();
        format!(
            r#"{{"name":"f","variants":{{{}}},"routes":[{r}],"rate_limits":[{}],"circuit_breakers":[{}]}}"#,
            v.join(","),
            l.join(","),
            b.join(",")
        )
    };
    assert!(accept_policy(
        policy(MAX_VARIANTS, MAX_ROUTES, MAX_RATE_LIMITS, MAX_BREAKERS).as_bytes()
    )
    .is_ok());
    assert_eq!(
        refused(&policy(MAX_VARIANTS + 1, 1, 0, 0)),
        "variants: at most 256 variants are allowed, this policy has 257"
    );
    assert_eq!(
        refused(&policy(1, MAX_ROUTES + 1, 0, 0)),
        "routes[1024]: at most 1024 routes are allowed, this policy has 1025"
    );
    assert_eq!(
        refused(&policy(1, 0, MAX_RATE_LIMITS + 1, 0)),
        "rate_limits[64]: at most 64 rate limits are allowed, this policy has 65"
    );
    assert_eq!(
        refused(&policy(1, 0, 0, MAX_BREAKERS + 1)),
        "circuit_breakers[64]: at most 64 circuit breakers are allowed, this policy has 65"
    );
    let split = vec![r#"{"variant":"a","weight":0}"#; MAX_VARIANTS + 1].join(",");
    assert_eq!(
        refused(&format!(
            r#"{{"name":"f","variants":{{"a":"ca"}},"routes":[{{"split":[{split}]}}]}}"#
        )),
        "routes[0].split[256]: at most 256 split entries are allowed, this policy has 257"
    );
}

#[test]
fn names_are_bounded() {
    let long = "n".repeat(MAX_NAME_BYTES + 1);
    let ok = "n".repeat(MAX_NAME_BYTES);
    let named = |name: &str| format!(r#"{{"name":"{name}","variants":{{"a":"ca"}}}}"#);
    assert!(accept_policy(named(&ok).as_bytes()).is_ok());
    assert_eq!(
        refused(&named(&long)),
        "name: may be at most 256 bytes, this one is 257"
    );
    assert_eq!(
        refused(&format!(r#"{{"name":"f","variants":{{"{long}":"ca"}}}}"#)),
        "variants: a variant name may be at most 256 bytes, this one is 257"
    );
    assert_eq!(
        refused(&format!(r#"{{"name":"f","variants":{{"a":"{long}"}}}}"#)),
        "variants.a: may be at most 256 bytes, this one is 257"
    );
    assert_eq!(
        refused(&format!(
            r#"{{"name":"f","variants":{{"a":"ca"}},"rate_limits":[{{"name":"{long}","average":1}}]}}"#
        )),
        "rate_limits[0].name: may be at most 256 bytes, this one is 257"
    );
    assert_eq!(
        refused(&format!(
            r#"{{"name":"f","variants":{{"a":"ca"}},"routes":[{{"split":[],"sticky":{{"header":"{long}"}}}}]}}"#
        )),
        "routes[0].sticky.header: may be at most 256 bytes, this one is 257"
    );
    assert_eq!(
        accept_config(format!(r#"{{"source":{{"cluster":"{long}","path":"/p"}}}}"#).as_bytes())
            .unwrap_err()
            .to_string(),
        "source.cluster: may be at most 256 bytes, this one is 257"
    );
}

#[test]
fn regular_expressions_are_bounded_in_number_and_size() {
    let regexes = |n: usize| {
        let routes: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"match":"PathRegexp(`^/{i}$`)","variant":"a"}}"#))
            .collect();
        format!(
            r#"{{"name":"f","variants":{{"a":"ca"}},"routes":[{}]}}"#,
            routes.join(",")
        )
    };
    assert!(accept_policy(regexes(MAX_REGEXES).as_bytes()).is_ok());
    assert_eq!(
        refused(&regexes(MAX_REGEXES + 1)),
        "routes[256].match: column 12: more than 256 regular expressions in the policy"
    );
    // Counted repetition makes a short pattern a large automaton.
    let e = rule_err("PathRegexp(`(a{100}){100}`)");
    assert!(
        e.starts_with("column 12: invalid regular expression '(a{100}){100}'"),
        "{e}"
    );
    assert!(rule::compile("PathRegexp(`^/api/v[0-9]+/users/[a-f0-9]{24}$`)").is_ok());
}

#[test]
fn errors_are_capped_and_counted() {
    let routes = vec![r#"{"variant":"nope"}"#; 300].join(",");
    let e = accept_policy(
        format!(r#"{{"name":"f","variants":{{"a":"ca"}},"routes":[{routes}]}}"#).as_bytes(),
    )
    .unwrap_err();
    assert_eq!(e.0.len(), MAX_ERRORS + 1);
    assert_eq!(
        e.0[0].to_string(),
        "routes[0].variant: unknown variant 'nope' (known: a)"
    );
    assert_eq!(e.0[MAX_ERRORS].to_string(), "and 200 more problems");
}

#[test]
fn the_seed_policy_is_far_inside_every_limit() {
    let seed = include_str!("../../../examples/policy.json");
    let p: Policy = accept_policy(seed.as_bytes()).unwrap();
    assert_eq!(p.spec.routes.len(), 3);
}
