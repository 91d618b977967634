//! Analysis for the controller: the sidecar's reading of the gateways' `/stats/prometheus`
//! ([`crate::serve::scrape`]) or a Prometheus query ([`super::prometheus`]) and the engine's [`measure`], kept per rollout between
//! reconciles. Each reconcile of an active rollout asks for the events due: a breaker trip
//! whenever a canary breaker's counter went up, and a measurement once per interval.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::prometheus;
use crate::rollout::analysis::{measure, CanaryCounters};
use crate::rollout::{Event, Plan, RolloutStatus, Timestamp};
use crate::serve::scrape::{scrape, Samples};

/// What is remembered of one rollout attempt between readings.
struct Tracker {
    attempt: u32,
    baseline: Option<(CanaryCounters, Instant)>,
    trips: HashMap<String, f64>,
}

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
    trackers: Mutex<HashMap<String, Tracker>>,
}

impl Analyzer {
    /// Reads `source`.
    pub fn new(source: Source) -> Analyzer {
        Analyzer {
            source,
            trackers: Mutex::default(),
        }
    }

    /// Drops what was read of rollouts (`ns/name`) that `live` says are gone; how many remain.
    pub fn retain(&self, live: impl Fn(&str) -> bool) -> usize {
        self.trackers.lock().map_or(0, |mut t| {
            t.retain(|key, _| live(key));
            t.len()
        })
    }

    /// The analysis events due for rollout `key` now.
    pub async fn events(&self, key: &str, plan: &Plan, status: &RolloutStatus) -> Vec<Event> {
        let watched = plan.analysis.is_some() || !plan.canary_breakers.is_empty();
        if self.source == Source::None || !watched || !status.phase.is_active() {
            return Vec::new();
        }
        // The sidecar's HTTP client blocks: off the async thread.
        let (source, policy) = (self.source.clone(), plan.name.clone());
        let samples = tokio::task::spawn_blocking(move || match source {
            Source::EnvoyAdmin(admins) => scrape(&admins),
            Source::Prometheus(url) => prometheus::query(&url, &policy),
            Source::None => Ok(Samples::default()),
        })
        .await;
        let Ok(mut trackers) = self.trackers.lock() else {
            return Vec::new();
        };
        let fresh = || Tracker {
            attempt: status.attempt,
            baseline: None,
            trips: HashMap::new(),
        };
        let tr = trackers.entry(key.to_string()).or_insert_with(fresh);
        if tr.attempt != status.attempt {
            *tr = fresh();
        }
        match samples {
            Ok(Ok(s)) => judge(tr, plan, status.attempt, &s),
            _ => {
                // The next interval starts from the next good reading.
                tr.baseline = None;
                Vec::new()
            }
        }
    }
}

fn judge(tr: &mut Tracker, plan: &Plan, attempt: u32, samples: &Samples) -> Vec<Event> {
    let mut events = Vec::new();
    for b in &plan.canary_breakers {
        let Some(now_trips) = samples.trips(&plan.name, b) else {
            continue;
        };
        if let Some(before) = tr.trips.insert(b.clone(), now_trips) {
            if now_trips > before {
                events.push(Event::BreakerTripped {
                    attempt,
                    breaker: b.clone(),
                    trips: (now_trips - before).round() as u64,
                });
            }
        }
    }
    let Some(analysis) = &plan.analysis else {
        return events;
    };
    let counters = samples.canary(&plan.name, &plan.spec.canary_variant);
    let now = Instant::now();
    match &tr.baseline {
        Some((base, since))
            if now.duration_since(*since).as_millis() >= u128::from(analysis.interval_ms) =>
        {
            if let Some(delta) = counters.since(base) {
                events.push(Event::Analysis {
                    attempt,
                    measurement: measure(analysis, &delta, Timestamp::now()),
                });
            }
            tr.baseline = Some((counters, now));
        }
        Some(_) => {}
        None => tr.baseline = Some((counters, now)),
    }
    events
}
