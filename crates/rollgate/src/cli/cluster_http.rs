//! The cluster's Rollouts over HTTP: the web dashboard and the sidecar's endpoints, answered
//! from the Kubernetes API. Written once for `rollgate dashboard --kubernetes` (one namespace,
//! the user's kubeconfig, on loopback: [`super::dashboard`]) and for the controller's own
//! server (`serve --kubernetes --listen ADDR`, its service account: [`Bound`]).
//!
//! | request | answer |
//! |---|---|
//! | `GET /`, `/dashboard` | the sidecar's web dashboard ([`crate::serve::dashboard`]) |
//! | `GET /v1/rollouts` | the Rollouts ([`RolloutList`](crate::rollout::view::RolloutList)) |
//! | `GET /v1/rollouts/NAME` | one ([`RolloutView`](crate::rollout::view::RolloutView)) |
//! | `POST /v1/rollouts/NAME/promote`, `/abort`, `/retry` | the Rollout after the command (the status patched as `promote --kubernetes` does); 409 when it does not apply |
//! | `GET /v1/policies/NAME` | the policy the controller renders for the Rollout from its spec and status, as the sidecar serves one (`x-rollgate-version`, `etag`; `?version=N` answers 304 at once when N is current: no long-poll, the gateways of a cluster read the WasmPlugin) |
//! | `GET /v1/traffic` | the charts: each Rollout's recent per-variant rates, success and latency, read from the analysis source ([`super::cluster_traffic`]); empty without one (`rollgate dashboard --kubernetes`) |
//! | `GET /healthz` | `ok` |
//!
//! Across every namespace ([`Scope::All`], the controller without `--namespace`) a Rollout is
//! named `NS/NAME` in what is answered, and asked for as `NS/NAME` (or `NS%2FNAME`, as the
//! page encodes it) or as a bare `NAME` when only one namespace has it (409 otherwise).
//!
//! Commands are guarded exactly as the sidecar's ([`auth::refuse`]): the bearer token when
//! one is configured, and no request a web page makes but the dashboard's own, with it.

use std::net::SocketAddr;
use std::sync::Arc;

use kube::{Client, ResourceExt};

use super::cluster_traffic::{self, Charts};
use super::CliError;
use crate::kube::analysis::Source;
use crate::kube::commands::{self, CommandError};
use crate::kube::controller::Error;
use crate::rollout::view::{CommandBody, Expect, RolloutList, RolloutView};
use crate::rollout::Event;
use crate::serve::auth::{self, Token};
use crate::serve::http::{Request, Response};
use crate::serve::{conn, dashboard, Limits};

/// Which Rollouts are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Those of one namespace, named by their names.
    Namespace(String),
    /// Those of every namespace, named `NS/NAME`.
    All,
}

/// What is answered: the cluster, which Rollouts, and the token commands need.
#[derive(Clone)]
pub struct ClusterApi {
    /// The API client.
    pub client: Client,
    /// Which Rollouts.
    pub scope: Scope,
    /// The bearer token commands must carry (none: only clients that are no web page).
    pub token: Option<Token>,
    /// The charts' history, when something records it.
    pub charts: Option<Charts>,
}

type Answer<T> = Result<T, Response>;

fn kube_error(e: CommandError) -> Response {
    match e {
        CommandError::Refused(why) => Response::error(409, &why),
        CommandError::Kube(Error::Kube(kube::Error::Api(s))) if s.code == 404 => {
            Response::error(404, &s.message)
        }
        e => Response::error(502, &format!("Kubernetes API: {e}")),
    }
}

