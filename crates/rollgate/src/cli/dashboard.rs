//! `rollgate dashboard`: the sidecar's web dashboard on a loopback port of this machine, in
//! front of a sidecar reached with the CLI's own connection settings (`--server`, `--ca`,
//! `--token-file`): a sidecar behind `kubectl port-forward`, or one serving HTTPS under a
//! private CA the browser does not trust, is looked at as if it were local.
//!
//! With `--kubernetes [-n NS]` it shows the Rollouts of a namespace of the cluster instead,
//! read and commanded with this command's own kubeconfig credentials, as `rollgate status`
//! and `promote --kubernetes` do, through [`super::cluster_http`], which the controller
//! serves too (`serve --kubernetes --listen ADDR`, with its service account; the status has
//! no per-variant history yet, so the charts stay empty).
//!
//! The page and its files are the sidecar's ([`crate::serve::dashboard`]); reads are passed
//! through; a command is accepted under the sidecar's own rules ([`auth::refuse`]: the
//! dashboard's origin, with the token the user pastes, which must be the one this command
//! holds) and sent on with that token (to the cluster: with the kubeconfig's credentials).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::cluster_http::{ClusterApi, Scope};
use super::CliError;
use crate::args::DashboardArgs;
use crate::rollout::client;
use crate::serve::auth::{self, Token};
use crate::serve::http::{Request, Response};
use crate::serve::{conn, dashboard, Limits};

/// Where the rollouts come from.
pub enum Source {
    /// A sidecar's API.
    Sidecar {
        /// Its URL.
        server: String,
        /// The TLS client configuration for an https:// sidecar with a private CA.
        tls: Option<Arc<rustls::ClientConfig>>,
        /// How long to wait for it.
        timeout: Duration,
    },
    /// The Rollouts of namespace `ns` of a cluster.
    Cluster {
        /// The API client.
        client: kube::Client,
        /// The namespace.
        ns: String,
    },
}

/// What the dashboard's requests are answered with.
struct Proxy {
    source: Source,
    token: Option<Token>,
}

impl Proxy {
    async fn answer(self: Arc<Self>, req: Request) -> Response {
        if req.method == "GET" {
            if let Some(page) = dashboard::asset(&req.path) {
                return page;
            }
        }
        if let Source::Cluster { client, ns } = &self.source {
            let api = ClusterApi {
                client: client.clone(),
                scope: Scope::Namespace(ns.clone()),
                token: self.token.clone(),
                charts: None,
            };
            return api.answer(&req).await;
        }
        // The sidecar's client blocks: off the runtime's one thread.
        tokio::task::spawn_blocking(move || self.sidecar(&req))
            .await
            .unwrap_or_else(|_| Response::error(500, "internal error"))
    }

    fn sidecar(&self, req: &Request) -> Response {
        let segments: Vec<&str> = req.path.trim_matches('/').split('/').collect();
        match (req.method.as_str(), segments.as_slice()) {
            ("GET", ["v1", "rollouts"] | ["v1", "rollouts", _] | ["v1", "traffic"]) => {
                self.forward("GET", &req.path, None)
            }
            ("POST", ["v1", "rollouts", _, "promote" | "abort" | "retry"]) => {
                if let Some(refusal) = auth::refuse(req, self.token.as_ref()) {
                    return refusal;
                }
                let body = (!req.body.is_empty()).then_some(req.body.as_slice());
                self.forward("POST", &req.path, body)
            }
            _ => Response::error(404, &format!("no such endpoint: {}", req.path)),
        }
    }

    fn forward(&self, method: &str, path: &str, body: Option<&[u8]>) -> Response {
        let Source::Sidecar {
            server,
            tls,
            timeout,
        } = &self.source
        else {
            return Response::error(500, "not a sidecar");
        };
        let url = format!("{}{path}", server.trim_end_matches('/'));
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Bearer {}", t.secret()));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = &auth {
            headers.push(("authorization", a));
        }
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        match client::request_with(method, &url, &headers, body, *timeout, tls.as_ref()) {
            Ok(r) => {
                let ct = r.header("content-type").unwrap_or("application/json");
                Response::new(r.status, ct, r.body.clone())
                    .with_header("x-content-type-options", "nosniff")
            }
            Err(e) => Response::error(502, &format!("sidecar: {e}")),
        }
    }
}

