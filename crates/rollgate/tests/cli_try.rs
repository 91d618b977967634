//! `rollgate try` as a user runs it: JSON out, per-line errors, exit codes.

#[path = "../../wasmhost/tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn rollgate(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(args)
        .env("ROLLGATE_WASM", common::filter_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn policy_path() -> String {
    common::workspace_root()
        .join("examples/policy.json")
        .display()
        .to_string()
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn one_request_from_flags() {
    let policy = policy_path();
    let out = rollgate(
        &[
            "try",
            "--policy",
            &policy,
            "--authority",
            "pro.coding",
            "--path",
            "/a?b=1",
            "-H",
            "Location: shenzhen",
            "--source",
            "10.9.8.7:6543",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    let v = &lines[0];
    assert_eq!(v["variant"], "canary");
    assert_eq!(v["cluster"], "k8s-flask-canary");
    assert_eq!(v["local_response"], Value::Null);
    assert_eq!(v["request_headers"]["location"], "shenzhen");
    assert_eq!(v["request_headers"][":path"], "/a?b=1");
    assert_eq!(v["request_headers"]["x-rollgate-variant"], "canary");
    assert_eq!(v["response"]["status"], 200);
}

#[test]
fn request_lines_answer_in_order_and_bad_lines_name_their_number() {
    let policy = policy_path();
    let input = [
        r#"{"authority":"dev.coding","path":"/"}"#,
        "not json",
        r#"{"authority":"pro.coding","headers":{"x-user-id":"u1","cookie":["a=1","b=2"]},"source":"10.0.0.1:1234","method":"POST"}"#,
        "",
        r#"{"authorty":"typo"}"#,
        r#"{"authority":"pro.coding","headers":{"location":"shenzhen"}}"#,
    ]
    .join("\n");
    let out = rollgate(
        &[
            "try",
            "--policy",
            &policy,
            "--requests",
            "-",
            "--workers",
            "2",
        ],
        &input,
    );
    assert_eq!(out.status.code(), Some(1), "some lines failed");
    let lines = json_lines(&out);
    let numbers: Vec<u64> = lines.iter().map(|v| v["line"].as_u64().unwrap()).collect();
    assert_eq!(
        numbers,
        vec![1, 2, 3, 5, 6],
        "blank line skipped, the rest in order"
    );
    assert_eq!(lines[0]["variant"], "dev");
    let e2 = lines[1]["error"].as_str().unwrap();
    assert!(e2.starts_with("line 2: "), "{e2}");
    assert_eq!(
        lines[2]["request_headers"]["cookie"],
        serde_json::json!(["a=1", "b=2"])
    );
    assert_eq!(lines[2]["request_headers"][":method"], "POST");
    assert!(lines[2]["variant"] == "canary" || lines[2]["variant"] == "stable");
    let e5 = lines[3]["error"].as_str().unwrap();
    assert!(
        e5.starts_with("line 5: ") && e5.contains("authorty"),
        "{e5}"
    );
    assert_eq!(lines[4]["variant"], "canary");
    // Two workers, round-robin over the requests that ran.
    let workers: Vec<u64> = [0, 2, 4]
        .iter()
        .map(|&i| lines[i]["worker"].as_u64().unwrap())
        .collect();
    assert_eq!(workers, vec![0, 1, 0]);
}

#[test]
fn a_rejected_policy_prints_the_filters_reasons() {
    let bad = std::fs::read_to_string(policy_path())
        .unwrap()
        .replace(r#""weight": 50"#, r#""weight": 150"#);
    let out = rollgate(&["try", "--policy", "-", "--authority", "x"], &bad);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("routes[2].split[0].weight: must be between 0 and 100, got 150"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn usage_and_missing_files_exit_2() {
    let out = rollgate(&["try", "--authority", "x"], "");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("required arguments were not provided")
            && err.contains("--policy <POLICY.json>"),
        "{err}"
    );
    let policy = policy_path();
    let out = rollgate(
        &["try", "--policy", &policy, "--wasm", "/nonexistent/f.wasm"],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading /nonexistent/f.wasm"));
    let out = rollgate(&["try", "--policy", "/nonexistent/p.json"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading /nonexistent/p.json"));
}

#[test]
fn long_rules_run_and_deep_ones_are_refused_inside_the_filter() {
    let policy = |rule: &str| {
        format!(
            r#"{{"name":"f","variants":{{"a":"ca","b":"cb"}},"default":"b","routes":[{{"match":"{rule}","variant":"a"}}]}}"#
        )
    };
    // Envoy applied a 3,000-term `||` rule while `try` trapped on it (the filter's recursion
    // overran wasmtime's stack); the chain is now one flat list.
    let mut terms: Vec<String> = (0..3000).map(|i| format!("Host(`h{i}`)")).collect();
    terms.push("Host(`last`)".into());
    let chain = policy(&terms.join(" || "));
    let out = rollgate(&["try", "--policy", "-", "--authority", "last"], &chain);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json_lines(&out)[0]["variant"], "a");
    // 8,000 parentheses trapped every Envoy worker; the filter now refuses them at configure.
    let deep = policy(&format!(
        "{}Host(`a`){}",
        "(".repeat(8000),
        ")".repeat(8000)
    ));
    let out = rollgate(&["try", "--policy", "-", "--authority", "a"], &deep);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("routes[0].match: column 33: nesting deeper than 32"),
        "{stderr}"
    );
}

/// `rollgate try --help` was refused as an unknown argument (exit 2) before the command line
/// moved to clap; now it prints the options with their defaults and the request-line format.
#[test]
fn help_and_completions() {
    let out = rollgate(&["try", "--help"], "");
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for part in [
        "--policy <POLICY.json>",
        "--failure-policy",
        "[default: 1s]",
        "--requests reads one JSON request per line",
    ] {
        assert!(help.contains(part), "{part}: {help}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let out = rollgate(&["completions", shell], "");
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        for word in ["promote", "from-step", "failure-policy", "kubernetes"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let out = rollgate(&["completions", "tcsh"], "");
    assert_eq!(out.status.code(), Some(2));
}

/// `try` on a filter that is not rollgate's (the ABI probe): header pairs keep the client's
/// order and repeats, body chunks run the body callbacks and print as the filter left them,
/// the upstream's answer comes from the line, `--property` sets what other filters would, and
/// the plugin's log lines print from `--log-level` up (Envoy's default, info, hides debug).
#[test]
fn any_filter_with_bodies_answers_properties_and_logs() {
    let probe = common::probe_path().to_string_lossy().into_owned();
    // The second line sets a property for itself, as a filter before this one would.
    let line = r#"{"authority":"p.test","method":"POST","headers":[["x-b","1"],["x-a","2"],["x-b","3"],["x-probe-op","seen,warn,props,body"]],"body":["ab","cd"],"response":{"status":201,"headers":[["x-up","1"]],"body":"made"}}
{"authority":"p.test","headers":[["x-probe-op","props"]],"properties":{"xds.cluster_name":"cart"}}"#;
    let dir = std::env::temp_dir().join(format!("rollgate-try-any-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (config, requests) = (dir.join("config"), dir.join("requests.jsonl"));
    std::fs::write(&config, "").unwrap();
    std::fs::write(&requests, line).unwrap();
    let (config, requests) = (config.to_string_lossy(), requests.to_string_lossy());
    let run = |level: &str| {
        let out = rollgate(
            &[
                "try",
                "--wasm",
                &probe,
                "--policy",
                &config,
                "--requests",
                &requests,
                "--property",
                "xds.cluster_name=shop",
                "--log-level",
                level,
            ],
            "",
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        json_lines(&out)
    };
    let lines = run("info");
    let v = lines[0].clone();
    assert_eq!(
        lines[1]["request_headers"]["x-probe-custom"], "cart",
        "{}",
        lines[1]
    );
    let header = |name: &str| {
        v["request_headers"][name]
            .as_str()
            .unwrap_or_else(|| panic!("no {name} in {v}"))
            .to_string()
    };
    assert!(header("x-probe-seen").contains("x-b=1 x-a=2 x-b=3"), "{v}");
    assert_eq!(header("x-probe-custom"), "shop");
    assert_eq!(v["request_body"], "ABCD");
    assert_eq!(v["response"]["status"], 201);
    assert_eq!(v["response"]["body"], "made");
    let logs = v["logs"].to_string();
    assert!(logs.contains(r#"["warning","probe: a warning"]"#), "{logs}");
    assert!(!logs.contains("a debug line"), "{logs}");
    let v = run("debug").remove(0);
    assert!(
        v["logs"]
            .to_string()
            .contains(r#"["debug","probe: a debug line"]"#),
        "{v}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--cluster NAME=URL` also serves the filter's gRPC calls and streams to NAME: here URL
/// refuses, and the filter gets Envoy's 14 UNAVAILABLE (the answered cases are compared with
/// Envoy in try_grpc_like_envoy.rs and try_grpc_stream_like_envoy.rs).
#[test]
fn a_grpc_call_to_a_cluster_url_reaches_the_filter() {
    let probe = common::probe_path().to_string_lossy().into_owned();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = std::env::temp_dir().join(format!("rollgate-try-grpc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (config, requests) = (dir.join("config"), dir.join("requests.jsonl"));
    std::fs::write(&config, "").unwrap();
    std::fs::write(
        &requests,
        "{\"authority\":\"p.test\",\"headers\":[[\"x-probe-op\",\"grpc\"]]}\n\
         {\"authority\":\"p.test\",\"headers\":[[\"x-probe-op\",\"grpc-stream\"]]}\n",
    )
    .unwrap();
    let out = rollgate(
        &[
            "try",
            "--wasm",
            &probe,
            "--policy",
            &config.to_string_lossy(),
            "--requests",
            &requests.to_string_lossy(),
            "--cluster",
            &format!("grpc=http://127.0.0.1:{dead}"),
        ],
        "",
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_lines(&out).remove(0);
    assert_eq!(
        v["request_headers"]["x-probe-grpc-answer"], "5:14:0:none",
        "{v}"
    );
    assert!(
        v["request_headers"]["x-probe-grpc-status"]
            .as_str()
            .unwrap_or_default()
            .starts_with("14:upstream connect error or disconnect/reset before headers"),
        "{v}"
    );
    let v = json_lines(&out).remove(1);
    let stream = v["request_headers"]["x-probe-grpc-stream"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        stream.starts_with("open 6 | sent Ok Ok close Ok | initial 6 0 [] | trailing 6 4 [")
            && stream.contains("| close 6 14 status 14:upstream connect error"),
        "{v}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tcp_mode_answers_each_connection_admitted_or_refused() {
    let dir = std::env::temp_dir().join(format!("rollgate-try-tcp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("mysql.json");
    std::fs::write(
        &policy,
        r#"{"name":"mysql","tcp":{"allow":["10.0.0.0/8"],"in_flight":{"per_source":2},
            "rate":{"average":10,"period":"1s","burst":4}}}"#,
    )
    .unwrap();
    let events = [
        r#"{"open": "10.0.0.1:5000"}"#,
        r#"{"open": "10.0.0.1:5001"}"#,
        r#"{"open": "10.0.0.1:5002"}"#,
        r#"{"close": 1}"#,
        r#"{"open": "10.0.0.1:5003", "worker": 1}"#,
        r#"{"open": "192.168.0.1:5000"}"#,
        r#"{"open": "10.0.0.2:5000"}"#,
        r#"{"open": "10.0.0.2:5001"}"#,
        r#"{"open": "10.0.0.2:5002"}"#,
        r#"{"close": 3}"#,
        r#"{"advance": "1s"}"#,
        r#"{"open": "10.0.0.2:5003"}"#,
        r#"{"open": "10.0.0.2", "close": 2}"#,
    ]
    .join("\n");
    let out = rollgate(
        &[
            "try",
            "--tcp",
            "--workers",
            "2",
            "--policy",
            &policy.display().to_string(),
            "--requests",
            "-",
        ],
        &events,
    );
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.status.code(), Some(1), "bad lines make the exit 1");
    let lines = json_lines(&out);
    let admitted: Vec<Value> = lines.iter().map(|l| l["admitted"].clone()).collect();
    let t = Value::Bool(true);
    let f = Value::Bool(false);
    let n = Value::Null;
    assert_eq!(
        admitted,
        [
            // in_flight 2 per source: the third is refused, a close lets the next in
            &t, &t, &f, &n, &t, //
            // allow: 192.168/16 is not listed
            &f, //
            // rate, burst 4 per source: 10.0.0.1 took 3, so 10.0.0.2's bucket is its own
            &t, &t, &f, // in_flight again
            // 10.0.0.2 still holds two: time does not release them
            &n, &n, &f, &n,
        ]
        .map(Clone::clone)
    );
    assert_eq!(lines[2]["closed_by"], "filter");
    assert_eq!(lines[4]["worker"], 1);
    assert_eq!(lines[5]["closed_by"], "filter");
    assert_eq!(lines[3]["event"], "close");
    assert_eq!(lines[3]["connection"], 1);
    assert_eq!(
        lines[9]["error"], "line 10: no open connection 3",
        "a refused connection is closed already"
    );
    assert_eq!(lines[10]["elapsed_ms"], 1000);
    assert!(lines[12]["error"].as_str().unwrap().contains("exactly one"));
}

#[test]
fn tcp_mode_rate_refuses_past_the_burst() {
    let dir = std::env::temp_dir().join(format!("rollgate-try-rate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("rate.json");
    std::fs::write(
        &policy,
        r#"{"name":"db","tcp":{"rate":{"average":1,"period":"1s","burst":2}}}"#,
    )
    .unwrap();
    let mut events = vec![];
    for i in 0..3 {
        events.push(format!(r#"{{"open": "10.0.0.1:{}"}}"#, 6000 + i));
        events.push(format!(r#"{{"close": {}}}"#, i + 1));
    }
    events.push(r#"{"advance": "1s"}"#.into());
    events.push(r#"{"open": "10.0.0.1:7000"}"#.into());
    let out = rollgate(
        &[
            "try",
            "--tcp",
            "--policy",
            &policy.display().to_string(),
            "--requests",
            "-",
        ],
        &events.join("\n"),
    );
    std::fs::remove_dir_all(&dir).ok();
    let lines = json_lines(&out);
    let opens: Vec<bool> = lines
        .iter()
        .filter(|l| l["event"] == "open")
        .map(|l| l["admitted"] == true)
        .collect();
    // Closing does not give a token back; a second does.
    assert_eq!(opens, [true, true, false, true]);
    // The refused third cannot be closed: it is closed already.
    assert!(lines[5]["error"]
        .as_str()
        .unwrap()
        .contains("no open connection 3"));
    assert_eq!(out.status.code(), Some(1));
}

const MIRROR_POLICY: &str = r#"{"name":"flask","variants":{"stable":"k8s-flask","canary":"k8s-flask-canary"},
 "default":"stable","routes":[{"match":"Host(`pro.coding`)","variant":"stable",
 "mirror":{"variant":"canary","percent":100,"host_suffix":"-copy"}}]}"#;

const MIRROR_REQUESTS: &str = r#"{"authority":"pro.coding:8080","method":"POST","path":"/a?b=1","headers":{"x-user-id":"alice"},"body":["hello ","world"]}
{"authority":"other.coding","path":"/"}"#;

fn mirror_try(extra: &[&str]) -> Vec<Value> {
    let dir = std::env::temp_dir().join(format!(
        "rollgate-try-mirror-{}-{}",
        std::process::id(),
        extra.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("mirror.json");
    std::fs::write(&policy, MIRROR_POLICY).unwrap();
    let policy = policy.display().to_string();
    let mut args = vec!["try", "--policy", &policy, "--requests", "-"];
    args.extend_from_slice(extra);
    let out = rollgate(&args, MIRROR_REQUESTS);
    std::fs::remove_dir_all(&dir).ok();
    assert!(out.status.success(), "{out:?}");
    json_lines(&out)
}

#[test]
fn a_mirrored_request_shows_its_copy_refused_without_the_cluster() {
    let lines = mirror_try(&[]);
    let copy = &lines[0]["mirror"];
    assert_eq!(copy["cluster"], "k8s-flask-canary");
    assert_eq!(copy["method"], "POST");
    assert_eq!(copy["path"], "/a?b=1");
    assert_eq!(copy["authority"], "pro.coding-copy:8080");
    assert_eq!(copy["headers"]["x-rollgate-shadow"], "1");
    assert_eq!(copy["headers"]["x-user-id"], "alice");
    assert!(copy["headers"].get("x-rollgate-variant").is_none());
    assert_eq!(copy["body_size"], 11);
    // Envoy has no such cluster: proxy_http_call answers BadArgument and nothing is sent.
    assert_eq!(copy["sent"], false);
    assert_eq!(copy["refused"], "BadArgument");
    assert_eq!(lines[0]["http_calls"].as_array().unwrap().len(), 1);
    // The client's answer does not depend on the copy.
    assert_eq!(lines[0]["response"]["status"], 200);
    assert_eq!(lines[1]["mirror"], Value::Null);
    assert_eq!(lines[1]["http_calls"], serde_json::json!([]));
}

#[test]
fn a_mirrored_request_with_the_cluster_is_sent_there() {
    use std::io::{BufRead, BufReader, Read};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut head = Vec::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            head.push(line.trim_end().to_string());
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let mut stream = stream;
        std::io::Write::write_all(
            &mut stream,
            b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
        .unwrap();
        (head, body)
    });
    let cluster = format!("k8s-flask-canary=http://127.0.0.1:{port}");
    let lines = mirror_try(&["--cluster", &cluster]);
    let copy = &lines[0]["mirror"];
    assert_eq!(copy["sent"], true);
    assert_eq!(copy["refused"], Value::Null);
    assert_eq!(copy["answer_status"], 201);
    let (head, body) = server.join().unwrap();
    assert_eq!(head[0], "POST /a?b=1 HTTP/1.1");
    assert!(
        head.iter()
            .any(|h| h.eq_ignore_ascii_case("x-rollgate-shadow: 1")),
        "{head:?}"
    );
    assert_eq!(body, b"hello world");
}

#[test]
fn tcp_mode_with_an_http_policy_reports_the_failed_vm() {
    // The root of an HTTP policy creates HTTP contexts: the SDK has no stream context for the
    // connection and panics in proxy_on_new_connection. The line says so; the exit is 1.
    let policy = policy_path();
    let out = rollgate(
        &["try", "--tcp", "--policy", &policy, "--requests", "-"],
        "{\"open\":\"10.0.0.1:1\"}\n{\"open\":\"10.0.0.1:2\"}\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let lines = json_lines(&out);
    assert!(lines[0]["trap"]
        .as_str()
        .unwrap()
        .contains("proxy_on_new_connection"));
    assert_eq!(lines[0]["admitted"], false);
    // fail_closed: the next connection on that worker is refused without the filter.
    assert_eq!(lines[1]["closed_by"], "failed_vm");
}
