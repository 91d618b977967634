//! The sidecar's commands: `serve`, and the client side of `promote`, `abort`, `retry` and
//! `status`, which talk to a running `rollgate serve` (`--server URL`, else
//! `$ROLLGATE_SERVER`, else `http://127.0.0.1:8181`).
//!
//! Exit codes: 0 done; 1 the server refused (unknown rollout, command not applicable or the
//! rollout moved on, or `status --watch` saw the rollout abort); 2 usage errors and an
//! unreachable server (the binary's own convention for errors); 3 a command was sent but no
//! answer came: it may or may not have been applied.
//!
//! `promote` names the step it promotes from (`--from-step N`, else the step it reads just
//! before), so running it again after an unknown outcome cannot skip a pause.
//!
//! With `--kubernetes [--namespace NS]` the commands act on Rollouts in the cluster instead
//! ([`cluster`]).

pub mod cluster;
pub mod format;
pub mod watch;

use std::io::{IsTerminal, Write};
use std::time::Duration;

use crate::serve::api::{CommandBody, RolloutList, RolloutView};
use crate::serve::auth::Token;
use crate::serve::registry::Expect;
use crate::serve::{self, client, Config};

/// The server when neither `--server` nor `$ROLLGATE_SERVER` says otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8181";
/// How long a command waits for the server unless `--timeout` says otherwise.
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
    /// The command was sent and no answer came: applied or not, nobody knows.
    #[error(
        "sent to rollgate at {server}, but no answer came ({source}): unknown whether it was \
         applied; `rollgate status {name}` shows where it stands{retry}"
    )]
    NoAnswer {
        /// The server URL.
        server: String,
        /// The rollout.
        name: String,
        /// How to retry safely, if there is a way.
        retry: String,
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
    token_file: Option<String>,
    from_step: Option<u32>,
    timeout: Duration,
    ca: Option<String>,
}

fn parse(cmd: &str, args: &[String], watch_ok: bool) -> Result<Args, CliError> {
    let mut out = Args {
        positional: Vec::new(),
        server: std::env::var("ROLLGATE_SERVER").unwrap_or_else(|_| DEFAULT_SERVER.into()),
        watch: false,
        token_file: None,
        from_step: None,
        timeout: TIMEOUT,
        ca: std::env::var("ROLLGATE_CA").ok(),
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
            "--token-file" => {
                out.token_file = Some(
                    it.next()
                        .ok_or_else(|| {
                            CliError::Usage(format!("{cmd}: --token-file needs a PATH"))
                        })?
                        .clone(),
                );
            }
            "--watch" | "-w" if watch_ok => out.watch = true,
            "--from-step" if cmd == "promote" => {
                let v = it.next().ok_or_else(|| {
                    CliError::Usage(format!("{cmd}: --from-step needs a step number"))
                })?;
                out.from_step = Some(v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    CliError::Usage(format!(
                        "{cmd}: --from-step {v}: expected a step number (1, 2, …)"
                    ))
                })?);
            }
            "--ca" => {
                out.ca = Some(
                    it.next()
                        .ok_or_else(|| CliError::Usage(format!("{cmd}: --ca needs a PATH")))?
                        .clone(),
                );
            }
            "--timeout" => {
                let v = it
                    .next()
                    .ok_or_else(|| CliError::Usage(format!("{cmd}: --timeout needs a duration")))?;
                let ms = crate::rollout::time::parse_ms(v)
                    .map_err(|e| CliError::Usage(format!("{cmd}: --timeout {v}: {e}")))?;
                out.timeout = Duration::from_millis(ms.max(1));
            }
            s if s.starts_with('-') => {
                return Err(CliError::Usage(format!("{cmd}: unknown option '{s}'")))
            }
            s => out.positional.push(s.to_string()),
        }
    }
    Ok(out)
}

fn call(a: &Args, method: &str, path: &str) -> Result<client::HttpResponse, CliError> {
    send(a, method, path, None)
}

