//! What the dashboard charts: a short history per rollout of each variant's request rate,
//! success rate and latency, derived from the same `/stats/prometheus` readings the analysis
//! loop ([`super::scrape`]) takes, plus its last measurements and the breakers' gauges.
//! Kept in memory only (a restarted sidecar starts its charts over): the figures of record
//! are the status files and Envoy's own stats; this is for looking.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

use rollgate_rollout::analysis::{quantile, CanaryCounters};
use rollgate_rollout::judge::{prom_name, Samples};
use rollgate_rollout::{AnalysisStatus, Timestamp};

/// Points kept per rollout: ten minutes at the default one-second scrape interval.
pub const MAX_POINTS: usize = 600;
/// Measurements kept per rollout.
pub const MAX_ANALYSES: usize = 10;
/// Latency quantiles cover this long: Envoy moves its histograms only at each stats flush
/// (`stats_flush_interval`, 5 s by default), so between two one-second readings they
/// usually did not move, and a per-interval quantile would be a gap four times in five.
pub const LATENCY_WINDOW: Duration = Duration::from_secs(10);

/// One variant's traffic between two readings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VariantPoint {
    /// Responses per second.
    pub rps: f64,
    /// Share of responses that were neither 5xx nor network errors; `None` without responses.
    pub success: Option<f64>,
    /// Median latency in ms; `None` without responses.
    pub p50_ms: Option<f64>,
    /// 99th-percentile latency in ms.
    pub p99_ms: Option<f64>,
}

/// The traffic of every watched variant over one interval, ending at `at`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// End of the interval.
    pub at: Timestamp,
    /// By variant name.
    pub variants: BTreeMap<String, VariantPoint>,
}

/// A breaker's gauges as Envoy exports them (names in Prometheus form).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Breaker {
    /// The filter's state gauge: 0 closed, 1 open, 2 recovering.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<f64>,
    /// Trips so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trips: Option<f64>,
}

/// One rollout's history.
#[derive(Debug, Default, Serialize)]
pub struct Series {
    /// Oldest first.
    pub points: VecDeque<Point>,
    /// The last measurements, oldest first.
    pub analyses: VecDeque<AnalysisStatus>,
    /// By breaker name.
    pub breakers: BTreeMap<String, Breaker>,
    /// Each variant's readings of the last [`LATENCY_WINDOW`], oldest first, to take
    /// differences from.
    #[serde(skip)]
    last: HashMap<String, VecDeque<(CanaryCounters, Instant)>>,
}

/// Every rollout's history, by policy name.
#[derive(Debug, Default, Serialize)]
pub struct Traffic {
    /// By rollout (policy) name.
    pub rollouts: BTreeMap<String, Series>,
}

/// The traffic between `prev` and `now` (`secs` apart); its latency since `oldest`.
fn variant_point(
    now: &CanaryCounters,
    prev: &CanaryCounters,
    oldest: &CanaryCounters,
    secs: f64,
) -> Option<VariantPoint> {
    let d = now.since(prev)?;
    let n = d.responses();
    let ratio = |x: f64| (n > 0.0).then(|| ((n - x) / n).clamp(0.0, 1.0));
    let window = now.since(oldest)?.latency;
    Some(VariantPoint {
        rps: n / secs,
        success: ratio(d.classes[4] + d.network_errors),
        p50_ms: quantile(0.5, &window),
        p99_ms: quantile(0.99, &window),
    })
}

impl Traffic {
    /// Records a reading for `policy`, whose variants of interest are `variants`.
    pub fn record(&mut self, policy: &str, variants: &[&str], samples: &Samples, now: Instant) {
        self.record_as(policy, policy, variants, samples, now);
    }

    /// [`Traffic::record`] kept under `key` (the controller's page names a Rollout
    /// `NS/NAME` across namespaces; its policy's stats carry the name alone).
    pub fn record_as(
        &mut self,
        key: &str,
        policy: &str,
        variants: &[&str],
        samples: &Samples,
        now: Instant,
    ) {
        let series = self.rollouts.entry(key.to_string()).or_default();
        let mut point = Point {
            at: Timestamp::now(),
            variants: BTreeMap::new(),
        };
        for v in variants {
            let counters = samples.canary(policy, v);
            let readings = series.last.entry(v.to_string()).or_default();
            // The window ends now; the last reading stays, for the rate.
            while readings.len() > 1
                && readings
                    .front()
                    .is_some_and(|(_, t)| now.duration_since(*t) > LATENCY_WINDOW)
            {
                readings.pop_front();
            }
            if let (Some((oldest, _)), Some((prev, then))) = (readings.front(), readings.back()) {
                let secs = now.duration_since(*then).as_secs_f64();
                // A counter that went down (a gateway restarted) restarts the variant's line.
                match variant_point(&counters, prev, oldest, secs) {
                    Some(p) if secs > 0.0 => {
                        point.variants.insert(v.to_string(), p);
                    }
                    Some(_) => {}
                    None => readings.clear(),
                }
            }
            readings.push_back((counters, now));
        }
        if !point.variants.is_empty() {
            if series.points.len() == MAX_POINTS {
                series.points.pop_front();
            }
            series.points.push_back(point);
        }
        let prefix = format!("rollgate_{}_breaker_", prom_name(policy));
        for (name, value) in &samples.values {
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            if let Some(b) = rest.strip_suffix("_state") {
                series.breakers.entry(b.to_string()).or_default().state = Some(*value);
            } else if let Some(b) = rest.strip_suffix("_trips") {
                series.breakers.entry(b.to_string()).or_default().trips = Some(*value);
            }
        }
    }

