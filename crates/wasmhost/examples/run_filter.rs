//! Runs your own proxy-wasm filter through the host, without Envoy: loads the module, starts
//! it with a plugin configuration, sends requests through it and prints what Envoy would have
//! done with each, then the stats that moved.
//!
//! ```text
//! cargo run -p rollgate-wasmhost --example run_filter -- FILTER.wasm [CONFIG_FILE] [AUTHORITY/PATH]...
//! cargo run -p rollgate-wasmhost --example run_filter -- \
//!     target/wasm32-wasip1/release/rollgate_plugin.wasm examples/policy.json pro.coding/ free.coding/
//! ```
//!
//! In a test of your filter, assert on the [`Exchange`] instead of printing it.

use std::process::ExitCode;

use rollgate_wasmhost::{Exchange, Host, HostError, HttpRequest, PluginConfig, Response, Wasm};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(wasm) = args.first() else {
        eprintln!("usage: run_filter FILTER.wasm [CONFIG_FILE] [AUTHORITY/PATH]...");
        return ExitCode::from(2);
    };
    let config = match args.get(1).map(std::fs::read_to_string).transpose() {
        Ok(c) => c.unwrap_or_default(),
        Err(e) => {
            eprintln!("reading the configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    let requests = args
        .get(2..)
        .filter(|r| !r.is_empty())
        .map(<[String]>::to_vec);
    match run(
        wasm,
        &config,
        &requests.unwrap_or_else(|| vec!["example.com/".into()]),
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(wasm: &str, config: &str, requests: &[String]) -> Result<(), HostError> {
    // Compiling is the expensive part: one `Wasm` can be started by any number of hosts.
    let wasm = Wasm::from_file(wasm)?;
    // One `Host` is one Envoy process: shared data, queues, stats and a virtual clock.
    let host = Host::new();
    // `on_vm_start` and `on_configure` run here; a filter refusing its configuration is an
    // error, as Envoy would refuse the listener.
    let plugin = host.start(&wasm, PluginConfig::new(config).workers(2))?;
    for target in requests {
        let (authority, path) = match target.find('/') {
            Some(i) => target.split_at(i),
            None => (target.as_str(), "/"),
        };
        // The upstream answers 200 unless the filter answers first.
        let request = HttpRequest::get(authority, path).header("user-agent", "run_filter");
        let ex = plugin.run(request)?;
        print(target, &ex);
    }
    // Time moves only when told: ticks and callout timeouts fire in `advance`.
    host.advance(std::time::Duration::from_secs(1))?;
    for (name, metric) in host.metrics().iter().filter(|(_, m)| m.value() > 0) {
        println!("stat {name} = {}", metric.value());
    }
    Ok(())
}

fn print(target: &str, ex: &Exchange) {
    println!("GET {target} (worker {})", ex.worker);
    if let Some(local) = &ex.local_response {
        println!(
            "  answered by the filter: {} {}",
            local.status, local.details
        );
    } else if ex.forwarded {
        println!("  forwarded with:");
        for (name, value) in ex.request_headers.pairs() {
            println!(
                "    {}: {}",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(value)
            );
        }
    }
    if let Some(Response { status, .. }) = &ex.response {
        println!("  client got {status}");
    }
    for line in &ex.logs {
        println!("  log {line}");
    }
}
