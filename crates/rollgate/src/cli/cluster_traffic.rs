//! The controller page's charts (`GET /v1/traffic` of [`super::cluster_http`]): every
//! [`EVERY`] the server reads each served Rollout's figures from the source its analysis
//! reads (`--prometheus`, else `--envoy-admin`) and keeps the sidecar's short per-variant
//! history ([`Traffic`]), keyed as the page names the Rollout (`NAME`, or `NS/NAME` across
//! namespaces). In memory and per replica, as the sidecar's: for looking, not of record (the
//! figures of record are the Rollout's status and the gateways' own stats).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kube::ResourceExt;

use crate::kube::analysis::Source;
use crate::kube::{commands, prometheus};
use crate::rollout::judge::{scrape, Samples};
use crate::rollout::{validate, Rollout};
use crate::serve::traffic::Traffic;

use super::cluster_http::{ClusterApi, Scope};

/// How often the figures are read: the page polls every two seconds, and Prometheus
/// scrapes every few; a reading a second is what the sidecar takes too.
pub const EVERY: Duration = Duration::from_secs(1);

/// The history the page shows, shared by the recorder and the server.
#[derive(Clone, Default)]
pub struct Charts(Arc<Mutex<Traffic>>);

impl Charts {
    /// Locks the history (a panicked holder leaves it usable: each record is whole first).
    pub fn lock(&self) -> MutexGuard<'_, Traffic> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The page's key for Rollout `ro` in `scope`.
fn key(scope: &Scope, ro: &Rollout) -> String {
    match scope {
        Scope::Namespace(_) => ro.name_any(),
        Scope::All => format!("{}/{}", ro.namespace().unwrap_or_default(), ro.name_any()),
    }
}

/// One reading of every served Rollout into `charts`. The Envoy admin endpoints are read
/// once for all (their stats hold every policy); Prometheus once per policy, as the analysis
/// asks it. A source that cannot be read leaves a gap, as in the sidecar.
pub async fn record(api: &ClusterApi, source: &Source, charts: &Charts) -> Result<(), String> {
    let rollouts = match &api.scope {
        Scope::Namespace(ns) => commands::list_rollouts(&api.client, ns).await,
        Scope::All => commands::list_all(&api.client).await,
    }
    .map_err(|e| e.to_string())?;
    let admin_samples = match source {
        Source::EnvoyAdmin(admins) => Some(scrape(admins).await?),
        _ => None,
    };
    let mut keys = Vec::new();
    for ro in &rollouts {
        let k = key(&api.scope, ro);
        let Ok(plan) = validate::plan(ro) else {
            keys.push(k);
            continue;
        };
        let samples: Samples = match (&admin_samples, source) {
            (Some(s), _) => s.clone(),
            (None, Source::Prometheus(url)) => match prometheus::query(url, &plan.name).await {
                Ok(s) => s,
                Err(_) => {
                    keys.push(k);
                    continue;
                }
            },
            _ => return Ok(()),
        };
        let variants = [
            plan.spec.stable_variant.as_str(),
            plan.spec.canary_variant.as_str(),
        ];
        let mut c = charts.lock();
        c.record_as(&k, &plan.name, &variants, &samples, Instant::now());
        // The leader's last measurement, from the status, once each.
        if let Some(a) = ro.status.as_ref().and_then(|s| s.analysis.as_ref()) {
            let seen = c
                .rollouts
                .get(&k)
                .and_then(|s| s.analyses.back())
                .is_some_and(|last| last == a);
            if !seen {
                c.analysed(&k, a);
            }
        }
        drop(c);
        keys.push(k);
    }
    let names: Vec<&str> = keys.iter().map(String::as_str).collect();
    charts.lock().retain(&names);
    Ok(())
}

/// Records every [`EVERY`] until dropped; a failed reading is logged once until one works.
pub async fn run(api: Arc<ClusterApi>, source: Source, charts: Charts) {
    let mut failing = false;
    loop {
        match record(&api, &source, &charts).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("charts: figures readable again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!("charts: cannot read figures: {e}");
            }
            Err(_) => {}
        }
        tokio::time::sleep(EVERY).await;
    }
}