    /// Keeps a measurement of `policy`.
    pub fn analysed(&mut self, policy: &str, m: &AnalysisStatus) {
        let series = self.rollouts.entry(policy.to_string()).or_default();
        if series.analyses.len() == MAX_ANALYSES {
            series.analyses.pop_front();
        }
        series.analyses.push_back(m.clone());
    }

    /// Forgets rollouts not in `names` (deleted files).
    pub fn retain(&mut self, names: &[&str]) {
        self.rollouts.retain(|k, _| names.contains(&k.as_str()));
    }
}

impl super::registry::Shared {
    /// Locks the dashboard's history (a panicked holder leaves it usable: each record is
    /// whole before anything can panic).
    pub fn traffic(&self) -> std::sync::MutexGuard<'_, Traffic> {
        self.traffic.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(ok: f64, errors: f64, slow: f64) -> Samples {
        Samples::parse(&format!(
            "rollgate_flask_variant_canary_rs_2xx {ok}\n\
             rollgate_flask_variant_canary_rs_5xx {errors}\n\
             rollgate_flask_variant_canary_latency_ms_bucket{{le=\"5\"}} {}\n\
             rollgate_flask_variant_canary_latency_ms_bucket{{le=\"100\"}} {}\n\
             rollgate_flask_variant_canary_latency_ms_bucket{{le=\"+Inf\"}} {}\n\
             rollgate_flask_breaker_canary_latency_state 1\n\
             rollgate_flask_breaker_canary_latency_trips 2\n",
            ok + errors - slow,
            ok + errors,
            ok + errors
        ))
    }

    #[test]
    fn rates_come_from_differences_and_the_ring_is_bounded() {
        let mut t = Traffic::default();
        let t0 = Instant::now();
        t.record("flask", &["stable", "canary"], &samples(0.0, 0.0, 0.0), t0);
        assert!(
            t.rollouts["flask"].points.is_empty(),
            "one reading is no rate"
        );
        // 2 s later: 90 ok, 10 errors, all fast.
        t.record(
            "flask",
            &["stable", "canary"],
            &samples(90.0, 10.0, 0.0),
            t0 + Duration::from_secs(2),
        );
        let s = &t.rollouts["flask"];
        let c = &s.points[0].variants["canary"];
        assert_eq!(c.rps, 50.0);
        assert_eq!(c.success, Some(0.9));
        assert!(c.p99_ms.unwrap() <= 5.0);
        assert_eq!(s.points[0].variants["stable"].success, None);
        assert_eq!(s.breakers["canary_latency"].state, Some(1.0));
        assert_eq!(s.breakers["canary_latency"].trips, Some(2.0));
        for i in 0..MAX_POINTS + 5 {
            let n = 100.0 + i as f64;
            t.record(
                "flask",
                &["canary"],
                &samples(n, 10.0, 0.0),
                t0 + Duration::from_secs(3 + i as u64),
            );
        }
        assert_eq!(t.rollouts["flask"].points.len(), MAX_POINTS);
        t.retain(&[]);
        assert!(t.rollouts.is_empty());
    }

    /// `ok` 2xx answers, `fast` and `slow` latency observations (Envoy flushes histograms
    /// apart from counters).
    fn flushed(ok: f64, fast: f64, slow: f64) -> Samples {
        Samples::parse(&format!(
            "rollgate_flask_variant_canary_rs_2xx {ok}\n\
             rollgate_flask_variant_canary_latency_ms_bucket{{le=\"5\"}} {fast}\n\
             rollgate_flask_variant_canary_latency_ms_bucket{{le=\"100\"}} {}\n\
             rollgate_flask_variant_canary_latency_ms_bucket{{le=\"+Inf\"}} {}\n",
            fast + slow,
            fast + slow
        ))
    }

    #[test]
    fn latency_spans_the_window_across_histogram_flushes_and_a_restart_breaks_the_line() {
        let mut t = Traffic::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        t.record("flask", &["canary"], &flushed(0.0, 0.0, 0.0), at(0));
        // Flushed at 1 s: 100 observations, 10 of them slow.
        t.record("flask", &["canary"], &flushed(100.0, 90.0, 10.0), at(1));
        // Counters moved at 2 s, the histogram did not: the quantile still has the window.
        t.record("flask", &["canary"], &flushed(200.0, 90.0, 10.0), at(2));
        let p = &t.rollouts["flask"].points;
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].variants["canary"].rps, 100.0);
        let p99 = p[1].variants["canary"].p99_ms.unwrap();
        assert!(p99 > 5.0 && p99 <= 100.0, "{p99}");
        // Past the window with no observation in it: no quantile rather than an old one.
        t.record("flask", &["canary"], &flushed(300.0, 90.0, 10.0), at(14));
        assert_eq!(
            t.rollouts["flask"].points[2].variants["canary"].p99_ms,
            None
        );
        // The gateway restarted: counters went down, no point; the next reading goes on.
        t.record("flask", &["canary"], &flushed(5.0, 5.0, 0.0), at(15));
        assert_eq!(t.rollouts["flask"].points.len(), 3);
        t.record("flask", &["canary"], &flushed(15.0, 15.0, 0.0), at(16));
        let last = &t.rollouts["flask"].points[3].variants["canary"];
        assert_eq!(last.rps, 10.0);
        assert!(last.p99_ms.unwrap() <= 5.0);
    }
}
