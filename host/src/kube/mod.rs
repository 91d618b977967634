//! Kubernetes: the Rollout CRD generated from [`crate::rollout::types`], the controller
//! (`serve --kubernetes`, [`run`]) that drives Rollouts with the engine of `serve --dir`,
//! leader election ([`lease`]), webhook steps ([`webhooks`]) and the commands the CLI runs
//! on Rollouts in the cluster ([`commands`]; the CLI side is [`crate::cli::cluster`]).
//!
//! The CRD is printed by `rollgate crd` and committed as `manifests/crd/rollout.yaml`; a test
//! (`host/tests/crd.rs`) fails when the two differ. Regenerate with
//! `cargo run -q -p rollgate -- crd > manifests/crd/rollout.yaml`.

pub mod analysis;
pub mod commands;
pub mod controller;
pub mod crd;
pub mod lease;
pub mod prometheus;
pub mod rbac;
pub mod run;
pub mod webhooks;
