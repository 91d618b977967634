//! The four Envoys under test, (a) to (d): their bootstrap YAML, validation, and processes.
//!
//! Every case shares the listener, the HTTP connection manager settings, the router and the
//! three clusters; only the route table and the HTTP filters before the router differ. Per
//! Envoy's "how to benchmark" FAQ, request-id generation and the router's dynamic stats are
//! off in all four (they would cost the same everywhere and only blur the differences).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rollgate_e2e::{static_cluster, yaml_quote};

use crate::http;
use crate::sys::{Pin, Proc};

/// The upstream clusters: (cluster, variant). The names are the seed policy's.
pub const CLUSTERS: [(&str, &str); 3] = [
    ("k8s-flask", "stable"),
    ("k8s-flask-canary", "canary"),
    ("k8s-flask-dev", "dev"),
];

/// Per-user limit in every limited case: refills 100 a second, bursts to 1,000. The mix sends
/// each of its 10,000 users about 2 requests a second, so nothing is throttled, yet a single
/// user flooding the proxy is (the "armed" check after the rounds).
pub const LIMIT_PER_SEC: u64 = 100;
/// The per-user bucket's capacity.
pub const LIMIT_BURST: u64 = 1_000;

/// A case of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// (a) Envoy with no filter: the ceiling.
    NoFilter,
    /// (b) A proxy-wasm filter that does nothing: the price of Wasm itself.
    Passthrough,
    /// (c) Envoy's own filters doing rollgate's job.
    Native,
    /// (d) rollgate: routing, sticky split, per-user rate limit, breaker armed.
    Rollgate,
    /// (d2) (d) with the canary at 10 % instead of 50 %: the usual shape of a release.
    Canary10,
    /// (dm) (d) also mirroring 10 % of the requests the split keeps on stable to the canary
    /// (issue 16): what shadow traffic adds.
    Mirror,
    /// (e) (d) plus one global limit, asked of `rollgate ratelimit` (RLS v3, counters in
    /// Redis) through the filter's batches of hits (issue 15): what a fleet-wide limit adds.
    Global,
    /// Profiling variants of (d): the same filter with parts of the policy left out.
    RollgateVariant(Ablation),
    /// Profiling: the probe filter making the host calls of [`PROBES`]`[i]` per request.
    Probe(usize),
}

/// The probe's configurations in `--profile` runs: (operations, how many units of the
/// measured operation they repeat). Cost per unit = (probe − (b)) / units. Repeating an
/// operation lifts its cost well above the run-to-run noise of Envoy's CPU per request.
pub const PROBES: [(&str, u32); 14] = [
    ("headers*10", 10),
    ("time*10", 10),
    ("property*10", 10),
    ("shared-get*10", 10),
    ("shared*10", 10),
    ("set-headers*5", 5),
    // Writes the cluster header and clears the route cache: the request is routed again, now
    // by `cluster_header` (rollgate's path). The next three take it apart.
    ("set-headers,clear-route", 1),
    ("set-headers", 1),
    ("clear-route", 1),
    ("clear-route*10", 10),
    ("counter*10", 10),
    ("histogram*10", 10),
    ("status*10", 10),
    // The host calls rollgate (d) makes per request, without rollgate's own work.
    (
        "headers,time*2,shared,set-headers,clear-route,counter*2,histogram,status",
        1,
    ),
];

/// Which parts of the bench policy a profiling variant keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ablation {
    /// The seed policy only: routing and the sticky split.
    RoutingOnly,
    /// Routing and the per-user rate limit.
    WithLimit,
    /// Routing and the canary breaker.
    WithBreaker,
}

impl Case {
    /// The cases of every run, in report order: the four of the performance issue, then
    /// (d2), (dm) and (e).
    pub const MAIN: [Case; 7] = [
        Case::NoFilter,
        Case::Passthrough,
        Case::Native,
        Case::Rollgate,
        Case::Canary10,
        Case::Mirror,
        Case::Global,
    ];
    /// The profiling variants of rollgate (`--profile`).
    pub const ABLATION: [Case; 3] = [
        Case::RollgateVariant(Ablation::RoutingOnly),
        Case::RollgateVariant(Ablation::WithLimit),
        Case::RollgateVariant(Ablation::WithBreaker),
    ];

    /// Short label used in the report and file names.
    pub fn label(self) -> String {
        match self {
            Case::Probe(i) => format!("p{i}"),
            other => other.fixed_label().to_string(),
        }
    }

