//! The sidecar's analysis loop: every `--scrape-interval`, read `/stats/prometheus` of each
//! `--envoy-admin` (all at once, each on its own: [`rollgate_rollout::gateways`]) and turn the
//! readings into events: [`Event::Gateways`] for every rollout (the version each gateway
//! serves, which steps wait for), and for each watched rollout what the engine's judge
//! ([`rollgate_rollout::judge`], the same one the controller uses) finds.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::registry::Shared;
use rollgate_rollout::gateways::{self, Reading};
use rollgate_rollout::judge::{Trackers, Watch};
use rollgate_rollout::{Event, Timestamp};

/// How long one gateway's stats may take: a paused one holds the tick this long.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// A rollout, copied out of the state so no lock is held while scraping.
struct Target {
    key: PathBuf,
    name: String,
    attempt: u32,
    /// Its step waits for the gateways: what they serve is not yet all the step's policy.
    awaiting: bool,
    /// What to judge, for an active rollout with analysis or canary breakers.
    watch: Option<Watch>,
    /// The stable variant, charted beside the canary.
    stable: String,
}

/// The analysis loop, a task of the API's runtime; returns when the server stops.
pub async fn run(shared: Arc<Shared>) {
    let shared = &shared;
    let trackers = Trackers::default();
    let mut last_error: Option<String> = None;
    loop {
        if shared.lock().stopping {
            return;
        }
        let targets: Vec<Target> = shared
            .lock()
            .entries
            .iter()
            .filter_map(|(key, e)| {
                let plan = e.plan.as_ref()?;
                Some(Target {
                    key: key.clone(),
                    name: plan.name.clone(),
                    attempt: e.status.attempt,
                    awaiting: e.status.awaiting_gateways.is_some(),
                    watch: Watch::of(plan).filter(|_| e.status.phase.is_active()),
                    stable: plan.spec.stable_variant.clone(),
                })
            })
            .collect();
        trackers.retain(|name| {
            targets
                .iter()
                .any(|t| t.watch.as_ref().is_some_and(|w| w.policy == *name))
        });
        // Charts outlive the attempt (an aborted rollout keeps its last minutes), not the file.
        let names: Vec<String> = shared
            .lock()
            .entries
            .values()
            .map(|e| e.display_name())
            .collect();
        shared
            .traffic()
            .retain(&names.iter().map(String::as_str).collect::<Vec<_>>());
        // Read even without rollouts: a rollout added later starts knowing the gateways.
        let events = tick(shared, &targets, &trackers, &mut last_error).await;
        // Passes block (a new policy is compiled): off the runtime's thread.
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for (key, event) in events {
                // Not a command: gateway readings, measurements and trips are never refused.
                let _ = s.apply(&key, event, Timestamp::now());
            }
        })
        .await;
        sleep(shared, shared.config.scrape_interval).await;
    }
}

/// Sleeps in short slices so a stop is noticed soon.
async fn sleep(shared: &Shared, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if shared.lock().stopping {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50).min(d)).await;
    }
}

/// Reads the gateways: the events for each rollout.
async fn tick(
    shared: &Arc<Shared>,
    targets: &[Target],
    trackers: &Trackers,
    last_error: &mut Option<String>,
) -> Vec<(PathBuf, Event)> {
    let admins = shared.admins();
    if admins.is_empty() {
        // No gateway known (any more): an empty reading, so a step that waited for gateways
        // since removed goes on, and the status lists none.
        shared
            .readings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let none = || Event::Gateways {
            gateways: Vec::new(),
        };
        return targets.iter().map(|t| (t.key.clone(), none())).collect();
    }
    shared.metrics.scrapes.inc();
    let readings: Vec<Reading> = gateways::read_each(&admins, READ_TIMEOUT).await;
    *shared.readings.lock().unwrap_or_else(|e| e.into_inner()) = readings.clone();
    let mut events = Vec::new();
    for t in targets {
        let versions = gateways::versions(&readings, &t.name);
        events.push((t.key.clone(), Event::Gateways { gateways: versions }));
    }
    judge(
        shared,
        targets,
        trackers,
        last_error,
        &readings,
        &mut events,
    );
    events
}

/// The judge's events of the watched rollouts, from the sum of every gateway's reading.
fn judge(
    shared: &Arc<Shared>,
    targets: &[Target],
    trackers: &Trackers,
    last_error: &mut Option<String>,
    readings: &[Reading],
    events: &mut Vec<(PathBuf, Event)>,
) {
    if targets.iter().all(|t| t.watch.is_none()) {
        return;
    }
    let samples = match gateways::sum(readings) {
        Ok(s) => {
            if last_error.take().is_some() {
                shared.log("analysis: gateways readable again");
            }
            s
        }
        Err(e) => {
            shared.metrics.scrape_errors.inc();
            if last_error.as_deref() != Some(e.as_str()) {
                shared.log(&format!("analysis: cannot read stats: {e}"));
            }
            *last_error = Some(e);
            // The next interval starts from the next good reading.
            trackers.lost_reading();
            return;
        }
    };
    let now = Instant::now();
    {
        let mut traffic = shared.traffic();
        for t in targets {
            let Some(watch) = &t.watch else { continue };
            let variants = [t.stable.as_str(), watch.canary.as_str()];
            traffic.record(&watch.policy, &variants, &samples, now);
        }
    }
    for t in targets {
        let Some(watch) = &t.watch else { continue };
        let judged = trackers.judge(
            &watch.policy,
            watch,
            t.attempt,
            t.awaiting,
            Some(&samples),
            Timestamp::now(),
        );
        for event in judged {
            if let Event::Analysis { measurement: m, .. } = &event {
                shared.metrics.count_analysis(m.verdict);
                shared.traffic().analysed(&watch.policy, m);
                shared.log(&format!(
                    "{}: analysis {}: {}",
                    watch.policy,
                    m.verdict,
                    m.summary()
                ));
            }
            events.push((t.key.clone(), event));
        }
    }
}
