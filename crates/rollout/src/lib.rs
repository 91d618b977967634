//! Rollouts: the `Rollout` resource ([`types`], [`parts`]), its validation into a [`Plan`]
//! ([`validate`]), the status it moves through ([`status`]), and the two pure functions that
//! drive a release:
//!
//! * [`render`]: spec + status → the policy the filter runs;
//! * [`step()`]: plan + status + event + now → new status + effects (webhook calls, notes).
//!
//! [`analysis`] turns the filter's counters into the measurements the engine judges, and
//! [`judge`] turns successive readings of the gateways' stats into the engine's events, for
//! the sidecar and the controller alike. [`webhook`] makes the calls a step's effects ask
//! for, over [`client`]; [`view`] is what the API and the CLI show. The engine itself
//! (`render`, `step`, `validate`) does no I/O and reads no clock: the sidecar
//! (`rollgate-sidecar`) and the controller (`rollgate-controller`) drive it and do both.

pub mod analysis;
pub mod client;
pub mod driver;
pub mod excerpt;
pub mod gateways;
pub mod judge;
pub mod notify;
pub mod parts;
pub mod plan;
pub mod render;
pub mod status;
pub mod step;
pub mod time;
pub mod types;
pub mod url;
pub mod validate;
pub mod view;
pub mod webhook;

#[cfg(test)]
mod testdata;

pub use plan::{Plan, PlanStep};
pub use render::{accept_rendered, render, render_tcp, tcp_policy_name};
pub use status::{AckWait, AnalysisStatus, Figure, GatewayStatus, Phase, RolloutStatus, Verdict};
pub use step::{step, Effect, Event, Refused, Transition};
pub use time::Timestamp;
pub use types::{Rollout, RolloutSpec, API_VERSION, KIND};
pub use validate::{load, FieldError, RolloutErrors};
