//! The HTTP API.
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/policies/NAME?version=N&wait=20s` | the policy when its version is newer than N (at once, or as soon as one appears within `wait`); else 304 after `wait`, or 404 after `wait` if no rollout has that name; an N the sidecar never reached gets the current policy at once, renumbered N+1 |
//! | `GET /v1/rollouts` | every rollout ([`RolloutList`](rollgate_rollout::view::RolloutList)) |
//! | `GET /v1/rollouts/NAME` | one rollout ([`RolloutView`](rollgate_rollout::view::RolloutView)) |
//! | `POST /v1/rollouts/NAME/promote`, `/abort`, `/retry` | the rollout after the command; 409 when it does not apply, or when the rollout is not where the optional body `{"expect": {"step": N, "attempt": A}}` says (so a retried command acts once) |
//!
//! Commands carry `authorization: Bearer TOKEN` when the sidecar has a token (else 401);
//! a request from a web page (`Origin`, `Sec-Fetch-Site`) is refused (403) unless it is the
//! dashboard of this same origin carrying the token; a body other than JSON is refused (415)
//! ([`super::auth`]).
//! | `GET /v1/traffic` | the dashboard's charts: per rollout, recent per-variant rates, success and latency, the last measurements, the breakers' gauges ([`Traffic`](super::traffic::Traffic)) |
//! | `GET /`, `/dashboard` | the web dashboard ([`super::dashboard`]) |
//! | `GET /healthz` | `ok` |
//! | `GET /metrics` | Prometheus text |

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::http::{Request, Response};
use super::registry::{CommandError, Entry, Shared};
use rollgate_rollout::time::parse_ms;
use rollgate_rollout::view::{CommandBody, Expect, RolloutList, RolloutView};
use rollgate_rollout::Event;

/// Longest long-poll wait honoured.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Wait when the request names none.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(20);

fn view(e: &Entry) -> RolloutView {
    RolloutView {
        name: e.display_name(),
        file: e.file.display().to_string(),
        error: e.error.clone(),
        steps: e
            .plan
            .as_ref()
            .map(|p| p.steps.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        status: e.status.clone(),
        serving: e.policy.is_some(),
    }
}

/// Answers one request: the long-poll waits as a future; the rest runs on the runtime's
/// blocking threads, since a command may compile a large policy (seconds) and the runtime's
/// one thread serves every connection.
pub async fn handle(shared: &Arc<Shared>, req: Request) -> Response {
    let polled = match (req.method.as_str(), segments(&req.path).as_slice()) {
        ("GET", ["v1", "policies", name]) => Some(name.to_string()),
        _ => None,
    };
    if let Some(name) = polled {
        let resp = policy(shared, &name, &req).await;
        shared.metrics.count_policy_answer(resp.status);
        return resp;
    }
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || answer(&shared, &req))
        .await
        .unwrap_or_else(|_| Response::error(500, "internal error"))
}

fn segments(path: &str) -> Vec<&str> {
    path.trim_matches('/').split('/').collect()
}

fn answer(shared: &Arc<Shared>, req: &Request) -> Response {
    if let Some(refusal) = super::auth::refuse(req, shared.config.token.as_ref()) {
        return refusal;
    }
    if req.method == "GET" {
        if let Some(page) = super::dashboard::asset(&req.path) {
            return page;
        }
    }
    match (req.method.as_str(), segments(&req.path).as_slice()) {
        ("GET", ["v1", "traffic"]) => Response::json(200, &*shared.traffic()),
        ("GET", ["healthz"]) => Response::new(200, "text/plain", "ok\n"),
        ("GET", ["metrics"]) => {
            let text = super::exposition::render(&shared.metrics, &shared.lock());
            Response::new(200, super::exposition::CONTENT_TYPE, text)
        }
        ("GET", ["v1", "rollouts"]) => {
            let st = shared.lock();
            let rollouts = st.entries.values().map(view).collect();
            Response::json(200, &RolloutList { rollouts })
        }
        ("GET", ["v1", "rollouts", name]) => {
            let st = shared.lock();
            match st.entries.values().find(|e| e.display_name() == *name) {
                Some(e) => Response::json(200, &view(e)),
                None => Response::error(404, &format!("no rollout named '{name}'")),
            }
        }
        ("POST", ["v1", "rollouts", name, cmd]) => {
            let event = match *cmd {
                "promote" => Event::Promote,
                "abort" => Event::Abort,
                "retry" => Event::Retry,
                _ => return Response::error(404, &format!("unknown command '{cmd}'")),
            };
            let expect = match command_body(req) {
                Ok(e) => e,
                Err(why) => return Response::error(400, &why),
            };
            match shared.command(name, event, &expect) {
                Ok(()) => {
                    let st = shared.lock();
                    match st.key_of(name).and_then(|k| st.entries.get(&k)) {
                        Some(e) => Response::json(200, &view(e)),
                        None => Response::error(404, &format!("no rollout named '{name}'")),
                    }
                }
                Err(e @ CommandError::NotFound(_)) => Response::error(404, &e.to_string()),
                Err(e) => Response::error(409, &e.to_string()),
            }
        }
        (_, ["healthz" | "metrics"] | ["v1", "policies" | "rollouts" | "traffic", ..]) => {
            Response::error(405, &format!("{} not allowed here", req.method))
        }
        _ => Response::error(404, &format!("no such endpoint: {}", req.path)),
    }
}

fn command_body(req: &Request) -> Result<Expect, String> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Expect::default());
    }
    serde_json::from_slice::<CommandBody>(&req.body)
        .map(|b| b.expect)
        .map_err(|e| format!("body: {e}"))
}

/// Counts a waiting long-poll until it answers or its client leaves (the future is dropped).
struct Waiting<'a>(&'a Shared);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.metrics.polls_waiting.dec();
    }
}

/// The long-poll.
async fn policy(shared: &Arc<Shared>, name: &str, req: &Request) -> Response {
    let known = match req.param("version").map(str::parse::<u64>) {
        None => 0,
        Some(Ok(v)) => v,
        Some(Err(_)) => return Response::error(400, "version: expected a whole number"),
    };
    let wait = match req.param("wait").map(parse_ms) {
        None => DEFAULT_WAIT,
        Some(Ok(ms)) => Duration::from_millis(ms).min(MAX_WAIT),
        Some(Err(e)) => return Response::error(400, &format!("wait: {e}")),
    };
    let deadline = Instant::now() + wait;
    // Subscribed before the first look: a change after it wakes the wait below.
    let mut changes = shared.changed.subscribe();
    shared.metrics.polls_waiting.inc();
    let _waiting = Waiting(shared);
    loop {
        if let Some(resp) = look(shared, name, known, Instant::now() >= deadline) {
            return resp;
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) | Err(_) => {}
            // The sender lives as long as `shared`; never seen, but not a busy loop.
            Ok(Err(_)) => tokio::time::sleep_until(deadline).await,
        }
    }
}

/// The long-poll's answer now, if it has one (`over`: its wait is over).
fn look(shared: &Shared, name: &str, known: u64, over: bool) -> Option<Response> {
    let mut st = shared.lock();
    let over = over || st.stopping;
    if let Some(entry) = st.renumber_after(name, known) {
        shared.persist(entry);
        shared.log(&format!(
            "{name}: a gateway runs policy v{known}, newer than this sidecar's; \
             serving the current policy as v{}",
            entry.status.policy_version
        ));
        shared.changed.notify_all();
    }
    match st.policy_of(name) {
        Some((version, json)) if version > known => Some(
            Response::new(200, "application/json", json.as_bytes().to_vec())
                .with_header("x-rollgate-version", version.to_string())
                .with_header("etag", format!("\"{version}\"")),
        ),
        Some((version, _)) if over => Some(
            Response::new(304, "application/json", Vec::new())
                .with_header("x-rollgate-version", version.to_string())
                .with_header("etag", format!("\"{version}\"")),
        ),
        // An unknown name is held too: a gateway configured before its rollout file is
        // written gets the policy the moment it appears, instead of backing off.
        None if over => Some(Response::error(404, &format!("no policy named '{name}'"))),
        _ => None,
    }
}
