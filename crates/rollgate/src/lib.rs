//! `rollgate`, the binary: argument parsing, output and exit codes over the other crates.
//!
//! | crate | owns |
//! |---|---|
//! | `rollgate-policy` | rules, policy compile, sticky buckets, limiter, breakers, the request pipeline |
//! | `rollgate-filter` | the proxy-wasm glue: `rollgate_plugin.wasm` |
//! | `rollgate-rollout` ([`rollout`]) | the Rollout resource, validate, step, render, the analysis judge, webhooks, views |
//! | `rollgate-sidecar` ([`serve`]) | `serve --dir` |
//! | `rollgate-controller` ([`kube`]) | `serve --kubernetes` |
//! | `rollgate-wasmhost` ([`wasmhost`]) | a proxy-wasm host on wasmtime that behaves like Envoy |
//!
//! Here: [`cli`] parses the command line and talks to a sidecar or a cluster; `rollgate
//! validate` ([`validate`]) hands a policy or filter configuration to the filter's own
//! acceptance functions ([`rollgate_policy::config::accept_config`],
//! [`rollgate_policy::policy::accept_policy`]), so it accepts exactly what the filter accepts
//! inside Envoy, with the same messages; `rollgate try` ([`try_cmd`]) runs the filter's
//! `.wasm` on [`wasmhost`] as Envoy would. The other crates are re-exported under the names
//! the commands use.

pub use rollgate_controller as kube;
pub use rollgate_rollout as rollout;
pub use rollgate_sidecar as serve;
pub use rollgate_wasmhost as wasmhost;

pub mod args;
pub mod bench;
pub mod cli;
pub mod try_cmd;
pub mod validate;
