//! `rollgate serve --dir`: rollout files added, changed, broken, deleted; status files; a
//! restart resuming where it was.

mod rollout_support;

use std::time::Duration;

use rollgate_policy::policy::Policy;
use rollout_support::{seed_with_strategy, wait_until, Sidecar, TempDir, SEED};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

fn version(s: &Sidecar, name: &str) -> u64 {
    s.get(&format!("/v1/policies/{name}?wait=0s"))
        .header("x-rollgate-version")
        .map_or(0, |v| v.parse().unwrap())
}

fn policy(s: &Sidecar, name: &str) -> Policy {
    let r = s.get(&format!("/v1/policies/{name}"));
    assert_eq!(r.status, 200, "{}", r.text());
    Policy::from_json(&r.body).unwrap()
}

fn weight(p: &Policy) -> f64 {
    p.spec.routes.last().unwrap().split.as_ref().unwrap()[0].weight
}

#[test]
fn files_are_added_changed_and_deleted() {
    let dir = TempDir::new("dir");
    // A deleted file is dropped once it has been gone this long.
    let s = Sidecar::start_with(&dir.0, &[], |c| {
        c.vanished_grace = Duration::from_millis(300)
    });
    assert_eq!(s.get("/v1/policies/flask?wait=0s").status, 404);
    let list: Value = serde_json::from_slice(&s.get("/v1/rollouts").body).unwrap();
    assert_eq!(list["rollouts"], serde_json::json!([]));

    // Added.
    dir.write("flask.yaml", SEED);
    wait_until("flask to be served", WAIT, || version(&s, "flask") == 1);
    assert!(
        s.logged("flask.yaml: loaded rollout flask (6 steps)"),
        "{}",
        s.log_text()
    );
    let status: Value = serde_json::from_str(&dir.read("flask.status.json")).unwrap();
    assert_eq!(status["rollout"], "flask");
    assert_eq!(status["status"]["phase"], "Paused");
    assert_eq!(status["status"]["policyVersion"], 1);
    assert_eq!(status["policy"]["name"], "flask");

    // Changed in place (a limit): same step, new policy version.
    dir.write("flask.yaml", &SEED.replace("average: 500", "average: 400"));
    wait_until("the edit to be served", WAIT, || version(&s, "flask") == 2);
    let p = policy(&s, "flask");
    assert_eq!(p.spec.rate_limits[0].average, 400.0);
    assert_eq!(s.rollout("flask")["status"]["currentStep"], 1);

    // Changed as a new release (new steps): starts over, the version keeps growing.
    assert_eq!(s.post("/v1/rollouts/flask/promote").status, 200);
    assert_eq!(weight(&policy(&s, "flask")), 50.0);
    dir.write(
        "flask.yaml",
        &seed_with_strategy("    steps: [ { setWeight: 20 }, { pause: {} } ]\n"),
    );
    wait_until("the new release", WAIT, || {
        weight(&policy(&s, "flask")) == 20.0
    });
    let v = s.rollout("flask");
    assert_eq!(v["status"]["attempt"], 2);
    assert_eq!(v["status"]["currentStep"], 1);
    assert!(version(&s, "flask") >= 4);

    // A second rollout beside it.
    dir.write("other.yml", &SEED.replace("name: flask", "name: other"));
    wait_until("other to be served", WAIT, || version(&s, "other") == 1);

    // Deleted: no longer served, status file gone, once the grace has passed.
    let last = version(&s, "flask");
    std::fs::remove_file(dir.path("flask.yaml")).unwrap();
    wait_until("flask to be dropped", WAIT, || {
        s.get("/v1/policies/flask?wait=0s").status == 404
    });
    assert!(!dir.path("flask.status.json").exists());
    assert_eq!(s.get("/v1/rollouts/flask").status, 404);
    assert_eq!(version(&s, "other"), 1, "the other rollout is untouched");

    // Re-created: versions go on from where the deleted one stopped, so filters that had
    // it see the new one as newer.
    dir.write("flask.yaml", SEED);
    wait_until("flask to be back", WAIT, || version(&s, "flask") > last);
}

