//! `rollgate serve --kubernetes`: leader election, then the kube-rs controller over every
//! Rollout in the cluster.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, ResourceExt};

use super::analysis::Source;
use super::controller::{error_policy, reconcile, Context, Error};
use super::lease::LeaseLock;
use rollgate_rollout::Rollout;

/// Options of `serve --kubernetes`.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Namespace of the leader-election Lease (`$POD_NAMESPACE`, default `rollgate-system`).
    pub lease_namespace: String,
    /// This replica's identity (`$POD_NAME`, else the host name).
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub lease_ttl: Duration,
    /// Envoy admin endpoints read for analysis (`--envoy-admin URL`, repeatable).
    pub envoy_admin: Vec<String>,
    /// Prometheus HTTP API read for analysis instead (`--prometheus URL`).
    pub prometheus: Option<String>,
}

/// How often rollouts deleted from the cluster are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Name of the leader-election Lease.
pub const LEASE_NAME: &str = "rollgate-controller";

/// Runs until leadership is lost (an error: the process should exit so the pod restarts
/// and campaigns again, as client-go controllers do).
pub async fn run(client: Client, opts: Options) -> Result<(), Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &opts.lease_namespace);
    let lock = LeaseLock::new(leases, LEASE_NAME, &opts.identity, opts.lease_ttl);
    // Standby until this replica leads; an API error is just another wait.
    while !lock.try_acquire_or_renew().await.unwrap_or(false) {
        tokio::time::sleep(lock.renew_every()).await;
    }
    tracing::info!(identity = %opts.identity, "leads; driving rollouts");
    let ctx = Context::with_analysis(client.clone(), Some(opts.identity.clone()), opts.source());
    let rollouts: Api<Rollout> = Api::all(client);
    let controller = Controller::new(rollouts, watcher::Config::default());
    let store = controller.store();
    let pruner = ctx.clone();
    let controller = controller
        .run(reconcile, error_policy, ctx)
        .for_each(|outcome| async move {
            if let Err(e) = outcome {
                tracing::warn!("reconcile: {e}");
            }
        });
    // Deleted Rollouts are never reconciled again: forget them now and then. Only once the
    // store holds the first full list, so a rollout is never forgotten for not being seen yet
    // (forgetting a webhook answer would call it again).
    let prune = async move {
        if store.wait_until_ready().await.is_err() {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(PRUNE_EVERY).await;
            let live: Vec<(String, String)> = store
                .state()
                .iter()
                .map(|ro| {
                    let key = format!("{}/{}", ro.namespace().unwrap_or_default(), ro.name_any());
                    (key, ro.uid().unwrap_or_default())
                })
                .collect();
            pruner.forget_all_but(&live);
        }
    };
    let controller = async move {
        tokio::select! {
            () = controller => {}
            () = prune => {}
        }
    };
    lead(&lock, controller).await
}

/// Runs `work` while this replica holds the lease it has just acquired. Renewal errors are
/// retried, but only until the renew deadline: then `work` is dropped (no further writes) and
/// `LostLease` returned, before the lease can expire and another replica take over. An API
/// call that hangs counts as failed at the deadline. `work` finishing ends leadership too.
pub async fn lead(lock: &LeaseLock, work: impl Future<Output = ()>) -> Result<(), Error> {
    use tokio::time::{sleep, timeout_at, Instant};
    // Conservative: the renewal written at acquisition is no earlier than this.
    let mut renewed = Instant::now();
    let renew = async {
        let mut wait = lock.renew_every();
        loop {
            sleep(wait).await;
            let attempt = Instant::now();
            match timeout_at(renewed + lock.renew_deadline(), lock.try_acquire_or_renew()).await {
                Ok(Ok(true)) => {
                    renewed = attempt;
                    wait = lock.renew_every();
                }
                Ok(Ok(false)) => return Error::LostLease,
                Ok(Err(e)) => {
                    tracing::warn!("renewing the lease: {e}");
                    wait = lock.retry_every();
                    if Instant::now() + wait >= renewed + lock.renew_deadline() {
                        tracing::error!("lease not renewed within its deadline; stepping down");
                        return Error::LostLease;
                    }
                }
                Err(_) => {
                    tracing::error!("lease not renewed within its deadline; stepping down");
                    return Error::LostLease;
                }
            }
        }
    };
    tokio::select! {
        () = work => Ok(()),
        e = renew => Err(e),
    }
}

impl Options {
    /// Where analysis reads its figures.
    pub fn source(&self) -> Source {
        match (&self.prometheus, self.envoy_admin.is_empty()) {
            (Some(url), _) => Source::Prometheus(url.clone()),
            (None, false) => Source::EnvoyAdmin(self.envoy_admin.clone()),
            (None, true) => Source::None,
        }
    }
}
