//! End-to-end harness for rollgate: runs a real Envoy (with V8) loading the real filter
//! (`rollgate_plugin.wasm`) in front of in-process HTTP/1.1 upstreams, and talks to it with a
//! tiny raw-bytes HTTP/1.1 client.
//!
//! * [`Envoy`] starts Envoy from [`EnvoyOptions`] (policy JSON, clusters, concurrency,
//!   fallback cluster) and owns the process; [`Envoy::start_expect_failure`] checks that a
//!   config is refused.
//! * [`Upstream`] answers with its own name and echoes the `x-rollgate-*` headers it received
//!   as `x-echo-x-rollgate-*`, so a response shows both where the request went and what the
//!   backend saw.
//! * [`Client`] keeps a connection alive and sends header values as raw bytes.
//! * [`Stack`] wires one upstream per cluster to one Envoy.
//! * [`sticky`] predicts sticky buckets independently of the plugin's code.
//!
//! Missing prerequisites fail loudly instead of skipping: Envoy comes from `make envoy`
//! (`<root>/.venv/bin/envoy`, or `ROLLGATE_ENVOY`), the filter from `make wasm`
//! (`<root>/target/wasm32-wasip1/release/rollgate_plugin.wasm`, or `ROLLGATE_WASM`).

mod client;
mod config;
mod envoy;
mod http;
mod load;
mod mariadb;
mod policy_server;
mod redis;
mod stack;
pub mod sticky;
mod tcp;
mod upstream;

use std::path::{Path, PathBuf};

pub use client::{Client, Response};
pub use config::{render as render_config, static_cluster, write_ecds, yaml_quote, EnvoyOptions};
pub use envoy::{Envoy, StartError};
pub use load::{Load, Sample};
pub use mariadb::{mariadb_client, query, MariaDb};
pub use policy_server::PolicyServer;
pub use redis::Redis;
pub use stack::{Stack, CANARY, DEV, SEED_CLUSTERS, SEED_POLICY, STABLE};
pub use tcp::{connect_through, render_tcp, render_tcp_with, reset, Fate, TcpUpstream};
pub use upstream::{Received, Upstream, ECHO_PREFIX, INTERNAL_HEADER_PREFIX};

/// The Cargo workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The Envoy binary: `$ROLLGATE_ENVOY`, else `<root>/.venv/bin/envoy`.
///
/// Panics with instructions if it does not exist: these tests never skip silently.
pub fn envoy_bin() -> PathBuf {
    let path = std::env::var_os("ROLLGATE_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/envoy"));
    assert!(
        path.is_file(),
        "\n\n*** Envoy not found at {}: run `make envoy` (make test installs it), \
         or set ROLLGATE_ENVOY to an Envoy binary ***\n",
        path.display()
    );
    path
}

/// The filter artifact: `$ROLLGATE_WASM`, else
/// `<root>/target/wasm32-wasip1/release/rollgate_plugin.wasm`.
///
/// Panics with instructions if it does not exist: these tests never skip silently.
pub fn wasm_path() -> PathBuf {
    let path = std::env::var_os("ROLLGATE_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_root().join("target/wasm32-wasip1/release/rollgate_plugin.wasm")
        });
    assert!(
        path.is_file(),
        "\n\n*** rollgate filter not built at {}: run `make wasm` \
         (cargo build -p rollgate-plugin --target wasm32-wasip1 --release), \
         or set ROLLGATE_WASM to the .wasm file ***\n",
        path.display()
    );
    path
}

/// The filter built with its test-only trap triggers (`make wasm-test-trap`):
/// `$ROLLGATE_WASM_TEST_TRAP`, else
/// `<root>/target/wasm32-wasip1/release/rollgate_plugin_test_trap.wasm`.
///
/// Panics with instructions if it does not exist: these tests never skip silently.
pub fn test_trap_wasm_path() -> PathBuf {
    let path = std::env::var_os("ROLLGATE_WASM_TEST_TRAP")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_root().join("target/wasm32-wasip1/release/rollgate_plugin_test_trap.wasm")
        });
    assert!(
        path.is_file(),
        "\n\n*** test-trap filter not built at {}: run `make wasm-test-trap`, \
         or set ROLLGATE_WASM_TEST_TRAP to the .wasm file ***\n",
        path.display()
    );
    path
}

/// Held by tests whose assertions depend on timing (paced load, breaker trips), so two of them
/// never compete for the machine's two cores within one test binary.
pub fn timing_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
