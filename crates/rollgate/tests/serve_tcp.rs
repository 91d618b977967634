//! `rollgate serve --dir` with a Rollout carrying connection limits (`spec.tcp`): its TCP
//! policy is served beside the HTTP one as `/v1/policies/<rollout>-tcp`, at the same version,
//! the same limits at every step; the HTTP policy is byte for byte what it was without them.

mod rollout_support;

use std::time::Duration;

use rollgate_policy::policy::Policy;
use rollout_support::{wait_until, Sidecar, TempDir, SEED};

const WAIT: Duration = Duration::from_secs(10);

const TCP: &str = "  tcp:\n    allow: [127.0.0.0/8]\n    inFlight: { perSource: 3 }\n";

fn with_tcp(tcp: &str) -> String {
    SEED.replacen("  strategy:\n", &format!("{tcp}  strategy:\n"), 1)
}

/// (status, version, body) of a look at policy `name` that does not wait.
fn look(s: &Sidecar, name: &str) -> (u16, u64, String) {
    let r = s.get(&format!("/v1/policies/{name}?wait=0s"));
    let v = r
        .header("x-rollgate-version")
        .map_or(0, |v| v.parse().unwrap());
    (r.status, v, r.text())
}

#[test]
fn the_tcp_policy_is_served_beside_the_http_one_at_every_step() {
    let dir = TempDir::new("tcp");
    let s = Sidecar::start(&dir.0, &[]);
    dir.write("flask.yaml", SEED);
    wait_until("flask to be served", WAIT, || look(&s, "flask").1 == 1);
    let (_, _, http_before) = look(&s, "flask");
    assert_eq!(look(&s, "flask-tcp").0, 404, "no spec.tcp, no TCP policy");

    // Limits added: a new version of both; the HTTP policy's text is the same as before.
    dir.write("flask.yaml", &with_tcp(TCP));
    wait_until("the TCP policy", WAIT, || look(&s, "flask-tcp").0 == 200);
    let (_, v, http) = look(&s, "flask");
    assert_eq!(v, 2);
    assert_eq!(http, http_before, "the HTTP policy is byte-identical");
    let (_, tv, tcp) = look(&s, "flask-tcp");
    assert_eq!(tv, 2, "served at the HTTP policy's version");
    assert_eq!(
        tcp,
        r#"{"name":"flask-tcp","variants":{},"routes":[],"cluster_header":"x-rollgate-cluster","variant_header":"x-rollgate-variant","tcp":{"allow":["127.0.0.0/8"],"in_flight":{"per_source":3}}}"#
    );
    let p = Policy::from_json(tcp.as_bytes()).unwrap();
    assert!(p.network_only(), "a network filter's policy");
    // The status file keeps it, for a restart.
    let status: serde_json::Value = serde_json::from_str(&dir.read("flask.status.json")).unwrap();
    assert_eq!(status["tcpPolicy"]["name"], "flask-tcp");

    // A step: the same limits, at the new version (a filter polling it re-fetches the same
    // text; its counts carry over).
    assert_eq!(s.post("/v1/rollouts/flask/promote").status, 200);
    assert_eq!(look(&s, "flask-tcp"), (200, 3, tcp.clone()));
    // A long-poll at the current version waits, and answers when the limits change.
    let url = s.url();
    let poll = std::thread::spawn(move || {
        let r = ureq_get(&format!("{url}/v1/policies/flask-tcp?version=3&wait=5s"));
        (r.0, r.1)
    });
    std::thread::sleep(Duration::from_millis(300));
    dir.write(
        "flask.yaml",
        &with_tcp(TCP).replace("perSource: 3", "perSource: 5"),
    );
    let (status, body) = poll.join().unwrap();
    assert_eq!(status, 200);
    assert!(body.contains(r#""per_source":5"#), "{body}");
    assert_eq!(s.rollout("flask")["status"]["currentStep"], 3, "same step");

    // Aborted: the HTTP policy sends everyone to stable; the limits stay.
    assert_eq!(s.post("/v1/rollouts/flask/abort").status, 200);
    let (_, v, tcp) = look(&s, "flask-tcp");
    assert_eq!(v, look(&s, "flask").1);
    assert!(tcp.contains(r#""per_source":5"#), "{tcp}");

    // Limits removed: the TCP policy is no longer served.
    dir.write("flask.yaml", SEED);
    wait_until("the TCP policy to go", WAIT, || {
        look(&s, "flask-tcp").0 == 404
    });
    let status: serde_json::Value = serde_json::from_str(&dir.read("flask.status.json")).unwrap();
    assert_eq!(status.get("tcpPolicy"), None);
}

/// A plain GET on its own connection: (status, body).
fn ureq_get(url: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut c = std::net::TcpStream::connect(host).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

#[test]
fn a_restart_serves_the_same_tcp_policy_at_the_same_version() {
    let dir = TempDir::new("tcp-restart");
    dir.write("flask.yaml", &with_tcp(TCP));
    let mut s = Sidecar::start(&dir.0, &[]);
    wait_until("flask-tcp", WAIT, || look(&s, "flask-tcp").0 == 200);
    assert_eq!(s.post("/v1/rollouts/flask/promote").status, 200);
    let before = look(&s, "flask-tcp");
    assert_eq!(before.1, 2);
    s.server.stop();
    drop(s);
    // Broken meanwhile: the last good policies keep serving, the TCP one too.
    dir.write("flask.yaml", "spec: [");
    let s = Sidecar::start(&dir.0, &[]);
    assert_eq!(look(&s, "flask-tcp"), before);
    // A gateway that runs a later version (this sidecar lost it) gets both renumbered.
    let r = s.get("/v1/policies/flask-tcp?version=7&wait=0s");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-rollgate-version"), Some("8"));
    assert_eq!(look(&s, "flask").1, 8);
}

#[test]
fn a_rollout_may_not_take_the_name_of_another_ones_tcp_policy() {
    let dir = TempDir::new("tcp-clash");
    dir.write("flask.yaml", &with_tcp(TCP));
    let s = Sidecar::start(&dir.0, &[]);
    wait_until("flask-tcp", WAIT, || look(&s, "flask-tcp").0 == 200);
    dir.write(
        "other.yaml",
        &SEED.replacen("name: flask", "name: flask-tcp", 1),
    );
    wait_until("the clash to be reported", WAIT, || {
        s.logged("metadata.name: 'flask-tcp' is already the name of the TCP policy of flask.yaml")
    });
    let (_, _, tcp) = look(&s, "flask-tcp");
    assert!(
        tcp.contains(r#""in_flight""#),
        "still flask's TCP policy: {tcp}"
    );
}
