//! The `rollgate` command.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{bail, Context};

const USAGE: &str = "\
usage: rollgate <command> [args]

commands:
  validate POLICY.json   check a policy (use - for standard input); prints ok or every error
  try --policy POLICY.json [--wasm FILE] [--workers N] [request flags | --requests FILE|-]
                         run requests through the compiled filter; prints JSON per request
  serve --dir DIR [--listen ADDR] [--envoy-admin URL]... [--token-file PATH]
        [--tls-cert CHAIN.pem --tls-key KEY.pem] [--max-connections 256]
        [--vanished-grace DURATION]
                         run the sidecar: walk the Rollouts in DIR and serve their policies
                         (--listen default 127.0.0.1:8181); analysis reads each Envoy admin;
                         with a token (--token-file or $ROLLGATE_TOKEN) commands must carry
                         it, and a non-loopback --listen needs one; a rollout whose file
                         vanished is kept --vanished-grace (default 5m)
  serve --kubernetes [--prometheus URL | --envoy-admin URL...] [--lease-namespace NS] [--identity ID]
                         run the controller: drive every Rollout in the cluster (kubeconfig
                         or service account), write each policy into its WasmPlugin
  promote NAME [--from-step N]
                         release the rollout's current pause (only if it is at step N;
                         without --from-step, the step it reads first); exit 3 when sent but
                         unanswered (--timeout, default 10s): unknown whether applied
  abort NAME             abort the rollout: canary weight 0, header route off
  retry NAME             start an aborted rollout over
  status [NAME] [--watch]
                         where rollouts stand; --watch follows NAME until promoted or aborted
                         (promote, abort, retry, status: --server URL, default $ROLLGATE_SERVER
                         or http://127.0.0.1:8181, --token-file PATH or $ROLLGATE_TOKEN,
                         for https:// --ca PATH or $ROLLGATE_CA, --timeout 10s; with
                         --kubernetes [--namespace NS], the Rollouts in the cluster, found
                         through kubeconfig like kubectl)
  crd                    print the Rollout CustomResourceDefinition (manifests/crd/rollout.yaml)
  help                   this text";

fn read_input(path: &str) -> anyhow::Result<Vec<u8>> {
    if path == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading standard input")?;
        return Ok(buf);
    }
    std::fs::read(path).with_context(|| format!("reading {path}"))
}

fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    match args.first().map(String::as_str) {
        Some("validate") => {
            let [_, path] = args else {
                bail!("validate takes one POLICY file\n\n{USAGE}")
            };
            match rollgate::validate::validate(&read_input(path)?) {
                Ok(summary) => {
                    println!("{summary}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    for e in &errors.0 {
                        eprintln!("{path}: {e}");
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Some("try") => {
            let opts = rollgate::try_cmd::parse_args(&args[1..])?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            match rollgate::try_cmd::run(&opts, &mut std::io::stdin().lock(), &mut out) {
                Ok(true) => Ok(ExitCode::SUCCESS),
                Ok(false) => Ok(ExitCode::FAILURE),
                Err(e @ rollgate::try_cmd::TryError::Rejected(_)) => {
                    eprintln!("{}: {e}", opts.policy);
                    Ok(ExitCode::FAILURE)
                }
                // The filter or its input went past a bound: an answer about them, as a
                // rejected policy is, not a failure of `try` itself.
                Err(
                    e @ (rollgate::try_cmd::TryError::Timeout { .. }
                    | rollgate::try_cmd::TryError::Memory { .. }
                    | rollgate::try_cmd::TryError::TooLarge { .. }
                    | rollgate::try_cmd::TryError::Host(rollgate::wasmhost::HostError::Trap(_))),
                ) => {
                    eprintln!("rollgate try: {e}");
                    Ok(ExitCode::FAILURE)
                }
                Err(e) => Err(e.into()),
            }
        }
        Some("crd") => {
            print!("{}", rollgate::kube::crd::crd_yaml()?);
            Ok(ExitCode::SUCCESS)
        }
        Some("serve") if args.iter().any(|a| a == "--kubernetes") => {
            init_logs();
            let opts = rollgate::kube::run::parse_options(&args[1..], |k| std::env::var(k).ok())
                .map_err(|e| anyhow::anyhow!("{e}\n\n{USAGE}"))?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(async {
                // kubeconfig or the pod's service account, as kubectl finds them.
                let client = kube::Client::try_default()
                    .await
                    .context("connecting to the Kubernetes API")?;
                rollgate::kube::run::run(client, opts).await?;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Some("serve") => {
            init_logs();
            rollgate::cli::serve(&args[1..])?;
            Ok(ExitCode::SUCCESS)
        }
        Some("promote" | "abort" | "retry" | "status") => {
            match rollgate::cli::run(args, &mut std::io::stdout(), &mut std::io::stderr()) {
                Ok(code) => Ok(ExitCode::from(code)),
                Err(rollgate::cli::CliError::Usage(u)) => bail!("{u}\n\n{USAGE}"),
                // Not an error like the others: the command may have been applied.
                Err(e @ rollgate::cli::CliError::NoAnswer { .. }) => {
                    eprintln!("rollgate: {e}");
                    Ok(ExitCode::from(3))
                }
                Err(e) => Err(e.into()),
            }
        }
        Some("help" | "-h" | "--help") => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => bail!("unknown command '{other}'\n\n{USAGE}"),
        None => bail!("no command given\n\n{USAGE}"),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rollgate: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The sidecar's and controller's log lines: `RUST_LOG` filters (default `info`), stderr.
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Fails only if a subscriber is already set, which then keeps writing.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
