//! The `rollgate` command.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{CommandFactory, Parser};

use rollgate::args::{Cli, Command};
use rollgate::try_cmd::{TryError, TryOptions};

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

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate(v) => {
            let path = &v.policy;
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
        Command::Try(a) => {
            let opts = TryOptions::try_from(a)?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            match rollgate::try_cmd::run(&opts, &mut std::io::stdin().lock(), &mut out) {
                Ok(true) => Ok(ExitCode::SUCCESS),
                Ok(false) => Ok(ExitCode::FAILURE),
                Err(e @ TryError::Rejected(_)) => {
                    eprintln!("{}: {e}", opts.policy);
                    Ok(ExitCode::FAILURE)
                }
                // The filter or its input went past a bound: an answer about them, as a
                // rejected policy is, not a failure of `try` itself.
                Err(
                    e @ (TryError::Timeout { .. }
                    | TryError::Memory { .. }
                    | TryError::TooLarge { .. }
                    | TryError::Host(rollgate::wasmhost::HostError::Trap(_))),
                ) => {
                    eprintln!("rollgate try: {e}");
                    Ok(ExitCode::FAILURE)
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Ratelimit(a) => {
            init_logs();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(async {
                let limiter = rollgate_ratelimit::RateLimiter::redis(&a.redis).await?;
                let stop = async {
                    let _ = tokio::signal::ctrl_c().await;
                };
                rollgate_ratelimit::serve(std::sync::Arc::new(limiter), a.policy, a.listen, stop)
                    .await?;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Crd => {
            print!("{}", rollgate::kube::crd::crd_yaml()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "rollgate",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(a) if a.kubernetes => {
            init_logs();
            let opts = rollgate::cli::kube_options(&a, |k| std::env::var(k).ok());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(async {
                // Bound first: a wrong --listen or a missing token stops it at once.
                let bound = rollgate::cli::controller_listen(&a, |k| std::env::var(k).ok())?;
                // kubeconfig or the pod's service account, as kubectl finds them.
                let client = kube::Client::try_default()
                    .await
                    .context("connecting to the Kubernetes API")?;
                let Some(bound) = bound else {
                    rollgate::kube::run::run(client, opts).await?;
                    return anyhow::Ok(());
                };
                // Every replica serves (reads from the API, not from the leader's cache);
                // the process ends when the controller does, as without --listen.
                let server = bound
                    .charts(opts.source())
                    .serve(client.clone(), rollgate::cli::controller_scope(&a));
                tokio::select! {
                    r = rollgate::kube::run::run(client, opts) => r?,
                    () = server => {}
                }
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(a) => {
            init_logs();
            rollgate::cli::serve(&a)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dashboard(a) => match rollgate::cli::dashboard::run(&a) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(rollgate::cli::CliError::Usage(u)) => bail!("{u}"),
            Err(e) => Err(e.into()),
        },
        command @ (Command::Promote(_)
        | Command::Abort(_)
        | Command::Retry(_)
        | Command::Status(_)) => {
            match rollgate::cli::run(&command, &mut std::io::stdout(), &mut std::io::stderr()) {
                Ok(code) => Ok(ExitCode::from(code)),
                Err(rollgate::cli::CliError::Usage(u)) => bail!("{u}"),
                // Not an error like the others: the command may have been applied.
                Err(e @ rollgate::cli::CliError::NoAnswer { .. }) => {
                    eprintln!("rollgate: {e}");
                    Ok(ExitCode::from(3))
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

fn main() -> ExitCode {
    // Usage errors exit 2 with clap's message; --help and --version exit 0.
    let cli = Cli::parse();
    match run(cli) {
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
