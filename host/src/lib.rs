//! `rollgate`: the command line, and later the wasmtime host, sidecar and controller.
//!
//! Data flow today: the CLI reads a policy file and hands it to the filter's own compiler
//! ([`rollgate_plugin::policy::Policy`]), so `rollgate validate` accepts exactly what the
//! filter accepts inside Envoy, with the same messages.

pub mod validate;