#[test]
fn an_invalid_file_is_reported_and_the_last_good_keeps_serving() {
    let dir = TempDir::new("invalid");
    dir.write("flask.yaml", SEED);
    let s = Sidecar::start(&dir.0, &[]);
    assert_eq!(version(&s, "flask"), 1);

    dir.write(
        "flask.yaml",
        &SEED.replace("- setWeight: 50", "- setWeight: 150"),
    );
    let expected = "spec.strategy.steps[2].setWeight: must be between 0 and 100, got 150";
    wait_until("the error to show", WAIT, || {
        s.rollout("flask")["error"]
            .as_str()
            .is_some_and(|e| e.contains(expected))
    });
    assert!(
        s.logged(&format!(
            "flask.yaml: invalid, policy v1 keeps serving: {expected}"
        )),
        "{}",
        s.log_text()
    );
    let status: Value = serde_json::from_str(&dir.read("flask.status.json")).unwrap();
    assert!(status["error"].as_str().unwrap().contains(expected));
    // Still served, still driven.
    assert_eq!(version(&s, "flask"), 1);
    assert_eq!(s.post("/v1/rollouts/flask/promote").status, 200);
    assert_eq!(weight(&policy(&s, "flask")), 50.0);
    assert!(s
        .get("/metrics")
        .text()
        .contains("rollgate_rollout_invalid{rollout=\"flask\"} 1"));

    // YAML that does not parse at all.
    dir.write("flask.yaml", "spec: [unclosed\n");
    wait_until("the parse error to show", WAIT, || {
        s.rollout("flask")["error"]
            .as_str()
            .is_some_and(|e| e.contains("line"))
    });
    assert_eq!(version(&s, "flask"), 2);

    // Fixed: the error clears.
    dir.write("flask.yaml", SEED);
    wait_until("the error to clear", WAIT, || {
        s.rollout("flask")["error"].is_null()
    });
    let status: Value = serde_json::from_str(&dir.read("flask.status.json")).unwrap();
    assert!(status["error"].is_null());
    assert_eq!(s.rollout("flask")["status"]["currentStep"], 3);
}

