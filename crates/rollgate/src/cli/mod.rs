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

pub mod backend;
pub mod cluster;
pub mod cluster_http;
pub mod cluster_traffic;
pub mod dashboard;
pub mod format;
pub mod watch;

use std::io::{IsTerminal, Write};
use std::time::Duration;

use backend::{Answer, Backend};

use crate::args::{Command, Connection, ServeArgs};
use crate::rollout::client;
use crate::rollout::view::Expect;
use crate::rollout::view::{CommandBody, RolloutList, RolloutView};
use crate::rollout::Event;
use crate::serve::auth::Token;
use crate::serve::{self, Config};

pub use crate::args::DEFAULT_SERVER;

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
    server: String,
    token_file: Option<String>,
    timeout: Duration,
    ca: Option<String>,
}

impl Args {
    fn of(c: &Connection) -> Args {
        Args {
            server: c.server.clone(),
            token_file: c.token_file.clone(),
            timeout: c.timeout,
            ca: c.ca.clone(),
        }
    }
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

/// Runs `promote`, `abort`, `retry` or `status` as parsed, against the sidecar or, with
/// `--kubernetes`, the cluster ([`backend::run`]); returns the exit code (any other command is
/// a usage error here).
pub fn run(command: &Command, out: &mut dyn Write, err: &mut dyn Write) -> Result<u8, CliError> {
    let (req, conn) = match command {
        Command::Promote(p) => (
            request(
                "promote",
                Some(Event::Promote),
                Some(&p.name),
                p.from_step,
                false,
            ),
            &p.conn,
        ),
        Command::Abort(t) => (
            request("abort", Some(Event::Abort), Some(&t.name), None, false),
            &t.conn,
        ),
        Command::Retry(t) => (
            request("retry", Some(Event::Retry), Some(&t.name), None, false),
            &t.conn,
        ),
        Command::Status(st) => (
            request("status", None, st.name.as_ref(), None, st.watch),
            &st.conn,
        ),
        _ => return Err(CliError::Usage("not a client command".into())),
    };
    let tty = std::io::stdout().is_terminal();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Cluster(e.to_string()))?;
    rt.block_on(async {
        if conn.kubernetes {
            let mut cluster = cluster::Cluster::connect(conn.namespace.clone()).await?;
            return backend::run(&mut cluster, &req, tty, out, err).await;
        }
        let mut sidecar = Sidecar {
            args: Args::of(conn),
            cmd: req.cmd,
        };
        backend::run(&mut sidecar, &req, tty, out, err).await
    })
}

fn request(
    cmd: &'static str,
    event: Option<Event>,
    name: Option<&String>,
    from_step: Option<u32>,
    watch: bool,
) -> backend::Request {
    backend::Request {
        cmd,
        event,
        name: name.cloned(),
        from_step,
        watch,
    }
}

/// A sidecar's API (`--server`) as a [`Backend`].
pub struct Sidecar {
    args: Args,
    cmd: &'static str,
}

impl Sidecar {
    fn read<T: serde::de::DeserializeOwned>(&self, path: &str) -> Answer<T> {
        let resp = call(&self.args, "GET", path)?;
        if resp.status != 200 {
            return Ok(Err(error_text(&resp)));
        }
        decode(&self.args.server, &resp).map(Ok)
    }
}

// The sidecar's client blocks: fine on the command's own current-thread runtime, where
// nothing else waits.
impl Backend for Sidecar {
    async fn get(&mut self, name: &str) -> Answer<RolloutView> {
        self.read(&format!("/v1/rollouts/{name}"))
    }

    async fn list(&mut self) -> Answer<Vec<RolloutView>> {
        Ok(self
            .read::<RolloutList>("/v1/rollouts")?
            .map(|l| l.rollouts))
    }

