//! Analysis for the controller: the gateways' `/stats/prometheus`
//! ([`rollgate_rollout::judge::scrape`]) or a Prometheus query ([`super::prometheus`]), judged
//! by the engine's [`Trackers`] (the sidecar's too), kept per rollout between reconciles. Each reconcile of an active rollout asks for the events due: a breaker trip
//! whenever a canary breaker's counter went up, and a measurement once per interval.

use std::time::Duration;

use super::prometheus;
use rollgate_rollout::gateways;
use rollgate_rollout::judge::{scrape, Samples, Trackers, Watch};
use rollgate_rollout::status::GatewayStatus;
use rollgate_rollout::{Event, Plan, RolloutStatus, Timestamp};

/// How long one gateway's admin endpoint may take (a paused one costs this, once).
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the figures come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// No analysis.
    None,
    /// The Envoy admin endpoints' `/stats/prometheus`, summed (`--envoy-admin`).
    EnvoyAdmin(Vec<String>),
    /// A Prometheus HTTP API (`--prometheus`).
    Prometheus(String),
}

/// The figures' source and what was read of each rollout.
pub struct Analyzer {
    source: Source,
    trackers: Trackers,
}

impl Analyzer {
    /// Reads `source`.
    pub fn new(source: Source) -> Analyzer {
        Analyzer {
            source,
            trackers: Trackers::default(),
        }
    }

    /// Drops what was read of rollouts (`ns/name`) that `live` says are gone; how many remain.
    pub fn retain(&self, live: impl Fn(&str) -> bool) -> usize {
        self.trackers.retain(live)
    }

    /// The gateways of policy `policy` and the version each serves, read from the source
    /// (`None` without one, or when Prometheus itself cannot be read: nothing is known then,
    /// and the status keeps what was last known).
    pub async fn gateways(&self, policy: &str) -> Option<Vec<GatewayStatus>> {
        match &self.source {
            Source::None => None,
            Source::EnvoyAdmin(admins) => {
                let readings = gateways::read_each(admins, READ_TIMEOUT).await;
                Some(gateways::versions(&readings, policy))
            }
            Source::Prometheus(url) => {
                let readings = prometheus::gateways(url, policy).await.ok()?;
                Some(gateways::versions(&readings, policy))
            }
        }
    }

    /// The analysis events due for rollout `key` now.
    pub async fn events(&self, key: &str, plan: &Plan, status: &RolloutStatus) -> Vec<Event> {
        let Some(watch) = Watch::of(plan) else {
            return Vec::new();
        };
        if self.source == Source::None || !status.phase.is_active() {
            return Vec::new();
        }
        let samples = match &self.source {
            Source::EnvoyAdmin(admins) => scrape(admins).await,
            Source::Prometheus(url) => prometheus::query(url, &plan.name).await,
            Source::None => Ok(Samples::default()),
        };
        self.trackers.judge(
            key,
            &watch,
            status.attempt,
            status.awaiting_gateways.is_some(),
            samples.as_ref().ok(),
            Timestamp::now(),
        )
    }
}
