//! `rollgate status --watch --kubernetes [NAME]`: follows Rollouts with a watch (a list, then
//! a watch from its `resourceVersion`; kube's watcher lists again after an expired watch)
//! and prints each change as `status --watch` does against the sidecar
//! ([`format::Redraw`]): with a NAME until the rollout is promoted (exit 0) or aborted
//! (exit 1), without one until interrupted.

use std::collections::BTreeMap;
use std::io::Write;

use futures::StreamExt;
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};

use super::{format, CliError};
use crate::kube::commands::view;
use crate::rollout::Rollout;

/// Follows `name` (or every Rollout of `ns`), writing each change to `out`; `tty` redraws in
/// place with progress bars. Returns the exit code.
pub async fn follow(
    client: &Client,
    ns: &str,
    name: Option<&str>,
    tty: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, CliError> {
    let api: Api<Rollout> = Api::namespaced(client.clone(), ns);
    match name {
        Some(n) => follow_one(api, n, tty, out, err).await,
        None => follow_all(api, tty, out, err).await,
    }
}

async fn follow_one(
    api: Api<Rollout>,
    name: &str,
    tty: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, CliError> {
    let mut redraw = format::Redraw::new(tty);
    let mut seen = false;
    let mut stream = std::pin::pin!(watcher::watch_object(api, name).default_backoff());
    while let Some(item) = stream.next().await {
        match item {
            Ok(Some(ro)) => {
                seen = true;
                let v = view(&ro);
                redraw.show(out, format::block(&v, tty));
                if let Some(code) = format::watch_exit(v.status.phase) {
                    return Ok(code);
                }
            }
            Ok(None) => {
                // Worded as the API server words a 404 (what `status NAME` prints).
                let what = if seen { "was deleted" } else { "not found" };
                let _ = writeln!(
                    err,
                    "rollgate status: rollouts.rollgate.dev \"{name}\" {what}"
                );
                return Ok(1);
            }
            Err(e) => retry_or_fail(e, err)?,
        }
    }
    Err(ended())
}

async fn follow_all(
    api: Api<Rollout>,
    tty: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, CliError> {
    let mut redraw = format::Redraw::new(tty);
    // What is shown, and what a (re)list is collecting until it is complete.
    let (mut shown, mut listing) = (BTreeMap::new(), BTreeMap::new());
    let mut listed = false;
    let mut stream =
        std::pin::pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
    while let Some(item) = stream.next().await {
        match item {
            Ok(WatchEvent::Init) => {
                listing.clear();
                continue;
            }
            Ok(WatchEvent::InitApply(ro)) => {
                listing.insert(ro.name_any(), view(&ro));
                continue;
            }
            Ok(WatchEvent::InitDone) => {
                shown = std::mem::take(&mut listing);
                listed = true;
            }
            Ok(WatchEvent::Apply(ro)) => {
                shown.insert(ro.name_any(), view(&ro));
            }
            Ok(WatchEvent::Delete(ro)) => {
                shown.remove(&ro.name_any());
            }
            Err(e) => {
                retry_or_fail(e, err)?;
                continue;
            }
        }
        if listed {
            let views: Vec<_> = shown.values().cloned().collect();
            redraw.show(out, format::list(&views, tty));
        }
    }
    Err(ended())
}

/// A watch error: fatal when retrying cannot help (no such resource, not allowed), else
/// reported and retried after the watcher's back-off.
fn retry_or_fail(e: watcher::Error, err: &mut dyn Write) -> Result<(), CliError> {
    let permanent = match &e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => {
            matches!(s.code, 401 | 403 | 404)
        }
        _ => false,
    };
    if permanent {
        return Err(CliError::Cluster(format!("watching rollouts: {e}")));
    }
    let _ = writeln!(err, "rollgate status: {e}; watching again");
    Ok(())
}

/// kube's watcher never ends; should it, say so rather than exit as if done.
fn ended() -> CliError {
    CliError::Cluster("the watch of rollouts ended".into())
}
