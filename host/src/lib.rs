//! `rollgate`: the command line, and later the wasmtime host, sidecar and controller.
//!
//! Data flow today: the CLI reads a policy file and hands it to the filter's own compiler
//! ([`rollgate_plugin::policy::Policy`]), so `rollgate validate` accepts exactly what the
//! filter accepts inside Envoy, with the same messages.
//!
//! Releases: [`rollout`] holds the `Rollout` resource and the two pure functions that drive
//! it (render: spec + status → policy; step: status + event → status + effects);
//! [`serve`] is the sidecar (`rollgate serve --dir`) that runs them over a directory of
//! Rollout files, long-polls policies to the filters, and reads the gateways' stats for
//! analysis; [`cli`] is `serve` and the client side of `promote`, `abort`, `retry`, `status`.

pub mod cli;
pub mod kube;
pub mod rollout;
pub mod serve;
pub mod try_cmd;
pub mod validate;
pub mod wasmhost;
