//! The host's cost per request through a routing policy, next to the native (no-wasm) cost of
//! the same decisions: what `make bench` reports as the host's overhead ratio.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use rollgate_policy::policy::Policy;
use rollgate_policy::request::Request;

use rollgate_wasmhost::{Host, HostError, HttpRequest, PluginConfig, Wasm};

/// Timings of one run.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Requests timed on each side.
    pub requests: usize,
    /// Mean wall time per request through the filter in this host (the whole stream: context
    /// create, request and response headers, on_log, on_done, on_delete).
    pub host_per_request: Duration,
    /// Mean wall time per request of `Policy::decide` natively (header view + decision).
    pub native_per_request: Duration,
    /// Requests whose variant differed between the two (checked once, untimed): a report is
    /// only meaningful at 0.
    pub mismatches: usize,
}

impl BenchReport {
    /// host / native.
    pub fn ratio(&self) -> f64 {
        self.host_per_request.as_secs_f64() / self.native_per_request.as_secs_f64().max(1e-12)
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "wasm host: {:.2} µs/request, native decide: {:.3} µs/request, ratio {:.0}× \
             ({} requests, {} decisions differing)",
            self.host_per_request.as_secs_f64() * 1e6,
            self.native_per_request.as_secs_f64() * 1e6,
            self.ratio(),
            self.requests,
            self.mismatches
        )
    }
}

/// A deterministic request mix for a policy like the example one: a few hosts, a location
/// header on some, a user id on most, distinct client addresses.
pub fn request_mix(n: usize) -> Vec<HttpRequest> {
    let hosts = [
        "pro.coding",
        "dev.coding",
        "other.example",
        "pro.coding:8080",
    ];
    (0..n)
        .map(|i| {
            let path = format!("/api/items/{i}?page={}", i % 7);
            let source = format!("10.0.{}.{}:4{:04}", (i / 250) % 250, i % 250, i % 10_000);
            let mut r = HttpRequest::get(hosts[i % hosts.len()], &path)
                .header("user-agent", "bench")
                .source(&source);
            if i % 5 == 0 {
                r = r.header("location", "shenzhen");
            }
            if i % 3 != 0 {
                r = r.header("x-user-id", format!("user-{i}"));
            }
            r
        })
        .collect()
}

fn client_ip(r: &HttpRequest) -> Option<IpAddr> {
    let s = r.source.as_deref()?;
    s.parse::<std::net::SocketAddr>().map(|a| a.ip()).ok()
}

/// Times `requests` through `wasm` running `policy` (after an untimed pass that also checks
/// both sides decide alike), then the same decisions natively, `rounds` times each.
pub fn routing_cost(
    wasm: &Wasm,
    policy: &str,
    requests: &[HttpRequest],
    rounds: usize,
) -> Result<BenchReport, HostError> {
    let host = Host::new();
    let plugin = host.start(wasm, PluginConfig::new(policy))?;
    let native =
        Policy::from_json(policy.as_bytes()).map_err(|e| HostError::Compile(e.to_string()))?;
    let decide = |r: &HttpRequest| -> Option<String> {
        let pairs: Vec<(&[u8], &[u8])> = r
            .headers
            .pairs()
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        let req = Request::new(pairs, client_ip(r));
        let d = native.decide(&req, &mut || String::from("0123456789abcdef"));
        d.variant.map(|v| v.name.clone())
    };
    let mut mismatches = 0;
    for r in requests {
        let ex = plugin.run(r.clone())?;
        if ex.request_header(&native.variant_header) != decide(r) {
            mismatches += 1;
        }
    }
    plugin.clear_logs();
    let rounds = rounds.max(1);
    let start = Instant::now();
    for _ in 0..rounds {
        for r in requests {
            std::hint::black_box(plugin.run(r.clone())?);
        }
        // The log grows by a few lines per request; keep memory flat between rounds.
        plugin.clear_logs();
    }
    let host_total = start.elapsed();
    let start = Instant::now();
    for _ in 0..rounds {
        for r in requests {
            std::hint::black_box(decide(r));
        }
    }
    let native_total = start.elapsed();
    let n = (requests.len() * rounds) as u32;
    Ok(BenchReport {
        requests: n as usize,
        host_per_request: host_total / n.max(1),
        native_per_request: native_total / n.max(1),
        mismatches,
    })
}
