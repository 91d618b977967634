//! The sidecar's analysis loop: every `--scrape-interval`, read `/stats/prometheus` of each
//! `--envoy-admin` and let the rollout engine's judge ([`rollgate_rollout::judge`], the same
//! one the controller uses) turn the readings into events for each watched rollout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::registry::Shared;
use rollgate_rollout::judge::{scrape, Tracker, Watch};
use rollgate_rollout::{Event, Timestamp};

/// A rollout to watch, copied out of the state so no lock is held while scraping.
struct Target {
    key: std::path::PathBuf,
    attempt: u32,
    watch: Watch,
    /// The stable variant, charted beside the canary.
    stable: String,
}

/// The analysis loop; returns when the server stops.
pub fn run(shared: &Arc<Shared>) {
    let mut trackers: HashMap<String, Tracker> = HashMap::new();
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
                let watch = Watch::of(plan)?;
                e.status.phase.is_active().then(|| Target {
                    key: key.clone(),
                    attempt: e.status.attempt,
                    watch,
                    stable: plan.spec.stable_variant.clone(),
                })
            })
            .collect();
        trackers.retain(|name, _| targets.iter().any(|t| t.watch.policy == *name));
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
        if !targets.is_empty() {
            tick(shared, &targets, &mut trackers, &mut last_error);
        }
        sleep(shared, shared.config.scrape_interval);
    }
}

/// Sleeps in short slices so a stop is noticed soon.
fn sleep(shared: &Shared, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if shared.lock().stopping {
            return;
        }
        std::thread::sleep(Duration::from_millis(50).min(d));
    }
}

fn tick(
    shared: &Arc<Shared>,
    targets: &[Target],
    trackers: &mut HashMap<String, Tracker>,
    last_error: &mut Option<String>,
) {
    let admins = shared.admins();
    if admins.is_empty() {
        return;
    }
    shared.metrics.scrapes.inc();
    let read = rollgate_rollout::client::block_on(scrape(&admins));
    let samples = match read.unwrap_or_else(|e| Err(format!("analysis: {e}"))) {
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
            for t in trackers.values_mut() {
                t.lost_reading();
            }
            return;
        }
    };
    let now = Instant::now();
    {
        let mut traffic = shared.traffic();
        for t in targets {
            let variants = [t.stable.as_str(), t.watch.canary.as_str()];
            traffic.record(&t.watch.policy, &variants, &samples, now);
        }
    }
    let mut events = Vec::new();
    for t in targets {
        let tr = trackers
            .entry(t.watch.policy.clone())
            .or_insert_with(|| Tracker::new(t.attempt));
        tr.follow(t.attempt);
        for event in tr.judge(&t.watch, &samples, now, Timestamp::now()) {
            if let Event::Analysis { measurement: m, .. } = &event {
                shared.metrics.count_analysis(m.verdict);
                shared.traffic().analysed(&t.watch.policy, m);
                shared.log(&format!(
                    "{}: analysis {}: {}",
                    t.watch.policy,
                    m.verdict,
                    m.summary()
                ));
            }
            events.push((t.key.clone(), event));
        }
    }
    if events.is_empty() {
        return;
    }
    for (key, event) in events {
        // Not a command: measurements and trips are never refused.
        let _ = shared.apply(&key, event, Timestamp::now());
    }
}