    fn fixed_label(self) -> &'static str {
        match self {
            Case::Probe(_) => "p",
            Case::NoFilter => "a",
            Case::Passthrough => "b",
            Case::Native => "c",
            Case::Rollgate => "d",
            Case::Canary10 => "d2",
            Case::Mirror => "dm",
            Case::Global => "e",
            Case::RollgateVariant(Ablation::RoutingOnly) => "d-route",
            Case::RollgateVariant(Ablation::WithLimit) => "d-route+limit",
            Case::RollgateVariant(Ablation::WithBreaker) => "d-route+breaker",
        }
    }

    /// What the case runs, for the report.
    pub fn describe(self) -> String {
        match self {
            Case::Probe(i) => format!("probe: {}", PROBES.get(i).map_or("?", |(ops, _)| *ops)),
            other => other.fixed_description().to_string(),
        }
    }

    fn fixed_description(self) -> &'static str {
        match self {
            Case::Probe(_) => "probe",
            Case::NoFilter => "Envoy, no filter (ceiling)",
            Case::Passthrough => "Envoy + pass-through proxy-wasm filter",
            Case::Native => {
                "Envoy native: header route, weighted_clusters 50/50 + hash, local_ratelimit"
            }
            Case::Rollgate => "Envoy + rollgate (routing, split, rate limit, breaker armed)",
            Case::Canary10 => "rollgate as (d), canary at 10 %",
            Case::Mirror => "rollgate as (d) + 10 % of stable's requests mirrored to the canary",
            Case::Global => {
                "rollgate as (d) + one global limit (RLS v3 to rollgate ratelimit, Redis)"
            }
            Case::RollgateVariant(Ablation::RoutingOnly) => {
                "rollgate, seed policy only (no limit, no breaker)"
            }
            Case::RollgateVariant(Ablation::WithLimit) => "rollgate, seed policy + rate limit",
            Case::RollgateVariant(Ablation::WithBreaker) => "rollgate, seed policy + breaker",
        }
    }

    /// Whether this case splits traffic between stable and canary (the others send all of it
    /// to stable).
    pub fn splits(self) -> bool {
        matches!(
            self,
            Case::Native
                | Case::Rollgate
                | Case::RollgateVariant(_)
                | Case::Canary10
                | Case::Mirror
                | Case::Global
        )
    }

    /// Whether this case runs rollgate's filter (any policy).
    pub fn rollgate(self) -> bool {
        matches!(
            self,
            Case::Rollgate
                | Case::RollgateVariant(_)
                | Case::Canary10
                | Case::Mirror
                | Case::Global
        )
    }

    /// The split's canary weight, 0–1.
    pub fn canary_weight(self) -> f64 {
        if self == Case::Canary10 {
            0.10
        } else {
            0.50
        }
    }

    /// The canary's expected share of a loaded run's upstream requests: the A/B header's
    /// 10 % plus the split's weight of the other 90 %, the 5 % of keyless requests (all from
    /// 127.0.0.1, so one sticky key) landing on either side, and (dm) its copies on top.
    pub fn canary_share(self) -> std::ops::RangeInclusive<f64> {
        match self {
            Case::Canary10 => 0.10..=0.30,
            _ => 0.40..=0.70,
        }
    }

    /// Whether this case rate-limits per user.
    pub fn limits(self) -> bool {
        matches!(
            self,
            Case::Native
                | Case::Rollgate
                | Case::RollgateVariant(Ablation::WithLimit)
                | Case::Canary10
                | Case::Mirror
                | Case::Global
        )
    }

    /// Whether this case runs rollgate with a circuit breaker.
    pub fn breaks(self) -> bool {
        matches!(
            self,
            Case::Rollgate
                | Case::RollgateVariant(Ablation::WithBreaker)
                | Case::Canary10
                | Case::Mirror
                | Case::Global
        )
    }

    /// How many rate limits this case's policy has.
    pub fn limit_count(self) -> usize {
        usize::from(self.limits()) + usize::from(self == Case::Global)
    }
}

/// The global limit of (e): one counter per host (three keys in the mix), far above what the
/// bench reaches, so nothing is refused and each worker spends batches of 64 hits.
pub const GLOBAL_PER_SEC: u64 = 1_000_000;

/// The Envoy cluster of the rate-limit service in (e).
pub const RLS_CLUSTER: &str = "ratelimit";

