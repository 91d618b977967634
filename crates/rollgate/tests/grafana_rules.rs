//! `manifests/grafana/rollgate.json` and `manifests/prometheus/rules.yaml` against a real
//! Prometheus scraping a real Envoy (the filter fetching its policy from a real sidecar, under
//! traffic) and that sidecar's `/metrics`: the rules file loads (`promtool check rules`, and
//! Prometheus evaluates it), and every panel query and every rule expression evaluates without
//! error and returns data (for an alert, the expression before its threshold). Grafana's
//! `$__rate_interval` is read as `1m`.

mod prometheus_support;
mod rollout_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use prometheus_support::Prometheus;
use rollgate_e2e::{Envoy, EnvoyOptions, Upstream, CANARY, DEV, STABLE};
use rollout_support::{seed_fast, wait_until, Sidecar, TempDir};

const SOURCE: &str =
    r#"{"source":{"cluster":"rollgate","path":"/v1/policies/flask","poll":"200ms","wait":"20s"}}"#;

fn manifest(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../manifests")
        .join(path)
}

/// The expression of an alert before its threshold (`x == 1`, `x > 0.05`), else the whole.
fn before_threshold(expr: &str) -> &str {
    [" == ", " > ", " < ", " >= ", " <= ", " != "]
        .iter()
        .filter_map(|op| expr.rfind(op))
        .max()
        .map_or(expr, |i| &expr[..i])
}

/// Every rule of the rules file: (name, expression, is an alert).
fn rules() -> Vec<(String, String, bool)> {
    let text = std::fs::read_to_string(manifest("prometheus/rules.yaml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let expr = rule["expr"].as_str().unwrap().trim().to_string();
            match (rule["record"].as_str(), rule["alert"].as_str()) {
                (Some(name), None) => out.push((name.to_string(), expr, false)),
                (None, Some(name)) => out.push((name.to_string(), expr, true)),
                _ => panic!("a rule is a record or an alert: {rule:?}"),
            }
        }
    }
    out
}

/// Every panel query of the dashboard: (panel title, expression with Grafana's variables
/// replaced).
fn panel_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(manifest("grafana/rollgate.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut ids = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel ids are unique"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has a query", p["title"]);
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m");
            out.push((p["title"].as_str().unwrap().to_string(), expr));
        }
    }
    out
}

#[test]
fn promtool_checks_the_rules() {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(manifest("prometheus/rules.yaml"))
        .output()
        .expect("promtool (Debian's prometheus package: `make prometheus`)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS"));
}

#[test]
fn every_panel_and_rule_returns_data_from_envoy_and_the_sidecar() {
    let dir = TempDir::new("grafana");
    dir.write("flask.yaml", &seed_fast());
    let sidecar = Sidecar::start(&dir.0, &[]);
    let upstreams: Vec<Upstream> = [STABLE, CANARY, DEV]
        .iter()
        .map(|n| Upstream::start(n))
        .collect();
    let mut opts = EnvoyOptions::new(SOURCE).cluster("rollgate", sidecar.server.addr().port());
    for u in &upstreams {
        opts = opts.cluster(u.name(), u.port());
    }
    let envoy = Envoy::start(&opts).unwrap();
    wait_until("Envoy to apply the policy", Duration::from_secs(20), || {
        envoy
            .stat("wasmcustom.rollgate.flask.policy.version")
            .is_some_and(|v| v >= 1)
    });
    let sidecar_port: u16 = sidecar.url().rsplit(':').next().unwrap().parse().unwrap();
    let rules_file = manifest("prometheus/rules.yaml");
    let prom = Prometheus::with(
        &[
            ("envoy", envoy.admin_port(), "/stats/prometheus"),
            ("rollgate", sidecar_port, "/metrics"),
        ],
        &[rules_file.as_path()],
    );
    // Traffic to every variant for a few scrapes (the dev host, the header route's users, the
    // rest of pro.coding), so rates over 1m have two points.
    let mut client = envoy.client();
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut i = 0u32;
    while Instant::now() < deadline {
        let user = format!("u{i}");
        let host = if i.is_multiple_of(3) {
            "dev.coding"
        } else {
            "pro.coding"
        };
        let r = client.get(host, "/", &[("x-user-id", user.as_bytes())]);
        assert_eq!(r.status, 200, "{}", r.body_str());
        i += 1;
        thread::sleep(Duration::from_millis(20));
    }
    // The recording rules have run once there is a traffic share.
    wait_until("the rules to be evaluated", Duration::from_secs(30), || {
        !prom
            .try_instant("rollgate:cluster_traffic_share:ratio1m")
            .unwrap_or_default()
            .is_empty()
    });

    // Every query must evaluate (an error fails at once) and return data; a series the
    // scrapes have not yet given two samples of (rates, increases) gets until the deadline.
    let mut queries = Vec::new();
    for (name, expr, alert) in rules() {
        let query = if alert {
            before_threshold(&expr).to_string()
        } else {
            expr.clone()
        };
        if alert {
            // The whole alert expression evaluates too.
            prom.try_instant(&expr)
                .unwrap_or_else(|e| panic!("alert {name}: {e}"));
        } else {
            // The recorded series exists too.
            queries.push((format!("recorded {name}"), name.clone()));
        }
        queries.push((format!("rule {name}"), query));
    }
    for (title, expr) in panel_queries() {
        queries.push((format!("panel {title}"), expr));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut empty: Vec<String> = Vec::new();
    loop {
        empty.clear();
        for (what, query) in &queries {
            match prom.try_instant(query) {
                Ok(r) if r.is_empty() => empty.push(format!("{what}: {query}")),
                Ok(_) => {}
                Err(e) => panic!("{what}: {query}: {e}"),
            }
        }
        if empty.is_empty() || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    assert!(
        empty.is_empty(),
        "no data:\n{}\n{}",
        empty.join("\n"),
        prom.log()
    );
    // What the panels show is right: the gateway runs the version the sidecar serves.
    let lag = prom.instant("rollgate:gateway_policy_lag");
    assert_eq!(lag.len(), 1, "{lag:?}");
    assert_eq!(lag[0].1, "0", "{lag:?}");
    drop(envoy);
}
