//! `rollgate promote|abort|retry|status` against a running sidecar, and `rollgate serve` as
//! a process: exit codes and output.

mod rollout_support;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rollout_support::{wait_until, Sidecar, TempDir, SEED};

fn rollgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(args)
        .env_remove("ROLLGATE_SERVER")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn started() -> (TempDir, Sidecar) {
    let dir = TempDir::new("cli");
    dir.write("flask.yaml", SEED);
    let s = Sidecar::start(&dir.0, &[]);
    (dir, s)
}

#[test]
fn promote_abort_retry_and_their_exit_codes() {
    let (_dir, s) = started();
    let url = s.url();
    let o = rollgate(&["promote", "flask", "--server", &url]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout),
        "flask: promote: Paused, step 4/6: pause (until promoted), canary 50%, header route on, \
         policy v2\n  paused at step 4/6: run `rollgate promote flask` to go on\n"
    );
    let o = rollgate(&["retry", "flask", &format!("--server={url}")]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        "rollgate retry: flask is not aborted (Paused, step 4/6: pause (until promoted)): \
         nothing to retry\n"
    );
    let o = rollgate(&["abort", "flask", "--server", &url]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o.stdout).starts_with("flask: abort: Aborted, step 4/6: pause (until promoted), canary 0%, header route off, policy v3\n"), "{}", text(&o.stdout));
    let o = rollgate(&["abort", "flask", "--server", &url]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        "rollgate abort: flask is already aborted\n"
    );
    let o = rollgate(&["retry", "flask", "--server", &url]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o.stdout).contains("Paused, step 2/6"));
    let o = rollgate(&["promote", "nope", "--server", &url]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        "rollgate promote: no rollout named 'nope'\n"
    );
}