/// The bench policy: the seed policy, routing on the cluster header alone, plus the parts
/// `case` keeps: a per-user rate limit on
/// `x-user-id` (generous, see [`LIMIT_PER_SEC`]) and a breaker on canary
/// (`LatencyAtQuantileMS(50.0) > 100`, fallback stable).
///
/// NB: the limit applies only to requests that carry a user id, as Envoy's descriptor does in
/// (c). Without the `match`, rollgate keys the keyless 5 % by client address, and since all
/// the load comes from 127.0.0.1 that one bucket would throttle them.
pub fn policy(seed: &str, case: Case) -> Result<String> {
    let body = seed.trim_end();
    let Some(body) = body.strip_suffix('}') else {
        bail!("the seed policy is not a JSON object");
    };
    // Like (c), rollgate writes only the header Envoy routes on: plain Envoy needs no variant
    // header (Istio routes on it instead, and then needs no cluster header).
    let variant = r#""variant_header": "x-rollgate-variant""#;
    if !body.contains(variant) {
        bail!("the seed policy does not set {variant}");
    }
    let mut p = body.trim_end().replace(variant, r#""variant_header": """#);
    let split = r#""split": [ { "variant": "canary", "weight": 50 } ]"#;
    if (case == Case::Canary10 || case == Case::Mirror) && !p.contains(split) {
        bail!("the seed policy has no {split}");
    }
    if case == Case::Canary10 {
        p = p.replace(
            split,
            r#""split": [ { "variant": "canary", "weight": 10 } ]"#,
        );
    }
    if case == Case::Mirror {
        p = p.replace(
            split,
            &format!(r#"{split}, "mirror": {{ "variant": "canary", "percent": 10 }}"#),
        );
    }
    if case == Case::Global {
        let _ = write!(
            p,
            r#",
  "rate_limits": [
    {{ "name": "per-user", "match": "HeaderRegexp(`x-user-id`, `.`)",
       "average": {LIMIT_PER_SEC}, "period": "1s", "burst": {LIMIT_BURST},
       "source": {{ "header": "x-user-id" }} }},
    {{ "name": "global", "scope": "global", "average": {GLOBAL_PER_SEC}, "period": "1s",
       "source": {{ "host": {{}} }},
       "service": {{ "cluster": "{RLS_CLUSTER}", "domain": "bench" }} }}
  ]"#
        );
    } else if case.limits() {
        let _ = write!(
            p,
            r#",
  "rate_limits": [
    {{ "name": "per-user", "match": "HeaderRegexp(`x-user-id`, `.`)",
       "average": {LIMIT_PER_SEC}, "period": "1s", "burst": {LIMIT_BURST},
       "source": {{ "header": "x-user-id" }} }}
  ]"#
        );
    }
    if case.breaks() {
        p.push_str(
            r#",
  "circuit_breakers": [
    { "name": "canary", "variant": "canary", "expression": "LatencyAtQuantileMS(50.0) > 100",
      "fallback_variant": "stable" }
  ]"#,
        );
    }
    p.push_str("\n}\n");
    Ok(p)
}

/// Ports of one Envoy.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// The HTTP listener.
    pub listener: u16,
    /// The admin endpoint.
    pub admin: u16,
}

/// Everything a config needs besides the case.
pub struct Inputs<'a> {
    /// Upstream port of each of [`CLUSTERS`], in order.
    pub upstream_ports: [u16; 3],
    /// rollgate's `.wasm`.
    pub rollgate_wasm: &'a Path,
    /// The probe's `.wasm` (profiling runs only).
    pub probe_wasm: Option<&'a Path>,
    /// The pass-through `.wasm`.
    pub passthrough_wasm: &'a Path,
    /// The seed policy's text.
    pub seed_policy: &'a str,
    /// The rate-limit service's port on 127.0.0.1 (case (e)).
    pub rls_port: Option<u16>,
}

fn wasm_filter(name: &str, wasm: &Path, configuration: &str) -> String {
    format!(
        r#"          - name: {name}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {name}
                root_id: {name}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {configuration}
                vm_config:
                  vm_id: {name}
                  runtime: envoy.wasm.runtime.v8
                  code:
                    local:
                      filename: {wasm}
                failure_policy: FAIL_CLOSED
"#,
        configuration = yaml_quote(configuration),
        wasm = yaml_quote(&wasm.to_string_lossy()),
    )
}

/// Route table sending everything to stable.
const ALL_TO_STABLE: &str = r#"            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: k8s-flask }
"#;

/// Route table for rollgate: the cluster the filter chose (`cluster_header`), else stable.
const BY_CLUSTER_HEADER: &str = r#"            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match:
                  prefix: "/"
                  headers:
                  - name: x-rollgate-cluster
                    present_match: true
                route: { cluster_header: x-rollgate-cluster }
              - match: { prefix: "/" }
                route: { cluster: k8s-flask }
