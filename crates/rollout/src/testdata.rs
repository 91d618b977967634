//! Rollouts for the unit tests.

use super::plan::Plan;
use super::validate::load;

/// `examples/rollout.yaml`, the seed's Rollout.
pub const SEED_YAML: &str = include_str!("../../../examples/rollout.yaml");

/// The seed's plan.
pub fn seed() -> Plan {
    load(SEED_YAML).unwrap()
}

/// A plan from the seed with its `strategy` replaced by `strategy` (YAML, indented by 2).
pub fn with_strategy(strategy: &str) -> Plan {
    let head = SEED_YAML.split("  strategy:\n").next().unwrap().to_string();
    load(&format!("{head}  strategy:\n{strategy}")).unwrap()
}
