//! The real filter (`make wasm`'s `.wasm`, run by rollgate's wasmtime proxy-wasm host) agrees
//! with the native acceptance functions, both ways a policy gets in: a configuration through
//! `proxy_on_configure` as Envoy calls it (`accept_config`), and a policy fetched from the
//! sidecar (`accept_policy`). Inputs: the policy corpus and a few hundred generated and
//! mutated documents. The fuzz loop itself runs natively (fast); this is the check that the
//! native verdicts stand for the filter's.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fastrand::Rng;
use rollgate::wasmhost::{CalloutReply, Host, HostError, PluginConfig, Response, Wasm};
use rollgate_fuzz::runner::{load_corpus, workspace};
use rollgate_fuzz::targets::by_name;
use rollgate_fuzz::{gen, mutate};
use rollgate_policy::config::accept_config;
use rollgate_policy::policy::accept_policy;

fn filter() -> &'static Wasm {
    static WASM: OnceLock<Wasm> = OnceLock::new();
    WASM.get_or_init(|| {
        let path = std::env::var_os("ROLLGATE_WASM")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                workspace().join("target/wasm32-wasip1/release/rollgate_plugin.wasm")
            });
        assert!(
            path.is_file(),
            "\n\n*** {} not found: run `make wasm`, or set ROLLGATE_WASM ***\n",
            path.display()
        );
        Wasm::from_file(&path).expect("compile the rollgate filter")
    })
}

/// The policy corpus, then `n` generated and mutated documents (a fixed seed: the same set
/// every run; the fuzz loop is where new ones come from).
fn inputs(n: usize) -> Vec<Vec<u8>> {
    let target = by_name("policy").expect("policy target");
    let mut inputs: Vec<Vec<u8>> = load_corpus("policy").into_iter().map(|(_, b)| b).collect();
    let mut rng = Rng::with_seed(0x0f11_7e55);
    for i in 0..n {
        if i % 2 == 0 || inputs.is_empty() {
            inputs.push(gen::policy(&mut rng));
        } else {
            let mut b = inputs[rng.usize(..inputs.len())].clone();
            mutate::mutate(&mut rng, &mut b, target.dict);
            inputs.push(b);
        }
    }
    inputs
}

fn show(input: &[u8]) -> String {
    String::from_utf8_lossy(&input[..input.len().min(300)]).into_owned()
}

#[test]
fn the_filter_accepts_exactly_what_accept_config_accepts_with_the_same_message() {
    let wasm = filter();
    let (mut accepted, mut refused) = (0, 0);
    for input in inputs(300) {
        let native = accept_config(&input);
        let host = Host::new();
        let started = host.start(wasm, PluginConfig::new(input.clone()));
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
                    show(&input),
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
                show(&input)
            ),
        }
    }
    // Both verdicts were exercised (the generator makes mostly invalid policies).
    assert!(
        accepted >= 5 && refused >= 50,
        "accepted {accepted}, refused {refused}"
    );
}

/// The other way in: a policy the filter fetches from the sidecar (`source`) is applied
/// exactly when `accept_policy` accepts it, and refused with its message otherwise.
#[test]
fn a_fetched_policy_is_applied_exactly_when_accept_policy_accepts_it() {
    let wasm = filter();
    let config = r#"{"source":{"cluster":"rollgate","path":"/v1/policies/f","poll":"1s"}}"#;
    let (mut applied, mut refused) = (0, 0);
    for input in inputs(150) {
        if input.len() > rollgate_policy::limits::MAX_POLICY_BYTES {
            continue;
        }
        let native = accept_policy(&input);
        let answered = Arc::new(AtomicBool::new(false));
        let body = input.clone();
        let cfg = PluginConfig::new(config).cluster("rollgate", move |_| {
            // The first poll gets the policy; the next long-poll is held, as the sidecar does.
            if answered.swap(true, Ordering::SeqCst) {
                CalloutReply::Pending
            } else {
                CalloutReply::Respond(
                    Response::new(200)
                        .header("x-rollgate-version", "1")
                        .body(body.clone()),
                )
            }
        });
        let host = Host::new();
        let plugin = host
            .start(wasm, cfg)
            .expect("the source configuration loads");
        host.advance(Duration::from_secs(2))
            .expect("no trap while fetching");
        let logs: Vec<String> = plugin.logs().into_iter().map(|l| l.message).collect();
        match native {
            Ok(_) => {
                applied += 1;
                assert!(
                    logs.iter().any(|l| l.contains("version 1 applied")),
                    "accepted natively, not applied by the filter: {:?}\n{logs:?}",
                    show(&input)
                );
            }
            Err(e) => {
                refused += 1;
                let want = format!("refused: {e}; version 0 keeps serving");
                assert!(
                    logs.iter()
                        .any(|l| l.contains("policy version 1 from") && l.contains(&want)),
                    "refused natively with {want:?}, the filter logs {logs:?} for {:?}",
                    show(&input)
                );
            }
        }
    }
    assert!(
        applied >= 5 && refused >= 50,
        "applied {applied}, refused {refused}"
    );
}