fn send(
    a: &Args,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<client::HttpResponse, CliError> {
    let server = &a.server;
    let url = format!("{}{path}", server.trim_end_matches('/'));
    let token = Token::from_flag_or_env(a.token_file.as_deref(), |k| std::env::var(k).ok())
        .map_err(CliError::Usage)?;
    let auth = token.map(|t| format!("Bearer {}", t.secret()));
    let headers: Vec<(&str, &str)> = auth.iter().map(|v| ("authorization", v.as_str())).collect();
    let tls = match &a.ca {
        Some(ca) if server.starts_with("https://") => Some(
            crate::serve::tls::client_config(std::path::Path::new(ca)).map_err(CliError::Usage)?,
        ),
        _ => None,
    };
    client::request_with(method, &url, &headers, body, a.timeout, tls.as_ref()).map_err(|source| {
        match source {
            client::ClientError::Url(u) => CliError::Usage(format!("--server {u}")),
            source => CliError::Unreachable {
                server: server.to_string(),
                source,
            },
        }
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
        return cluster::run_cli(cmd, rest, out, err);
    }
    match cmd.as_str() {
        "promote" | "abort" | "retry" => {
            let a = parse(cmd, rest, false)?;
            let [name] = a.positional.as_slice() else {
                return Err(CliError::Usage(format!("{cmd} takes one rollout NAME")));
            };
            let expect = match (cmd.as_str(), a.from_step) {
                (_, Some(step)) => Expect {
                    step: Some(step),
                    attempt: None,
                },
                // Where it stands now, so this promote acts at most once on it.
                ("promote", None) => {
                    let resp = call(&a, "GET", &format!("/v1/rollouts/{name}"))?;
                    if resp.status != 200 {
                        let _ = writeln!(err, "rollgate {cmd}: {}", error_text(&resp));
                        return Ok(1);
                    }
                    let v: RolloutView = decode(&a.server, &resp)?;
                    Expect {
                        step: Some(v.status.current_step.saturating_add(1)),
                        attempt: Some(v.status.attempt),
                    }
                }
                _ => Expect::default(),
            };
            let body = (expect != Expect::default())
                .then(|| {
                    serde_json::to_vec(&CommandBody {
                        expect: expect.clone(),
                    })
                })
                .transpose()
                .map_err(|e| CliError::Protocol(e.to_string()))?;
            let path = format!("/v1/rollouts/{name}/{cmd}");
            let resp = send(&a, "POST", &path, body.as_deref()).map_err(|e| match e {
                CliError::Unreachable {
                    server,
                    source: source @ client::ClientError::NoAnswer { .. },
                } => CliError::NoAnswer {
                    server,
                    name: name.clone(),
                    retry: expect
                        .step
                        .map(|s| {
                            format!(
                                "; `rollgate {cmd} {name} --from-step {s}` retries without \
                                 acting twice"
                            )
                        })
                        .unwrap_or_default(),
                    source,
                },
                e => e,
            })?;
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
                let resp = call(a, "GET", &format!("/v1/rollouts/{n}"))?;
                if resp.status != 200 {
                    let _ = writeln!(err, "rollgate status: {}", error_text(&resp));
                    return Ok(1);
                }
                let v: RolloutView = decode(&a.server, &resp)?;
                (format::block(&v, tty), Some(v.status.phase))
            }
            None => {
                let resp = call(a, "GET", "/v1/rollouts")?;
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
    let mut token_file = None;
    let (mut cert, mut key) = (None, None);
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
            "--token-file" => token_file = Some(value("--token-file")?),
            "--max-connections" => {
                let v = value("--max-connections")?;
                config.limits.max_connections =
                    v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        CliError::Usage(format!(
                            "serve: --max-connections {v}: expected a whole number above 0"
                        ))
                    })?;
            }
            "--tls-cert" => cert = Some(value("--tls-cert")?),
            "--tls-key" => key = Some(value("--tls-key")?),
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
    config.tls = match (cert, key) {
        (Some(c), Some(k)) => Some((c.into(), k.into())),
        (None, None) => None,
        _ => {
            return Err(CliError::Usage(
                "serve: --tls-cert and --tls-key go together".into(),
            ))
        }
    };
    config.token = Token::from_flag_or_env(token_file.as_deref(), |k| std::env::var(k).ok())
        .map_err(CliError::Usage)?;
    if let Some(why) = token_file
        .as_deref()
        .and_then(|f| Token::loose_permissions(f.as_ref()))
    {
        eprintln!("rollgate: warning: {why}");
    }
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
        assert_eq!(c.limits.max_connections, 256);
        let c = serve_config(&strings(&["--dir", "d", "--max-connections", "1000"])).unwrap();
        assert_eq!(c.limits.max_connections, 1000);
        assert!(serve_config(&strings(&["--dir", "d", "--max-connections", "0"])).is_err());
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