impl ClusterApi {
    /// Answers one request.
    pub async fn answer(&self, req: &Request) -> Response {
        if let Some(refusal) = auth::refuse(req, self.token.as_ref()) {
            return refusal;
        }
        if req.method == "GET" {
            if let Some(page) = dashboard::asset(&req.path) {
                return page;
            }
        }
        // The page encodes `NS/NAME` as one segment.
        let path = req.path.replace("%2F", "/").replace("%2f", "/");
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let outcome = match (req.method.as_str(), segments.as_slice()) {
            ("GET", ["healthz"]) => return Response::new(200, "text/plain", "ok\n"),
            ("GET", ["v1", "traffic"]) => {
                return match &self.charts {
                    Some(c) => Response::json(200, &*c.lock()),
                    None => Response::json(200, &serde_json::json!({ "rollouts": {} })),
                }
            }
            ("GET", ["v1", "rollouts"]) => self
                .list()
                .await
                .map(|rollouts| Response::json(200, &RolloutList { rollouts })),
            ("GET", ["v1", "rollouts", name]) => self.get(None, name).await,
            ("GET", ["v1", "rollouts", ns, name]) => self.get(Some(ns), name).await,
            ("GET", ["v1", "policies", name]) => self.policy(None, name, req).await,
            ("GET", ["v1", "policies", ns, name]) => self.policy(Some(ns), name, req).await,
            ("POST", ["v1", "rollouts", name, cmd]) => self.command(None, name, cmd, req).await,
            ("POST", ["v1", "rollouts", ns, name, cmd]) => {
                self.command(Some(ns), name, cmd, req).await
            }
            _ => Err(Response::error(
                404,
                &format!(
                    "no such endpoint: {}",
                    crate::serve::http::excerpt(req.path.as_bytes())
                ),
            )),
        };
        outcome.unwrap_or_else(|refusal| refusal)
    }

    /// A view as this scope names it.
    fn shown(&self, mut v: RolloutView) -> RolloutView {
        if self.scope == Scope::All {
            v.name.clone_from(&v.file);
        }
        v
    }

    async fn list(&self) -> Answer<Vec<RolloutView>> {
        let views = match &self.scope {
            Scope::Namespace(ns) => commands::list(&self.client, ns).await,
            Scope::All => commands::list_all(&self.client)
                .await
                .map(|ros| ros.iter().map(commands::view).collect()),
        };
        Ok(views
            .map_err(kube_error)?
            .into_iter()
            .map(|v| self.shown(v))
            .collect())
    }

    /// The namespace of Rollout `name` (`ns` if the request named one).
    async fn locate(&self, ns: Option<&str>, name: &str) -> Answer<String> {
        match (&self.scope, ns) {
            (Scope::Namespace(own), Some(ns)) if ns != own => Err(Response::error(
                404,
                &format!("only the Rollouts of namespace {own} are served here"),
            )),
            (Scope::Namespace(own), _) => Ok(own.clone()),
            (Scope::All, Some(ns)) => Ok(ns.to_string()),
            (Scope::All, None) => {
                let all = commands::list_all(&self.client).await.map_err(kube_error)?;
                let mut found: Vec<String> = all
                    .iter()
                    .filter(|ro| ro.name_any() == name)
                    .map(|ro| ro.namespace().unwrap_or_default())
                    .collect();
                match found.len() {
                    1 => Ok(found.remove(0)),
                    0 => Err(Response::error(404, &format!("no rollout named '{name}'"))),
                    _ => Err(Response::error(
                        409,
                        &format!(
                            "rollouts named '{name}' are in namespaces {}: ask for NS/{name}",
                            found.join(", ")
                        ),
                    )),
                }
            }
        }
    }

    async fn get(&self, ns: Option<&str>, name: &str) -> Answer<Response> {
        let ns = self.locate(ns, name).await?;
        let v = commands::get(&self.client, &ns, name)
            .await
            .map_err(kube_error)?;
        Ok(Response::json(200, &self.shown(v)))
    }

    async fn command(
        &self,
        ns: Option<&str>,
        name: &str,
        cmd: &str,
        req: &Request,
    ) -> Answer<Response> {
        let event = match cmd {
            "promote" => Event::Promote,
            "abort" => Event::Abort,
            "retry" => Event::Retry,
            _ => {
                return Err(Response::error(
                    404,
                    &format!(
                        "unknown command '{}'",
                        crate::serve::http::excerpt(cmd.as_bytes())
                    ),
                ))
            }
        };
        let expect = if req.body.iter().all(u8::is_ascii_whitespace) {
            Expect::default()
        } else {
            serde_json::from_slice::<CommandBody>(&req.body)
                .map_err(|e| Response::error(400, &format!("body: {e}")))?
                .expect
        };
        let ns = self.locate(ns, name).await?;
        let v = commands::command_expecting(&self.client, &ns, name, event, &expect)
            .await
            .map_err(kube_error)?;
        Ok(Response::json(200, &self.shown(v)))
    }

