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
  serve --dir DIR [--listen ADDR] [--envoy-admin URL]... [--vanished-grace DURATION]
                         run the sidecar: walk the Rollouts in DIR and serve their policies
                         (--listen default 127.0.0.1:8181; a rollout whose file vanished is
                         kept --vanished-grace, default 5m); analysis reads each Envoy admin
  serve --kubernetes [--prometheus URL | --envoy-admin URL...] [--lease-namespace NS] [--identity ID]
                         run the controller: drive every Rollout in the cluster (kubeconfig
                         or service account), write each policy into its WasmPlugin
  promote NAME           release the rollout's current pause
  abort NAME             abort the rollout: canary weight 0, header route off
  retry NAME             start an aborted rollout over
  status [NAME] [--watch]
                         where rollouts stand; --watch follows NAME until promoted or aborted
                         (promote, abort, retry, status: --server URL, default $ROLLGATE_SERVER
                         or http://127.0.0.1:8181; with --kubernetes [--namespace NS], the
                         Rollouts in the cluster, found through kubeconfig like kubectl)
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
                Err(e) => Err(e.into()),
            }
        }
        Some("crd") => {
            print!("{}", rollgate::kube::crd::crd_yaml()?);
            Ok(ExitCode::SUCCESS)
        }
        Some("serve") if args.iter().any(|a| a == "--kubernetes") => {
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
            rollgate::cli::serve(&args[1..])?;
            Ok(ExitCode::SUCCESS)
        }
        Some("promote" | "abort" | "retry" | "status") => {
            let code = rollgate::cli::run(args, &mut std::io::stdout(), &mut std::io::stderr())
                .map_err(|e| match e {
                    rollgate::cli::CliError::Usage(u) => anyhow::anyhow!("{u}\n\n{USAGE}"),
                    e => e.into(),
                })?;
            Ok(ExitCode::from(code))
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
