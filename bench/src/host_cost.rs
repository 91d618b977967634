//! The host part: the filter's per-request cost under wasmtime, through rollgate's own
//! proxy-wasm host (`rollgate::bench::routing_cost`), for rollgate and for the
//! pass-through filter on the same request mix. Wasmtime is not Envoy's engine (Envoy runs
//! V8), so these are the host crate's figures, not Envoy's.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use rollgate::bench::routing_cost;
use rollgate::wasmhost::{Host, HttpRequest, PluginConfig, Wasm};

use crate::mix;
use crate::stats::Summary;

/// Requests per timing: each of them once through the filter (after a warm-up pass).
const REQUESTS: usize = 10_000;
/// Passes over them per timing.
const PASSES: usize = 3;
/// Timings per filter (the report gives their median and spread).
const TIMINGS: usize = 3;

/// What the host part measured.
#[derive(Debug, Clone)]
pub struct HostCost {
    /// rollgate, µs per request (whole stream: context, request and response headers, log,
    /// done, delete).
    pub rollgate_us: Summary,
    /// The pass-through filter, µs per request.
    pub passthrough_us: Summary,
    /// `Policy::decide` natively on the same requests, µs per request.
    pub native_decide_us: Summary,
    /// Wasmtime fuel per request (about one unit per Wasm instruction the filter's own code
    /// runs; host calls excluded): rollgate, pass-through. The same on every run, so two
    /// builds compare on a noisy machine where timings cannot.
    pub fuel: (f64, f64),
}

/// Fuel per request of `wasm` running `policy` over `reqs`, after one untimed pass (first
/// requests allocate what later ones reuse).
fn fuel_per_request(wasm: &Path, policy: &str, reqs: &[HttpRequest]) -> Result<f64> {
    let metered = Wasm::metered_from_file(wasm)
        .with_context(|| format!("loading {} metered", wasm.display()))?;
    let plugin = Host::new()
        .start(&metered, PluginConfig::new(policy))
        .map_err(|e| anyhow::anyhow!("starting {} metered: {e}", wasm.display()))?;
    let run = |reqs: &[HttpRequest]| -> Result<()> {
        for r in reqs {
            plugin
                .run(r.clone())
                .map_err(|e| anyhow::anyhow!("{}: {e}", wasm.display()))?;
        }
        plugin.clear_logs();
        Ok(())
    };
    run(reqs)?;
    let before = plugin
        .fuel_consumed()
        .context("a metered module counts fuel")?;
    run(reqs)?;
    let after = plugin
        .fuel_consumed()
        .context("a metered module counts fuel")?;
    Ok(after.saturating_sub(before) as f64 / reqs.len().max(1) as f64)
}

fn requests() -> Vec<HttpRequest> {
    mix::sample(REQUESTS)
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let source = format!("127.0.0.1:{}", 20_000 + i % 40_000);
            let mut r = HttpRequest::get("pro.coding", "/api/items").source(&source);
            for (k, v) in m.headers() {
                r = r.header(k, v);
            }
            r
        })
        .collect()
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Times rollgate (running `policy`) and the pass-through filter.
pub fn measure(rollgate_wasm: &Path, passthrough_wasm: &Path, policy: &str) -> Result<HostCost> {
    let rollgate = Wasm::from_file(rollgate_wasm)
        .with_context(|| format!("loading {}", rollgate_wasm.display()))?;
    let passthrough = Wasm::from_file(passthrough_wasm)
        .with_context(|| format!("loading {}", passthrough_wasm.display()))?;
    let reqs = requests();
    let (mut r, mut p, mut n) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..TIMINGS {
        let rep = routing_cost(&rollgate, policy, &reqs, PASSES)
            .map_err(|e| anyhow::anyhow!("rollgate under wasmtime: {e}"))?;
        r.push(micros(rep.host_per_request));
        n.push(micros(rep.native_per_request));
        let rep = routing_cost(&passthrough, policy, &reqs, PASSES)
            .map_err(|e| anyhow::anyhow!("pass-through under wasmtime: {e}"))?;
        p.push(micros(rep.host_per_request));
    }
    Ok(HostCost {
        rollgate_us: Summary::of(&r),
        passthrough_us: Summary::of(&p),
        native_decide_us: Summary::of(&n),
        fuel: (
            fuel_per_request(rollgate_wasm, policy, &reqs)?,
            fuel_per_request(passthrough_wasm, policy, &reqs)?,
        ),
    })
}
