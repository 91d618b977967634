//! The host's ABI probe: a small proxy-wasm plugin whose behaviour is driven by the request
//! header `x-probe-op` (a comma-separated list of operations) and whose findings come back as
//! request headers `x-probe-*` (what the upstream sees) or log lines. The host's conformance
//! tests (`crates/wasmhost/tests/abi_probe.rs`) assert on them; the probe itself decides nothing.
//!
//! Plugin configuration: `key=value` lines — `tick_ms=N` sets the tick period in
//! `on_configure`, `reject=1` makes `on_configure` return false, `network=1` makes the probe a
//! network filter (its connections log every callback and rewrite the data both ways).

#[cfg(target_arch = "wasm32")]
mod probe;
