//! `rollgate try` is bounded: a filter call that never returns is stopped after `--timeout`,
//! a VM growing its memory past `--max-memory` fails, and the policy file is read up to the
//! filter's 1 MiB limit only. Each ends with exit 1 and a clear message, never a hang.

#[path = "../../wasmhost/tests/common/mod.rs"]
mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

#[path = "../../wasmhost/tests/modules/mod.rs"]
mod modules;

use modules::{hog, spin};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rollgate-limits-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `rollgate try` and kills it if it is still running after `limit`: returns its output
/// (None: it hung) and how long it ran.
fn try_cmd(args: &[&str], limit: Duration) -> (Option<Output>, Duration) {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .arg("try")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while start.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return (Some(out), start.elapsed());
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    (None, start.elapsed())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_filter_call_that_never_returns_is_stopped_after_the_timeout() {
    let dir = scratch("spin");
    let wasm = write(&dir, "spin.wasm", &spin());
    let policy = write(&dir, "policy.json", b"{}");
    // It used to hang forever.
    let (out, took) = try_cmd(
        &["--policy", &policy, "--wasm", &wasm],
        Duration::from_secs(30),
    );
    let out = out.unwrap_or_else(|| panic!("rollgate try still running after {took:?}"));
    println!("stopped after {took:?}: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "the filter ran longer than --timeout 1s in proxy_on_request_headers and was stopped; \
             Envoy would answer 503 (wasm_fail_stream) on that worker"
        ),
        "{}",
        stderr(&out)
    );
    assert!(
        took < Duration::from_secs(15),
        "default timeout 1 s: {took:?}"
    );
    let (out, _) = try_cmd(
        &["--policy", &policy, "--wasm", &wasm, "--timeout", "200ms"],
        Duration::from_secs(30),
    );
    assert!(stderr(&out.unwrap()).contains("--timeout 200ms"));
    // The timeout fails the VM as a trap does: the stopped request gets Envoy's 503 and
    // the next one the failure policy's answer (it used to stop `try` at the first).
    let requests = write(&dir, "requests.jsonl", b"{}\n{}\n");
    let (out, _) = try_cmd(
        &[
            "--policy",
            &policy,
            "--wasm",
            &wasm,
            "--timeout",
            "200ms",
            "--requests",
            &requests,
        ],
        Duration::from_secs(30),
    );
    let out = out.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["local_response"]["status"], 503);
    assert_eq!(lines[0]["local_response"]["details"], "wasm_fail_stream");
    assert!(lines[0]["trap"]
        .as_str()
        .unwrap()
        .contains("--timeout 200ms"));
    assert_eq!(lines[1]["local_response"]["status"], 503, "fail_closed");
    assert!(
        lines[1]["trap"].is_null(),
        "the failed VM is not called again"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_vm_growing_memory_past_max_memory_fails() {
    let dir = scratch("hog");
    let wasm = write(&dir, "hog.wasm", &hog());
    let policy = write(&dir, "policy.json", b"{}");
    let (out, took) = try_cmd(
        &[
            "--policy",
            &policy,
            "--wasm",
            &wasm,
            "--max-memory",
            "64",
            "--timeout",
            "20s",
        ],
        Duration::from_secs(30),
    );
    let out = out.unwrap_or_else(|| panic!("rollgate try still running after {took:?}"));
    println!("stopped after {took:?}: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "the filter needed more than --max-memory 64 MiB in proxy_on_request_headers and \
             was stopped; Envoy would answer 503 (wasm_fail_stream) on that worker"
        ),
        "{}",
        stderr(&out)
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_policy_file_over_1_mib_is_refused_unread() {
    let dir = scratch("big");
    // A 50 MB policy `name` used to take 4.8 GB of memory.
    let big = format!(r#"{{"name":"{}"}}"#, "a".repeat(50 << 20));
    let policy = write(&dir, "policy.json", big.as_bytes());
    let wasm = common::filter_path().display().to_string();
    let (out, took) = try_cmd(
        &["--policy", &policy, "--wasm", &wasm],
        Duration::from_secs(60),
    );
    let out = out.unwrap_or_else(|| panic!("rollgate try still running after {took:?}"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "reading {policy}: more than the limit of 1048576 bytes"
        )),
        "{}",
        stderr(&out)
    );
    // Exactly the limit is read and accepted as far as size goes (the filter then judges it).
    let mut at_limit = br#"{"name":"flask","variants":{"s":"s"},"default":"s"}"#.to_vec();
    at_limit.resize(1 << 20, b' ');
    let policy = write(&dir, "limit.json", &at_limit);
    let (out, _) = try_cmd(
        &["--policy", &policy, "--wasm", &wasm],
        Duration::from_secs(60),
    );
    let out = out.unwrap();
    let mut s = String::new();
    out.stdout.as_slice().read_to_string(&mut s).unwrap();
    assert!(out.status.success(), "{}{s}", stderr(&out));
    let _ = std::fs::remove_dir_all(&dir);
}
