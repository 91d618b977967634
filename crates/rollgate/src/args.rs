//! The command line, declared once with clap (derive): every subcommand answers `--help`,
//! `rollgate completions SHELL` prints a completion script, and a usage error exits 2 (clap's
//! code, the binary's convention for errors). Values are checked by the parsers below, whose
//! messages name the flag and what it takes; what needs more than one flag (a token file's
//! contents, a TLS pair) is checked where the value is used.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::wasmhost::{FailurePolicy, LogLevel};

/// The sidecar a client command talks to when neither `--server` nor `$ROLLGATE_SERVER` says.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8181";

/// The whole command line.
#[derive(Debug, Parser)]
#[command(
    name = "rollgate",
    version,
    propagate_version = true,
    about = "Progressive delivery inside the Envoy and Istio gateways you already run"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `rollgate ratelimit`.
#[derive(Debug, Args)]
pub struct RatelimitArgs {
    /// The Redis holding the counters, e.g. redis://127.0.0.1:6379.
    #[arg(long, value_name = "URL")]
    pub redis: String,
    /// Where gateways reach the service (gRPC, HTTP/2).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    pub listen: std::net::SocketAddr,
    /// A policy whose global limits are served: a file, or the sidecar's
    /// http://HOST:PORT/v1/policies/NAME (repeatable; re-read every second).
    #[arg(long, value_name = "FILE|URL", required = true, value_parser = policy_source)]
    pub policy: Vec<rollgate_ratelimit::PolicySource>,
}

fn policy_source(s: &str) -> Result<rollgate_ratelimit::PolicySource, String> {
    rollgate_ratelimit::PolicySource::parse(s)
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a policy or filter configuration (- reads standard input): prints what it holds,
    /// or every error with its field path, exactly as the filter would judge it.
    Validate(ValidateArgs),
    /// Run requests through the compiled filter in rollgate's proxy-wasm host, as Envoy
    /// would; prints one JSON line per request.
    Try(TryArgs),
    /// Run the sidecar (`--dir`: the Rollout files of a directory, their policies served to
    /// the gateways) or the controller (`--kubernetes`: every Rollout in the cluster).
    Serve(ServeArgs),
    /// Release the rollout's current pause (only at the step it reads first, or
    /// `--from-step`); exit 3 when sent but unanswered: unknown whether applied.
    Promote(PromoteArgs),
    /// Abort the rollout: canary weight 0, header route off.
    Abort(TargetArgs),
    /// Start an aborted rollout over.
    Retry(TargetArgs),
    /// Where rollouts stand; `--watch` follows one until it is promoted or aborted.
    Status(StatusArgs),
    /// Serve the web dashboard of a sidecar (`--server`) or of the cluster's Rollouts
    /// (`--kubernetes`) on a loopback port of this machine; `serve --dir` also serves it
    /// itself at `/`.
    Dashboard(DashboardArgs),
    /// Run the global rate-limit service: Envoy's RLS v3 (`ShouldRateLimit`) over Limitador,
    /// counters in Redis, limits from the `scope: global` limits of the policies given.
    Ratelimit(RatelimitArgs),
    /// Print the Rollout CustomResourceDefinition (what manifests/crd/rollout.yaml holds).
    Crd,
    /// Print a shell completion script (`source <(rollgate completions bash)`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `rollgate validate`.
#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// The policy or filter configuration; - reads standard input.
    #[arg(value_name = "POLICY.json")]
    pub policy: String,
}

