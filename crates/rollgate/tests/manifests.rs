//! The shipped manifests: every YAML parses, has a known kind and apiVersion, every
//! kustomization's resources exist, and the RBAC roles grant exactly what
//! [`rollgate::kube::rbac`] lists (which `kube_rbac.rs` checks against the requests the
//! controller and the CLI send).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

fn manifests() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../manifests")).to_path_buf()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml") {
            out.push(p);
        }
    }
}

/// Every document of a multi-document YAML file.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

/// Files under manifests/ that are not Kubernetes resources: the plain-Envoy bootstrap
/// configurations under envoy/ (HTTP and TCP; each checked by `envoy --mode validate` in
/// tests/tests/validate_configs.rs) and the Prometheus rules file (checked by `promtool`
/// in grafana_rules.rs; prometheus-operator users wrap its groups in a PrometheusRule).
fn not_a_resource(f: &Path) -> bool {
    let parent = f.parent().and_then(|p| p.file_name());
    parent.is_some_and(|p| p == "envoy") || f.ends_with("prometheus/rules.yaml")
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

#[test]
fn every_manifest_has_a_known_kind_and_api_version() {
    let known = [
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
        ("v1", "Namespace"),
        ("v1", "ServiceAccount"),
        ("v1", "Service"),
        ("apps/v1", "Deployment"),
        ("rbac.authorization.k8s.io/v1", "ClusterRole"),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
        ("extensions.istio.io/v1alpha1", "WasmPlugin"),
        ("networking.istio.io/v1", "VirtualService"),
        ("networking.istio.io/v1", "DestinationRule"),
        ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
        ("gateway.networking.k8s.io/v1", "HTTPRoute"),
        ("gateway.envoyproxy.io/v1alpha1", "EnvoyExtensionPolicy"),
    ];
    let mut files = Vec::new();
    yaml_files(&manifests(), &mut files);
    let mut seen = BTreeSet::new();
    for f in files.iter().filter(|f| !not_a_resource(f)) {
        for d in documents(f) {
            let pair = (str_of(&d, "apiVersion"), str_of(&d, "kind"));
            assert!(
                known.contains(&pair),
                "{}: unexpected {pair:?}",
                f.display()
            );
            if pair.1 != "Kustomization" {
                assert!(
                    !str_of(&d["metadata"], "name").is_empty(),
                    "{}: {pair:?} without metadata.name",
                    f.display()
                );
            }
            seen.insert(pair.1.to_string());
        }
    }
    for kind in known.map(|k| k.1) {
        assert!(seen.contains(kind), "no {kind} among the manifests");
    }
}

/// Resources listed by `kustomization.yaml` in `dir`, resolved (files and directories).
fn kustomization(dir: &Path) -> Vec<PathBuf> {
    let k = &documents(&dir.join("kustomization.yaml"))[0];
    let list = k["resources"].as_sequence().expect("resources");
    list.iter().map(|r| dir.join(r.as_str().unwrap())).collect()
}

#[test]
fn kustomize_base_resources_exist_and_cover_every_manifest() {
    let root = manifests();
    let mut listed = BTreeSet::new();
    // The base (Istio), and the Gateway API, Envoy Gateway and global rate-limit installs,
    // each applied on its own.
    let mut dirs = vec![
        root.clone(),
        root.join("gateway-api"),
        root.join("envoy-gateway"),
        root.join("ratelimit"),
    ];
    while let Some(dir) = dirs.pop() {
        for r in kustomization(&dir) {
            assert!(
                r.exists(),
                "{} lists missing {}",
                dir.display(),
                r.display()
            );
            if r.is_dir() {
                assert!(r.join("kustomization.yaml").exists(), "{}", r.display());
                dirs.push(r);
            } else {
                listed.insert(r.canonicalize().unwrap());
            }
        }
    }
    for sub in ["crd", "controller", "istio"] {
        assert!(
            kustomization(&root).contains(&root.join(sub)),
            "base lacks {sub}"
        );
    }
    let mut files = Vec::new();
    yaml_files(&root, &mut files);
    for f in files {
        let in_base = listed.contains(&f.canonicalize().unwrap());
        let exempt = f.ends_with("kustomization.yaml") || not_a_resource(&f);
        assert!(in_base || exempt, "{} is in no kustomization", f.display());
    }
}

type Rules = BTreeSet<(String, String, String)>;

fn rules_of(doc: &Value) -> Rules {
    let mut out = Rules::new();
    for rule in doc["rules"].as_sequence().unwrap() {
        let strs = |k: &str| -> Vec<String> {
            rule[k]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        for g in strs("apiGroups") {
            for r in strs("resources") {
                for v in strs("verbs") {
                    assert_ne!(v, "*", "wildcard verb");
                    assert_ne!(r, "*", "wildcard resource");
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}

fn wanted(perms: &[rollgate::kube::rbac::Permission]) -> Rules {
    rollgate::kube::rbac::triples(perms)
}

#[test]
fn rbac_grants_exactly_what_the_controller_and_the_cli_call() {
    use rollgate::kube::rbac::{CLI, CONTROLLER, LEADER_ELECTION};
    let docs = documents(&manifests().join("controller/rbac.yaml"));
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| str_of(d, "kind") == kind && str_of(&d["metadata"], "name") == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let kinds: Vec<&str> = docs.iter().map(|d| str_of(d, "kind")).collect();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ClusterRole"
        ],
        "the controller's roles, their bindings, and the CLI's role (bound by users)"
    );
    assert_eq!(
        rules_of(find("ClusterRole", "rollgate-controller")),
        wanted(CONTROLLER)
    );
    assert_eq!(rules_of(find("ClusterRole", "rollgate-cli")), wanted(CLI));
    let role = find("Role", "rollgate-leader-election");
    assert_eq!(rules_of(role), wanted(LEADER_ELECTION));
    assert_eq!(str_of(&role["metadata"], "namespace"), "rollgate-system");
    // The bindings name the controller's roles and the Deployment's service account.
    let sa = str_of(
        &find("ClusterRoleBinding", "rollgate-controller")["subjects"][0],
        "name",
    )
    .to_string();
    for (binding, name, role) in [
        (
            "ClusterRoleBinding",
            "rollgate-controller",
            "rollgate-controller",
        ),
        (
            "RoleBinding",
            "rollgate-leader-election",
            "rollgate-leader-election",
        ),
    ] {
        let b = find(binding, name);
        assert_eq!(str_of(&b["roleRef"], "name"), role);
        assert_eq!(str_of(&b["subjects"][0], "name"), sa);
    }
    let deploy = &documents(&manifests().join("controller/deployment.yaml"))[0];
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(str_of(pod, "serviceAccountName"), sa);
    let args: Vec<&str> = pod["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(&args[..2], ["serve", "--kubernetes"]);
}

#[test]
fn istio_wasmplugin_is_explicit_and_routing_matches_subsets() {
    let wp = &documents(&manifests().join("istio/wasmplugin.yaml"))[0];
    // FAIL_OPEN would bypass routing, limits and breakers while the filter is dead; FAIL_RELOAD
    // (Istio >= 1.27) replaces the VM, as the shipped Envoy config does (tests/tests/recover.rs).
    assert_eq!(str_of(&wp["spec"], "failStrategy"), "FAIL_RELOAD");
    assert_eq!(str_of(&wp["spec"], "phase"), "AUTHN");
    // The starting pluginConfig is a policy the filter accepts.
    let config = serde_json::to_vec(&wp["spec"]["pluginConfig"]).unwrap();
    rollgate::validate::validate(&config).unwrap();
    let vs = &documents(&manifests().join("istio/virtualservice.yaml"))[0];
    let dr = &documents(&manifests().join("istio/destinationrule.yaml"))[0];
    let subsets: BTreeSet<&str> = dr["spec"]["subsets"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|s| str_of(s, "name"))
        .collect();
    for route in vs["spec"]["http"].as_sequence().unwrap() {
        let subset = str_of(&route["route"][0]["destination"], "subset");
        assert!(subsets.contains(subset), "unknown subset {subset}");
        if let Some(m) = route["match"].as_sequence() {
            let variant = str_of(&m[0]["headers"]["x-rollgate-variant"], "exact");
            assert_eq!(variant, subset);
        }
    }
}

/// The EnvoyExtensionPolicy loads the filter on the HTTPRoute, fails closed, and starts from
/// a policy the filter accepts, routing on the variant header the HTTPRoute matches.
#[test]
fn envoy_gateway_policy_targets_the_httproute_with_a_valid_policy() {
    let root = manifests();
    let eep = &documents(&root.join("envoy-gateway/envoyextensionpolicy.yaml"))[0];
    let route = &documents(&root.join("gateway-api/httproute.yaml"))[0];
    let target = &eep["spec"]["targetRefs"][0];
    assert_eq!(str_of(target, "kind"), "HTTPRoute");
    assert_eq!(str_of(target, "name"), str_of(&route["metadata"], "name"));
    let wasm = eep["spec"]["wasm"].as_sequence().unwrap();
    let entry = wasm
        .iter()
        .find(|w| str_of(w, "name") == "rollgate")
        .expect("a wasm entry named rollgate (the controller writes its config)");
    assert_eq!(entry["failOpen"].as_bool(), Some(false));
    let config = serde_json::to_vec(&entry["config"]).unwrap();
    let policy = rollgate_policy::policy::accept_policy(&config).unwrap_or_else(|e| panic!("{e}"));
    // Every variant but the default has a rule on the header the filter writes.
    let header = policy.variant_header.clone();
    let matched: BTreeSet<String> = route["spec"]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|r| r["matches"].as_sequence().cloned().unwrap_or_default())
        .flat_map(|m| m["headers"].as_sequence().cloned().unwrap_or_default())
        .filter(|h| str_of(h, "name") == header)
        .map(|h| str_of(&h, "value").to_string())
        .collect();
    assert_eq!(
        matched,
        BTreeSet::from(["canary".to_string(), "dev".to_string()])
    );
}

/// Every `rollgate` container's args parse with the binary's own command line (clap), so a
/// manifest never passes a flag the binary refuses.
#[test]
fn rollgate_containers_pass_arguments_the_binary_accepts() {
    use clap::Parser;
    let mut files = Vec::new();
    yaml_files(&manifests(), &mut files);
    let mut checked = Vec::new();
    for f in files.iter().filter(|f| !not_a_resource(f)) {
        for d in documents(f)
            .iter()
            .filter(|d| str_of(d, "kind") == "Deployment")
        {
            let containers = d["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .unwrap();
            for c in containers
                .iter()
                .filter(|c| str_of(c, "image").contains("/rollgate:"))
            {
                let args: Vec<&str> = c["args"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap())
                    .collect();
                let parsed = rollgate::args::Cli::try_parse_from(
                    std::iter::once("rollgate").chain(args.iter().copied()),
                );
                if let Err(e) = parsed {
                    panic!("{}: rollgate {}: {e}", f.display(), args.join(" "));
                }
                checked.push(args[0].to_string());
            }
        }
    }
    checked.sort();
    assert_eq!(checked, ["ratelimit", "serve"]);
}

/// The rate-limit install: the service reaches Redis by its Service, reads the policy from the
/// controller's --listen port through the controller's Service, and is reached by the gateways
/// over HTTP/2 under the cluster name a Rollout's global limit gives.
#[test]
fn ratelimit_reads_the_controllers_policy_endpoint_and_speaks_grpc() {
    let root = manifests();
    let docs = |f: &str| documents(&root.join(f));
    let find = |docs: &[Value], kind: &str, name: &str| -> Value {
        docs.iter()
            .find(|d| str_of(d, "kind") == kind && str_of(&d["metadata"], "name") == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .clone()
    };
    let args = |deploy: &Value| -> Vec<String> {
        deploy["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    };
    let after = |args: &[String], flag: &str| -> String {
        let i = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("no {flag}"));
        args[i + 1].clone()
    };
    let port_of = |svc: &Value, name: &str| -> u64 {
        svc["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| str_of(p, "name") == name)
            .and_then(|p| p["port"].as_u64())
            .unwrap_or_else(|| panic!("no port {name}"))
    };
    let controller = docs("controller/deployment.yaml");
    let ctl_args = args(&controller[0]);
    let ctl_port = after(&ctl_args, "--listen")
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let ctl_svc = &docs("controller/service.yaml")[0];
    assert_eq!(port_of(ctl_svc, "http").to_string(), ctl_port);
    let rl = docs("ratelimit/ratelimit.yaml");
    let rl_args = args(&find(&rl, "Deployment", "rollgate-ratelimit"));
    let policy = after(&rl_args, "--policy");
    let ctl_host = format!(
        "http://{}.{}.svc:{ctl_port}/v1/policies/",
        str_of(&ctl_svc["metadata"], "name"),
        str_of(&ctl_svc["metadata"], "namespace")
    );
    assert!(
        policy.starts_with(&ctl_host),
        "{policy} is not the controller's endpoint"
    );
    let redis = docs("ratelimit/redis.yaml");
    let redis_svc = find(&redis, "Service", "rollgate-redis");
    assert_eq!(
        after(&rl_args, "--redis"),
        format!(
            "redis://rollgate-redis.rollgate-system.svc:{}",
            port_of(&redis_svc, "redis")
        )
    );
    let svc = find(&rl, "Service", "rollgate-ratelimit");
    let grpc = &svc["spec"]["ports"][0];
    assert_eq!(str_of(grpc, "appProtocol"), "grpc");
    assert_eq!(
        after(&rl_args, "--listen"),
        format!("0.0.0.0:{}", grpc["port"].as_u64().unwrap())
    );
    let dr = &docs("ratelimit/destinationrule.yaml")[0];
    assert_eq!(
        str_of(&dr["spec"], "host"),
        "rollgate-ratelimit.rollgate-system.svc.cluster.local"
    );
}
