//! `rollgate`: the command line, the wasmtime host, the sidecar and the controller.
//!
//! Policies: `rollgate validate` hands a policy or filter configuration to the filter's own
//! acceptance functions ([`rollgate_plugin::config::accept_config`],
//! [`rollgate_plugin::policy::accept_policy`]), so it accepts exactly what the filter accepts
//! inside Envoy, with the same messages. [`wasmhost`] runs the filter's `.wasm` in-process on
//! wasmtime as Envoy would; `rollgate try` ([`try_cmd`]) feeds it requests.
//!
//! Releases: [`rollout`] holds the `Rollout` resource and the two pure functions that drive
//! it (render: spec + status → policy; step: status + event → status + effects);
//! [`serve`] is the sidecar (`rollgate serve --dir`) that runs them over a directory of
//! Rollout files, long-polls policies to the filters, and reads the gateways' stats for
//! analysis; [`kube`] is the same over Rollout resources in a cluster (`serve --kubernetes`,
//! with leader election); [`cli`] is `serve` and the client side of `promote`, `abort`,
//! `retry`, `status`.

pub mod cli;
pub mod kube;
pub mod rollout;
pub mod serve;
pub mod try_cmd;
pub mod validate;
pub mod wasmhost;
