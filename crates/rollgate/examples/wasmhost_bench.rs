//! The host's per-request cost through the full routing policy, next to the native
//! `Policy::decide` cost of the same decisions:
//! `cargo run --release -p rollgate --example wasmhost_bench`.
//!
//! An example rather than a `[[bench]]`: benches link the workspace's crates with
//! `panic=unwind` next to the release profile's `panic=abort` build, and the filter crate's
//! cdylib output then collides.
//!
//! Env: `ROLLGATE_WASM` (default: the workspace's `make wasm` build), `ROLLGATE_BENCH_POLICY`
//! (default `examples/policy.json`), `ROLLGATE_BENCH_REQUESTS` (default 2000),
//! `ROLLGATE_BENCH_ROUNDS` (default 5).

use std::path::PathBuf;
use std::process::ExitCode;

use rollgate::bench::{request_mix, routing_cost};
use rollgate::wasmhost::Wasm;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> ExitCode {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let wasm = std::env::var_os("ROLLGATE_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/wasm32-wasip1/release/rollgate_plugin.wasm"));
    let policy = std::env::var_os("ROLLGATE_BENCH_POLICY")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("examples/policy.json"));
    let run = || -> Result<String, String> {
        let wasm = Wasm::from_file(&wasm).map_err(|e| format!("{e} (run `make wasm`)"))?;
        let policy = std::fs::read_to_string(&policy)
            .map_err(|e| format!("reading {}: {e}", policy.display()))?;
        let requests = request_mix(env_or("ROLLGATE_BENCH_REQUESTS", 2000));
        let report = routing_cost(
            &wasm,
            &policy,
            &requests,
            env_or("ROLLGATE_BENCH_ROUNDS", 5),
        )
        .map_err(|e| e.to_string())?;
        Ok(report.to_string())
    };
    match run() {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wasmhost bench: {e}");
            ExitCode::FAILURE
        }
    }
}
