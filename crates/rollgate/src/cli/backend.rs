//! `promote`, `abort`, `retry` and `status [--watch]`, written once over a [`Backend`]: a
//! sidecar's HTTP API ([`super::Sidecar`]) or the cluster's Rollouts
//! ([`super::cluster::Cluster`]). The backends only fetch and command; what is shown, the
//! exit codes and the at-most-once `promote` are decided here, the same for both.

use std::io::Write;

use super::{format, CliError};
use crate::rollout::view::{Expect, RolloutView};
use crate::rollout::Event;

/// A backend's answer: what was asked for, or why the backend refused (exit 1: no such
/// rollout, the command does not apply, the rollout moved on).
pub type Answer<T> = Result<Result<T, String>, CliError>;

/// Where the commands go. Async because the cluster's client is; the commands run on a
/// current-thread runtime, so the futures need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait Backend {
    /// One rollout.
    async fn get(&mut self, name: &str) -> Answer<RolloutView>;
    /// Every rollout.
    async fn list(&mut self) -> Answer<Vec<RolloutView>>;
    /// Steps rollout `name` with `event`, only where `expect` says it stands.
    async fn command(&mut self, name: &str, event: Event, expect: &Expect) -> Answer<RolloutView>;
    /// Shows `name` (or every rollout) at each change until a watched rollout is promoted
    /// (0) or aborted (1); returns that exit code.
    async fn follow(
        &mut self,
        name: Option<&str>,
        tty: bool,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<u8, CliError>;
}

/// What the command line asked of a backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `promote`, `abort`, `retry` or `status` (as shown in messages).
    pub cmd: &'static str,
    /// The engine event; `None` for `status`.
    pub event: Option<Event>,
    /// The rollout (required but for `status`).
    pub name: Option<String>,
    /// `promote --from-step N`.
    pub from_step: Option<u32>,
    /// `status --watch`.
    pub watch: bool,
}

/// Runs `req` on `backend`; returns the exit code.
pub async fn run(
    backend: &mut impl Backend,
    req: &Request,
    tty: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, CliError> {
    let cmd = req.cmd;
    let refused = |err: &mut dyn Write, why: String| {
        let _ = writeln!(err, "rollgate {cmd}: {why}");
        Ok(1)
    };
    let (Some(event), Some(name)) = (&req.event, &req.name) else {
        if req.watch {
            return backend.follow(req.name.as_deref(), tty, out, err).await;
        }
        let text = match &req.name {
            Some(n) => match backend.get(n).await? {
                Ok(v) => format::block(&v, tty),
                Err(why) => return refused(err, why),
            },
            None => match backend.list().await? {
                Ok(vs) => format::list(&vs, tty),
                Err(why) => return refused(err, why),
            },
        };
        let _ = write!(out, "{text}");
        return Ok(0);
    };
    let expect = match (event, req.from_step) {
        (_, Some(step)) => Expect {
            step: Some(step),
            attempt: None,
        },
        // Where it stands now, so this promote acts at most once on it (run again after an
        // unknown outcome, it cannot skip the next pause).
        (Event::Promote, None) => match backend.get(name).await? {
            Ok(v) => Expect {
                step: Some(v.status.current_step.saturating_add(1)),
                attempt: Some(v.status.attempt),
            },
            Err(why) => return refused(err, why),
        },
        _ => Expect::default(),
    };
    match backend.command(name, event.clone(), &expect).await? {
        Ok(v) => {
            let _ = writeln!(out, "{name}: {cmd}: {}", format::summary(&v));
            if !v.status.message.is_empty() {
                let _ = writeln!(out, "  {}", v.status.message);
            }
            Ok(0)
        }
        Err(why) => refused(err, why),
    }
}
