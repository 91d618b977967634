//! The real filter (`make wasm`'s `.wasm`, run by rollgate's wasmtime proxy-wasm host) accepts
//! a configuration exactly when `accept_config` does natively, and refuses it with the same
//! message: the policy corpus and a few hundred generated and mutated documents, each through
//! `proxy_on_configure` as Envoy would call it. The fuzz loop itself runs natively (fast); this
//! is the check that native verdicts stand for the filter's.

use std::path::PathBuf;

use fastrand::Rng;
use rollgate::wasmhost::{Host, HostError, PluginConfig, Wasm};
use rollgate_fuzz::runner::{load_corpus, workspace};
use rollgate_fuzz::targets::by_name;
use rollgate_fuzz::{gen, mutate};
use rollgate_plugin::config::accept_config;

fn filter() -> Wasm {
    let path = std::env::var_os("ROLLGATE_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/wasm32-wasip1/release/rollgate_plugin.wasm"));
    assert!(
        path.is_file(),
        "\n\n*** {} not found: run `make wasm`, or set ROLLGATE_WASM ***\n",
        path.display()
    );
    Wasm::from_file(&path).expect("compile the rollgate filter")
}

#[test]
fn the_filter_accepts_exactly_what_accept_config_accepts_with_the_same_message() {
    let wasm = filter();
    let target = by_name("policy").expect("policy target");
    let mut inputs: Vec<Vec<u8>> = load_corpus("policy").into_iter().map(|(_, b)| b).collect();
    let mut rng = Rng::with_seed(0x0f11_7e55);
    for i in 0..300 {
        if i % 2 == 0 || inputs.is_empty() {
            inputs.push(gen::policy(&mut rng));
        } else {
            let mut b = inputs[rng.usize(..inputs.len())].clone();
            mutate::mutate(&mut rng, &mut b, target.dict);
            inputs.push(b);
        }
    }
    let (mut accepted, mut refused) = (0, 0);
    for input in &inputs {
        let native = accept_config(input);
        let host = Host::new();
        let started = host.start(&wasm, PluginConfig::new(input.clone()));
        let show = || String::from_utf8_lossy(&input[..input.len().min(300)]).into_owned();
        match (&native, started) {
            (Ok(_), Ok(_)) => accepted += 1,
            (Err(e), Err(HostError::ConfigureFailed { logs, .. })) => {
                refused += 1;
                // An empty configuration reaches the filter as none at all (proxy-wasm's
                // `get_plugin_configuration` is `None`), which it names as such.
                let want = if input.is_empty() {
                    "invalid policy: no plugin configuration given".to_string()
                } else {
                    format!("invalid policy: {e}")
                };
                assert!(
                    logs.iter().any(|l| l.message == want),
                    "the filter refuses {:?} with {:?}, natively: {want:?}",
                    show(),
                    logs.iter().map(|l| &l.message).collect::<Vec<_>>()
                );
            }
            (native, filter) => panic!(
                "natively {:?}, in the filter {:?}, for {:?}",
                native
                    .as_ref()
                    .map(|_| "accepted")
                    .map_err(ToString::to_string),
                filter.map(|_| "accepted"),
                show()
            ),
        }
    }
    // Both verdicts were exercised.
    assert!(
        accepted >= 5 && refused >= 50,
        "accepted {accepted}, refused {refused}"
    );
}
