//! `rollgate promote|abort|retry|status --kubernetes [--namespace NS]`: the CLI's commands
//! against the cluster (kubeconfig, like kubectl) instead of the sidecar, through
//! [`crate::kube::commands`]; `status --watch` is [`super::watch`].

use std::io::IsTerminal;

use kube::Client;

use super::{format, CliError};
use crate::kube::commands::{command_expecting, get, list, CommandError};
use crate::kube::controller::Error;
use crate::rollout::Event;
use crate::serve::registry::Expect;

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

/// Parses the arguments of `cmd` (`promote`, `abort`, `retry`, `status`): `--kubernetes`,
/// `--namespace NS` / `-n NS`, `--watch` / `-w` (status only), the NAME.
pub fn parse_args(cmd: &str, args: &[String]) -> Result<Invocation, CliError> {
    let event = match cmd {
        "promote" => Some(Event::Promote),
        "abort" => Some(Event::Abort),
        "retry" => Some(Event::Retry),
        "status" => None,
        other => return Err(usage(other, "unknown command")),
    };
    let (mut namespace, mut names, mut watch, mut from_step) = (None, Vec::new(), false, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--kubernetes" => {}
            "--namespace" | "-n" => {
                let v = it
                    .next()
                    .ok_or_else(|| usage(cmd, "--namespace needs a value"))?;
                namespace = Some(v.clone());
            }
            "--watch" | "-w" if event.is_none() => watch = true,
            "--from-step" if cmd == "promote" => {
                let v = it
                    .next()
                    .ok_or_else(|| usage(cmd, "--from-step needs a step number"))?;
                from_step = Some(v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    usage(
                        cmd,
                        &format!("--from-step {v}: expected a step number (1, 2, …)"),
                    )
                })?);
            }
            s if s.starts_with('-') => return Err(usage(cmd, &format!("unknown option '{s}'"))),
            s => names.push(s.to_string()),
        }
    }
    if names.len() > 1 || (event.is_some() && names.is_empty()) {
        return Err(usage(cmd, "takes one rollout NAME"));
    }
    Ok(Invocation {
        namespace,
        name: names.pop(),
        event,
        watch,
        from_step,
    })
}

/// Runs `cmd` (`promote`, `abort`, `retry`, `status`) with `args` ([`parse_args`]) against
/// the cluster; returns the exit code.
pub fn run_cli(
    cmd: &str,
    args: &[String],
    out: &mut dyn std::io::Write,
    err: &mut dyn std::io::Write,
) -> Result<u8, CliError> {
    let inv = parse_args(cmd, args)?;
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

fn usage(cmd: &str, what: &str) -> CliError {
    CliError::Usage(format!("{cmd} --kubernetes: {what}"))
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

    fn parse(cmd: &str, args: &[&str]) -> Result<Invocation, CliError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        parse_args(cmd, &args)
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
