//! The sidecar's commands: `serve`, and the client side of `promote`, `abort`, `retry` and
//! `status`, which talk to a running `rollgate serve` (`--server URL`, else
//! `$ROLLGATE_SERVER`, else `http://127.0.0.1:8181`).
//!
//! Exit codes: 0 done; 1 the server refused (unknown rollout, command not applicable, or
//! `status --watch` saw the rollout abort); 2 usage errors and an unreachable server (the
//! binary's own convention for errors).
//!
//! With `--kubernetes [--namespace NS]` the commands act on Rollouts in the cluster instead
//! ([`crate::kube::commands`]).

pub mod format;

use std::io::{IsTerminal, Write};
use std::time::Duration;

use crate::serve::api::{RolloutList, RolloutView};
use crate::serve::{self, client, Config};

/// The server when neither `--server` nor `$ROLLGATE_SERVER` says otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8181";
/// How long a command waits for the server.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a command could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// The server did not answer.
    #[error(
        "cannot reach rollgate at {server} (is `rollgate serve` running? --server URL): {source}"
    )]
    Unreachable {
        /// The server URL.
        server: String,
        /// Why.
        source: client::ClientError,
    },
    /// The server answered something unexpected.
    #[error("unexpected answer from {0}")]
    Protocol(String),
    /// The Kubernetes API (`--kubernetes`) failed.
    #[error("{0}")]
    Cluster(String),
    /// The sidecar could not start.
    #[error(transparent)]
    Serve(#[from] serve::ServeError),
}

struct Args {
    positional: Vec<String>,
    server: String,
    watch: bool,
}

fn parse(cmd: &str, args: &[String], watch_ok: bool) -> Result<Args, CliError> {
    let mut out = Args {
        positional: Vec::new(),
        server: std::env::var("ROLLGATE_SERVER").unwrap_or_else(|_| DEFAULT_SERVER.into()),
        watch: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--server" => {
                out.server = it
                    .next()
                    .ok_or_else(|| CliError::Usage(format!("{cmd}: --server needs a URL")))?
                    .clone();
            }
            s if s.starts_with("--server=") => out.server = s["--server=".len()..].into(),
            "--watch" | "-w" if watch_ok => out.watch = true,
            s if s.starts_with('-') => {
                return Err(CliError::Usage(format!("{cmd}: unknown option '{s}'")))
            }
            s => out.positional.push(s.to_string()),
        }
    }
    Ok(out)
}

fn call(server: &str, method: &str, path: &str) -> Result<client::HttpResponse, CliError> {
    let url = format!("{}{path}", server.trim_end_matches('/'));
    client::request(method, &url, None, TIMEOUT).map_err(|source| match source {
        client::ClientError::Url(u) => CliError::Usage(format!("--server {u}")),
        source => CliError::Unreachable {
            server: server.to_string(),
            source,
        },
    })
}

fn error_text(resp: &client::HttpResponse) -> String {
    serde_json::from_slice::<serde_json::Value>(&resp.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("server answered {}: {}", resp.status, resp.text().trim()))
}

fn decode<T: serde::de::DeserializeOwned>(
    server: &str,
    resp: &client::HttpResponse,
) -> Result<T, CliError> {
    serde_json::from_slice(&resp.body).map_err(|e| CliError::Protocol(format!("{server}: {e}")))
}

