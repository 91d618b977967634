//! `rollgate try --tcp`'s host against a real Envoy 1.40: the same script of connection opens
//! and closes, through Envoy's `envoy.filters.network.wasm` + `tcp_proxy` (two workers, real
//! sockets from 127.0.0.1) and through the wasmtime host (two VMs, `open_connection` from
//! 127.0.0.1), must give the same admitted/refused sequence and the same filter stats.

#[path = "../../wasmhost/tests/common/mod.rs"]
mod common;

use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use rollgate::wasmhost::{Host, PluginConfig, Wasm};
use rollgate_e2e::{connect_through, render_tcp, wasm_path, Envoy, Fate, TcpUpstream};

const WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
enum Step {
    /// Open a connection (kept under this slot if admitted).
    Open(usize),
    /// Close the connection in this slot.
    Close(usize),
}

use Step::{Close, Open};

fn stat_names() -> [&'static str; 4] {
    [
        "active",
        "refused_in_flight",
        "refused_allow",
        "refused_rate",
    ]
}

/// Runs `script` through Envoy: each open's fate (echoed through tcp_proxy, closed at once, or
/// neither), and the filter's stats.
fn through_envoy(policy: &str, script: &[Step]) -> (Vec<Fate>, Vec<u64>) {
    let up = TcpUpstream::start();
    let envoy = Envoy::start_yaml(&render_tcp(policy, &wasm_path(), up.port()), 2).unwrap();
    let stat = |name: &str| {
        envoy
            .stat(&format!("wasmcustom.rollgate.db.tcp.{name}"))
            .unwrap_or(0)
    };
    let mut slots: Vec<Option<TcpStream>> = (0..8).map(|_| None).collect();
    let mut admitted = Vec::new();
    for step in script {
        match *step {
            Open(i) => {
                let (s, fate) = connect_through(envoy.port(), WAIT);
                admitted.push(fate);
                if fate == Fate::Echoed {
                    slots[i] = Some(s);
                } else {
                    // Envoy closed it; wait until the filter has counted the refusal.
                    drop(s);
                }
            }
            Close(i) => {
                let before = stat("active");
                drop(slots[i].take());
                // Envoy sees the close asynchronously: wait for the filter to give it back.
                let deadline = Instant::now() + WAIT;
                while stat("active") >= before && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
    let stats = stat_names().iter().map(|n| stat(n)).collect();
    (admitted, stats)
}

/// Runs `script` through the host, as `rollgate try --tcp` does: admitted is Echoed, closed
/// (by the filter) is Closed, neither (paused and left open) is Hung, as a client would see.
fn through_host(policy: &str, script: &[Step]) -> (Vec<Fate>, Vec<u64>) {
    let wasm = Wasm::from_file(wasm_path()).unwrap();
    let host = Host::new();
    let plugin = host
        .start(&wasm, PluginConfig::new(policy).workers(2))
        .unwrap();
    let mut slots: Vec<Option<(usize, u32)>> = vec![None; 8];
    let mut admitted = Vec::new();
    let mut port = 40000;
    for step in script {
        match *step {
            Open(i) => {
                port += 1;
                let e = plugin
                    .open_connection(&format!("127.0.0.1:{port}"), None)
                    .unwrap();
                admitted.push(if e.admitted {
                    Fate::Echoed
                } else if e.closed {
                    Fate::Closed
                } else {
                    Fate::Hung
                });
                if e.admitted {
                    slots[i] = Some((e.worker, e.context_id));
                }
            }
            Close(i) => {
                let (w, ctx) = slots[i].take().unwrap();
                plugin.close_connection(w, ctx).unwrap();
            }
        }
    }
    let stats = stat_names()
        .iter()
        .map(|n| {
            host.metric(&format!("wasmcustom.rollgate.db.tcp.{n}"))
                .map_or(0, |m| m.value())
        })
        .collect();
    (admitted, stats)
}

fn same(policy: &str, script: &[Step]) -> Vec<bool> {
    let envoy = through_envoy(policy, script);
    let host = through_host(policy, script);
    assert_eq!(
        host, envoy,
        "(fates, [active, refused_in_flight, refused_allow, refused_rate])"
    );
    host.0.iter().map(|f| *f == Fate::Echoed).collect()
}

#[test]
fn in_flight_per_source_like_envoy() {
    let script = [
        Open(0),
        Open(1),
        Open(2),
        Close(0),
        Open(3),
        Open(4),
        Close(1),
        Close(3),
        Open(5),
    ];
    let admitted = same(
        r#"{"name":"db","tcp":{"in_flight":{"per_source":2}}}"#,
        &script,
    );
    assert_eq!(admitted, [true, true, false, true, false, true]);
}

#[test]
fn allow_like_envoy() {
    let refused = same(
        r#"{"name":"db","tcp":{"allow":["10.0.0.0/8"]}}"#,
        &[Open(0), Open(1)],
    );
    assert_eq!(refused, [false, false]);
    let admitted = same(
        r#"{"name":"db","tcp":{"allow":["10.0.0.0/8","127.0.0.0/8"]}}"#,
        &[Open(0), Open(1), Close(0)],
    );
    assert_eq!(admitted, [true, true]);
}

mod data {
    //! The host's network-filter data path against a real Envoy 1.40 (issue 17): the ABI probe as
    //! a network filter (`network=1`: it logs every callback with the bytes it saw, holds client
    //! bytes ending in `+`, upper-cases the client's bytes and prepends `<` to the upstream's) in
    //! front of `tcp_proxy` to an echo server, one worker. The same conversation runs through
    //! Envoy (real sockets) and through the host (`Plugin::connection_data`, the test playing the
    //! echo server with whatever the host passed upstream), and must give the same bytes at the
    //! upstream, the same bytes at the client, and the same log lines in the same order. Nothing
    //! is ignored.
    //!
    //! The conversation: `hello`; `ab+` (held: nothing reaches the upstream), then `cd` (the filter
    //! sees `ab+cd` and lets it go); the client's half-close, the echo server's close in answer.

    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpStream};
    use std::thread;
    use std::time::{Duration, Instant};

    use rollgate::wasmhost::{Direction, Host, PluginConfig};
    use rollgate_e2e::{render_tcp, Envoy, TcpUpstream};

    use super::common;

    const CONFIG: &str = "network=1";

    /// What the client sends, in order: bytes, then (None) its half-close.
    fn script() -> Vec<Option<&'static [u8]>> {
        vec![Some(b"hello"), Some(b"ab+"), Some(b"cd"), None]
    }

    /// The probe's lines in Envoy's log: a connection's are prefixed with the plugin name and
    /// root id, the root context's with the name alone (not compared: VM start and configure).
    fn envoy_connection_logs(envoy: &Envoy) -> Vec<String> {
        envoy
            .log()
            .lines()
            .filter_map(|l| {
                let (_, msg) = l.split_once("wasm log rollgate rollgate: ")?;
                msg.starts_with("tcp ").then(|| msg.to_string())
            })
            .collect()
    }

    /// Reads what arrives within `quiet` of the last byte (or until EOF): (bytes, saw EOF).
    fn read_for(s: &mut TcpStream, quiet: Duration) -> (Vec<u8>, bool) {
        s.set_read_timeout(Some(quiet)).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return (out, true),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => return (out, false),
            }
        }
    }

    /// The conversation through Envoy: per client action, what the client received after it;
    /// and the probe's log lines.
    fn through_envoy() -> (Vec<(Vec<u8>, bool)>, Vec<String>) {
        let up = TcpUpstream::start();
        let probe = common::probe_path();
        let envoy = Envoy::start_yaml(&render_tcp(CONFIG, &probe, up.port()), 1).unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", envoy.port())).unwrap();
        let mut seen = Vec::new();
        for step in script() {
            match step {
                Some(bytes) => s.write_all(bytes).unwrap(),
                None => s.shutdown(Shutdown::Write).unwrap(),
            }
            seen.push(read_for(&mut s, Duration::from_millis(400)));
        }
        // The connection's last line is on_log's, after Envoy closed it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !envoy_connection_logs(&envoy)
            .iter()
            .any(|l| l.starts_with("tcp log"))
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(50));
        }
        (seen, envoy_connection_logs(&envoy))
    }

    /// The same through the host; the test is the echo server: what goes upstream comes back,
    /// and the upstream's end follows the client's.
    fn through_host() -> (Vec<(Vec<u8>, bool)>, Vec<String>) {
        let host = Host::new();
        let plugin = host
            .start(
                common::probe(),
                PluginConfig::new(CONFIG)
                    .name("rollgate")
                    .root_id("rollgate"),
            )
            .unwrap();
        let opened = plugin.open_connection("127.0.0.1:40000", None).unwrap();
        assert!(opened.admitted, "{opened:?}");
        let (w, ctx) = (opened.worker, opened.context_id);
        let mut logs: Vec<String> = opened.logs.iter().map(|l| l.message.clone()).collect();
        let mut seen = Vec::new();
        for step in script() {
            let eos = step.is_none();
            let sent = plugin
                .connection_data(w, ctx, Direction::Downstream, step.unwrap_or(b""), eos)
                .unwrap();
            logs.extend(sent.logs.iter().map(|l| l.message.clone()));
            let mut got = (Vec::new(), false);
            if !sent.to_upstream.is_empty() || eos {
                let back = plugin
                    .connection_data(w, ctx, Direction::Upstream, &sent.to_upstream, eos)
                    .unwrap();
                logs.extend(back.logs.iter().map(|l| l.message.clone()));
                got.0 = back.to_client;
            }
            if eos {
                // Both halves are closed: Envoy closes the connection itself (LocalClose).
                let closed = plugin.end_connection(w, ctx).unwrap();
                logs.extend(closed.logs.iter().map(|l| l.message.clone()));
                got.1 = true;
            }
            seen.push(got);
        }
        let logs = logs.into_iter().filter(|l| l.starts_with("tcp ")).collect();
        (seen, logs)
    }

    /// The same as a `rollgate try --tcp` script: the echo server's part is written out as
    /// `reply` lines.
    fn through_try() -> (Vec<(Vec<u8>, bool)>, Vec<String>) {
        let dir = std::env::temp_dir().join(format!("rollgate-try-tcp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("probe.cfg");
        std::fs::write(&config, CONFIG).unwrap();
        let mut lines = vec![r#"{"open": "127.0.0.1:40000"}"#.to_string()];
        for step in script() {
            match step {
                Some(b) => {
                    let text = String::from_utf8_lossy(b);
                    lines.push(format!(r#"{{"send": 1, "data": "{text}"}}"#));
                    if !text.ends_with('+') {
                        let back = text.to_uppercase();
                        // The held bytes went on with these.
                        let back = if text == "cd" {
                            "AB+CD".to_string()
                        } else {
                            back
                        };
                        lines.push(format!(r#"{{"reply": 1, "data": "{back}"}}"#));
                    }
                }
                None => {
                    lines.push(r#"{"send": 1, "end": true}"#.into());
                    lines.push(r#"{"reply": 1, "end": true}"#.into());
                }
            }
        }
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rollgate"))
            .args(["try", "--tcp", "--requests", "-", "--policy"])
            .arg(&config)
            .arg("--wasm")
            .arg(common::probe_path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all((lines.join("\n") + "\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let mut seen = Vec::new();
        let mut logs = Vec::new();
        let mut pending: Option<(Vec<u8>, bool)> = None;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            for l in v["logs"].as_array().unwrap() {
                logs.push(l[1].as_str().unwrap().to_string());
            }
            match v["event"].as_str().unwrap() {
                "send" => {
                    if let Some(p) = pending.take() {
                        seen.push(p);
                    }
                    pending = Some((Vec::new(), false));
                }
                "reply" => {
                    let p = pending.get_or_insert((Vec::new(), false));
                    p.0.extend_from_slice(v["to_client"].as_str().unwrap().as_bytes());
                    p.1 |= v["closed_by"] == "envoy";
                }
                _ => {}
            }
        }
        seen.extend(pending);
        (seen, logs)
    }

    #[test]
    fn network_filter_data_like_envoys() {
        let _serial = rollgate_e2e::timing_lock();
        let (envoy_seen, envoy_logs) = through_envoy();
        let (host_seen, host_logs) = through_host();
        let show = |v: &[(Vec<u8>, bool)]| -> Vec<(String, bool)> {
            v.iter()
                .map(|(b, eof)| (String::from_utf8_lossy(b).into_owned(), *eof))
                .collect()
        };
        println!("envoy: {:?}\n{envoy_logs:#?}", show(&envoy_seen));
        // The probe's rewrites are visible: the filter ran on both paths in Envoy.
        assert_eq!(
            show(&envoy_seen),
            vec![
                ("<HELLO".to_string(), false),
                (String::new(), false),
                ("<AB+CD".to_string(), false),
                (String::new(), true),
            ],
            "Envoy's answers (the probe's rewrites, the held bytes, the close)"
        );
        assert_eq!(show(&host_seen), show(&envoy_seen), "what the client got");
        assert_eq!(host_logs, envoy_logs, "the probe's callbacks, in order");
        let (try_seen, try_logs) = through_try();
        assert_eq!(
            show(&try_seen),
            show(&envoy_seen),
            "what `try` says the client got"
        );
        assert_eq!(try_logs, envoy_logs, "the callbacks `try` printed");
    }
}