"#;

/// Route table for Envoy's native version of the seed policy: `dev.coding` to dev;
/// `pro.coding` with `location: shenzhen` to canary; the rest of `pro.coding` 50/50 between
/// stable and canary, chosen by a hash of `x-user-id` (`use_hash_policy`, so a user sticks);
/// anything else to stable (the policy's default).
const NATIVE_ROUTES: &str = r#"            virtual_hosts:
            - name: dev
              domains: ["dev.coding", "dev.coding:*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: k8s-flask-dev }
            - name: pro
              domains: ["pro.coding", "pro.coding:*"]
              routes:
              - match:
                  prefix: "/"
                  headers:
                  - name: location
                    string_match: { exact: shenzhen }
                route: { cluster: k8s-flask-canary }
              - match: { prefix: "/" }
                route:
                  weighted_clusters:
                    use_hash_policy: true
                    clusters:
                    - { name: k8s-flask, weight: 50 }
                    - { name: k8s-flask-canary, weight: 50 }
                  hash_policy:
                  - header: { header_name: x-user-id }
            - name: default
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: k8s-flask }
"#;

/// Envoy's local rate limit, one token bucket per `x-user-id` value (a wildcard descriptor
/// with dynamic entries), as generous as rollgate's. A filter-wide bucket is required by the
/// API; it is set far above anything the bench reaches.
fn native_ratelimit() -> String {
    format!(
        r#"          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: per_user
              token_bucket: {{ max_tokens: 100000000, tokens_per_fill: 100000000, fill_interval: 1s }}
              filter_enabled:
                runtime_key: bench_rl_enabled
                default_value: {{ numerator: 100, denominator: HUNDRED }}
              filter_enforced:
                runtime_key: bench_rl_enforced
                default_value: {{ numerator: 100, denominator: HUNDRED }}
              rate_limits:
              - actions:
                - request_headers: {{ header_name: x-user-id, descriptor_key: user }}
              descriptors:
              - entries: [ {{ key: user, value: "" }} ]
                token_bucket: {{ max_tokens: {LIMIT_BURST}, tokens_per_fill: {LIMIT_PER_SEC}, fill_interval: 1s }}
              max_dynamic_descriptors: 20000
"#
    )
}

/// The bootstrap YAML of `case`.
pub fn render(case: Case, ports: Ports, inputs: &Inputs<'_>) -> Result<String> {
    let (routes, filters) = match case {
        Case::NoFilter => (ALL_TO_STABLE, String::new()),
        Case::Passthrough => (
            ALL_TO_STABLE,
            wasm_filter("passthrough", inputs.passthrough_wasm, ""),
        ),
        Case::Native => (NATIVE_ROUTES, native_ratelimit()),
        Case::Probe(i) => {
            let (Some(wasm), Some((ops, _))) = (inputs.probe_wasm, PROBES.get(i)) else {
                bail!("probe case {i} without the probe's .wasm");
            };
            (BY_CLUSTER_HEADER, wasm_filter("probe", wasm, ops))
        }
        Case::Rollgate
        | Case::RollgateVariant(_)
        | Case::Canary10
        | Case::Mirror
        | Case::Global => (
            BY_CLUSTER_HEADER,
            wasm_filter(
                "rollgate",
                inputs.rollgate_wasm,
                &policy(inputs.seed_policy, case)?,
            ),
        ),
    };
    let mut y = format!(
        r#"# rollgate bench, case ({label}): {describe}. Generated by rollgate-bench.
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  listeners:
  - name: bench
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {listener} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          generate_request_id: false
          route_config:
            name: bench
{routes}          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              dynamic_stats: false
  clusters:
"#,
        label = case.label(),
        describe = case.describe(),
        admin = ports.admin,
        listener = ports.listener,
    );
    for ((name, _), port) in CLUSTERS.iter().zip(inputs.upstream_ports) {
        static_cluster(&mut y, name, port, false);
    }
    if case == Case::Global {
        let Some(port) = inputs.rls_port else {
            bail!("case (e) without the rate-limit service's port");
        };
        // gRPC: the service's cluster speaks HTTP/2.
        static_cluster(&mut y, RLS_CLUSTER, port, true);
    }
    Ok(y)
}

