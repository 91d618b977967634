//! `rollgate dashboard`: the sidecar's web dashboard on a loopback port of this machine, in
//! front of a sidecar reached with the CLI's own connection settings (`--server`, `--ca`,
//! `--token-file`): a sidecar behind `kubectl port-forward`, or one serving HTTPS under a
//! private CA the browser does not trust, is looked at as if it were local.
//!
//! The page and its files are the sidecar's ([`crate::serve::dashboard`]); reads are passed
//! through; a command is accepted under the sidecar's own rules ([`auth::refuse`]: the
//! dashboard's origin, with the token the user pastes, which must be the one this command
//! holds) and sent on with that token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::CliError;
use crate::args::DashboardArgs;
use crate::rollout::client;
use crate::serve::auth::{self, Token};
use crate::serve::http::{Request, Response};
use crate::serve::{conn, dashboard, Limits};

/// What the dashboard's requests are answered with.
struct Proxy {
    server: String,
    token: Option<Token>,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
}

impl Proxy {
    fn answer(&self, req: &Request) -> Response {
        if req.method == "GET" {
            if let Some(page) = dashboard::asset(&req.path) {
                return page;
            }
        }
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
        let url = format!("{}{path}", self.server.trim_end_matches('/'));
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
        match client::request_with(
            method,
            &url,
            &headers,
            body,
            self.timeout,
            self.tls.as_ref(),
        ) {
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

/// Starts serving the dashboard for `a`'s sidecar.
pub fn start(a: &DashboardArgs) -> Result<Running, CliError> {
    let token = Token::from_flag_or_env(a.token_file.as_deref(), |k| std::env::var(k).ok())
        .map_err(CliError::Usage)?;
    let tls = match &a.ca {
        Some(ca) if a.server.starts_with("https://") => Some(
            crate::serve::tls::client_config(std::path::Path::new(ca)).map_err(CliError::Usage)?,
        ),
        _ => None,
    };
    let proxy = Arc::new(Proxy {
        server: a.server.clone(),
        token,
        tls,
        timeout: a.timeout,
    });
    let listen_error = |e: std::io::Error| CliError::Usage(format!("--listen {}: {e}", a.listen));
    let listener = std::net::TcpListener::bind(&a.listen).map_err(listen_error)?;
    let addr = listener.local_addr().map_err(listen_error)?;
    // Plain HTTP and no token of its own: it is for the person at this machine.
    if !addr.ip().is_loopback() {
        return Err(CliError::Usage(format!(
            "--listen {}: the dashboard listens on loopback only (open it through an SSH \
             tunnel from elsewhere, or use the sidecar's own /dashboard)",
            a.listen
        )));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(listen_error)?;
    let listener = {
        let _in_runtime = runtime.enter();
        listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
            .map_err(listen_error)?
    };
    let serving = Arc::new(conn::Serving {
        handler: Arc::new(move |req| {
            let proxy = proxy.clone();
            // The sidecar's client blocks: off the runtime's one thread.
            Box::pin(async move {
                tokio::task::spawn_blocking(move || proxy.answer(&req))
                    .await
                    .unwrap_or_else(|_| Response::error(500, "internal error"))
            })
        }),
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
        a.server,
        if a.token_file.is_some() || std::env::var_os("ROLLGATE_TOKEN").is_some() {
            " this command was given"
        } else {
            ": none given, so the page is read-only"
        }
    );
    running.wait();
    Ok(())
}