    async fn policy(&self, ns: Option<&str>, name: &str, req: &Request) -> Answer<Response> {
        let ns = self.locate(ns, name).await?;
        let ro = commands::read(&self.client, &ns, name)
            .await
            .map_err(kube_error)?;
        let p = commands::rendered_policy(&ro)
            .map_err(|why| Response::error(404, &format!("no policy for '{name}': {why}")))?;
        let known = match req.param("version") {
            None => 0,
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| Response::error(400, "version takes a whole number"))?,
        };
        let status = if p.version > known { 200 } else { 304 };
        let body = if status == 200 {
            p.json.into_bytes()
        } else {
            Vec::new()
        };
        Ok(Response::new(status, "application/json", body)
            .with_header("x-rollgate-version", p.version.to_string())
            .with_header("etag", format!("\"{}\"", p.version)))
    }
}

/// The controller's server (`serve --kubernetes --listen ADDR`), bound before the controller
/// connects to the cluster, so a wrong address or a missing token stops it at once.
pub struct Bound {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    token: Option<Token>,
    tls: Option<Arc<rustls::ServerConfig>>,
    source: Source,
}

impl Bound {
    /// Binds `listen`. Beyond loopback a token is required, as for the sidecar's `--listen`:
    /// anyone who reaches the port could otherwise promote and abort.
    pub fn bind(
        listen: &str,
        token: Option<Token>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<Bound, CliError> {
        let listen_error = |e: std::io::Error| CliError::Usage(format!("--listen {listen}: {e}"));
        let listener = std::net::TcpListener::bind(listen).map_err(listen_error)?;
        let addr = listener.local_addr().map_err(listen_error)?;
        if !addr.ip().is_loopback() && token.is_none() {
            return Err(CliError::Serve(crate::serve::ServeError::NoToken(
                listen.to_string(),
            )));
        }
        listener.set_nonblocking(true).map_err(listen_error)?;
        Ok(Bound {
            listener,
            addr,
            token,
            tls,
            source: Source::None,
        })
    }

    /// The page's charts read `source`, the controller's analysis source (none: no charts).
    #[must_use]
    pub fn charts(mut self, source: Source) -> Bound {
        self.source = source;
        self
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves the Rollouts of `scope` through `client` until the future is dropped (called
    /// on the runtime that drives it).
    pub async fn serve(self, client: Client, scope: Scope) {
        let listener = match tokio::net::TcpListener::from_std(self.listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("--listen {}: {e}", self.addr);
                return;
            }
        };
        if !self.addr.ip().is_loopback() && self.tls.is_none() {
            tracing::warn!(
                "listening beyond loopback without TLS: the token travels in clear text (give \
                 --tls-cert and --tls-key, or keep traffic on a trusted network)"
            );
        }
        tracing::info!(
            "serving the dashboard, the Rollouts and their policies on {}://{}",
            if self.tls.is_some() { "https" } else { "http" },
            self.addr
        );
        let charts = (self.source != Source::None).then(Charts::default);
        let api = Arc::new(ClusterApi {
            client,
            scope,
            token: self.token,
            charts: charts.clone(),
        });
        if let Some(charts) = charts {
            tokio::spawn(cluster_traffic::run(api.clone(), self.source, charts));
        }
        let serving = Arc::new(conn::Serving {
            handler: Arc::new(move |req| {
                let api = api.clone();
                Box::pin(async move { api.answer(&req).await })
            }),
            limits: Limits::default(),
            tls: self.tls.map(tokio_rustls::TlsAcceptor::from),
            log: Arc::new(|line| tracing::info!("{line}")),
            refused: Arc::new(|| {}),
            stopping: Arc::new(|| false),
        });
        // Never stopped: the process ends with the controller.
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        conn::accept(listener, serving, stopped).await;
    }
}
