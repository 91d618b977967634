//! The host part: the filter's per-request cost under wasmtime, through rollgate's own
//! proxy-wasm host (`rollgate::bench::routing_cost`), for rollgate and for the
//! pass-through filter on the same request mix. Wasmtime is not Envoy's engine (Envoy runs
//! V8), so these are the host crate's figures, not Envoy's.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use rollgate::bench::routing_cost;
use rollgate::wasmhost::{HttpRequest, Wasm};

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
    })
}