    async fn command(&mut self, name: &str, event: Event, expect: &Expect) -> Answer<RolloutView> {
        let cmd = self.cmd;
        let verb = match event {
            Event::Promote => "promote",
            Event::Abort => "abort",
            Event::Retry => "retry",
            _ => return Err(CliError::Usage(format!("{cmd}: not a command"))),
        };
        let body = (*expect != Expect::default())
            .then(|| {
                serde_json::to_vec(&CommandBody {
                    expect: expect.clone(),
                })
            })
            .transpose()
            .map_err(|e| CliError::Protocol(e.to_string()))?;
        let path = format!("/v1/rollouts/{name}/{verb}");
        let resp = send(&self.args, "POST", &path, body.as_deref()).map_err(|e| match e {
            CliError::Unreachable {
                server,
                source: source @ client::ClientError::NoAnswer { .. },
            } => CliError::NoAnswer {
                server,
                name: name.to_string(),
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
            return Ok(Err(error_text(&resp)));
        }
        decode(&self.args.server, &resp).map(Ok)
    }

    async fn follow(
        &mut self,
        name: Option<&str>,
        tty: bool,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<u8, CliError> {
        let mut redraw = format::Redraw::new(tty);
        loop {
            let (text, phase) = match name {
                Some(n) => match self.get(n).await? {
                    Ok(v) => (format::block(&v, tty), Some(v.status.phase)),
                    Err(why) => {
                        let _ = writeln!(err, "rollgate status: {why}");
                        return Ok(1);
                    }
                },
                None => match self.list().await? {
                    Ok(vs) => (format::list(&vs, tty), None),
                    Err(why) => {
                        let _ = writeln!(err, "rollgate status: {why}");
                        return Ok(1);
                    }
                },
            };
            redraw.show(out, text);
            match phase.and_then(format::watch_exit) {
                Some(code) => return Ok(code),
                None => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
}

/// The sidecar's configuration from `serve --dir …`.
pub fn serve_config(a: &ServeArgs) -> Result<Config, CliError> {
    let dir = a
        .dir
        .clone()
        .ok_or_else(|| CliError::Usage("serve needs --dir DIR (or --kubernetes)".into()))?;
    let mut config = Config::new(dir);
    config.listen = a
        .listen
        .clone()
        .unwrap_or_else(|| serve::DEFAULT_LISTEN.into());
    config.envoy_admin = a.envoy_admin.clone();
    config.limits.max_connections = a.max_connections;
    config.vanished_grace = a.vanished_grace;
    config.tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => {
            return Err(CliError::Usage(
                "serve: --tls-cert and --tls-key go together".into(),
            ))
        }
    };
    config.token = Token::from_flag_or_env(a.token_file.as_deref(), |k| std::env::var(k).ok())
        .map_err(CliError::Usage)?;
    if let Some(why) = a
        .token_file
        .as_deref()
        .and_then(|f| Token::loose_permissions(f.as_ref()))
    {
        eprintln!("rollgate: warning: {why}");
    }
    Ok(config)
}

/// The controller's options from `serve --kubernetes …`; defaults from the pod's downward
/// API (`env`: `POD_NAMESPACE`, `POD_NAME`, else `HOSTNAME`).
pub fn kube_options(
    a: &ServeArgs,
    env: impl Fn(&str) -> Option<String>,
) -> crate::kube::run::Options {
    crate::kube::run::Options {
        lease_namespace: a
            .lease_namespace
            .clone()
            .or_else(|| env("POD_NAMESPACE"))
            .unwrap_or_else(|| "rollgate-system".into()),
        identity: a
            .identity
            .clone()
            .or_else(|| env("POD_NAME"))
            .or_else(|| env("HOSTNAME"))
            .unwrap_or_else(|| format!("rollgate-{}", std::process::id())),
        lease_ttl: Duration::from_secs(15),
        envoy_admin: a.envoy_admin.clone(),
        prometheus: a.prometheus.clone(),
    }
}

/// The controller's server from `serve --kubernetes --listen ADDR [--token-file PATH]
/// [--tls-cert C --tls-key K]`, bound; `None` without `--listen` (no server at all).
pub fn controller_listen(
    a: &ServeArgs,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<cluster_http::Bound>, CliError> {
    let Some(listen) = &a.listen else {
        if a.token_file.is_some() || a.tls_cert.is_some() {
            return Err(CliError::Usage(
                "serve --kubernetes: --token-file and --tls-cert are for --listen".into(),
            ));
        }
        return Ok(None);
    };
    let token = Token::from_flag_or_env(a.token_file.as_deref(), env).map_err(CliError::Usage)?;
    if let Some(why) = a
        .token_file
        .as_deref()
        .and_then(|f| Token::loose_permissions(f.as_ref()))
    {
        eprintln!("rollgate: warning: {why}");
    }
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(serve::tls::server_config(c, k).map_err(CliError::Usage)?),
        _ => None,
    };
    cluster_http::Bound::bind(listen, token, tls).map(Some)
}

/// Which Rollouts the controller's server shows (`--namespace`, else every namespace's).
pub fn controller_scope(a: &ServeArgs) -> cluster_http::Scope {
    a.namespace
        .clone()
        .map_or(cluster_http::Scope::All, cluster_http::Scope::Namespace)
}

/// `rollgate serve --dir`: runs until the process is killed.
pub fn serve(a: &ServeArgs) -> Result<(), CliError> {
    serve::start(serve_config(a)?)?.wait();
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{Cli, StatusArgs};

    fn serve_config_of(a: &[&str]) -> Result<Config, String> {
        let args = ServeArgs::try_parse_from(std::iter::once("serve").chain(a.iter().copied()))
            .map_err(|e| e.to_string())?;
        serve_config(&args).map_err(|e| e.to_string())
    }

    #[test]
    fn serve_arguments() {
        let c = serve_config_of(&[
            "--dir",
            "/r",
            "--listen",
            "0.0.0.0:9",
            "--envoy-admin",
            "http://a:1",
            "--envoy-admin",
            "http://b:2",
        ])
        .unwrap();
        assert_eq!(c.dir, std::path::PathBuf::from("/r"));
        assert_eq!(c.listen, "0.0.0.0:9");
        assert_eq!(c.envoy_admin, ["http://a:1", "http://b:2"]);
        assert_eq!(c.limits.max_connections, 256);
        let c = serve_config_of(&["--dir", "d", "--max-connections", "1000"]).unwrap();
        assert_eq!(c.limits.max_connections, 1000);
        let e = serve_config_of(&["--dir", "d", "--max-connections", "0"]).unwrap_err();
        assert!(e.contains("--max-connections"), "{e}");
        assert_eq!(c.vanished_grace, crate::serve::DEFAULT_VANISHED_GRACE);
        let c = serve_config_of(&["--dir", "d", "--vanished-grace", "90s"]).unwrap();
        assert_eq!(c.vanished_grace, std::time::Duration::from_secs(90));
        assert!(serve_config_of(&["--dir", "d", "--vanished-grace", "soon"]).is_err());
        assert!(serve_config_of(&["--listen", "x"]).is_err());
        assert!(serve_config_of(&["--dir"]).is_err());
        assert!(serve_config_of(&["--dir", "d", "--bogus"]).is_err());
        // A TLS key without its certificate, or the sidecar's flags in controller mode.
        let e = serve_config_of(&["--dir", "d", "--tls-key", "k.pem"]).unwrap_err();
        assert!(e.contains("--tls-cert"), "{e}");
        assert!(serve_config_of(&["--kubernetes", "--listen", "0.0.0.0:1"]).is_err());
        assert!(serve_config_of(&["--dir", "d", "--kubernetes"]).is_err());
    }

    #[test]
    fn client_arguments() {
        let a =
            StatusArgs::try_parse_from(["status", "flask", "--server=http://x:1", "-w"]).unwrap();
        assert_eq!(
            (a.name.as_deref(), a.conn.server.as_str(), a.watch),
            (Some("flask"), "http://x:1", true)
        );
        assert_eq!(a.conn.timeout, Duration::from_secs(10));
        for bad in [
            &["rollgate", "promote", "flask", "--watch"][..],
            &["rollgate", "promote", "--server"],
            &["rollgate", "promote"],
            &["rollgate", "status", "a", "b"],
            &["rollgate", "abort", "flask", "--from-step", "2"],
            &["rollgate", "promote", "flask", "--from-step", "0"],
            &["rollgate", "status", "--namespace", "shop"],
        ] {
            let e = Cli::try_parse_from(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
        let Cli {
            command: Command::Promote(p),
        } = Cli::try_parse_from(["rollgate", "promote", "flask", "--from-step", "4"]).unwrap()
        else {
            panic!("not promote")
        };
        assert_eq!((p.name.as_str(), p.from_step), ("flask", Some(4)));
        // Only the client commands run here.
        let mut out = Vec::new();
        let mut err = Vec::new();
        assert!(matches!(
            run(&Command::Crd, &mut out, &mut err),
            Err(CliError::Usage(_))
        ));
    }
}