#[test]
fn a_file_invalid_from_the_start_is_listed_with_its_error() {
    let dir = TempDir::new("never");
    dir.write(
        "broken.yaml",
        &SEED.replace("kind: Rollout", "kind: Deployment"),
    );
    dir.write(
        "twin.yaml",
        SEED, // name flask
    );
    dir.write("zz-twin.yaml", SEED); // also flask: refused, the name is taken
    dir.write("notes.txt", "not a rollout");
    let s = Sidecar::start(&dir.0, &[]);
    let list: Value = serde_json::from_slice(&s.get("/v1/rollouts").body).unwrap();
    let names: Vec<&str> = list["rollouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["broken", "flask", "zz-twin"]);
    let broken = s.rollout("broken");
    assert_eq!(broken["error"], "kind: must be Rollout, got 'Deployment'");
    assert_eq!(broken["serving"], false);
    assert_eq!(
        s.rollout("zz-twin")["error"],
        "metadata.name: 'flask' is already the name of twin.yaml"
    );
    let r = s.post("/v1/rollouts/broken/promote");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(s.logged("broken.yaml: invalid, nothing is served for it"));
    assert!(dir.path("broken.status.json").exists());
}

#[test]
fn a_restart_resumes_step_and_version() {
    let dir = TempDir::new("restart");
    dir.write(
        "flask.yaml",
        &seed_with_strategy(
            "    steps:
      - setWeight: 10
      - pause: {}
      - setWeight: 30
      - pause: { duration: 1s }
      - setWeight: 60
      - pause: {}
",
        ),
    );
    let mut s = Sidecar::start(&dir.0, &[]);
    assert_eq!(s.post("/v1/rollouts/flask/promote").status, 200);
    wait_until("the timed pause to end", WAIT, || {
        s.rollout("flask")["status"]["currentStep"] == 5
    });
    let before = s.rollout("flask")["status"].clone();
    let v = version(&s, "flask");
    assert_eq!(v, 3);
    s.server.stop();
    drop(s);

    let s = Sidecar::start(&dir.0, &[]);
    let after = s.rollout("flask")["status"].clone();
    assert_eq!(after, before, "same step, weight, attempt and version");
    assert_eq!(version(&s, "flask"), v);
    assert_eq!(weight(&policy(&s, "flask")), 60.0);
    // A filter at v3 keeps waiting; the next change is v4.
    assert_eq!(s.get("/v1/policies/flask?version=3&wait=100ms").status, 304);
    assert_eq!(s.post("/v1/rollouts/flask/promote").status, 200);
    assert_eq!(version(&s, "flask"), 4);
    assert_eq!(s.rollout("flask")["status"]["phase"], "Promoted");
}

#[test]
fn a_restart_with_a_broken_file_serves_the_last_good_policy() {
    let dir = TempDir::new("restart-broken");
    dir.write("flask.yaml", SEED);
    let mut s = Sidecar::start(&dir.0, &[]);
    assert_eq!(s.post("/v1/rollouts/flask/promote").status, 200);
    s.server.stop();
    drop(s);
    dir.write("flask.yaml", "apiVersion: [\n");
    let s = Sidecar::start(&dir.0, &[]);
    assert_eq!(version(&s, "flask"), 2);
    assert_eq!(weight(&policy(&s, "flask")), 50.0);
    assert!(s.rollout("flask")["error"].is_string());
    // Nothing can drive it until the file is fixed.
    assert_eq!(s.post("/v1/rollouts/flask/promote").status, 409);
    dir.write("flask.yaml", SEED);
    wait_until("the fix", WAIT, || s.rollout("flask")["error"].is_null());
    assert_eq!(version(&s, "flask"), 2, "same policy, same version");
    assert_eq!(s.rollout("flask")["status"]["currentStep"], 3);
}

#[test]
fn renaming_a_rollout_serves_it_under_the_new_name() {
    let dir = TempDir::new("rename");
    dir.write("flask.yaml", SEED);
    let s = Sidecar::start(&dir.0, &[]);
    assert_eq!(s.post("/v1/rollouts/flask/promote").status, 200);
    assert_eq!(version(&s, "flask"), 2);
    dir.write("flask.yaml", &SEED.replace("name: flask", "name: flask-v2"));
    wait_until("the new name", WAIT, || version(&s, "flask-v2") > 0);
    assert_eq!(s.get("/v1/policies/flask?wait=0s").status, 404);
    assert_eq!(version(&s, "flask-v2"), 3, "versions go on");
    let v = s.rollout("flask-v2");
    assert_eq!(
        v["status"]["currentStep"], 1,
        "a new rollout, from the start"
    );
    assert_eq!(policy(&s, "flask-v2").spec.name, "flask-v2");
}

/// A Rollout whose `match` nests 8,000 parentheses was accepted and served (trapping every
/// gateway that fetched it) and around 2,500 overflowed the sidecar's own stack. Now it is
/// refused with the column, and the sidecar and the last good policy carry on.
#[test]
fn a_deeply_nested_match_is_refused_and_the_sidecar_carries_on() {
    let dir = TempDir::new("deep");
    dir.write("flask.yaml", SEED);
    let s = Sidecar::start(&dir.0, &[]);
    assert_eq!(version(&s, "flask"), 1);
    let deep = format!("{}Host(`pro.coding`){}", "(".repeat(8000), ")".repeat(8000));
    dir.write(
        "flask.yaml",
        &SEED.replace(
            "  match: \"Host(`pro.coding`)\"",
            &format!("  match: \"{deep}\""),
        ),
    );
    let expected = "spec.match: column 33: nesting deeper than 32";
    wait_until("the error to show", WAIT, || {
        s.rollout("flask")["error"]
            .as_str()
            .is_some_and(|e| e.contains(expected))
    });
    assert_eq!(s.get("/healthz").status, 200);
    assert_eq!(
        version(&s, "flask"),
        1,
        "the last good policy keeps serving"
    );
    policy(&s, "flask");
}