/// `rollgate try`.
#[derive(Debug, Clone, Parser)]
#[command(name = "try", after_long_help = crate::try_cmd::AFTER_HELP)]
pub struct TryArgs {
    /// The policy (plugin configuration); - reads standard input. At most 1 MiB, as in the
    /// filter.
    #[arg(long, value_name = "POLICY.json")]
    pub policy: String,
    /// The filter module [default: the workspace's `make wasm` build, or $ROLLGATE_WASM].
    #[arg(long, value_name = "FILE")]
    pub wasm: Option<PathBuf>,
    /// Worker VMs; requests go round-robin.
    #[arg(long, value_name = "N", default_value = "1", value_parser = at_least_one)]
    pub workers: usize,
    /// How long one call into the filter may run before its VM fails, as a trap fails it.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = filter_timeout)]
    pub timeout: Duration,
    /// Linear memory one VM may use, in MiB (1 to 4096).
    #[arg(long, value_name = "MIB", default_value = "256", value_parser = memory_mib)]
    pub max_memory: usize,
    /// What Envoy does with a request whose VM failed, and with the next ones (Envoy's
    /// default: fail_closed).
    #[arg(long, value_name = "POLICY", default_value = "fail_closed", value_parser = failure_policy)]
    pub failure_policy: FailurePolicy,
    /// Log lines of the plugin printed with each answer from this level up (trace, debug,
    /// info, warn, error, critical); also what the plugin reads as its log level (Envoy's
    /// `--component-log-level wasm:LEVEL`).
    #[arg(long, value_name = "LEVEL", default_value = "info", value_parser = log_level)]
    pub log_level: LogLevel,
    /// A property other filters would have set, as raw bytes (repeatable): e.g.
    /// `--property metadata.tenant=acme` is read at path ["metadata", "tenant"].
    #[arg(long, value_name = "PATH=VALUE")]
    pub property: Vec<String>,
    /// A cluster the filter calls out to (`proxy_http_call`, and `proxy_grpc_call` and gRPC
    /// streams over HTTP/2), served by URL for real (repeatable): e.g. `--cluster
    /// auth=http://127.0.0.1:9000`.
    #[arg(long, value_name = "NAME=URL")]
    pub cluster: Vec<String>,
    /// One JSON request per line (see below), at most 64 MiB; - reads standard input.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["authority", "path", "method", "source", "header"])]
    pub requests: Option<String>,
    /// Run the filter as a network filter (Envoy's `envoy.filters.network.wasm`, for a
    /// policy with a `tcp` section): each --requests line is a connection event,
    /// `{"open": "IP:PORT"}`, `{"close": N}` (N: the `connection` an open printed) or
    /// `{"advance": "500ms"}` (the host's clock), answered admitted or refused.
    #[arg(long, requires = "requests")]
    pub tcp: bool,
    /// The single request's `:authority` [default: localhost].
    #[arg(long, value_name = "HOST")]
    pub authority: Option<String>,
    /// The single request's `:path` [default: /].
    #[arg(long, value_name = "PATH")]
    pub path: Option<String>,
    /// The single request's `:method` [default: GET].
    #[arg(long, value_name = "METHOD")]
    pub method: Option<String>,
    /// A request header, `name: value` (repeatable; a pseudo-header's name starts with ':').
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub header: Vec<String>,
    /// The client address [default: 127.0.0.1:50000].
    #[arg(long, value_name = "IP:PORT")]
    pub source: Option<String>,
}

/// `rollgate serve`.
#[derive(Debug, Clone, Parser)]
#[command(name = "serve")]
pub struct ServeArgs {
    /// Run the sidecar over the Rollout files in DIR.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    pub dir: Option<PathBuf>,
    /// Run the controller over every Rollout in the cluster (kubeconfig or the pod's service
    /// account), writing each policy into its WasmPlugin.
    #[arg(long)]
    pub kubernetes: bool,
    /// Where the sidecar's API listens [default: 127.0.0.1:8181]; with --kubernetes, where
    /// the controller serves the dashboard, the Rollouts and their policies (none without).
    /// Beyond loopback it needs a token.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// An Envoy admin endpoint whose stats analysis reads (repeatable: summed).
    #[arg(long, value_name = "URL")]
    pub envoy_admin: Vec<String>,
    /// The token commands must carry (else $ROLLGATE_TOKEN).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<String>,
    /// Serve HTTPS with this certificate chain (with --tls-key).
    #[arg(long, value_name = "CHAIN.pem", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert.
    #[arg(long, value_name = "KEY.pem", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Connections served at once; one more is answered 503.
    #[arg(long, value_name = "N", default_value = "256", value_parser = at_least_one, conflicts_with = "kubernetes")]
    pub max_connections: usize,
    /// How long a rollout whose file vanished keeps its status and policy.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = duration, conflicts_with = "kubernetes")]
    pub vanished_grace: Duration,
    /// The controller reads analysis from this Prometheus HTTP API instead of Envoy admins.
    #[arg(long, value_name = "URL", conflicts_with_all = ["envoy_admin", "dir"])]
    pub prometheus: Option<String>,
    /// Namespace of the controller's leader-election Lease [default: $POD_NAMESPACE, else
    /// rollgate-system].
    #[arg(long, value_name = "NS", conflicts_with = "dir")]
    pub lease_namespace: Option<String>,
    /// This controller replica's identity [default: $POD_NAME, else $HOSTNAME].
    #[arg(long, value_name = "ID", conflicts_with = "dir")]
    pub identity: Option<String>,
    /// The controller's --listen serves only the Rollouts of this namespace [default: every
    /// namespace's, named NS/NAME].
    #[arg(
        short = 'n',
        long,
        value_name = "NS",
        requires = "listen",
        conflicts_with = "dir"
    )]
    pub namespace: Option<String>,
}

/// Where a client command goes: a sidecar (default) or the cluster (`--kubernetes`).
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The sidecar's URL.
    #[arg(long, value_name = "URL", env = "ROLLGATE_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// The sidecar's token (else $ROLLGATE_TOKEN).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<String>,
    /// The CA that signed an https:// sidecar's certificate.
    #[arg(long, value_name = "PATH", env = "ROLLGATE_CA")]
    pub ca: Option<String>,
    /// How long to wait for the sidecar.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = positive_duration)]
    pub timeout: Duration,
    /// Act on Rollouts in the cluster (found through kubeconfig like kubectl) instead.
    #[arg(long)]
    pub kubernetes: bool,
    /// The cluster namespace [default: the kubeconfig's].
    #[arg(short = 'n', long, value_name = "NS", requires = "kubernetes")]
    pub namespace: Option<String>,
}