/// A running `rollgate dashboard`; stops on drop.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Serves until the process ends.
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts serving the dashboard for `a`'s sidecar, or with `--kubernetes` its cluster.
pub fn start(a: &DashboardArgs) -> Result<Running, CliError> {
    let token = Token::from_flag_or_env(a.token_file.as_deref(), |k| std::env::var(k).ok())
        .map_err(CliError::Usage)?;
    let runtime = runtime()?;
    let source = if a.kubernetes {
        // The client's connection tasks live on the runtime that serves the page.
        let client = runtime
            .block_on(kube::Client::try_default())
            .map_err(|e| CliError::Cluster(format!("connecting to Kubernetes: {e}")))?;
        let ns = a
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        Source::Cluster { client, ns }
    } else {
        let tls = match &a.ca {
            Some(ca) if a.server.starts_with("https://") => Some(
                crate::serve::tls::client_config(std::path::Path::new(ca))
                    .map_err(CliError::Usage)?,
            ),
            _ => None,
        };
        Source::Sidecar {
            server: a.server.clone(),
            tls,
            timeout: a.timeout,
        }
    };
    serve(runtime, &a.listen, source, token)
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(format!("starting the async runtime: {e}")))
}

/// Serves the dashboard of `source` on `listen`, commands guarded by `token` (the tests give
/// a cluster client of their own).
pub fn start_with(listen: &str, source: Source, token: Option<Token>) -> Result<Running, CliError> {
    serve(runtime()?, listen, source, token)
}

fn serve(
    runtime: tokio::runtime::Runtime,
    listen: &str,
    source: Source,
    token: Option<Token>,
) -> Result<Running, CliError> {
    let proxy = Arc::new(Proxy { source, token });
    let listen_error = |e: std::io::Error| CliError::Usage(format!("--listen {listen}: {e}"));
    let listener = std::net::TcpListener::bind(listen).map_err(listen_error)?;
    let addr = listener.local_addr().map_err(listen_error)?;
    // Plain HTTP and no token of its own: it is for the person at this machine.
    if !addr.ip().is_loopback() {
        return Err(CliError::Usage(format!(
            "--listen {listen}: the dashboard listens on loopback only (open it through an \
             SSH tunnel from elsewhere, or use the sidecar's own /dashboard)"
        )));
    }
    let listener = {
        let _in_runtime = runtime.enter();
        listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
            .map_err(listen_error)?
    };
    let serving = Arc::new(conn::Serving {
        handler: Arc::new(move |req| Box::pin(proxy.clone().answer(req))),
        limits: Limits::default(),
        tls: None,
        log: Arc::new(|line| eprintln!("rollgate dashboard: {line}")),
        refused: Arc::new(|| {}),
        stopping: Arc::new(|| false),
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("rollgate-dashboard".into())
        .spawn(move || runtime.block_on(conn::accept(listener, serving, stopped)))
        .map_err(listen_error)?;
    Ok(Running {
        addr,
        stop,
        thread: Some(thread),
    })
}

/// `rollgate dashboard`: serves until the process is stopped.
pub fn run(a: &DashboardArgs) -> Result<(), CliError> {
    let running = start(a)?;
    eprintln!(
        "rollgate dashboard: open http://{}/ (reading {}; commands need the token{})",
        running.addr,
        if a.kubernetes {
            "the cluster"
        } else {
            a.server.as_str()
        },
        if a.token_file.is_some() || std::env::var_os("ROLLGATE_TOKEN").is_some() {
            " this command was given"
        } else {
            ": none given, so the page is read-only"
        }
    );
    running.wait();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar() -> Source {
        Source::Sidecar {
            server: "http://127.0.0.1:9".into(),
            tls: None,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn listens_on_loopback_only_and_answers_an_unreachable_sidecar_with_502() {
        let err = start_with("0.0.0.0:0", sidecar(), None).err().unwrap();
        assert!(err.to_string().contains("loopback only"), "{err}");
        let running = start_with("127.0.0.1:0", sidecar(), None).unwrap();
        let get = |path: &str| {
            client::request(
                "GET",
                &format!("http://{}{path}", running.addr),
                None,
                Duration::from_secs(5),
            )
            .unwrap()
        };
        assert_eq!(get("/dashboard/app.js").status, 200);
        let r = get("/v1/rollouts");
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(
            get("/v1/policies/flask").status,
            404,
            "not the gateways' API"
        );
    }
}
