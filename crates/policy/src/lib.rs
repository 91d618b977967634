//! rollgate's policy: everything the filter decides, as plain Rust with no proxy-wasm.
//!
//! Data flow: a plugin configuration or a fetched policy goes through one acceptance function
//! ([`config::accept_config`], [`policy::accept_policy`]), which parses, validates and compiles
//! it once (rules into [`rule::Matcher`]s, splits into bucket ranges, limits and breakers).
//! Each request's header map becomes a borrowed [`request::Request`]; [`pipeline::Exchange`]
//! runs its whole data path over a [`pipeline::Host`] (shared data, clock, metrics): limits,
//! then [`policy::Policy::decide`] (first matching route; sticky splits bucket a user key with
//! [`sticky::bucket`]), breakers, and on the way back the response accounting, and returns a
//! plan of header operations or a local reply. The `rollgate-filter` crate carries that plan
//! out inside Envoy; the CLI, the sidecar and the controller call the same acceptance
//! functions, so they accept exactly what the filter does, with the same messages.

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
pub mod rls;
pub mod rule;
pub mod shadow;
pub mod stats;
pub mod sticky;
pub mod store;
pub mod tcp;
#[cfg(test)]
mod testing;
