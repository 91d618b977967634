//! The sidecar's HTTP server against strangers and hostile input, on a real
//! `rollgate serve --dir` process: who may command, browsers refused, versions a client
//! cannot move, heads that never end, connection floods, slow clients.

mod rollout_support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rollout_support::{wait_until, TempDir, SEED};

const TOKEN: &str = "test-token-0123456789abcdef";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `rollgate serve --dir` process, killed on drop; its standard error goes to a file.
struct Serve {
    child: Child,
    port: u16,
    stderr: PathBuf,
}

impl Serve {
    /// Starts `serve` on a free loopback port (through `sh -c` so `shell` can set limits
    /// first) with `env`, and waits for `/healthz`.
    fn start(dir: &TempDir, shell: &str, env: &[(&str, &str)], extra: &[&str]) -> Serve {
        let port = free_port();
        let stderr = dir.path("serve.stderr");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("{shell} exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_rollgate"))
            .args(["serve", "--dir"])
            .arg(dir.path("rollouts"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env_remove("ROLLGATE_TOKEN")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let child = cmd.spawn().unwrap();
        let s = Serve {
            child,
            port,
            stderr,
        };
        wait_until("serve to answer /healthz", Duration::from_secs(20), || {
            raw(port, "GET /healthz HTTP/1.1\r\nconnection: close\r\n\r\n")
                .is_ok_and(|(status, _)| status == 200)
        });
        s
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Resident memory in KiB, from `/proc/PID/status`.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn phase(&self) -> String {
        let (status, body) = raw(
            self.port,
            "GET /v1/rollouts/flask HTTP/1.1\r\nconnection: close\r\n\r\n",
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        format!(
            "{} {} v{}",
            v["status"]["phase"].as_str().unwrap(),
            v["status"]["currentStep"],
            v["status"]["policyVersion"]
        )
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory with the seed Rollout in `rollouts/`.
fn seeded(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    std::fs::create_dir_all(dir.path("rollouts")).unwrap();
    std::fs::write(dir.path("rollouts").join("flask.yaml"), SEED).unwrap();
    dir
}

/// Sends `request` as is on a new connection and reads the answer until the server closes:
/// (status, body).
fn raw(port: u16, request: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(request.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    parse_answer(&out)
}

fn parse_answer(out: &[u8]) -> std::io::Result<(u16, String)> {
    let t = text(out);
    let status = t
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {t:?}")))?;
    let body = t.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_string()))
}

fn post(port: u16, path: &str, headers: &str, body: &str) -> (u16, String) {
    raw(
        port,
        &format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .unwrap()
}

fn rollgate(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(args)
        .env_remove("ROLLGATE_SERVER")
        .env_remove("ROLLGATE_TOKEN")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn a_web_page_or_a_stranger_cannot_drive_a_release() {
    let dir = seeded("sec-token");
    let s = Serve::start(&dir, "", &[("ROLLGATE_TOKEN", TOKEN)], &[]);
    let before = s.phase();
    assert_eq!(before, "Paused 1 v1");
    let abort = "/v1/rollouts/flask/abort";
    let bearer = format!("authorization: Bearer {TOKEN}\r\n");
    // The issue's reproduction: a form post from a web page (before: 200, aborted).
    let (status, body) = post(
        s.port,
        abort,
        "origin: http://evil.example\r\ncontent-type: application/x-www-form-urlencoded\r\n",
        "x=1",
    );
    assert_eq!(status, 403, "{body}");
    // Not even with the token: a browser sends cookies, never our token, but refuse anyway.
    let (status, _) = post(
        s.port,
        abort,
        &format!("{bearer}origin: http://evil.example\r\n"),
        "",
    );
    assert_eq!(status, 403);
    let (status, _) = post(
        s.port,
        abort,
        &format!("{bearer}sec-fetch-site: cross-site\r\n"),
        "",
    );
    assert_eq!(status, 403);
    for ct in [
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
    ] {
        let (status, body) = post(
            s.port,
            abort,
            &format!("{bearer}content-type: {ct}\r\n"),
            "x=1",
        );
        assert_eq!(status, 415, "{ct}: {body}");
    }
    let (status, body) = post(s.port, abort, "", "");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("bearer token"), "{body}");
    let (status, _) = post(
        s.port,
        abort,
        "authorization: Bearer test-token-0123456789abcdeX\r\n",
        "",
    );
    assert_eq!(status, 401);
    assert_eq!(s.phase(), before, "nothing above acted");
    // Reads stay open (gateways poll without credentials).
    let (status, _) = raw(
        s.port,
        "GET /v1/policies/flask HTTP/1.1\r\nconnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(status, 200);
    // The CLI sends the token from $ROLLGATE_TOKEN or --token-file.
    let o = rollgate(&["promote", "flask", "--server", &s.url()], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    assert!(
        text(&o.stderr).contains("bearer token"),
        "{}",
        text(&o.stderr)
    );
    let o = rollgate(
        &["promote", "flask", "--server", &s.url()],
        &[("ROLLGATE_TOKEN", TOKEN)],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(s.phase(), "Paused 3 v2");
    let file = dir.path("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let o = rollgate(
        &[
            "abort",
            "flask",
            "--server",
            &s.url(),
            "--token-file",
            &file.to_string_lossy(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(s.phase(), "Aborted 3 v3");
    assert!(!s.stderr().contains(TOKEN), "the token is never logged");
}

#[test]
fn a_token_file_other_users_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = seeded("sec-token-mode");
    let file = dir.path("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let flag = ["--token-file", &file.to_string_lossy()].map(String::from);
    let flag: Vec<&str> = flag.iter().map(String::as_str).collect();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let s = Serve::start(&dir, "", &[], &flag);
    let err = s.stderr();
    assert!(err.contains("readable by other users (mode 0644)"), "{err}");
    assert!(!err.contains(TOKEN), "{err}");
    drop(s);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s = Serve::start(&dir, "", &[], &flag);
    assert!(
        !s.stderr().contains("readable by other users"),
        "{}",
        s.stderr()
    );
}

#[test]
fn without_a_token_browsers_are_still_refused_on_loopback() {
    let dir = seeded("sec-notoken");
    let s = Serve::start(&dir, "", &[], &[]);
    let (status, _) = post(
        s.port,
        "/v1/rollouts/flask/abort",
        "origin: http://evil.example\r\ncontent-type: application/x-www-form-urlencoded\r\n",
        "x=1",
    );
    assert_eq!(status, 403);
    assert_eq!(s.phase(), "Paused 1 v1");
}

#[test]
fn serve_refuses_a_non_loopback_address_without_a_token() {
    let dir = seeded("sec-listen");
    let o = rollgate(
        &[
            "serve",
            "--dir",
            &dir.path("rollouts").to_string_lossy(),
            "--listen",
            "0.0.0.0:0",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(
        err.contains("not a loopback address, and no token"),
        "{err}"
    );
    let o = rollgate(
        &[
            "serve",
            "--dir",
            &dir.path("rollouts").to_string_lossy(),
            "--listen",
            "0.0.0.0:0",
        ],
        &[("ROLLGATE_TOKEN", "short")],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("at least 16 characters"),
        "{}",
        text(&o.stderr)
    );
    assert!(!text(&o.stderr).contains("short"), "{}", text(&o.stderr));
}

#[test]
fn a_client_cannot_move_the_served_version() {
    let dir = seeded("sec-version");
    let s = Serve::start(&dir, "", &[("ROLLGATE_TOKEN", TOKEN)], &[]);
    let poll = |version: &str| {
        let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        c.write_all(
            format!(
                "GET /v1/policies/flask?version={version}&wait=0s HTTP/1.1\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).unwrap();
        let t = text(&out);
        let served = t
            .lines()
            .find_map(|l| l.strip_prefix("x-rollgate-version: "))
            .unwrap_or("")
            .trim()
            .to_string();
        (parse_answer(&out).unwrap().0, served)
    };
    // The issue's reproduction (before: 200 as v18446744073709551615, saved; the next
    // promote wrapped to v0 and a gateway holding the top version got 304 forever).
    let (status, _) = poll("18446744073709551614");
    assert!(status == 304 || status == 200, "{status}");
    assert_eq!(s.phase(), "Paused 1 v1");
    let (status, _) = poll("18446744073709551615");
    assert!(status == 304 || status == 200, "{status}");
    assert_eq!(s.phase(), "Paused 1 v1");
    let status_file =
        std::fs::read_to_string(dir.path("rollouts").join("flask.status.json")).unwrap_or_default();
    assert!(
        !status_file.contains("18446744073709551615"),
        "{status_file}"
    );
    let (status, _) = post(
        s.port,
        "/v1/rollouts/flask/promote",
        &format!("authorization: Bearer {TOKEN}\r\n"),
        "",
    );
    assert_eq!(status, 200);
    assert_eq!(s.phase(), "Paused 3 v2");
    assert_eq!(poll("1"), (200, "2".to_string()), "a gateway at v1 gets v2");
    assert_eq!(poll("2"), (304, "2".to_string()));
    // A gateway ahead by a few versions (this sidecar lost its status) still renumbers.
    assert_eq!(poll("17"), (200, "18".to_string()));
    assert_eq!(s.phase(), "Paused 3 v18");
}

#[test]
fn a_head_that_never_ends_is_cut_at_16_kib() {
    let dir = seeded("sec-head");
    let s = Serve::start(&dir, "", &[], &[]);
    let before = s.rss_kib();
    let stream = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = stream.try_clone().unwrap();
    let answer = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = reader.read_to_end(&mut out);
        out
    });
    // The issue's reproduction: a 300 MB request line without a newline (before: the
    // server kept reading it all, RSS ~20 MB -> ~327 MB).
    let mut w = &stream;
    let chunk = vec![b'a'; 1 << 20];
    let mut sent = 0usize;
    let mut peak = before;
    let _ = w.write_all(b"GET /");
    while sent < 300 << 20 {
        if w.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
        if sent.is_multiple_of(16 << 20) {
            peak = peak.max(s.rss_kib());
        }
    }
    let out = answer.join().unwrap();
    peak = peak.max(s.rss_kib());
    println!(
        "sent {} MiB before the server cut the line; RSS {before} KiB -> peak {peak} KiB",
        sent >> 20
    );
    assert!(
        sent < 64 << 20,
        "the server read {} MiB of one line",
        sent >> 20
    );
    assert!(
        peak < before + 32 * 1024,
        "RSS grew from {before} KiB to {peak} KiB"
    );
    if !out.is_empty() {
        let (status, body) = parse_answer(&out).unwrap();
        assert_eq!(status, 431, "{body}");
    }
    let (status, _) = raw(s.port, "GET /healthz HTTP/1.1\r\nconnection: close\r\n\r\n").unwrap();
    assert_eq!(status, 200);
}

#[test]
fn connections_are_capped_with_a_clean_503() {
    let dir = seeded("sec-conns");
    // The issue's setting: `ulimit -n 1024` (before: ~340 idle connections exhausted the
    // descriptors; /healthz, /v1/rollouts and promote were reset; "Too many open files").
    let s = Serve::start(&dir, "ulimit -n 1024 &&", &[], &[]);
    let mut held = Vec::new();
    for _ in 0..400 {
        held.push(TcpStream::connect(("127.0.0.1", s.port)).unwrap());
    }
    std::thread::sleep(Duration::from_millis(1500));
    let (mut refused, mut open) = (0, Vec::new());
    for c in held {
        c.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        match (&c).read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => open.push(c),
            Ok(n) => {
                let (status, body) = parse_answer(&buf[..n]).unwrap();
                assert_eq!(status, 503, "{body}");
                assert!(text(&buf[..n])
                    .to_ascii_lowercase()
                    .contains("retry-after: 1"));
                refused += 1;
            }
            Err(e) => panic!("connection failed instead of a 503: {e}"),
        }
    }
    println!("{} connections held, {refused} answered 503", open.len());
    assert_eq!(open.len() + refused, 400);
    assert!(
        open.len() <= 256 && open.len() >= 240,
        "{} held",
        open.len()
    );
    // Full: a fresh connection is told so, not reset.
    let (status, _) = raw(s.port, "GET /healthz HTTP/1.1\r\nconnection: close\r\n\r\n").unwrap();
    assert_eq!(status, 503);
    // Some clients leave: the server answers again.
    open.truncate(open.len() - 10);
    wait_until("/healthz to answer 200", Duration::from_secs(10), || {
        raw(s.port, "GET /healthz HTTP/1.1\r\nconnection: close\r\n\r\n")
            .is_ok_and(|(status, _)| status == 200)
    });
    let (status, body) = raw(
        s.port,
        "GET /v1/rollouts HTTP/1.1\r\nconnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, metrics) =
        raw(s.port, "GET /metrics HTTP/1.1\r\nconnection: close\r\n\r\n").unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("rollgate_http_refused_connections_total"),
        "{metrics}"
    );
    drop(open);
    let err = s.stderr();
    assert!(!err.contains("Too many open files"), "{err}");
}

/// An in-process sidecar with short timeouts (the defaults are 10 s and 60 s).
fn quick_sidecar(dir: &TempDir) -> rollgate::serve::Server {
    let mut config = rollgate::serve::Config::new(dir.path("rollouts"));
    config.listen = "127.0.0.1:0".into();
    config.log = Some(std::sync::Arc::new(|_: &str| {}));
    config.limits.head_timeout = Duration::from_millis(600);
    config.limits.idle_timeout = Duration::from_millis(1200);
    rollgate::serve::start(config).unwrap()
}

#[test]
fn slow_heads_get_408_and_idle_connections_are_closed() {
    let dir = seeded("sec-timeouts");
    let server = quick_sidecar(&dir);
    let port = server.addr().port();
    // A head that stops halfway.
    let start = Instant::now();
    let (status, body) = raw(port, "GET /healthz HTTP/1.1\r\nhost: x\r\n").unwrap();
    let took = start.elapsed();
    assert_eq!(status, 408, "{body}");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(8),
        "{took:?}"
    );
    // A head dribbled one byte at a time: the limit is for the whole head, not per read.
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = Instant::now();
    for b in b"GET /healthz HTTP/1.1\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
        if c.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if start.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    assert_eq!(parse_answer(&out).unwrap().0, 408, "{}", text(&out));
    // A kept-alive connection left idle is closed.
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    let n = c.read(&mut buf).unwrap();
    assert!(text(&buf[..n]).starts_with("HTTP/1.1 200"));
    let start = Instant::now();
    let n = c.read(&mut buf).unwrap();
    assert_eq!(n, 0, "closed without an answer");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_secs(8),
        "{took:?}"
    );
}

#[test]
fn a_promote_names_its_step_and_a_retry_cannot_skip_a_pause() {
    let dir = seeded("sec-idem");
    let s = Serve::start(&dir, "", &[("ROLLGATE_TOKEN", TOKEN)], &[]);
    let env = [("ROLLGATE_TOKEN", TOKEN)];
    let o = rollgate(
        &["promote", "flask", "--from-step", "2", "--server", &s.url()],
        &env,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(s.phase(), "Paused 3 v2");
    // The same command again (a retry after a timeout): refused, the pause at step 4 holds.
    let o = rollgate(
        &["promote", "flask", "--from-step", "2", "--server", &s.url()],
        &env,
    );
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("flask is Paused at step 4/6 (attempt 1), not at step 2: not applied"),
        "{err}"
    );
    assert_eq!(s.phase(), "Paused 3 v2");
    let (status, body) = post(
        s.port,
        "/v1/rollouts/flask/promote",
        &format!("authorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\n"),
        r#"{"expect": {"step": 2}}"#,
    );
    assert_eq!(status, 409, "{body}");
    let (status, body) = post(
        s.port,
        "/v1/rollouts/flask/promote",
        &format!("authorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\n"),
        r#"{"expect": {"stepp": 2}}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(s.phase(), "Paused 3 v2");
    // Without --from-step the CLI names the step it reads first.
    let o = rollgate(&["promote", "flask", "--server", &s.url()], &env);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(s.phase(), "Paused 5 v3");
}

#[test]
fn unreachable_and_unanswered_commands_exit_differently() {
    // Nothing listens: the command was never sent.
    let port = free_port();
    let o = rollgate(
        &[
            "promote",
            "flask",
            "--from-step",
            "2",
            "--server",
            &format!("http://127.0.0.1:{port}"),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("cannot reach rollgate"),
        "{}",
        text(&o.stderr)
    );
    // A server that takes the request and never answers (before: "cannot reach rollgate",
    // although the promote may have been applied).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut keep = Vec::new();
        for c in listener.incoming().flatten() {
            keep.push(c);
        }
    });
    let start = Instant::now();
    let o = rollgate(
        &[
            "promote",
            "flask",
            "--from-step",
            "2",
            "--timeout",
            "1s",
            "--server",
            &format!("http://127.0.0.1:{port}"),
        ],
        &[],
    );
    let took = start.elapsed();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("unknown whether it was applied"), "{err}");
    assert!(
        err.contains("rollgate promote flask --from-step 2"),
        "{err}"
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
}

/// The committed test certificates (see rollout_support/tls/README.md).
fn tls_file(name: &str) -> String {
    format!(
        "{}/tests/rollout_support/tls/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn tls_with_a_trusted_ca_and_nothing_in_clear() {
    let dir = seeded("sec-tls");
    let port = free_port();
    let stderr = dir.path("serve.stderr");
    let child = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(["serve", "--dir"])
        .arg(dir.path("rollouts"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--tls-cert",
            &tls_file("cert.pem"),
            "--tls-key",
            &tls_file("key.pem"),
        ])
        .env("ROLLGATE_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let s = Serve {
        child,
        port,
        stderr,
    };
    let https = format!("https://127.0.0.1:{port}");
    let ca = tls_file("ca.pem");
    let env = [("ROLLGATE_TOKEN", TOKEN)];
    wait_until("serve to answer over TLS", Duration::from_secs(20), || {
        rollgate(&["status", "flask", "--server", &https, "--ca", &ca], &env)
            .status
            .code()
            == Some(0)
    });
    let o = rollgate(&["status", "flask", "--server", &https, "--ca", &ca], &env);
    assert!(
        text(&o.stdout).starts_with("flask: Paused, step 2/6"),
        "{}",
        text(&o.stdout)
    );
    let o = rollgate(
        &[
            "promote",
            "flask",
            "--server",
            &format!("https://localhost:{port}"),
        ],
        &[("ROLLGATE_TOKEN", TOKEN), ("ROLLGATE_CA", ca.as_str())],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("step 4/6"), "{}", text(&o.stdout));
    // A server certificate the client's CA did not sign: refused before anything is sent.
    let o = rollgate(
        &[
            "abort",
            "flask",
            "--server",
            &https,
            "--ca",
            &tls_file("other-ca.pem"),
        ],
        &env,
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("cannot reach rollgate"),
        "{}",
        text(&o.stderr)
    );
    assert!(
        text(&o.stderr).to_ascii_lowercase().contains("certificate"),
        "{}",
        text(&o.stderr)
    );
    // https without a CA to trust is a usage error, not a silent plain-text fallback.
    let o = rollgate(&["abort", "flask", "--server", &https], &env);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("--ca"), "{}", text(&o.stderr));
    // Plain HTTP to the TLS port gets no answer from the API.
    let plain = raw(
        port,
        "GET /v1/rollouts/flask HTTP/1.1\r\nconnection: close\r\n\r\n",
    );
    assert!(!matches!(plain, Ok((200, _))), "{plain:?}");
    // Promoted once, never aborted.
    let o = rollgate(&["status", "flask", "--server", &https, "--ca", &ca], &env);
    assert!(
        text(&o.stdout).starts_with("flask: Paused, step 4/6"),
        "{}",
        text(&o.stdout)
    );
    // A key that is not a key: refused at start, its content not echoed.
    let o = rollgate(
        &[
            "serve",
            "--dir",
            &dir.path("rollouts").to_string_lossy(),
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &tls_file("cert.pem"),
            "--tls-key",
            &tls_file("README.md"),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("--tls-key"), "{}", text(&o.stderr));
    assert!(!text(&o.stderr).contains("openssl"), "{}", text(&o.stderr));
    assert!(
        s.stderr().contains("on https://127.0.0.1:"),
        "{}",
        s.stderr()
    );
}
