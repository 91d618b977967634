//! The inputs fuzzing reaches only by luck: nesting and length far past every bound, each
//! through its target (on the target's stack, with all its properties) within a coarse time.

use std::time::Duration;

use rollgate_fuzz::pending;
use rollgate_fuzz::runner::run_on_stack;
use rollgate_fuzz::targets::by_name;

/// Far from what a bounded parser needs (milliseconds) and from what the unbounded ones took
/// (13 s for a 200,000-argument rule, 35 s for YAML nested 100,000 deep).
const COARSE: Duration = Duration::from_secs(5);

fn passes(target: &str, input: Vec<u8>) -> String {
    let t = by_name(target).expect("target");
    let len = input.len();
    let (verdict, took) = run_on_stack(t, input);
    let sig = verdict.unwrap_or_else(|e| panic!("{target}, {len} bytes: {e}"));
    assert!(took < COARSE, "{target}, {len} bytes: took {took:?}");
    sig
}

#[test]
fn policy_json_nested_100000_deep_is_refused_with_its_position() {
    let d = 100_000;
    let doc = format!(r#"{{"name":{}1{}}}"#, "[".repeat(d), "]".repeat(d));
    let e = rollgate_policy::policy::accept_policy(doc.as_bytes()).unwrap_err();
    assert!(
        e.to_string()
            .contains("nesting deeper than 32 at line 1 column 40"),
        "{e}"
    );
    passes("policy", doc.into_bytes());
    let doc = format!(
        r#"{{"routes":[{}]}}"#,
        r#"{"":"#.repeat(d) + "1" + &"}".repeat(d)
    );
    passes("policy", doc.into_bytes());
}

#[test]
fn rules_and_expressions_nested_past_their_bounds_are_refused_with_a_column() {
    for (target, inner) in [("rule", "Host(`a`)"), ("breaker", "RequestThreshold() > 1")] {
        let d = 30_000;
        let sig = passes(
            target,
            format!("{}{inner}{}", "(".repeat(d), ")".repeat(d)).into_bytes(),
        );
        assert!(sig.contains("nest"), "{target}: {sig}");
        passes(
            target,
            format!("{}{inner}", "!".repeat(60_000)).into_bytes(),
        );
        passes(target, vec![b'('; 200_000]);
    }
    let many = vec!["Host(`a`)"; 6000].join(" || ");
    passes("rule", many.into_bytes());
}

#[test]
fn rollout_yaml_nested_deep_is_refused_in_bounded_time() {
    // serde_yaml is quadratic in nesting (100,000 levels took 35 s): the full depth waits for
    // the parser the "rolldir" change brings.
    let d = if pending::ROLLOUT_ERRORS_LOCATED_AND_SHORT {
        100_000
    } else {
        1_000
    };
    for yaml in [
        format!("spec: {}1{}\n", "[".repeat(d), "]".repeat(d)),
        // Block nesting by indentation: its text grows with the square of the depth, so
        // 1,000 levels (500 KB) rather than 100,000.
        (0..d.min(1_000))
            .map(|i| format!("{}a:\n", " ".repeat(i)))
            .collect(),
    ] {
        let t = std::time::Instant::now();
        assert!(rollgate::rollout::load(&yaml).is_err());
        assert!(
            t.elapsed() < COARSE,
            "{} bytes: {:?}",
            yaml.len(),
            t.elapsed()
        );
        passes("rollout", yaml.into_bytes());
    }
}

#[test]
fn a_request_line_without_end_is_refused() {
    let mut line = b"GET /".to_vec();
    line.extend(std::iter::repeat_n(b'a', 300 << 10));
    passes("http", line.clone());
    passes("api", line);
}