/// Runs `promote`, `abort`, `retry` or `status` (`args[0]`); returns the exit code.
pub fn run(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> Result<u8, CliError> {
    let (cmd, rest) = args
        .split_first()
        .ok_or_else(|| CliError::Usage("no command".into()))?;
    if rest.iter().any(|a| a == "--kubernetes") {
        return crate::kube::commands::run_cli(cmd, rest, out, err);
    }
    match cmd.as_str() {
        "promote" | "abort" | "retry" => {
            let a = parse(cmd, rest, false)?;
            let [name] = a.positional.as_slice() else {
                return Err(CliError::Usage(format!("{cmd} takes one rollout NAME")));
            };
            let resp = call(&a.server, "POST", &format!("/v1/rollouts/{name}/{cmd}"))?;
            if resp.status != 200 {
                let _ = writeln!(err, "rollgate {cmd}: {}", error_text(&resp));
                return Ok(1);
            }
            let v: RolloutView = decode(&a.server, &resp)?;
            let _ = writeln!(out, "{name}: {cmd}: {}", format::summary(&v));
            if !v.status.message.is_empty() {
                let _ = writeln!(out, "  {}", v.status.message);
            }
            Ok(0)
        }
        "status" => {
            let a = parse(cmd, rest, true)?;
            if a.positional.len() > 1 {
                return Err(CliError::Usage(
                    "status takes at most one rollout NAME".into(),
                ));
            }
            status(&a, a.positional.first().map(String::as_str), out, err)
        }
        other => Err(CliError::Usage(format!("unknown command '{other}'"))),
    }
}

fn status(
    a: &Args,
    name: Option<&str>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, CliError> {
    let tty = std::io::stdout().is_terminal();
    let mut redraw = format::Redraw::new(tty);
    loop {
        let (text, phase) = match name {
            Some(n) => {
                let resp = call(&a.server, "GET", &format!("/v1/rollouts/{n}"))?;
                if resp.status != 200 {
                    let _ = writeln!(err, "rollgate status: {}", error_text(&resp));
                    return Ok(1);
                }
                let v: RolloutView = decode(&a.server, &resp)?;
                (format::block(&v, tty), Some(v.status.phase))
            }
            None => {
                let resp = call(&a.server, "GET", "/v1/rollouts")?;
                if resp.status != 200 {
                    let _ = writeln!(err, "rollgate status: {}", error_text(&resp));
                    return Ok(1);
                }
                let list: RolloutList = decode(&a.server, &resp)?;
                (format::list(&list.rollouts, tty), None)
            }
        };
        if !a.watch {
            let _ = write!(out, "{text}");
            return Ok(0);
        }
        redraw.show(out, text);
        match phase.and_then(format::watch_exit) {
            Some(code) => return Ok(code),
            None => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Parses `serve`'s arguments.
pub fn serve_config(args: &[String]) -> Result<Config, CliError> {
    let mut dir = None;
    let mut config = Config::new("");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| CliError::Usage(format!("serve: {flag} needs a value")))
        };
        match a.as_str() {
            "--dir" => dir = Some(value("--dir")?),
            "--listen" => config.listen = value("--listen")?,
            "--envoy-admin" => config.envoy_admin.push(value("--envoy-admin")?),
            "--vanished-grace" => {
                let v = value("--vanished-grace")?;
                let ms = crate::rollout::time::parse_ms(&v)
                    .map_err(|e| CliError::Usage(format!("serve: --vanished-grace: {e}")))?;
                config.vanished_grace = std::time::Duration::from_millis(ms);
            }
            other => {
                return Err(CliError::Usage(format!(
                    "serve: unknown argument '{other}'"
                )))
            }
        }
    }
    config.dir = dir
        .ok_or_else(|| CliError::Usage("serve needs --dir DIR".into()))?
        .into();
    Ok(config)
}

/// `rollgate serve`: runs until the process is killed.
pub fn serve(args: &[String]) -> Result<(), CliError> {
    serve::start(serve_config(args)?)?.wait();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn serve_arguments() {
        let c = serve_config(&strings(&[
            "--dir",
            "/r",
            "--listen",
            "0.0.0.0:9",
            "--envoy-admin",
            "http://a:1",
            "--envoy-admin",
            "http://b:2",
        ]))
        .unwrap();
        assert_eq!(c.dir, std::path::PathBuf::from("/r"));
        assert_eq!(c.listen, "0.0.0.0:9");
        assert_eq!(c.envoy_admin, ["http://a:1", "http://b:2"]);
        assert_eq!(c.vanished_grace, crate::serve::DEFAULT_VANISHED_GRACE);
        let c = serve_config(&strings(&["--dir", "d", "--vanished-grace", "90s"])).unwrap();
        assert_eq!(c.vanished_grace, std::time::Duration::from_secs(90));
        assert!(serve_config(&strings(&["--dir", "d", "--vanished-grace", "soon"])).is_err());
        assert!(serve_config(&strings(&["--listen", "x"])).is_err());
        assert!(serve_config(&strings(&["--dir"])).is_err());
        assert!(serve_config(&strings(&["--dir", "d", "--bogus"])).is_err());
    }

    #[test]
    fn client_arguments() {
        let a = parse(
            "status",
            &strings(&["flask", "--server=http://x:1", "-w"]),
            true,
        )
        .unwrap();
        assert_eq!(
            (a.positional, a.server, a.watch),
            (strings(&["flask"]), "http://x:1".into(), true)
        );
        assert!(parse("promote", &strings(&["--watch"]), false).is_err());
        assert!(parse("promote", &strings(&["--server"]), false).is_err());
        let mut out = Vec::new();
        let mut err = Vec::new();
        assert!(matches!(
            run(&strings(&["promote"]), &mut out, &mut err),
            Err(CliError::Usage(_))
        ));
    }
}