/// `rollgate dashboard`.
#[derive(Debug, Clone, Parser)]
#[command(name = "dashboard")]
pub struct DashboardArgs {
    /// Where the dashboard listens (loopback only).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8282")]
    pub listen: String,
    /// The sidecar's URL.
    #[arg(long, value_name = "URL", env = "ROLLGATE_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// The sidecar's token (else $ROLLGATE_TOKEN); the page's commands must carry it too.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<String>,
    /// The CA that signed an https:// sidecar's certificate.
    #[arg(long, value_name = "PATH", env = "ROLLGATE_CA")]
    pub ca: Option<String>,
    /// How long to wait for the sidecar.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = positive_duration)]
    pub timeout: Duration,
    /// Show the Rollouts of the cluster instead (kubeconfig, like kubectl); commands use its
    /// credentials, and the page's must carry --token-file's token (one you choose).
    #[arg(long)]
    pub kubernetes: bool,
    /// The cluster namespace [default: the kubeconfig's].
    #[arg(short = 'n', long, value_name = "NS", requires = "kubernetes")]
    pub namespace: Option<String>,
}

/// `rollgate abort|retry NAME`.
#[derive(Debug, Clone, Parser)]
pub struct TargetArgs {
    /// The rollout.
    pub name: String,
    #[command(flatten)]
    pub conn: Connection,
}

/// `rollgate promote NAME`.
#[derive(Debug, Clone, Parser)]
#[command(name = "promote")]
pub struct PromoteArgs {
    /// The rollout.
    pub name: String,
    /// Act only if the rollout is at step N (1-based, as `status` shows it), so a retried
    /// promote cannot skip a pause.
    #[arg(long, value_name = "N", value_parser = step_number)]
    pub from_step: Option<u32>,
    #[command(flatten)]
    pub conn: Connection,
}

/// `rollgate status [NAME]`.
#[derive(Debug, Clone, Parser)]
#[command(name = "status")]
pub struct StatusArgs {
    /// One rollout; all without.
    pub name: Option<String>,
    /// Follow NAME until it is promoted (exit 0) or aborted (exit 1).
    #[arg(short, long)]
    pub watch: bool,
    #[command(flatten)]
    pub conn: Connection,
}

fn at_least_one(v: &str) -> Result<usize, String> {
    v.parse::<usize>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| "takes a whole number ≥ 1".into())
}

fn step_number(v: &str) -> Result<u32, String> {
    v.parse::<u32>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| "expected a step number (1, 2, …)".into())
}

fn duration(v: &str) -> Result<Duration, String> {
    crate::rollout::time::parse_ms(v).map(Duration::from_millis)
}

fn positive_duration(v: &str) -> Result<Duration, String> {
    duration(v).map(|d| d.max(Duration::from_millis(1)))
}

fn filter_timeout(v: &str) -> Result<Duration, String> {
    rollgate_policy::duration::parse_duration(v)
        .ok()
        .filter(|ns| *ns > 0)
        .map(Duration::from_nanos)
        .ok_or_else(|| "takes a duration like 1s".into())
}

fn memory_mib(v: &str) -> Result<usize, String> {
    v.parse::<usize>()
        .ok()
        .filter(|m| (1..=4096).contains(m))
        .map(|m| m << 20)
        .ok_or_else(|| "takes MiB from 1 to 4096 (a wasm32 memory's most)".into())
}

fn failure_policy(v: &str) -> Result<FailurePolicy, String> {
    // Envoy's enum names (FAIL_CLOSED…) are accepted as well.
    match v.to_ascii_lowercase().as_str() {
        "fail_closed" => Ok(FailurePolicy::FailClosed),
        "fail_open" => Ok(FailurePolicy::FailOpen),
        "fail_reload" => Ok(FailurePolicy::FailReload),
        _ => Err("takes fail_closed, fail_open or fail_reload".into()),
    }
}

fn log_level(v: &str) -> Result<LogLevel, String> {
    match v.to_ascii_lowercase().as_str() {
        "trace" => Ok(LogLevel::Trace),
        "debug" => Ok(LogLevel::Debug),
        "info" => Ok(LogLevel::Info),
        "warn" | "warning" => Ok(LogLevel::Warn),
        "error" => Ok(LogLevel::Error),
        "critical" => Ok(LogLevel::Critical),
        _ => Err("takes trace, debug, info, warn, error or critical".into()),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_declaration_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_answers_help() {
        for sub in Cli::command().get_subcommands() {
            let name = sub.get_name().to_string();
            let e = Cli::try_parse_from(["rollgate", &name, "--help"]).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp, "{name}");
            assert!(e.to_string().contains("Usage: rollgate"), "{name}: {e}");
        }
    }
}
