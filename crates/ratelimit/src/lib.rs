//! `rollgate ratelimit`: the service behind global rate limits.
//!
//! Data flow: the policies the gateways serve (files, or the sidecar's `/v1/policies/NAME`)
//! are read every second by the filter's own acceptance function; each `scope: global` limit
//! becomes a Limitador limit ([`LimitDef`]: `average` requests per fixed window of `period`,
//! one counter per key). Gateways ask over gRPC, Envoy's RLS v3 (`ShouldRateLimit`, the
//! protocol of envoyproxy/ratelimit and Limitador): each descriptor names the limit
//! (`limit`) and the key (`key`), with the hits to count (`hits_addend`). Counters live in
//! Redis, so any number of service replicas and gateways share them. Envoy's own
//! `envoy.filters.http.ratelimit` can ask the same service with the same descriptors.
//!
//! Limitador 0.6.0, not the newest: 0.7.0 to 0.14.0 do not compile with the Redis storage
//! alone (their `storage/keys.rs` calls `bin::…`, a module compiled only with the RocksDB
//! `disk_storage` feature, whose C++ build this project avoids); 0.6.0's checks and counters
//! are the same fixed windows.

mod policies;
mod service;

pub use policies::{global_limits, LimitDef, PolicySource};
pub use service::{serve, RateLimiter, ServeError};

/// The RLS v3 messages and server (from `proto/rls.proto`).
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("envoy.service.ratelimit.v3");
}
