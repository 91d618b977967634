//! The step engine with gateways known: a step that changes the policy waits until every
//! gateway serves its version.

use super::*;
use crate::status::{AnalysisStatus, GatewayStatus, Verdict};
use crate::testdata::with_strategy;

const T0: Timestamp = Timestamp(1_800_000_000_000);

fn at(secs: u64) -> Timestamp {
    T0.plus_ms(secs * 1000)
}

const STEPS: &str = "    steps:
      - setWeight: 20
      - pause: { duration: 10s }
      - setWeight: 50
      - pause: {}
    analysis:
      interval: 1s
      metrics: [{ name: success-rate, min: 0.99 }]
";

fn plan(acknowledge: &str) -> Plan {
    with_strategy(&format!("{STEPS}{acknowledge}"))
}

fn gw(name: &str, version: Option<u64>) -> GatewayStatus {
    GatewayStatus {
        gateway: name.into(),
        version,
        unreachable: false,
    }
}

fn gateways(versions: [u64; 3]) -> Event {
    Event::Gateways {
        gateways: ["a:1", "b:2", "c:3"]
            .iter()
            .zip(versions)
            .map(|(n, v)| gw(n, Some(v)))
            .collect(),
    }
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

/// Applies `e` and then does what the sidecar does when it stores the status: a step that
/// changed the policy gets the next version.
fn push(plan: &Plan, st: &RolloutStatus, e: Event, now: Timestamp) -> Transition {
    let mut t = step(plan, st, e, now).unwrap();
    t.status.policy_version = st.policy_version;
    if (t.status.canary_weight, &t.status.header_route) != (st.canary_weight, &st.header_route) {
        t.status.policy_version += 1;
    }
    t
}

/// Three gateways on v1, then the release starts: step 1 waits for v2.
fn started(plan: &Plan) -> RolloutStatus {
    let known = RolloutStatus {
        policy_version: 1,
        ..RolloutStatus::default()
    };
    let known = push(plan, &known, gateways([1, 1, 1]), T0).status;
    assert_eq!(known.gateways.len(), 3);
    let t = push(plan, &known, Event::SpecChanged, T0);
    let st = t.status;
    assert_eq!(
        (
            st.phase,
            st.current_step,
            st.canary_weight,
            st.policy_version
        ),
        (Phase::Progressing, 0, 20.0, 2)
    );
    assert_eq!(
        st.message,
        "step 1/4: waiting for 3 gateways to serve the new policy"
    );
    assert!(st.awaiting_gateways.is_some());
    st
}

#[test]
fn a_step_waits_until_every_gateway_serves_its_version() {
    let plan = plan("");
    let st = started(&plan);
    // Time alone does not move it (no deadline: it waits as long as it takes).
    let st = push(&plan, &st, Event::Tick, at(3600)).status;
    assert_eq!((st.phase, st.current_step), (Phase::Progressing, 0));
    let st = push(&plan, &st, gateways([2, 2, 1]), at(1)).status;
    assert_eq!(st.message, "step 1/4: 2/3 gateways on v2; c:3 still on v1");
    assert_eq!(st.current_step, 0);
    // Resuming (a sidecar restart) keeps waiting rather than re-running the step.
    let st = push(&plan, &st, Event::Resumed, at(2)).status;
    assert_eq!((st.current_step, st.policy_version), (0, 2));
    // A measurement taken while part of the traffic ran the old policy does not count.
    let failed = Event::Analysis {
        attempt: st.attempt,
        measurement: AnalysisStatus {
            at: at(3),
            verdict: Verdict::Failed,
            requests: 100,
            figures: Vec::new(),
        },
    };
    let st = push(&plan, &st, failed, at(3)).status;
    assert_eq!((st.failed_analyses, st.phase), (0, Phase::Progressing));
    // The last one catches up at 5 s: the step is applied and the timed pause counts from
    // then (not from the push at 0 s).
    let t = push(&plan, &st, gateways([2, 2, 2]), at(5));
    assert_eq!(
        notes(&t),
        vec![
            "step 1/4 applied: all 3 gateways on v2".to_string(),
            "paused at step 2/4 for 10s (until 2027-01-15T08:00:15.000Z); \
         `rollgate promote flask` ends it early"
                .to_string(),
        ]
    );
    let st = t.status;
    assert_eq!((st.phase, st.current_step), (Phase::Paused, 1));
    assert_eq!(
        (st.step_started_at, st.awaiting_gateways),
        (Some(at(5)), None)
    );
    assert_eq!(push(&plan, &st, Event::Tick, at(14)).status.current_step, 1);
    // Step 3 changes the policy again: v3, waited for as well.
    let st = push(&plan, &st, Event::Tick, at(15)).status;
    assert_eq!(
        (
            st.phase,
            st.current_step,
            st.canary_weight,
            st.policy_version
        ),
        (Phase::Progressing, 2, 50.0, 3)
    );
    let st = push(&plan, &st, gateways([3, 3, 3]), at(16)).status;
    assert_eq!((st.phase, st.current_step), (Phase::Paused, 3));
}

#[test]
fn unreachable_and_policyless_gateways_lag() {
    let plan = plan("");
    let st = started(&plan);
    let e = Event::Gateways {
        gateways: vec![
            gw("a:1", Some(2)),
            GatewayStatus {
                gateway: "b:2".into(),
                version: None,
                unreachable: true,
            },
            gw("c:3", Some(0)),
        ],
    };
    let st = push(&plan, &st, e, at(1)).status;
    assert_eq!(
        st.message,
        "step 1/4: 1/3 gateways on v2; b:2 unreachable, c:3 serving no policy"
    );
    assert_eq!(st.current_step, 0);
}

#[test]
fn past_the_deadline_it_aborts_naming_the_gateway() {
    let plan = plan("  acknowledge: { deadline: 30s, onDeadline: abort }\n");
    let st = started(&plan);
    let st = push(&plan, &st, gateways([2, 1, 2]), at(29)).status;
    assert_eq!(st.phase, Phase::Progressing);
    // The deadline is judged at a reading of the gateways, not by the clock alone.
    let st = push(&plan, &st, Event::Tick, at(31)).status;
    assert_eq!(st.phase, Phase::Progressing);
    let t = push(&plan, &st, gateways([2, 1, 2]), at(32));
    assert_eq!(t.status.phase, Phase::Aborted);
    assert_eq!(
        t.status.message,
        "aborted at step 1/4: the gateways did not serve v2 within 30s: 2/3 gateways on v2; \
         b:2 still on v1; all traffic is back on stable"
    );
    assert_eq!(
        (t.status.canary_weight, t.status.awaiting_gateways),
        (0.0, None)
    );
    // Gateways read after the abort are still recorded, and move nothing.
    let after = push(&plan, &t.status, gateways([3, 3, 3]), at(31)).status;
    assert_eq!(after.phase, Phase::Aborted);
    assert_eq!(after.gateways[1].version, Some(3));
}

#[test]
fn past_the_deadline_it_waits_on_when_told_to() {
    let plan = plan("  acknowledge: { deadline: 30s }\n");
    let st = started(&plan);
    let st = push(&plan, &st, gateways([2, 1, 2]), at(1)).status;
    let t = push(&plan, &st, gateways([2, 1, 2]), at(31));
    let msg = "step 1/4: 2/3 gateways on v2; b:2 still on v1 (past the 30s deadline, waiting on)";
    assert_eq!(notes(&t), vec![msg.to_string()]);
    let st = t.status;
    assert_eq!((st.phase, st.message.as_str()), (Phase::Progressing, msg));
    // Said once.
    let t = push(&plan, &st, gateways([2, 1, 2]), at(40));
    assert!(notes(&t).is_empty());
    let st = push(&plan, &t.status, gateways([2, 2, 2]), at(41)).status;
    assert_eq!((st.phase, st.current_step), (Phase::Paused, 1));
}

#[test]
fn without_gateways_steps_apply_at_once_as_before() {
    let plan = plan("  acknowledge: { deadline: 30s, onDeadline: abort }\n");
    let t = push(&plan, &RolloutStatus::default(), Event::SpecChanged, T0);
    assert_eq!((t.status.phase, t.status.current_step), (Phase::Paused, 1));
    assert_eq!(t.status.awaiting_gateways, None);
    // An empty reading (every gateway removed) releases a waiting step.
    let st = started(&plan);
    let st = push(&plan, &st, Event::Gateways { gateways: vec![] }, at(1)).status;
    assert_eq!((st.phase, st.current_step), (Phase::Paused, 1));
    // Abort and retry clear the wait; the retry waits again for its own push.
    let st = started(&plan);
    let aborted = push(&plan, &st, Event::Abort, at(1)).status;
    assert_eq!(aborted.awaiting_gateways, None);
    let retried = push(&plan, &aborted, Event::Retry, at(2)).status;
    assert_eq!(retried.current_step, 0);
    assert!(retried.awaiting_gateways.is_some());
}
