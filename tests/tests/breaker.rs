//! Circuit breaking in a real Envoy with two workers: a canary that turns slow trips the
//! latency breaker and its traffic falls back to stable (or gets 503); a fast canary closes it
//! again after the fallback and recovery periods; a dead canary trips NetworkErrorRatio.

use std::thread;
use std::time::{Duration, Instant};

use rollgate_e2e::{Load, Sample, Stack, CANARY, STABLE};

const BREAKER_STATE: &str = "wasmcustom.rollgate.flask.breaker.canary.state";

fn policy(breaker: &str) -> String {
    format!(
        r#"{{"name":"flask","variants":{{"stable":"k8s-flask","canary":"k8s-flask-canary","dev":"k8s-flask-dev"}},
            "default":"canary",
            "circuit_breakers":[{{"name":"canary","variant":"canary","check_period":"100ms",
              "window":"4s","fallback_duration":"2s","recovery_duration":"2s"{breaker}}}]}}"#
    )
}

/// 20 connections × one request per 200 ms = 100 requests/s, kept even while answers take
/// 150 ms, so slow and fast periods weigh the same in the window.
fn load(stack: &Stack) -> Load {
    Load::start(
        stack.envoy.port(),
        "pro.coding",
        "/",
        20,
        Duration::from_millis(200),
    )
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return start.elapsed();
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

fn served_by(samples: &[Sample], since: Duration) -> Vec<String> {
    samples
        .iter()
        .filter(|s| s.sent >= since)
        .map(|s| s.upstream.clone().unwrap_or(format!("status {}", s.status)))
        .collect()
}

#[test]
fn slow_canary_falls_back_to_stable_then_recovers() {
    let _serial = rollgate_e2e::timing_lock();
    let stack = Stack::start(&policy(
        r#","expression":"LatencyAtQuantileMS(50.0) > 100","fallback_variant":"stable""#,
    ));
    let load = load(&stack);
    thread::sleep(Duration::from_secs(4)); // a window of fast answers
    assert_eq!(stack.envoy.stat(BREAKER_STATE), Some(0));
    let slow_at = load.elapsed();
    stack.upstream(CANARY).set_delay(Duration::from_millis(150));
    // Trips within half a window (2 s) plus one second.
    wait_until("the breaker to open", Duration::from_secs(6), || {
        load.samples()
            .iter()
            .any(|s| s.sent > slow_at && s.upstream.as_deref() == Some(STABLE))
    });
    let samples = load.samples();
    let first_fallback = samples
        .iter()
        .filter(|s| s.sent > slow_at && s.upstream.as_deref() == Some(STABLE))
        .map(|s| s.sent)
        .min()
        .unwrap();
    let tripped_after = first_fallback - slow_at;
    println!("tripped {tripped_after:?} after the canary turned slow");
    assert!(
        tripped_after <= Duration::from_secs(3),
        "tripped after {tripped_after:?}"
    );
    assert!(stack.envoy.wait_for_log(
        "circuit breaker 'canary' (canary): closed -> open; LatencyAtQuantileMS(50)=",
        Duration::from_secs(2)
    ));
    assert_eq!(stack.envoy.stat(BREAKER_STATE), Some(1));

    // The canary heals; after 2 s open and a 2 s ramp, everyone is back on it.
    stack.upstream(CANARY).set_delay(Duration::ZERO);
    thread::sleep(Duration::from_secs(2));
    // While open (2 s from the first fallback; the other worker learns of it at its next
    // tick, within 100 ms), everything went to stable.
    let open: Vec<_> = load
        .samples()
        .into_iter()
        .filter(|s| {
            s.sent > first_fallback + Duration::from_millis(150)
                && s.sent < first_fallback + Duration::from_millis(1800)
        })
        .map(|s| s.upstream.unwrap_or_default())
        .collect();
    assert!(
        open.len() > 100 && open.iter().all(|s| s == STABLE),
        "open: all on stable: {open:?}"
    );
    wait_until("the breaker to close", Duration::from_secs(8), || {
        stack.envoy.stat(BREAKER_STATE) == Some(0)
    });
    let closed_at = load.elapsed();
    thread::sleep(Duration::from_secs(1));
    let samples = load.stop();
    let after = served_by(&samples, closed_at);
    assert!(
        !after.is_empty() && after.iter().all(|s| s == CANARY),
        "closed: all on canary: {after:?}"
    );
    assert!(
        samples.iter().all(|s| s.status == 200),
        "users never saw an error"
    );
    let log = stack.envoy.log();
    assert!(log.contains("(canary): open -> recovering"), "{log}");
    assert!(log.contains("(canary): recovering -> closed"));
    assert_eq!(
        stack
            .envoy
            .stat("wasmcustom.rollgate.flask.breaker.canary.trips"),
        Some(1)
    );
}

#[test]
fn without_fallback_variant_open_breaker_answers_503() {
    let _serial = rollgate_e2e::timing_lock();
    let stack = Stack::start(&policy(
        r#","expression":"LatencyAtQuantileMS(50.0) > 100""#,
    ));
    stack.upstream(CANARY).set_delay(Duration::from_millis(150));
    let load = load(&stack);
    wait_until("503s", Duration::from_secs(5), || {
        load.samples().iter().any(|s| s.status == 503)
    });
    thread::sleep(Duration::from_millis(500));
    let samples = load.stop();
    let refused: Vec<_> = samples.iter().filter(|s| s.status == 503).collect();
    assert!(refused.len() > 20, "{} refused", refused.len());
    assert!(
        refused.iter().all(|s| s.upstream.is_none()),
        "refused before any upstream"
    );
    assert!(
        samples
            .iter()
            .all(|s| s.upstream.as_deref() != Some(STABLE)),
        "no fallback configured"
    );
}

#[test]
fn dead_canary_trips_network_error_ratio() {
    let _serial = rollgate_e2e::timing_lock();
    let mut stack = Stack::start(&policy(
        r#","expression":"NetworkErrorRatio() > 0.5","fallback_variant":"stable""#,
    ));
    let load = load(&stack);
    thread::sleep(Duration::from_secs(1));
    // The canary goes away: Envoy answers 503 (upstream connection failure) for it.
    stack.upstreams.retain(|u| u.name() != CANARY);
    let down_at = load.elapsed();
    wait_until("fallback to stable", Duration::from_secs(5), || {
        load.samples()
            .iter()
            .any(|s| s.sent > down_at && s.upstream.as_deref() == Some(STABLE))
    });
    thread::sleep(Duration::from_millis(500));
    let late = load.elapsed();
    thread::sleep(Duration::from_millis(500));
    let samples = load.stop();
    assert!(
        samples.iter().any(|s| s.sent > down_at && s.status == 503),
        "the failure was seen first"
    );
    let after = served_by(&samples, late);
    assert!(after.iter().all(|s| s == STABLE), "{after:?}");
    assert!(stack
        .envoy
        .log()
        .contains("closed -> open; NetworkErrorRatio()="));
    assert!(
        stack
            .envoy
            .stat("wasmcustom.rollgate.flask.variant.canary.rs_network_error")
            .unwrap()
            > 0
    );
}
