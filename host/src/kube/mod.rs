//! Kubernetes: the Rollout CRD generated from [`crate::rollout::types`].
//!
//! The CRD is printed by `rollgate crd` and committed as `manifests/crd/rollout.yaml`; a test
//! (`host/tests/crd.rs`) fails when the two differ. Regenerate with
//! `cargo run -q -p rollgate -- crd > manifests/crd/rollout.yaml`.

pub mod crd;
