//! Kubernetes: the Rollout CRD generated from [`rollgate_rollout::types`], the controller
//! (`serve --kubernetes`, [`run`]) that drives Rollouts with the driver of `serve --dir`
//! ([`rollgate_rollout::driver`]), leader election ([`lease`]) and the commands the CLI runs
//! on Rollouts in the cluster ([`commands`]; the CLI side is the `rollgate` crate's
//! `cli::cluster`). It links no wasm runtime: `cargo tree -p rollgate-controller` has no
//! wasmtime.
//!
//! Data flow: once this replica leads ([`lease`]), kube's controller over every Rollout calls
//! [`controller::reconcile`], level-triggered and idempotent: validate the spec, then one
//! pass of the driver over the Rollout as a store (the object read, the API written): step
//! the status with the engine's events (analysis from [`analysis`], webhook answers from the
//! driver's runner), render the policy, server-side-apply the WasmPlugin and the status.
//!
//! The CRD is printed by `rollgate crd` and committed as `manifests/crd/rollout.yaml`; a test
//! (`crates/controller/tests/crd.rs`) fails when the two differ. Regenerate with
//! `cargo run -q -p rollgate -- crd > manifests/crd/rollout.yaml`.

pub mod analysis;
pub mod commands;
pub mod controller;
pub mod crd;
pub mod lease;
pub mod prometheus;
pub mod rbac;
pub mod run;