#[test]
fn status_plain_and_watch() {
    let (_dir, s) = started();
    let url = s.url();
    let o = rollgate(&["status", "flask", "--server", &url]);
    assert_eq!(o.status.code(), Some(0));
    let out = text(&o.stdout);
    assert_eq!(
        out.lines().next().unwrap(),
        "flask: Paused, step 2/6: pause (until promoted), canary 0%, header route on, policy v1"
    );
    assert!(out.contains("  message   paused at step 2/6: run `rollgate promote flask` to go on"));
    assert!(!out.contains('█'), "no progress bar when not a terminal");
    // All rollouts, via $ROLLGATE_SERVER.
    let o = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(["status"])
        .env("ROLLGATE_SERVER", &url)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o.stdout).starts_with("flask: Paused"));

    // --watch follows until the rollout is done: exit 0 when promoted.
    let child = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(["status", "flask", "--watch", "--server", &url])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    for _ in 0..3 {
        assert_eq!(s.post("/v1/rollouts/flask/promote").status, 200);
        std::thread::sleep(Duration::from_millis(700));
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let out = text(&o.stdout);
    let blocks: Vec<&str> = out.split("\n\n").collect();
    assert!(blocks.len() >= 3, "a block per change: {out}");
    assert!(blocks[0].starts_with("flask: Paused, step 2/6"), "{out}");
    assert!(
        blocks
            .last()
            .unwrap()
            .starts_with("flask: Promoted, all 6 steps done, canary 100%"),
        "{out}"
    );
    assert_eq!(
        s.post("/v1/rollouts/flask/abort").status,
        409,
        "promoted: cannot abort"
    );
    let o = rollgate(&["status", "nope", "--server", &url]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn watch_exits_1_on_abort() {
    let (_dir, s) = started();
    assert_eq!(s.post("/v1/rollouts/flask/abort").status, 200);
    let o = rollgate(&["status", "flask", "-w", "--server", &s.url()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stdout).starts_with("flask: Aborted"));
}

#[test]
fn usage_and_unreachable_server_exit_2() {
    let o = rollgate(&["promote", "--server", "http://127.0.0.1:9"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("required arguments were not provided")
            && text(&o.stderr).contains("<NAME>"),
        "{}",
        text(&o.stderr)
    );
    let o = rollgate(&["status", "--server", "http://127.0.0.1:9"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).starts_with("rollgate: cannot reach rollgate at http://127.0.0.1:9"),
        "{}",
        text(&o.stderr)
    );
    let o = rollgate(&["status", "--bogus"]);
    assert_eq!(o.status.code(), Some(2));
    let o = rollgate(&["serve", "--dir", "/nonexistent/rollouts"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        text(&o.stderr),
        "rollgate: --dir /nonexistent/rollouts: not a directory\n"
    );
    let o = rollgate(&["help"]);
    assert_eq!(o.status.code(), Some(0));
    for cmd in ["serve", "promote", "abort", "retry", "status"] {
        assert!(
            text(&o.stdout).contains(&format!("\n  {cmd} ")),
            "help lists {cmd}"
        );
    }
    // Every command answers --help with its usage (exit 0).
    for (cmd, usage) in [
        ("serve", "--dir <DIR>"),
        ("promote", "Usage: rollgate promote [OPTIONS] <NAME>"),
        ("abort", "Usage: rollgate abort [OPTIONS] <NAME>"),
        ("retry", "Usage: rollgate retry [OPTIONS] <NAME>"),
        ("status", "Usage: rollgate status [OPTIONS] [NAME]"),
    ] {
        let o = rollgate(&[cmd, "--help"]);
        assert_eq!(o.status.code(), Some(0), "{cmd} --help");
        assert!(
            text(&o.stdout).contains(usage),
            "{cmd} --help: {}",
            text(&o.stdout)
        );
    }
}

#[test]
fn serve_runs_as_a_process() {
    let (dir, listen, mut child) = spawn_serve("process", None);
    let url = format!("http://{listen}");
    let o = rollgate(&["promote", "flask", "--server", &url]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let log = text(&out.stderr);
    assert!(
        log.contains("INFO rollgate::serve: flask.yaml: loaded rollout flask (6 steps)"),
        "{log}"
    );
    // Lines about a rollout carry it, its step and its policy version as fields.
    assert!(
        log.lines()
            .any(|l| l.contains("promoted past Paused, step 2/6")
                && l.ends_with(" rollout=\"flask\" step=3 version=2")),
        "{log}"
    );
    assert!(
        log.contains(&format!("serving {} on http://{listen}", dir.0.display())),
        "{log}"
    );
}

#[test]
fn serve_logs_follow_rust_log() {
    let (_dir, listen, mut child) = spawn_serve("rustlog", Some("warn"));
    let o = rollgate(&["promote", "flask", "--server", &format!("http://{listen}")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    child.kill().unwrap();
    let log = text(&child.wait_with_output().unwrap().stderr);
    assert!(
        !log.contains("loaded rollout") && !log.contains("promoted"),
        "{log}"
    );
}

/// `rollgate serve --dir` on the seed, as a process, answering on its API.
fn spawn_serve(name: &str, rust_log: Option<&str>) -> (TempDir, String, std::process::Child) {
    let dir = TempDir::new(name);
    dir.write("flask.yaml", SEED);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rollgate"));
    cmd.args([
        "serve",
        "--dir",
        dir.0.to_str().unwrap(),
        "--listen",
        &listen,
    ])
    .env_remove("RUST_LOG")
    .stderr(Stdio::piped());
    if let Some(filter) = rust_log {
        cmd.env("RUST_LOG", filter);
    }
    let child = cmd.spawn().unwrap();
    let url = format!("http://{listen}");
    wait_until("the sidecar to listen", Duration::from_secs(10), || {
        rollgate::rollout::client::request(
            "GET",
            &format!("{url}/healthz"),
            None,
            Duration::from_secs(1),
        )
        .is_ok_and(|r| r.status == 200)
    });
    (dir, listen, child)
}
