//! `rollgate try --tcp`'s host against a real Envoy 1.40: the same script of connection opens
//! and closes, through Envoy's `envoy.filters.network.wasm` + `tcp_proxy` (two workers, real
//! sockets from 127.0.0.1) and through the wasmtime host (two VMs, `open_connection` from
//! 127.0.0.1), must give the same admitted/refused sequence and the same filter stats.

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
