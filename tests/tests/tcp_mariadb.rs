//! The issue's MySQL path on a real MariaDB (`make mariadb`): the filter as a network filter in
//! front of `tcp_proxy` (two workers) to a server the test starts, and the `mariadb` client.
//! The server's own `Max_used_connections` (after `FLUSH STATUS`) is the judge.

use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use rollgate_e2e::{mariadb_client, query, render_tcp, timing_lock, wasm_path, Envoy, MariaDb};

fn start(policy: &str) -> (MariaDb, Envoy) {
    let db = MariaDb::start();
    let envoy = Envoy::start_yaml(&render_tcp(policy, &wasm_path(), db.port()), 2).unwrap();
    (db, envoy)
}

#[test]
fn in_flight_three_on_mariadb() {
    // Real servers, one test at a time: concurrent ones share two cores and timing bounds.
    let _t = timing_lock();
    let (db, envoy) = start(r#"{"name":"db","tcp":{"in_flight":{"per_source":3}}}"#);
    query(db.port(), "FLUSH STATUS").unwrap();
    // Three sessions run queries through Envoy.
    let sessions: Vec<_> = (0..3)
        .map(|_| {
            mariadb_client(envoy.port(), "SELECT SLEEP(3)")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while query(
        db.port(),
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT SLEEP%'",
    )
    .unwrap()
    .trim()
        != "3"
    {
        assert!(Instant::now() < deadline, "three sessions never ran");
        thread::sleep(Duration::from_millis(50));
    }
    // The fourth is refused at connect: closed at once, not a hang.
    let t = Instant::now();
    let fourth = query(envoy.port(), "SELECT 1");
    let took = t.elapsed();
    let err = fourth.expect_err("a fourth session was admitted");
    assert!(err.contains("Lost connection"), "{err}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    for s in sessions {
        let out = s.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    }
    // Closed sessions free their places.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match query(envoy.port(), "SELECT 1") {
            Ok(out) => {
                assert_eq!(out.trim(), "1");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "never admitted again: {e}"),
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        db.status("Max_used_connections"),
        3 + 1,
        "3 sessions and the checker"
    );
}

#[test]
fn hundred_attempts_from_ten_threads_never_a_fourth_session() {
    // Real servers, one test at a time: concurrent ones share two cores and timing bounds.
    let _t = timing_lock();
    let (db, envoy) = start(r#"{"name":"db","tcp":{"in_flight":{"per_source":3}}}"#);
    query(db.port(), "FLUSH STATUS").unwrap();
    let port = envoy.port();
    let threads: Vec<_> = (0..10)
        .map(|_| {
            thread::spawn(move || {
                (0..10)
                    .filter(|_| query(port, "SELECT SLEEP(0.05)").is_ok())
                    .count()
            })
        })
        .collect();
    let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let refused = envoy
        .stat("wasmcustom.rollgate.db.tcp.refused_in_flight")
        .unwrap_or(0);
    // The checker's own connection comes after every session closed: it adds nothing.
    let max_used = db.status("Max_used_connections");
    eprintln!(
        "100 attempts: {admitted} admitted, {refused} refused, Max_used_connections {max_used}"
    );
    assert_eq!(admitted as u64 + refused, 100);
    assert!(admitted >= 3);
    assert!(max_used <= 3, "Max_used_connections {max_used}");
}

#[test]
fn allow_on_mariadb() {
    // Real servers, one test at a time: concurrent ones share two cores and timing bounds.
    let _t = timing_lock();
    let (_db, envoy) = start(r#"{"name":"db","tcp":{"allow":["10.0.0.0/8"]}}"#);
    let err = query(envoy.port(), "SELECT 1").expect_err("admitted from outside allow");
    assert!(err.contains("Lost connection"), "{err}");
    drop(envoy);
    let (_db, envoy) = start(r#"{"name":"db","tcp":{"allow":["127.0.0.0/8"]}}"#);
    assert_eq!(query(envoy.port(), "SELECT 1").unwrap().trim(), "1");
}
