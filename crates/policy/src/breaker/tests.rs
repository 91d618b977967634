//! Breaker state machine on a virtual clock, with two workers sharing one store.

use super::*;
use crate::policy::Policy;
use crate::store::MemStore;

const MS: u64 = 1_000_000;
const S: u64 = 1_000 * MS;

fn breaker(extra: &str) -> Breaker {
    breaker_with("LatencyAtQuantileMS(50.0) > 100", extra)
}

fn breaker_with(expression: &str, extra: &str) -> Breaker {
    let json = format!(
        r#"{{"name":"flask","variants":{{"stable":"s","canary":"c"}},"default":"stable",
            "circuit_breakers":[{{"name":"canary-latency","variant":"canary",
              "expression":"{expression}","fallback_variant":"stable"{extra}}}]}}"#
    );
    Policy::from_json(json.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"))
        .breakers
        .remove(0)
}

/// Two workers driving one breaker: traffic every `step`, ticks every check period.
struct Sim {
    b: Breaker,
    store: MemStore,
    workers: [Local; 2],
    now: u64,
    transitions: Vec<(u64, Phase, Phase)>,
}

impl Sim {
    fn new(b: Breaker) -> Sim {
        let workers = [b.local(), b.local()];
        Sim {
            b,
            store: MemStore::default(),
            workers,
            now: 1_000 * S,
            transitions: Vec::new(),
        }
    }

    /// Runs `dur` of traffic at one request per `step` (alternating workers) answering with
    /// `latency` and `status`; returns how many requests passed.
    fn run(&mut self, dur: u64, step: u64, latency_ms: u64, status: u16) -> (u64, u64) {
        let end = self.now + dur;
        let (mut passed, mut total) = (0, 0);
        let mut next_tick = self.now;
        let mut i = 0;
        while self.now < end {
            if self.now >= next_tick {
                for w in 0..2 {
                    if let Some(t) = self.b.tick(&mut self.workers[w], &self.store, self.now) {
                        self.transitions.push((self.now, t.from, t.to));
                    }
                }
                next_tick += self.b.check_period_ns;
            }
            if step > 0 {
                let w = i % 2;
                total += 1;
                if self.b.admit(&mut self.workers[w], self.now) == Admission::Pass {
                    passed += 1;
                    let neterr = matches!(status, 502 | 504);
                    let g = self.workers[w].generation();
                    self.b.record(
                        &mut self.workers[w],
                        &self.store,
                        self.now,
                        g,
                        status,
                        latency_ms * 1000,
                        neterr,
                    );
                }
                i += 1;
                self.now += step;
            } else {
                self.now = next_tick;
            }
        }
        (passed, total)
    }

    fn phase(&self) -> Phase {
        self.b.phase_at(&self.workers[0].state, self.now).0
    }
}

#[test]
fn slow_canary_trips_within_half_a_window_and_recovers() {
    let mut sim = Sim::new(breaker(""));
    let (passed, total) = sim.run(12 * S, 10 * MS, 20, 200);
    assert_eq!((passed, total), (1200, 1200));
    assert_eq!(sim.phase(), Phase::Closed);
    let slow_from = sim.now;
    sim.run(8 * S, 10 * MS, 150, 200);
    let (at, from, to) = sim.transitions[0];
    assert_eq!((from, to), (Phase::Closed, Phase::Open));
    let after = at - slow_from;
    assert!(
        after <= 5 * S + S,
        "tripped {} ms after turning slow",
        after / MS
    );
    assert!(
        after >= 4 * S,
        "not before the slow half dominates: {} ms",
        after / MS
    );
    assert_eq!(
        sim.transitions.len(),
        1,
        "exactly one worker reports the transition"
    );

    // Open for 10 s, even with no traffic; then recovering on fast traffic, then closed.
    let open_until = at + 10 * S;
    sim.now = open_until - 100 * MS;
    let (passed, _) = sim.run(50 * MS, 10 * MS, 20, 200);
    assert_eq!(passed, 0, "all traffic falls back while open");
    sim.run(11 * S, 10 * MS, 20, 200);
    let phases: Vec<_> = sim.transitions.iter().map(|t| (t.1, t.2)).collect();
    assert_eq!(
        phases,
        [
            (Phase::Closed, Phase::Open),
            (Phase::Open, Phase::Recovering),
            (Phase::Recovering, Phase::Closed)
        ]
    );
    assert!(sim.transitions[1].0 - open_until < 200 * MS);
    assert_eq!(sim.phase(), Phase::Closed);
}

