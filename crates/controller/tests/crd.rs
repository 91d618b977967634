//! The Rollout CRD: the committed manifest is what the Rust types generate, and its schema
//! accepts good Rollouts and rejects bad ones as the API server would (the OpenAPI v3 schema
//! run through a JSON-schema validator).

use std::path::Path;

use serde_json::{json, Value};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn committed_crd_matches_the_types() {
    let generated = rollgate_controller::crd::crd_yaml().unwrap();
    let path = repo().join("manifests/crd/rollout.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} differs from what the Rust types generate; regenerate it with\n  \
         cargo run -q -p rollgate -- crd > manifests/crd/rollout.yaml",
        path.display()
    );
}

/// Validates `doc` against the CRD's schema; Err holds the validator's message.
fn check(doc: &Value) -> Result<(), String> {
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    let url = "file:///rollout-v1alpha1.json";
    compiler
        .add_resource(url, rollgate_controller::crd::openapi_schema())
        .unwrap();
    let index = compiler.compile(url, &mut schemas).unwrap();
    schemas.validate(doc, index).map_err(|e| format!("{e:#}"))?;
    let mut doc = doc.clone();
    for envelope in ["apiVersion", "kind", "metadata"] {
        doc.as_object_mut().unwrap().remove(envelope);
    }
    unknown_fields(&rollgate_controller::crd::openapi_schema(), &doc, "")
}

/// The API server's strict field validation (`kubectl apply`'s default): a field the
/// structural schema does not declare is an error. kube drops `additionalProperties: false`
/// (Kubernetes forbids it), so the JSON-schema validator alone would let them through.
fn unknown_fields(schema: &Value, doc: &Value, at: &str) -> Result<(), String> {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true)) {
        return Ok(());
    }
    match doc {
        Value::Object(fields) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties");
            for (k, v) in fields {
                let path = format!("{at}/{k}");
                match (props.and_then(|p| p.get(k)), extra) {
                    (Some(sub), _) => unknown_fields(sub, v, &path)?,
                    (None, Some(sub)) if sub.is_object() => unknown_fields(sub, v, &path)?,
                    _ => return Err(format!("{path}: unknown field \"{k}\"")),
                }
            }
            Ok(())
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| unknown_fields(&schema["items"], v, &format!("{at}/{i}"))),
        _ => Ok(()),
    }
}

fn example() -> Value {
    let text = std::fs::read_to_string(repo().join("examples/rollout.yaml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

#[test]
fn example_rollout_is_accepted() {
    check(&example()).unwrap();
}

#[test]
fn status_the_controller_writes_is_accepted() {
    let mut doc = example();
    let status = rollgate_rollout::RolloutStatus {
        step_started_at: Some(rollgate_rollout::Timestamp(1_764_500_000_000)),
        ..Default::default()
    };
    doc["status"] = serde_json::to_value(status).unwrap();
    check(&doc).unwrap();
}

/// Applies `edit` to the example and expects the schema to refuse it, naming `needle`.
fn rejected(edit: impl FnOnce(&mut Value), needle: &str) {
    let mut doc = example();
    edit(&mut doc);
    match check(&doc) {
        Ok(()) => panic!("accepted a bad Rollout: {doc}"),
        Err(e) => assert!(e.contains(needle), "expected '{needle}' in: {e}"),
    }
}

#[test]
fn weight_out_of_range_is_rejected() {
    rejected(
        |d| d["spec"]["strategy"]["steps"][2] = json!({"setWeight": 150}),
        "/spec/strategy/steps/2/setWeight",
    );
    rejected(
        |d| d["spec"]["strategy"]["steps"][2] = json!({"setWeight": -1}),
        "/spec/strategy/steps/2/setWeight",
    );
    rejected(
        |d| d["spec"]["routes"][0] = json!({"split": [{"variant": "dev", "weight": 101}]}),
        "/spec/routes/0/split/0/weight",
    );
}

#[test]
fn missing_required_fields_are_rejected() {
    rejected(
        |d| {
            d["spec"].as_object_mut().unwrap().remove("strategy");
        },
        "strategy",
    );
    rejected(
        |d| {
            d["spec"].as_object_mut().unwrap().remove("variants");
        },
        "variants",
    );
    rejected(
        |d| d["spec"]["strategy"]["steps"] = json!([]),
        "/spec/strategy/steps",
    );
    rejected(
        |d| d["spec"]["strategy"]["steps"][0] = json!({"webhook": {"timeout": "5s"}}),
        "url",
    );
}

#[test]
fn a_step_sets_exactly_one_field() {
    rejected(
        |d| d["spec"]["strategy"]["steps"][0] = json!({"setWeight": 10, "pause": {}}),
        "/spec/strategy/steps/0",
    );
    rejected(
        |d| d["spec"]["strategy"]["steps"][0] = json!({}),
        "/spec/strategy/steps/0",
    );
}

#[test]
fn metrics_need_a_known_name_and_a_bound() {
    rejected(
        |d| d["spec"]["strategy"]["analysis"]["metrics"][0] = json!({"name": "cpu", "min": 1}),
        "/spec/strategy/analysis/metrics/0/name",
    );
    rejected(
        |d| d["spec"]["strategy"]["analysis"]["metrics"][0] = json!({"name": "success-rate"}),
        "/spec/strategy/analysis/metrics/0",
    );
}

#[test]
fn enums_and_types_are_enforced() {
    rejected(
        |d| d["status"] = json!({"phase": "Running"}),
        "/status/phase",
    );
    rejected(
        |d| d["spec"]["strategy"]["steps"][2] = json!({"setWeight": "fifty"}),
        "/spec/strategy/steps/2/setWeight",
    );
    rejected(
        |d| d["spec"]["expose_variant"] = json!(true),
        "/spec/expose_variant: unknown field",
    );
    rejected(
        |d| d["spec"]["strategy"]["steps"][1]["pause"]["durration"] = json!("1m"),
        "/spec/strategy/steps/1/pause/durration",
    );
}
