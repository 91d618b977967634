//! The filter as a network filter in front of Envoy's `tcp_proxy` (two workers): connection
//! limits decided before `tcp_proxy` sees the connection, so a refused one opens no upstream
//! connection. Envoy's own `/stats` (`cluster.db.upstream_cx_total`) and the upstream's
//! accept count both say so.

use std::thread;
use std::time::{Duration, Instant};

use rollgate_e2e::{connect_through, render_tcp, reset, wasm_path, Envoy, Fate, TcpUpstream};

const WAIT: Duration = Duration::from_secs(5);

fn start(policy: &str) -> (Envoy, TcpUpstream) {
    let up = TcpUpstream::start();
    let envoy = Envoy::start_yaml(&render_tcp(policy, &wasm_path(), up.port()), 2).unwrap();
    (envoy, up)
}

fn custom(envoy: &Envoy, name: &str) -> u64 {
    envoy
        .stat(&format!("wasmcustom.rollgate.db.tcp.{name}"))
        .unwrap_or(0)
}

/// Polls `f` until it holds or `WAIT` passes.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[test]
fn in_flight_three_admits_three_refuses_the_fourth_at_once_and_frees_on_close() {
    let (envoy, up) = start(r#"{"name":"db","tcp":{"in_flight":{"per_source":3}}}"#);
    let mut held = Vec::new();
    for i in 0..3 {
        let (s, fate) = connect_through(envoy.port(), WAIT);
        assert_eq!(fate, Fate::Echoed, "connection {i}\n{}", envoy.log());
        held.push(s);
    }
    let t = Instant::now();
    let (_s, fate) = connect_through(envoy.port(), WAIT);
    let took = t.elapsed();
    assert_eq!(fate, Fate::Closed, "the fourth is refused");
    assert!(
        took < Duration::from_secs(2),
        "closed at once, not a hang: {took:?}"
    );
    assert_eq!(custom(&envoy, "refused_in_flight"), 1);
    assert_eq!(custom(&envoy, "active"), 3);
    // No upstream connection was opened for it: Envoy's count and the upstream's agree.
    assert_eq!(envoy.stat("cluster.db.upstream_cx_total"), Some(3));
    assert_eq!(up.accepted(), 3);

    // Closing one lets a new one in (once Envoy has seen the close).
    drop(held.pop());
    assert!(eventually(|| custom(&envoy, "active") == 2));
    let (s, fate) = connect_through(envoy.port(), WAIT);
    assert_eq!(
        fate,
        Fate::Echoed,
        "a freed place is taken\n{}",
        envoy.log()
    );
    held.push(s);
    assert_eq!(up.accepted(), 4);
    assert_eq!(envoy.stat("cluster.db.upstream_cx_total"), Some(4));
    let (_s, fate) = connect_through(envoy.port(), WAIT);
    assert_eq!(fate, Fate::Closed);
    assert_eq!(custom(&envoy, "refused_in_flight"), 2);

    // All closed: the count returns to 0 and three fit again.
    held.clear();
    assert!(eventually(|| custom(&envoy, "active") == 0));
    for _ in 0..3 {
        let (s, fate) = connect_through(envoy.port(), WAIT);
        assert_eq!(fate, Fate::Echoed);
        held.push(s);
    }
    assert_eq!(up.accepted(), 7);
}

#[test]
fn allow_without_loopback_refuses_and_with_it_admits() {
    let (envoy, up) = start(r#"{"name":"db","tcp":{"allow":["10.0.0.0/8","::1/128"]}}"#);
    let (_s, fate) = connect_through(envoy.port(), WAIT);
    assert_eq!(fate, Fate::Closed);
    assert_eq!(custom(&envoy, "refused_allow"), 1);
    assert_eq!(envoy.stat("cluster.db.upstream_cx_total"), Some(0));
    assert_eq!(up.accepted(), 0);
    drop(envoy);

    let (envoy, up) = start(r#"{"name":"db","tcp":{"allow":["127.0.0.0/8"]}}"#);
    let (_s, fate) = connect_through(envoy.port(), WAIT);
    assert_eq!(fate, Fate::Echoed);
    assert_eq!(custom(&envoy, "refused_allow"), 0);
    assert_eq!(up.accepted(), 1);
}

#[test]
fn rate_admits_the_burst_then_refuses() {
    // 1 per minute, burst 2: the third attempt within the test's few seconds is refused.
    let (envoy, up) =
        start(r#"{"name":"db","tcp":{"rate":{"average":1,"period":"1m","burst":2}}}"#);
    let fates: Vec<Fate> = (0..3)
        .map(|_| connect_through(envoy.port(), WAIT).1)
        .collect();
    assert_eq!(fates, [Fate::Echoed, Fate::Echoed, Fate::Closed]);
    assert_eq!(custom(&envoy, "refused_rate"), 1);
    assert_eq!(up.accepted(), 2);
}

#[test]
fn hundred_attempts_from_ten_threads_never_make_a_fourth_concurrent_connection() {
    let (envoy, up) = start(r#"{"name":"db","tcp":{"in_flight":{"per_source":3}}}"#);
    let port = envoy.port();
    let threads: Vec<_> = (0..10)
        .map(|_| {
            thread::spawn(move || {
                let mut admitted = 0;
                for _ in 0..10 {
                    let (s, fate) = connect_through(port, WAIT);
                    assert_ne!(fate, Fate::Hung);
                    if fate == Fate::Echoed {
                        admitted += 1;
                        thread::sleep(Duration::from_millis(30));
                    }
                    drop(s);
                }
                admitted
            })
        })
        .collect();
    let admitted: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let refused = custom(&envoy, "refused_in_flight");
    eprintln!(
        "100 attempts: {admitted} admitted, {refused} refused, upstream peak {}",
        up.peak()
    );
    assert_eq!(u64::from(admitted) + refused, 100);
    assert!(admitted >= 3, "{admitted}");
    assert!(up.peak() <= 3, "upstream saw {} at once", up.peak());
    assert_eq!(
        envoy.stat("cluster.db.upstream_cx_total"),
        Some(u64::from(admitted))
    );
    assert!(eventually(|| custom(&envoy, "active") == 0));
}

#[test]
fn no_leak_after_a_thousand_cycles_half_abrupt_or_reset() {
    let (envoy, up) = start(r#"{"name":"db","tcp":{"in_flight":{"per_source":3,"total":3}}}"#);
    let port = envoy.port();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            thread::spawn(move || {
                for i in 0..250 {
                    match (i + t) % 4 {
                        // Gone before Envoy could even answer.
                        0 => drop(std::net::TcpStream::connect(("127.0.0.1", port))),
                        // Killed: a reset, no FIN, while connected through.
                        1 => reset(connect_through(port, WAIT).0),
                        // Reset before any answer.
                        2 => reset(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()),
                        _ => drop(connect_through(port, WAIT)),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        eventually(|| custom(&envoy, "active") == 0),
        "active {}",
        custom(&envoy, "active")
    );
    let mut held = Vec::new();
    for _ in 0..3 {
        let (s, fate) = connect_through(port, WAIT);
        assert_eq!(fate, Fate::Echoed, "the limit did not leak shut");
        held.push(s);
    }
    assert_eq!(connect_through(port, WAIT).1, Fate::Closed);
    assert!(up.accepted() > 3);
}

#[test]
fn rate_twenty_a_second_burst_five_admits_five_plus_twenty_per_second() {
    let _timing = rollgate_e2e::timing_lock();
    let (envoy, up) = start(r#"{"name":"db","tcp":{"rate":{"average":20,"burst":5}}}"#);
    let start = Instant::now();
    let mut admitted = 0u64;
    let mut attempts = 0u64;
    while start.elapsed() < Duration::from_secs(5) {
        attempts += 1;
        if connect_through(envoy.port(), WAIT).1 == Fate::Echoed {
            admitted += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let expected = 5.0 + 20.0 * elapsed;
    eprintln!("{attempts} attempts in {elapsed:.2} s: {admitted} admitted, expected {expected:.1}");
    assert!(attempts > 2 * admitted, "attempts must outrun the rate");
    assert!(
        (admitted as f64 - expected).abs() <= 0.05 * expected,
        "{admitted} admitted, expected {expected:.1} ± 5 %"
    );
    assert_eq!(custom(&envoy, "refused_rate"), attempts - admitted);
    assert_eq!(up.accepted(), admitted);
}

/// A VM that dies holding connections takes their closes with it; the counts it wrote stop
/// being refreshed and are dropped after 5 s (`STALE_NS`), so the limit does not leak shut.
#[test]
fn a_dead_vms_counts_are_reclaimed() {
    use std::io::Write;
    let up = TcpUpstream::start();
    let yaml = rollgate_e2e::render_tcp_with(
        r#"{"name":"db","tcp":{"in_flight":{"total":2}}}"#,
        &rollgate_e2e::test_trap_wasm_path(),
        up.port(),
        "FAIL_RELOAD",
    );
    // One worker: the VM that dies is the one every connection went through.
    let envoy = Envoy::start_yaml(&yaml, 1).unwrap();
    let (mut a, fate) = connect_through(envoy.port(), WAIT);
    assert_eq!(fate, Fate::Echoed);
    let (_b, fate) = connect_through(envoy.port(), WAIT);
    assert_eq!(fate, Fate::Echoed);
    assert_eq!(connect_through(envoy.port(), WAIT).1, Fate::Closed);
    // Kill the VM from one of its connections.
    a.write_all(b"x-rollgate-test-trap").unwrap();
    assert!(
        envoy.wait_for_log("unreachable", WAIT),
        "the VM did not trap\n{}",
        envoy.log()
    );
    let died = Instant::now();
    // The new VM admits again once the dead one's counts are stale, and not long after.
    let mut admitted_after = None;
    while died.elapsed() < Duration::from_secs(15) {
        let (s, fate) = connect_through(envoy.port(), WAIT);
        if fate == Fate::Echoed {
            admitted_after = Some(died.elapsed());
            drop(s);
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let after = admitted_after.unwrap_or_else(|| panic!("never admitted again\n{}", envoy.log()));
    eprintln!(
        "admitted again {:.1} s after the VM died",
        after.as_secs_f64()
    );
    assert!(after < Duration::from_secs(8), "{after:?}");
}