#[test]
fn recovery_ramps_linearly_to_full() {
    let mut sim = Sim::new(breaker(r#","recovery_duration":"10s""#));
    sim.run(6 * S, 10 * MS, 150, 200);
    assert_eq!(sim.phase(), Phase::Open);
    // Skip to the start of recovery (ticks keep running without traffic).
    let until = sim.workers[0].state.until_ns;
    sim.run(until - sim.now, 0, 0, 200);
    let mut shares = Vec::new();
    for _ in 0..5 {
        let (p, t) = sim.run(2 * S, 5 * MS, 20, 200);
        shares.push(p as f64 / t as f64);
    }
    // Expected mean shares over each 2 s: 10 %, 30 %, 50 %, 70 %, 90 %.
    for (i, s) in shares.iter().enumerate() {
        let want = 0.1 + 0.2 * i as f64;
        assert!(
            (s - want).abs() < 0.05,
            "slice {i}: {s:.3} vs {want}: {shares:?}"
        );
    }
    assert_eq!(sim.phase(), Phase::Closed);
    let (p, t) = sim.run(S, 5 * MS, 20, 200);
    assert_eq!(p, t);
}

#[test]
fn tripping_again_while_recovering_reopens() {
    let mut sim = Sim::new(breaker(
        r#","fallback_duration":"2s","recovery_duration":"10s""#,
    ));
    sim.run(6 * S, 10 * MS, 150, 200);
    assert_eq!(sim.phase(), Phase::Open);
    // Still slow while recovering: the let-through traffic trips it again.
    sim.run(6 * S, 5 * MS, 150, 200);
    let phases: Vec<_> = sim.transitions.iter().map(|t| (t.1, t.2)).collect();
    assert_eq!(
        &phases[..3],
        [
            (Phase::Closed, Phase::Open),
            (Phase::Open, Phase::Recovering),
            (Phase::Recovering, Phase::Open)
        ]
    );
}

#[test]
fn opening_starts_statistics_afresh() {
    let mut sim = Sim::new(breaker(""));
    sim.run(6 * S, 10 * MS, 150, 200);
    let g = sim.workers[0].state.generation;
    assert_eq!(sim.phase(), Phase::Open);
    let w = sim.b.window(&sim.store, g, sim.now);
    assert_eq!(w.total, 0, "the new generation has no statistics yet");
    let old = sim.b.window(&sim.store, g - 1, sim.now);
    assert!(old.total > 0);
}

#[test]
fn responses_admitted_before_an_opening_do_not_count_after_it() {
    let mut sim = Sim::new(breaker(""));
    let before = sim.workers[0].generation();
    sim.run(6 * S, 10 * MS, 150, 200);
    assert_eq!(sim.phase(), Phase::Open);
    let now = sim.now;
    for _ in 0..50 {
        // Stragglers of the slow period arrive after the trip.
        sim.b.record(
            &mut sim.workers[0],
            &sim.store,
            now,
            before,
            200,
            150_000,
            false,
        );
    }
    sim.b.flush(&mut sim.workers[0], &sim.store);
    let g = sim.workers[0].generation();
    assert_ne!(g, before);
    assert_eq!(sim.b.window(&sim.store, g, now).total, 0);
}

#[test]
fn network_errors_trip_network_error_ratio() {
    let mut sim = Sim::new(breaker_with(
        "NetworkErrorRatio() > 0.5 && RequestThreshold() >= 10",
        "",
    ));
    sim.run(3 * S, 10 * MS, 5, 200);
    assert!(sim.transitions.is_empty());
    sim.run(3 * S, 10 * MS, 5, 502);
    assert!(sim.transitions.is_empty(), "300 of 600 is not above half");
    sim.run(S, 10 * MS, 5, 502);
    assert_eq!(sim.transitions.first().map(|t| t.2), Some(Phase::Open));
}

#[test]
fn no_traffic_means_no_trip_and_state_is_written_once() {
    let mut sim = Sim::new(breaker(""));
    sim.run(30 * S, 0, 0, 200);
    assert!(sim.transitions.is_empty());
    assert_eq!(sim.store.len(), 1, "only the state record");
}

#[test]
fn changed_breaker_starts_closed_unchanged_keeps_state() {
    let mut sim = Sim::new(breaker(""));
    sim.run(6 * S, 10 * MS, 150, 200);
    assert_eq!(sim.phase(), Phase::Open);
    // Same breaker in a new policy: still open.
    let same = breaker(r#","response_code":502"#);
    let mut l = same.local();
    same.tick(&mut l, &sim.store, sim.now);
    assert_eq!(same.phase_at(&l.state, sim.now).0, Phase::Open);
    // A different expression: closed, with fresh statistics.
    let changed = breaker(r#","window":"20s""#);
    let mut l = changed.local();
    changed.tick(&mut l, &sim.store, sim.now);
    assert_eq!(changed.phase_at(&l.state, sim.now).0, Phase::Closed);
}

#[test]
fn transition_figures_name_the_metrics() {
    let b = breaker_with(
        "LatencyAtQuantileMS(50.0) > 100 || NetworkErrorRatio() > 0.5",
        "",
    );
    let mut bucket = window::Bucket::new(0, 1);
    bucket.record(200, 150_000, false);
    bucket.record(502, 150_000, true);
    let text = describe(&b.cond, &bucket);
    let p50: f64 = text["LatencyAtQuantileMS(50)=".len()..]
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((p50 - 150.0).abs() / 150.0 <= 0.05, "{text}");
    assert!(text.ends_with(", NetworkErrorRatio()=0.500"), "{text}");
}

#[test]
fn compile_errors() {
    let errs_with = |expression: &str, extra: &str| {
        let json = format!(
            r#"{{"name":"f","variants":{{"stable":"s","canary":"c"}},
                "circuit_breakers":[{{"name":"b","expression":"{expression}"{extra}}}]}}"#
        );
        Policy::from_json(json.as_bytes()).unwrap_err().to_string()
    };
    let errs = |extra: &str| errs_with("NetworkErrorRatio() > 0.5", extra);
    assert_eq!(
        errs(r#","variant":"blue""#),
        "circuit_breakers[0].variant: unknown variant 'blue' (known: canary, stable)"
    );
    assert_eq!(
        errs_with("NetworkErrorRatio() >", ""),
        "circuit_breakers[0].expression: column 22: unexpected end of expression"
    );
    assert_eq!(
        errs(r#","check_period":"0s""#),
        "circuit_breakers[0].check_period: must be at least 1ms, got 0s"
    );
    assert_eq!(
        errs(r#","response_code":99"#),
        "circuit_breakers[0].response_code: must be an HTTP status 200 to 599, got 99"
    );
    assert_eq!(
        errs(r#","variant":"canary","fallback_variant":"canary""#),
        "circuit_breakers[0].fallback_variant: must differ from the guarded variant"
    );
}
