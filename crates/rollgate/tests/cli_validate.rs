//! `rollgate validate` as a user runs it: exit codes and messages.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn rollgate(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn example() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policy.json");
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn valid_policy_prints_ok() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policy.json");
    let out = rollgate(&["validate", path], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout,
        "ok: policy 'flask': 3 variants, 3 routes, default stable\n"
    );
}

#[test]
fn invalid_policy_lists_errors_with_paths_and_fails() {
    let bad = example()
        .replace(r#""weight": 50"#, r#""weight": 150"#)
        .replace(
            "Headers(`location`, `shenzhen`)",
            "Headers(`location` `shenzhen`)",
        );
    let out = rollgate(&["validate", "-"], Some(&bad));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr,
        "-: routes[1].match: column 42: expected ',' or ')'\n\
         -: routes[2].split[0].weight: must be between 0 and 100, got 150\n"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn usage_errors_exit_2() {
    let out = rollgate(&["validate"], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("required arguments were not provided") && err.contains("<POLICY.json>"),
        "{err}"
    );
    let out = rollgate(&["validate", "/nonexistent/policy.json"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading /nonexistent/policy.json"));
    let out = rollgate(&["frobnicate"], None);
    assert_eq!(out.status.code(), Some(2));
}

/// `validate` prints the filter's own verdict: the errors of `accept_config` line by line.
fn filter_verdict(json: &str) -> String {
    match rollgate_policy::config::accept_config(json.as_bytes()) {
        Ok(_) => "accepted".into(),
        Err(e) => e.0.iter().map(|e| format!("-: {e}\n")).collect(),
    }
}

#[test]
fn a_source_only_configuration_validates_as_the_filter_loads_it() {
    let config = r#"{"source":{"cluster":"rollgate","path":"/v1/policies/flask","poll":"1s"}}"#;
    assert_eq!(filter_verdict(config), "accepted");
    let out = rollgate(&["validate", "-"], Some(config));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "ok: fetches policies from cluster 'rollgate', path /v1/policies/flask (no starting policy)\n"
    );
}

#[test]
fn a_bad_source_is_refused_by_validate_exactly_as_by_the_filter() {
    let config = r#"{"source":{"cluster":"","path":"x","poll":"0s","wait":"bogus"}}"#;
    let out = rollgate(&["validate", "-"], Some(config));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr, filter_verdict(config));
    assert_eq!(
        stderr,
        "-: source.cluster: must name the sidecar's Envoy cluster\n\
         -: source.path: must be a path starting with '/' and without a query, got 'x'\n\
         -: source.poll: must be longer than 0\n\
         -: source.wait: invalid duration 'bogus': expected a number like 100ms, 1s, 2m\n"
    );
}

#[test]
fn deep_and_long_rules_are_refused_not_a_crash() {
    // 10,000 parentheses, 4,000 `!` and 10,000 `||` terms overflowed the stack (exit 134).
    let policy = |rule: &str| {
        format!(
            r#"{{"name":"f","variants":{{"a":"ca"}},"routes":[{{"match":"{rule}","variant":"a"}}]}}"#
        )
    };
    let cases = [
        (
            format!("{}Host(`a`){}", "(".repeat(10_000), ")".repeat(10_000)),
            "-: routes[0].match: column 33: nesting deeper than 32\n",
        ),
        (
            format!("{}Host(`a`)", "!".repeat(4_000)),
            "-: routes[0].match: column 33: nesting deeper than 32\n",
        ),
        (
            vec!["Host(`a`)"; 10_000].join(" || "),
            "-: routes[0].match: string longer than 65536 bytes at line 1 column 55\n",
        ),
    ];
    for (rule, want) in cases {
        let json = policy(&rule);
        let out = rollgate(&["validate", "-"], Some(&json));
        assert_eq!(out.status.code(), Some(1), "{want}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr, want);
        assert_eq!(stderr, filter_verdict(&json));
    }
}

#[test]
fn tcp_policies_are_validated_with_field_paths() {
    let ok = r#"{"name":"db","tcp":{"allow":["127.0.0.0/8","::1/128"],
        "in_flight":{"per_source":3},"rate":{"average":20,"burst":5}}}"#;
    let out = rollgate(&["validate", "-"], Some(ok));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "ok: policy 'db': TCP connection limits (runs as a network filter): allow 127.0.0.0/8, \
         ::1/128; in_flight 3 per source, no cap in all; rate 20 per 1s, burst 5\n"
    );
    let bad = r#"{"name":"db","tcp":{"allow":["127.0.0.1/8"],"in_flight":{"total":0}}}"#;
    let out = rollgate(&["validate", "-"], Some(bad));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "-: tcp.allow[0]: '127.0.0.1/8' has host bits set below /8\n\
         -: tcp.in_flight.total: must be at least 1\n"
    );
}
