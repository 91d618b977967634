//! `rollgate promote|abort|retry|status --kubernetes [--namespace NS]`: the CLI's commands
//! against the cluster (kubeconfig, like kubectl) instead of the sidecar, through
//! [`crate::kube::commands`]; `status --watch` is [`super::watch`].

use std::io::IsTerminal;

use kube::Client;

use super::{format, CliError};
use crate::args::Command;
use crate::kube::commands::{command_expecting, get, list, CommandError};
use crate::kube::controller::Error;
use crate::rollout::view::Expect;
use crate::rollout::Event;

/// A command line of the cluster CLI, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    /// `--namespace NS` / `-n NS`; absent: the kubeconfig's namespace.
    pub namespace: Option<String>,
    /// The rollout's NAME (required but for `status`).
    pub name: Option<String>,
    /// The engine event of `promote`, `abort`, `retry`; `None` for `status`.
    pub event: Option<Event>,
    /// `status --watch` / `-w`.
    pub watch: bool,
    /// `promote --from-step N`: act only at step N (1-based).
    pub from_step: Option<u32>,
}

impl Invocation {
    /// The cluster command of a parsed `promote`, `abort`, `retry` or `status`, if it has
    /// `--kubernetes`.
    pub fn of(command: &Command) -> Option<Invocation> {
        let (conn, name, event, watch, from_step) = match command {
            Command::Promote(p) => (
                &p.conn,
                Some(&p.name),
                Some(Event::Promote),
                false,
                p.from_step,
            ),
            Command::Abort(t) => (&t.conn, Some(&t.name), Some(Event::Abort), false, None),
            Command::Retry(t) => (&t.conn, Some(&t.name), Some(Event::Retry), false, None),
            Command::Status(st) => (&st.conn, st.name.as_ref(), None, st.watch, None),
            _ => return None,
        };
        conn.kubernetes.then(|| Invocation {
            namespace: conn.namespace.clone(),
            name: name.cloned(),
            event,
            watch,
            from_step,
        })
    }
}

/// Runs `cmd` (`promote`, `abort`, `retry`, `status`) as `inv` says against the cluster;
/// returns the exit code.
pub fn run_cli(
    cmd: &str,
    inv: Invocation,
    out: &mut dyn std::io::Write,
    err: &mut dyn std::io::Write,
) -> Result<u8, CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Cluster(e.to_string()))?;
    rt.block_on(async {
        let client = Client::try_default()
            .await
            .map_err(|e| CliError::Cluster(format!("connecting to Kubernetes: {e}")))?;
        let ns = inv
            .namespace
            .unwrap_or_else(|| client.default_namespace().to_string());
        if inv.watch {
            let tty = std::io::stdout().is_terminal();
            return super::watch::follow(&client, &ns, inv.name.as_deref(), tty, out, err).await;
        }
        let expect = Expect {
            step: inv.from_step,
            attempt: None,
        };
        cli_with_expect(
            &client,
            &ns,
            cmd,
            inv.event,
            inv.name.as_ref(),
            &expect,
            out,
            err,
        )
        .await
    })
}

/// [`run_cli`] on a given client (the tests' mock API server).
pub async fn cli_with(
    client: &Client,
    ns: &str,
    cmd: &str,
    event: Option<Event>,
    name: Option<&String>,
    out: &mut dyn std::io::Write,
    err: &mut dyn std::io::Write,
) -> Result<u8, CliError> {
    let expect = Expect::default();
    cli_with_expect(client, ns, cmd, event, name, &expect, out, err).await
}

/// [`cli_with`] for a command that acts only where `expect` says.
#[allow(clippy::too_many_arguments)]
pub async fn cli_with_expect(
    client: &Client,
    ns: &str,
    cmd: &str,
    event: Option<Event>,
    name: Option<&String>,
    expect: &Expect,
    out: &mut dyn std::io::Write,
    err: &mut dyn std::io::Write,
) -> Result<u8, CliError> {
    let outcome = match (event, name) {
        (Some(ev), Some(n)) => command_expecting(client, ns, n, ev, expect).await.map(|v| {
            let mut text = format!("{n}: {cmd}: {}\n", format::summary(&v));
            if !v.status.message.is_empty() {
                text.push_str(&format!("  {}\n", v.status.message));
            }
            text
        }),
        (_, Some(n)) => get(client, ns, n).await.map(|v| format::block(&v, false)),
        (_, None) => list(client, ns).await.map(|vs| format::list(&vs, false)),
    };
    match outcome {
        Ok(text) => {
            let _ = write!(out, "{text}");
            Ok(0)
        }
        Err(CommandError::Refused(why)) => {
            let _ = writeln!(err, "rollgate {cmd}: {why}");
            Ok(1)
        }
        Err(CommandError::Kube(Error::Kube(kube::Error::Api(s)))) if s.code == 404 => {
            let _ = writeln!(err, "rollgate {cmd}: {}", s.message);
            Ok(1)
        }
        Err(e) => Err(CliError::Cluster(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use clap::Parser;

    use crate::args::Cli;

    /// `rollgate CMD ARGS…` as the binary parses it; usage errors as the CLI's.
    fn parse(cmd: &str, args: &[&str]) -> Result<Invocation, CliError> {
        let argv = ["rollgate", cmd].into_iter().chain(args.iter().copied());
        let cli = Cli::try_parse_from(argv).map_err(|e| CliError::Usage(e.to_string()))?;
        Invocation::of(&cli.command).ok_or_else(|| CliError::Usage("no --kubernetes".into()))
    }

    #[test]
    fn status_takes_watch_and_an_optional_name() {
        let inv = parse(
            "status",
            &["--kubernetes", "-n", "shop", "flask", "--watch"],
        )
        .unwrap();
        assert_eq!(
            inv,
            Invocation {
                namespace: Some("shop".into()),
                name: Some("flask".into()),
                event: None,
                watch: true,
                from_step: None,
            }
        );
        let inv = parse("status", &["--kubernetes", "-w"]).unwrap();
        assert_eq!((inv.name, inv.watch), (None, true));
    }

    #[test]
    fn commands_refuse_watch_and_need_one_name() {
        assert!(matches!(
            parse("promote", &["--kubernetes", "flask", "--watch"]),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(
            parse("abort", &["--kubernetes"]),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(
            parse("status", &["--kubernetes", "a", "b"]),
            Err(CliError::Usage(_))
        ));
        let inv = parse("retry", &["--kubernetes", "flask"]).unwrap();
        assert_eq!(inv.event, Some(Event::Retry));
        let inv = parse("promote", &["--kubernetes", "flask", "--from-step", "4"]).unwrap();
        assert_eq!(inv.from_step, Some(4));
        for bad in [
            &["--kubernetes", "flask", "--from-step", "0"][..],
            &["--kubernetes", "flask", "--from-step"],
        ] {
            assert!(matches!(parse("promote", bad), Err(CliError::Usage(_))));
        }
        assert!(matches!(
            parse("abort", &["--kubernetes", "flask", "--from-step", "2"]),
            Err(CliError::Usage(_))
        ));
    }
}
