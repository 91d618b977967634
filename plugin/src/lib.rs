//! rollgate's filter: routes each request to a variant (stable, canary, dev, …) inside Envoy.
//!
//! Data flow: Envoy hands the plugin configuration to `on_configure`, where
//! [`config::accept_config`] parses, validates and compiles it once (rules into
//! [`rule::Matcher`]s, splits into bucket ranges). Each request's header map is read once into
//! a borrowed [`request::Request`]. [`pipeline::Exchange`] runs the request's whole data path
//! over a [`pipeline::Host`] (limits, then [`policy::Policy::decide`]: first matching route;
//! sticky splits bucket a user key with [`sticky::bucket`]; then breakers and, on the way
//! back, response accounting) and returns a plan. The glue in `filter` only carries it out: it
//! strips client-sent internal headers and writes the cluster and variant headers, which the
//! route configuration reads (no `clear_route_cache` call: Envoy re-matches by itself after a
//! header change by a filter of ABI 0.2.1, see `filter/http.rs`). Everything but `filter` is
//! plain Rust, tested natively.

pub mod breaker;
pub mod config;
pub mod duration;
pub mod excerpt;
pub mod fetch;
pub mod limits;
pub mod murmur3;
pub mod pipeline;
pub mod policy;
pub mod ratelimit;
pub mod request;
pub mod rule;
pub mod stats;
pub mod sticky;
pub mod store;

#[cfg(target_arch = "wasm32")]
mod filter;
