//! The step engine, case by case.

use super::*;
use crate::plan::PlanStep;
use crate::status::{AnalysisStatus, Figure, Verdict};
use crate::testdata::{seed, with_strategy};

const T0: Timestamp = Timestamp(1_800_000_000_000);

fn at(secs: u64) -> Timestamp {
    T0.plus_ms(secs * 1000)
}

/// The rollout as the sidecar starts it: an empty status and `SpecChanged`.
fn start(plan: &Plan) -> Transition {
    step(plan, &RolloutStatus::default(), Event::SpecChanged, T0).unwrap()
}

fn apply(plan: &Plan, st: &RolloutStatus, e: Event, now: Timestamp) -> RolloutStatus {
    step(plan, st, e, now).unwrap().status
}

fn notes(t: &Transition) -> Vec<String> {
    t.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Note(n) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

fn measurement(verdict: Verdict, success: f64) -> AnalysisStatus {
    AnalysisStatus {
        at: T0,
        verdict,
        requests: 200,
        figures: vec![Figure {
            metric: "success-rate".into(),
            value: Some(success),
            min: Some(0.99),
            max: None,
            passed: verdict != Verdict::Failed,
        }],
    }
}

#[test]
fn start_turns_the_header_route_on_and_waits_for_promote() {
    let plan = seed();
    let t = start(&plan);
    let st = &t.status;
    assert_eq!(st.phase, Phase::Paused);
    assert_eq!(st.current_step, 1);
    assert_eq!(st.canary_weight, 0.0);
    assert_eq!(
        st.header_route.as_deref(),
        Some("Headers(`location`, `shenzhen`)")
    );
    assert_eq!(st.attempt, 1);
    assert_eq!(st.revision, plan.revision);
    assert_eq!(st.step_started_at, Some(T0));
    assert_eq!(
        st.message,
        "paused at step 2/6: run `rollgate promote flask` to go on"
    );
    assert_eq!(
        notes(&t),
        vec![
            "started (attempt 1)",
            "step 1/6: header route Headers(`location`, `shenzhen`) to the canary",
            "paused at step 2/6: run `rollgate promote flask` to go on",
        ]
    );
    // The engine leaves versions to the sidecar.
    assert_eq!(st.policy_version, 0);
}

#[test]
fn promote_walks_the_seed_to_promoted() {
    let plan = seed();
    let mut st = start(&plan).status;
    st = apply(&plan, &st, Event::Promote, at(1));
    assert_eq!(
        (st.phase, st.current_step, st.canary_weight),
        (Phase::Paused, 3, 50.0)
    );
    assert!(st.header_route.is_some(), "the header route stays on");
    assert_eq!(st.step_started_at, Some(at(1)));
    st = apply(&plan, &st, Event::Promote, at(2));
    assert_eq!(
        (st.phase, st.current_step, st.canary_weight),
        (Phase::Paused, 5, 100.0)
    );
    let t = step(&plan, &st, Event::Promote, at(3)).unwrap();
    let st = t.status;
    assert_eq!(st.phase, Phase::Promoted);
    assert_eq!(st.current_step, 6);
    assert_eq!(st.canary_weight, 100.0);
    assert_eq!(st.header_route, None);
    assert_eq!(st.message, "promoted: the canary serves all traffic");
    // Final: nothing more to promote or abort.
    let e = step(&plan, &st, Event::Promote, at(4)).unwrap_err();
    assert_eq!(
        e.0,
        "flask is not paused (Promoted, all 6 steps done): nothing to promote"
    );
    let e = step(&plan, &st, Event::Abort, at(4)).unwrap_err();
    assert!(e.0.contains("already promoted"), "{e}");
    let e = step(&plan, &st, Event::Retry, at(4)).unwrap_err();
    assert!(e.0.contains("not aborted"), "{e}");
}

#[test]
fn timed_pause_ends_by_itself_or_by_promote() {
    let plan = with_strategy(
        "    steps:
      - setWeight: 10
      - pause: { duration: 2m }
      - setWeight: 20
      - pause: {}
",
    );
    let st = start(&plan).status;
    assert_eq!(
        (st.phase, st.current_step, st.canary_weight),
        (Phase::Paused, 1, 10.0)
    );
    assert_eq!(
        st.message,
        "paused at step 2/4 for 2m (until 2027-01-15T08:02:00.000Z); \
         `rollgate promote flask` ends it early"
    );
    // Before the time: nothing changes (not even the message).
    let t = step(&plan, &st, Event::Tick, at(119)).unwrap();
    assert_eq!(t.status, st);
    assert!(t.effects.is_empty());
    // At the time: on to the next steps.
    let later = apply(&plan, &st, Event::Tick, at(120));
    assert_eq!(
        (later.phase, later.current_step, later.canary_weight),
        (Phase::Paused, 3, 20.0)
    );
    // Or early, by promote.
    let early = apply(&plan, &st, Event::Promote, at(5));
    assert_eq!((early.current_step, early.canary_weight), (3, 20.0));
    // An indefinite pause ignores time.
    let t = step(&plan, &later, Event::Tick, at(100_000)).unwrap();
    assert_eq!(t.status, later);
}

#[test]
fn zero_pause_and_header_route_off_and_no_steps() {
    let plan = with_strategy(
        "    steps:
      - setHeaderRoute: { match: \"Cookie(`beta`)\" }
      - pause: { duration: 0s }
      - setHeaderRoute: {}
      - pause: {}
",
    );
    let t = start(&plan);
    assert_eq!(t.status.current_step, 3);
    assert_eq!(t.status.header_route, None);
    assert!(notes(&t).contains(&"step 3/4: header route off".to_string()));
    let empty = with_strategy("    steps: []\n");
    let st = start(&empty).status;
    assert_eq!(
        (st.phase, st.canary_weight, st.current_step),
        (Phase::Promoted, 100.0, 0)
    );
}

#[test]
fn abort_sends_everyone_back_to_stable_and_retry_starts_over() {
    let plan = seed();
    let mut st = start(&plan).status;
    st = apply(&plan, &st, Event::Promote, at(1));
    assert_eq!(st.canary_weight, 50.0);
    let t = step(&plan, &st, Event::Abort, at(2)).unwrap();
    let aborted = t.status.clone();
    assert_eq!(aborted.phase, Phase::Aborted);
    assert_eq!(aborted.canary_weight, 0.0);
    assert_eq!(aborted.header_route, None);
    assert_eq!(aborted.current_step, 3, "where it stopped, for the record");
    assert_eq!(
        aborted.message,
        "aborted at step 4/6: aborted by `rollgate abort`; all traffic is back on stable"
    );
    assert_eq!(notes(&t), vec![aborted.message.clone()]);
    assert!(step(&plan, &aborted, Event::Abort, at(3))
        .unwrap_err()
        .0
        .contains("already aborted"));
    assert!(step(&plan, &aborted, Event::Promote, at(3))
        .unwrap_err()
        .0
        .contains("not paused (Aborted, step 4/6: pause (until promoted))"));
    // Retry: from the first step, as a new attempt.
    let retried = apply(&plan, &aborted, Event::Retry, at(4));
    assert_eq!(retried.phase, Phase::Paused);
    assert_eq!(retried.current_step, 1);
    assert_eq!(retried.attempt, 2);
    assert!(retried.header_route.is_some());
    assert_eq!(retried.canary_weight, 0.0);
    // Retry only applies to aborted rollouts.
    assert!(step(&plan, &retried, Event::Retry, at(5)).is_err());
}

#[test]
fn analysis_failures_beyond_the_limit_abort_with_the_figures() {
    let plan = seed(); // failureLimit 2
    let mut st = apply(&plan, &start(&plan).status, Event::Promote, at(1));
    let attempt = st.attempt;
    let pass = Event::Analysis {
        attempt,
        measurement: measurement(Verdict::Passed, 1.0),
    };
    let fail = || Event::Analysis {
        attempt,
        measurement: measurement(Verdict::Failed, 0.5),
    };
    st = apply(&plan, &st, pass, at(2));
    assert_eq!(st.analysis.as_ref().unwrap().verdict, Verdict::Passed);
    assert_eq!(st.failed_analyses, 0);
    let inconclusive = Event::Analysis {
        attempt,
        measurement: measurement(Verdict::Inconclusive, 1.0),
    };
    st = apply(&plan, &st, inconclusive, at(3));
    assert_eq!(st.failed_analyses, 0, "inconclusive does not count");
    for n in 1..=2 {
        let t = step(&plan, &st, fail(), at(3 + n)).unwrap();
        st = t.status.clone();
        assert_eq!((st.phase, st.failed_analyses), (Phase::Paused, n as u32));
        assert!(notes(&t)[0].starts_with(&format!("analysis failed ({n} of 2 allowed)")));
    }
    let t = step(&plan, &st, fail(), at(10)).unwrap();
    let st = t.status;
    assert_eq!(st.phase, Phase::Aborted);
    assert_eq!(st.canary_weight, 0.0);
    assert_eq!(
        st.message,
        "aborted at step 4/6: analysis failed 3 times (failureLimit 2): \
         success-rate 0.5 < min 0.99 (200 canary responses); all traffic is back on stable"
    );
    // Later measurements of the aborted rollout change nothing.
    let t = step(&plan, &st, fail(), at(11)).unwrap();
    assert_eq!(t.status, st);
}

#[test]
fn measurements_of_another_attempt_are_dropped() {
    let plan = with_strategy(
        "    steps: [ { setWeight: 50 }, { pause: {} } ]
    analysis: { interval: 1s, metrics: [ { name: success-rate, min: 0.99 } ] }
",
    );
    let st = start(&plan).status;
    let stale = Event::Analysis {
        attempt: st.attempt - 1,
        measurement: measurement(Verdict::Failed, 0.0),
    };
    assert_eq!(apply(&plan, &st, stale, at(1)), st);
    // failureLimit 0: the first failure of this attempt aborts.
    let now = Event::Analysis {
        attempt: st.attempt,
        measurement: measurement(Verdict::Failed, 0.0),
    };
    assert_eq!(apply(&plan, &st, now, at(1)).phase, Phase::Aborted);
}

#[test]
fn webhooks_go_on_with_2xx_and_abort_otherwise() {
    let plan = with_strategy(
        "    steps:
      - setWeight: 10
      - webhook: { url: \"http://127.0.0.1:9/migrate\", timeout: 5s }
      - setWeight: 20
      - pause: {}
",
    );
    let t = start(&plan);
    let st = t.status.clone();
    assert_eq!(
        (st.phase, st.current_step, st.canary_weight),
        (Phase::Progressing, 1, 10.0)
    );
    assert_eq!(
        st.message,
        "step 2/4: waiting for webhook http://127.0.0.1:9/migrate"
    );
    let call = Effect::CallWebhook {
        attempt: 1,
        step: 1,
        url: "http://127.0.0.1:9/migrate".into(),
        timeout_ms: 5000,
    };
    assert!(t.effects.contains(&call));
    // Time passing does not call it again.
    let t = step(&plan, &st, Event::Tick, at(60)).unwrap();
    assert_eq!((t.status.clone(), t.effects), (st.clone(), vec![]));
    // Promote does not skip it.
    assert!(step(&plan, &st, Event::Promote, at(1)).is_err());
    let answer = |step: u32, outcome: Result<u16, String>| Event::Webhook {
        attempt: 1,
        step,
        outcome,
    };
    let ok = apply(&plan, &st, answer(1, Ok(204)), at(2));
    assert_eq!(
        (ok.phase, ok.current_step, ok.canary_weight),
        (Phase::Paused, 3, 20.0)
    );
    let refused = apply(&plan, &st, answer(1, Ok(500)), at(2));
    assert_eq!(refused.phase, Phase::Aborted);
    assert_eq!(refused.canary_weight, 0.0);
    assert!(refused
        .message
        .contains("webhook http://127.0.0.1:9/migrate answered 500"));
    let down = apply(
        &plan,
        &st,
        answer(1, Err("connection refused".into())),
        at(2),
    );
    assert!(down
        .message
        .contains("webhook http://127.0.0.1:9/migrate failed: connection refused"));
    // An answer for another step (or attempt) is stale.
    assert_eq!(apply(&plan, &st, answer(0, Ok(200)), at(2)), st);
    // After a restart of the sidecar the call is made again.
    let t = step(&plan, &st, Event::Resumed, at(3)).unwrap();
    assert_eq!((t.status, t.effects), (st, vec![call]));
}

#[test]
fn a_canary_breaker_trip_aborts_an_active_rollout_only() {
    let plan = seed();
    let st = apply(&plan, &start(&plan).status, Event::Promote, at(1));
    let trip = |attempt| Event::BreakerTripped {
        attempt,
        breaker: "canary-latency".into(),
        trips: 1,
    };
    let aborted = apply(&plan, &st, trip(st.attempt), at(2));
    assert_eq!(aborted.phase, Phase::Aborted);
    assert_eq!(
        aborted.message,
        "aborted at step 4/6: circuit breaker 'canary-latency' on the canary opened (1 trip); \
         all traffic is back on stable"
    );
    assert_eq!(apply(&plan, &st, trip(st.attempt + 1), at(2)), st, "stale");
    let mut done = st.clone();
    for _ in 0..2 {
        done = apply(&plan, &done, Event::Promote, at(3));
    }
    assert_eq!(done.phase, Phase::Promoted);
    assert_eq!(apply(&plan, &done, trip(done.attempt), at(4)), done);
}

#[test]
fn resume_after_restart_from_the_status_file() {
    let plan = with_strategy(
        "    steps:
      - setWeight: 30
      - pause: { duration: 1m }
      - setWeight: 60
      - pause: {}
",
    );
    let st = start(&plan).status;
    // What the sidecar writes and reads back.
    let json = serde_json::to_string_pretty(&st).unwrap();
    let back: RolloutStatus = serde_json::from_str(&json).unwrap();
    assert_eq!(back, st);
    // Back within the pause: still paused, same everything.
    let t = step(&plan, &back, Event::Resumed, at(30)).unwrap();
    assert_eq!(t.status, st);
    // Back after the pause's end: it ends at once.
    let t = step(&plan, &back, Event::Resumed, at(61)).unwrap();
    assert_eq!((t.status.current_step, t.status.canary_weight), (3, 60.0));
    // Terminal states stay as they are.
    let aborted = apply(&plan, &st, Event::Abort, at(1));
    assert_eq!(apply(&plan, &aborted, Event::Resumed, at(2)), aborted);
}

#[test]
fn spec_changes_edit_in_place_or_start_a_new_release() {
    let plan = seed();
    let mut st = apply(&plan, &start(&plan).status, Event::Promote, at(1));
    st.policy_version = 7;
    // Same revision (limits, breakers, fixed routes, analysis bounds changed): no change.
    let t = step(&plan, &st, Event::SpecChanged, at(2)).unwrap();
    assert_eq!(t.status, st);
    // New steps: a new release from the first step; the version is the sidecar's.
    let new = with_strategy("    steps: [ { setWeight: 5 }, { pause: {} } ]\n");
    let t = step(&new, &st, Event::SpecChanged, at(3)).unwrap();
    let restarted = t.status;
    assert_eq!((restarted.current_step, restarted.canary_weight), (1, 5.0));
    assert_eq!(restarted.header_route, None);
    assert_eq!(restarted.attempt, st.attempt + 1);
    assert_eq!(restarted.revision, new.revision);
    assert_eq!(restarted.policy_version, 7);
    assert!(
        notes(&step(&new, &st, Event::SpecChanged, at(3)).unwrap())[0]
            .starts_with("new release (stable, canary or steps changed): starting over")
    );
    // A promoted rollout whose canary changes starts the next release.
    let mut done = st.clone();
    for _ in 0..2 {
        done = apply(&plan, &done, Event::Promote, at(4));
    }
    assert_eq!(done.phase, Phase::Promoted);
    let t = step(&new, &done, Event::SpecChanged, at(5)).unwrap();
    assert_eq!(t.status.phase, Phase::Paused);
    assert_eq!(t.status.canary_weight, 5.0);
    // An aborted rollout stays aborted on an edit.
    let aborted = apply(&plan, &st, Event::Abort, at(6));
    assert_eq!(apply(&plan, &aborted, Event::SpecChanged, at(7)), aborted);
}

#[test]
fn every_step_kind_is_covered() {
    // A guard: the cases above cover each kind; a new kind must add its own.
    for s in seed()
        .steps
        .iter()
        .chain(&with_strategy("    steps: [ { webhook: { url: \"http://x/\" } } ]\n").steps)
        .chain(&with_strategy("    steps: [ { setMirror: { percent: 5 } } ]\n").steps)
    {
        match s {
            PlanStep::SetWeight(_)
            | PlanStep::Pause(_)
            | PlanStep::SetHeaderRoute(_)
            | PlanStep::SetMirror(..)
            | PlanStep::Webhook { .. } => {}
        }
    }
}

fn mirroring() -> Plan {
    with_strategy(
        "    steps:\n      - setMirror: { percent: 10 }\n      - pause: {}\n      \
         - setMirror: { percent: 0 }\n      - setWeight: 20\n      - setMirror: { percent: 30 }\n      \
         - pause: {}\n",
    )
}

#[test]
fn set_mirror_copies_until_a_later_step_stops_it() {
    let plan = mirroring();
    let t = start(&plan);
    assert_eq!(
        (t.status.phase, t.status.mirror_percent),
        (Phase::Paused, 10.0)
    );
    assert_eq!(t.status.canary_weight, 0.0);
    assert!(notes(&t).contains(&"step 1/6: 10% of requests copied to the canary".to_string()));
    // The rendered policy copies that share of the release route to the canary.
    let policy = crate::render::render("flask", &plan.spec, &t.status);
    let route = policy.routes.last().unwrap();
    let mirror = route.mirror.as_ref().unwrap();
    assert_eq!((mirror.variant.as_str(), mirror.percent), ("canary", 10.0));
    assert!(crate::render::accept_rendered(&policy).is_ok());
    let t = step(&plan, &t.status, Event::Promote, at(1)).unwrap();
    assert_eq!(t.status.mirror_percent, 30.0);
    assert_eq!(t.status.canary_weight, 20.0);
    assert!(notes(&t).contains(&"step 3/6: mirroring off".to_string()));
    // Off: the policy has no mirror at all (not a 0 % one).
    let mut off = t.status.clone();
    off.mirror_percent = 0.0;
    let policy = crate::render::render("flask", &plan.spec, &off);
    assert!(policy.routes.iter().all(|r| r.mirror.is_none()));
}

#[test]
fn set_mirror_can_compare_bodies_until_mirroring_ends() {
    let plan = with_strategy(
        "    steps:\n      - setMirror: { percent: 20, compareBody: 4096 }\n      - pause: {}\n      \
         - setMirror: { percent: 0, compareBody: 4096 }\n      - pause: {}\n",
    );
    let st = start(&plan).status;
    assert_eq!((st.mirror_percent, st.mirror_compare_body), (20.0, 4096));
    let policy = crate::render::render("flask", &plan.spec, &st);
    let mirror = policy.routes.last().unwrap().mirror.as_ref().unwrap();
    assert_eq!(mirror.compare_body, 4096);
    assert!(crate::render::accept_rendered(&policy).is_ok());
    // Stopping the mirror stops comparing, whatever the step says.
    let off = apply(&plan, &st, Event::Promote, at(1));
    assert_eq!((off.mirror_percent, off.mirror_compare_body), (0.0, 0));
    let aborted = apply(&plan, &st, Event::Abort, at(1));
    assert_eq!(aborted.mirror_compare_body, 0);
    // Validated like the filter's field.
    let head = crate::testdata::SEED_YAML
        .split("  strategy:\n")
        .next()
        .unwrap();
    let too_big =
        format!("{head}  strategy:\n    steps:\n      - setMirror: {{ percent: 5, compareBody: 2000000 }}\n");
    let errs = crate::validate::load(&too_big).unwrap_err().to_string();
    assert!(errs.contains("setMirror.compareBody"), "{errs}");
}

#[test]
fn abort_promotion_and_retry_end_mirroring() {
    let plan = mirroring();
    let st = start(&plan).status;
    assert_eq!(st.mirror_percent, 10.0);
    let aborted = apply(&plan, &st, Event::Abort, at(1));
    assert_eq!(
        (aborted.phase, aborted.mirror_percent),
        (Phase::Aborted, 0.0)
    );
    let policy = crate::render::render("flask", &plan.spec, &aborted);
    assert!(policy.routes.iter().all(|r| r.mirror.is_none()));
    // A failed analysis (no failureLimit here: the first) aborts the same way.
    let failing = apply(
        &plan,
        &st,
        Event::Analysis {
            attempt: st.attempt,
            measurement: measurement(Verdict::Failed, 0.5),
        },
        at(2),
    );
    assert_eq!(
        (failing.phase, failing.mirror_percent),
        (Phase::Aborted, 0.0)
    );
    // Retry starts over: the first step turns mirroring on again.
    let retried = apply(&plan, &aborted, Event::Retry, at(9));
    assert_eq!(retried.mirror_percent, 10.0);
    // Promotion through the end: the canary serves everyone, nothing is shadowed.
    let mut done = st;
    for i in 0..2 {
        done = apply(&plan, &done, Event::Promote, at(10 + i));
    }
    assert_eq!((done.phase, done.mirror_percent), (Phase::Promoted, 0.0));
}

#[test]
fn a_canary_whose_copies_mismatch_is_aborted_before_any_user_reaches_it() {
    let plan = with_strategy(
        "    steps:\n      - setMirror: { percent: 20 }\n      - pause: { duration: 10m }\n      \
         - setWeight: 50\n    analysis:\n      interval: 1s\n      minRequests: 20\n      \
         metrics: [ { name: shadow-mismatch, max: 0.05 } ]\n",
    );
    let st = start(&plan).status;
    assert_eq!((st.mirror_percent, st.canary_weight), (20.0, 0.0));
    let analysis = plan.analysis.as_ref().unwrap();
    // The copies' answers, as the judge measures them: a tenth differ from stable's.
    let delta = crate::analysis::CanaryCounters {
        shadow_classes: [0.0, 200.0, 0.0, 0.0, 0.0],
        shadow_mismatch: 20.0,
        ..Default::default()
    };
    let measurement = crate::analysis::measure(analysis, &delta, at(1));
    let t = step(
        &plan,
        &st,
        Event::Analysis {
            attempt: st.attempt,
            measurement,
        },
        at(1),
    )
    .unwrap();
    let st = t.status;
    assert_eq!(st.phase, Phase::Aborted);
    assert_eq!((st.canary_weight, st.mirror_percent), (0.0, 0.0));
    assert!(
        st.message.contains("shadow-mismatch 0.1 > max 0.05"),
        "{}",
        st.message
    );
}
