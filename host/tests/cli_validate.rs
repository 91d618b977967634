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
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policy.json");
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn valid_policy_prints_ok() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policy.json");
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
    assert!(String::from_utf8_lossy(&out.stderr).contains("validate takes one POLICY file"));
    let out = rollgate(&["validate", "/nonexistent/policy.json"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading /nonexistent/policy.json"));
    let out = rollgate(&["frobnicate"], None);
    assert_eq!(out.status.code(), Some(2));
}