/// Runs `envoy --mode validate` on `config`; fails with Envoy's output if it refuses.
pub fn validate(envoy: &Path, config: &Path) -> Result<()> {
    let out = Command::new(envoy)
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "error",
            "-c",
        ])
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", envoy.display()))?;
    if !out.status.success() {
        bail!(
            "envoy --mode validate refused {}:\n{}{}",
            config.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A running Envoy of one case.
pub struct Envoy {
    /// Which case.
    pub case: Case,
    /// Its ports.
    pub ports: Ports,
    /// Its log file.
    pub log: PathBuf,
    /// The process (stopped on drop).
    pub proc: Proc,
}

/// Starts Envoy on `config` with one worker, pinned as `pin` says, and waits until its admin
/// endpoint says LIVE and the listener answers.
pub fn start(
    envoy: &Path,
    case: Case,
    config: &Path,
    ports: Ports,
    dir: &Path,
    pin: &Pin,
) -> Result<Envoy> {
    let log = dir.join(format!("envoy-{}.log", case.label()));
    let mut cmd = pin.command(envoy);
    // Warnings only, but the filters' own info lines (rollgate logs its loaded policy). The
    // log goes to stderr, unbuffered (`--log-path` flushes only every 10 s).
    cmd.args(["--concurrency", "1", "--disable-hot-restart"])
        .args(["-l", "warning", "--component-log-level", "wasm:info"])
        .arg("-c")
        .arg(config);
    let mut proc = Proc::spawn(&format!("envoy ({})", case.label()), cmd, &log, pin)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = proc.exited()? {
            bail!(
                "envoy ({}) exited ({status}) before becoming ready:\n{}",
                case.label(),
                tail(&log, 40)
            );
        }
        let ready = http::get_text(ports.admin, "/ready")
            .map(|(code, body)| code == 200 && body.trim() == "LIVE")
            .unwrap_or(false);
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "envoy ({}) not ready after 60 s:\n{}",
                case.label(),
                tail(&log, 40)
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(Envoy {
        case,
        ports,
        log,
        proc,
    })
}

impl Envoy {
    /// Envoy's counters and gauges (`name: value` lines of admin `/stats`) whose name
    /// contains `filter`.
    pub fn stats(&self, filter: &str) -> Result<Vec<(String, u64)>> {
        let (code, body) = http::get_text(self.ports.admin, &format!("/stats?filter={filter}"))?;
        if code != 200 {
            bail!("admin /stats answered {code}");
        }
        Ok(body
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(": ")?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect())
    }

    /// Requests each cluster of [`CLUSTERS`] has received so far, in order.
    pub fn upstream_requests(&self) -> Result<[u64; 3]> {
        let stats = self.stats("upstream_rq_total")?;
        let mut out = [0; 3];
        for ((cluster, _), n) in CLUSTERS.iter().zip(out.iter_mut()) {
            let name = format!("cluster.{cluster}.upstream_rq_total");
            *n = stats
                .iter()
                .find(|(k, _)| *k == name)
                .map_or(0, |(_, v)| *v);
        }
        Ok(out)
    }

    /// The last lines of this Envoy's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

/// The last `lines` lines of a file (empty if unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollgate_policy::policy::Policy;

    const SEED: &str = include_str!("../../examples/policy.json");

    #[test]
    fn every_rollgate_case_has_its_policy() {
        let compile = |case| {
            Policy::from_json(policy(SEED, case).unwrap().as_bytes())
                .unwrap_or_else(|e| panic!("({}): {e}", case.label()))
        };
        let weight = |p: &Policy| p.spec.routes[2].split.as_ref().unwrap()[0].weight;
        assert_eq!(weight(&compile(Case::Rollgate)), 50.0);
        assert_eq!(weight(&compile(Case::Canary10)), 10.0);
        let m = compile(Case::Mirror);
        assert_eq!(weight(&m), 50.0);
        let mirror = m.spec.routes[2].mirror.as_ref().unwrap();
        assert_eq!((mirror.variant.as_str(), mirror.percent), ("canary", 10.0));
        for case in [Case::Rollgate, Case::Canary10, Case::Mirror, Case::Global] {
            let p = compile(case);
            assert_eq!(
                (p.rate_limits.len(), p.breakers.len()),
                (case.limit_count(), 1),
                "({})",
                case.label()
            );
            assert!(case.rollgate() && case.splits());
        }
        // The share each split case must show: 10 % A/B plus the weight of the rest.
        assert!(Case::Canary10.canary_share().contains(&(0.10 + 0.9 * 0.10)));
        assert!(Case::Rollgate.canary_share().contains(&(0.10 + 0.9 * 0.50)));
        assert!(!Case::Canary10.canary_share().contains(&(0.10 + 0.9 * 0.50)));
    }
}
