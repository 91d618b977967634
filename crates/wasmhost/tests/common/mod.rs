//! Shared by the host's integration tests: the built modules, compiled once per test binary.
//!
//! Missing modules fail loudly with the command that builds them: these tests never skip.

// Each test binary uses only some of these helpers.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use rollgate_wasmhost::Wasm;

/// The Cargo workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn locate(env: &str, default: &str, how: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(default));
    assert!(
        path.is_file(),
        "\n\n*** {} not found: run `{how}`, or set {env} ***\n",
        path.display()
    );
    path
}

/// The rollgate filter (`make wasm`), `$ROLLGATE_WASM` if set.
pub fn filter_path() -> PathBuf {
    locate(
        "ROLLGATE_WASM",
        "target/wasm32-wasip1/release/rollgate_plugin.wasm",
        "make wasm",
    )
}

/// The ABI probe module (`make abi-probe`), `$ROLLGATE_ABI_PROBE_WASM` if set.
pub fn probe_path() -> PathBuf {
    locate(
        "ROLLGATE_ABI_PROBE_WASM",
        "target/wasm32-unknown-unknown/release/rollgate_abi_probe.wasm",
        "make abi-probe",
    )
}

/// The compiled filter.
pub fn filter() -> &'static Wasm {
    static WASM: OnceLock<Wasm> = OnceLock::new();
    WASM.get_or_init(|| Wasm::from_file(filter_path()).expect("compile the rollgate filter"))
}

/// The compiled probe.
pub fn probe() -> &'static Wasm {
    static WASM: OnceLock<Wasm> = OnceLock::new();
    WASM.get_or_init(|| Wasm::from_file(probe_path()).expect("compile the ABI probe"))
}

/// The example policy shipped in `examples/policy.json`.
pub fn example_policy() -> String {
    std::fs::read_to_string(workspace_root().join("examples/policy.json"))
        .expect("read examples/policy.json")
}
