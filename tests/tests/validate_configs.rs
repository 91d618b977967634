//! Every Envoy config we ship (and the one the harness generates) passes
//! `envoy --mode validate` with the real filter in place of its install path.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rollgate_e2e::{envoy_bin, render_config, wasm_path, workspace_root, EnvoyOptions};
use rollgate_e2e::{SEED_CLUSTERS, SEED_POLICY};

/// Where the shipped manifests expect the filter.
const INSTALLED_WASM: &str = "/etc/rollgate/rollgate_plugin.wasm";

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rollgate-validate-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `envoy --mode validate -c config`; returns (success, combined output).
fn validate(config: &Path) -> (bool, String) {
    let out = Command::new(envoy_bin())
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "info",
            "-c",
        ])
        .arg(config)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Validate mode reports a bad config on the log but may still exit 0: require the OK line.
    let ok = out.status.success() && text.contains("OK") && !text.contains("[critical]");
    (ok, text)
}

#[test]
fn shipped_envoy_manifests_validate() {
    let wasm = wasm_path();
    let dir = workspace_root().join("manifests/envoy");
    let mut manifests: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    manifests.sort();
    assert!(!manifests.is_empty(), "no *.yaml in {}", dir.display());

    let scratch = scratch_dir("manifests");
    for manifest in &manifests {
        let text = fs::read_to_string(manifest).unwrap();
        assert!(
            text.contains(INSTALLED_WASM),
            "{} does not load the filter from {INSTALLED_WASM}",
            manifest.display()
        );
        let copy = scratch.join(manifest.file_name().unwrap());
        fs::write(&copy, text.replace(INSTALLED_WASM, &wasm.to_string_lossy())).unwrap();
        let (ok, output) = validate(&copy);
        assert!(ok, "{} failed validation:\n{output}", manifest.display());
    }
    let _ = fs::remove_dir_all(&scratch);
}

#[test]
fn harness_config_validates() {
    let mut opts = EnvoyOptions::new(SEED_POLICY);
    for (i, name) in SEED_CLUSTERS.iter().enumerate() {
        opts = opts.cluster(name, 20_000 + i as u16);
    }
    for opts in [opts.clone(), opts.fallback_cluster(SEED_CLUSTERS[0])] {
        let scratch = scratch_dir(if opts.fallback_cluster.is_some() {
            "fb"
        } else {
            "nofb"
        });
        let config = scratch.join("envoy.yaml");
        fs::write(&config, render_config(&opts, &wasm_path())).unwrap();
        let (ok, output) = validate(&config);
        assert!(ok, "generated config failed validation:\n{output}");
        let _ = fs::remove_dir_all(&scratch);
    }
}

/// `envoy --mode validate` runs the filter's `on_configure`, so it is a pre-flight check for
/// policies too: a bad weight in the shipped manifest fails validation with its JSON path.
#[test]
fn validation_catches_an_invalid_policy() {
    let manifest = workspace_root().join("manifests/envoy/envoy.yaml");
    let text = fs::read_to_string(&manifest).unwrap();
    assert!(
        text.contains(r#""weight": 50"#),
        "{} has no 50% split",
        manifest.display()
    );
    let broken = text
        .replace(INSTALLED_WASM, &wasm_path().to_string_lossy())
        .replace(r#""weight": 50"#, r#""weight": 150"#);
    let scratch = scratch_dir("invalid");
    let copy = scratch.join("envoy.yaml");
    fs::write(&copy, broken).unwrap();
    let (ok, output) = validate(&copy);
    assert!(!ok, "a 150% weight passed validation:\n{output}");
    assert!(
        output.contains("invalid policy: routes[2].split[0].weight"),
        "no policy error path in validation output:\n{output}"
    );
    let _ = fs::remove_dir_all(&scratch);
}

/// A rule nesting 8,000 parentheses made every worker's filter trap (`memory access out of
/// bounds`: its wasm stack overflowed); the filter now refuses it at configure time, with the
/// column where the nesting passes its limit, and no VM dies.
#[test]
fn validation_refuses_a_deeply_nested_rule_without_a_trap() {
    let deep = format!("{}Host(`pro.coding`){}", "(".repeat(8000), ")".repeat(8000));
    let policy = SEED_POLICY.replace(
        "\"match\": \"Host(`dev.coding`)\"",
        &format!("\"match\": \"{deep}\""),
    );
    assert_ne!(policy, SEED_POLICY);
    let mut opts = EnvoyOptions::new(policy);
    for (i, name) in SEED_CLUSTERS.iter().enumerate() {
        opts = opts.cluster(name, 20_000 + i as u16);
    }
    let scratch = scratch_dir("deep");
    let config = scratch.join("envoy.yaml");
    fs::write(&config, render_config(&opts, &wasm_path())).unwrap();
    let (ok, output) = validate(&config);
    assert!(!ok, "8,000 nested parentheses passed validation:\n{output}");
    assert!(
        output.contains("invalid policy: routes[0].match: column 33: nesting deeper than 32"),
        "no rule error in validation output:\n{output}"
    );
    for trap in ["RuntimeError", "out of bounds", "stack overflow"] {
        assert!(!output.contains(trap), "the filter trapped:\n{output}");
    }
    let _ = fs::remove_dir_all(&scratch);
}
