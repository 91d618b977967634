//! The analysis judge, one for the sidecar and the controller: read the gateways' stats
//! ([`scrape`] of Envoy's `/stats/prometheus`, or a Prometheus query the controller makes),
//! sum the filter's canary counters into [`Samples`], and let a [`Tracker`] per rollout turn
//! successive readings into the engine's events: a [`Event::BreakerTripped`] whenever a canary
//! breaker's trip counter went up, and an [`Event::Analysis`] once per analysis interval (the
//! traffic between two readings: counters are cumulative), measured by [`measure`].
//!
//! Stat names: the filter's `rollgate.<policy>.variant.<variant>.rs_5xx` is
//! `rollgate_<policy>_variant_<variant>_rs_5xx` in Prometheus form, where Envoy has also
//! turned every character outside `[A-Za-z0-9_]` (the `-` the filter keeps) into `_`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::analysis::{measure, CanaryCounters};
use crate::client;
use crate::plan::{AnalysisPlan, Plan};
use crate::{Event, Timestamp};

/// Samples of one or more scrapes, summed over label sets and gateways.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples {
    /// Counters and gauges by metric name.
    pub values: HashMap<String, f64>,
    /// Histograms by metric name (without `_bucket`): (le, cumulative count), ascending.
    pub buckets: HashMap<String, Vec<(f64, f64)>>,
}

/// A name as Envoy's Prometheus output spells it.
pub fn prom_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Splits `name{labels} value` into its parts; `None` for lines that are not samples.
///
/// Ours rather than a crate's (checked: `prometheus-parse` 0.2.5, the usual crates.io parser of
/// this format; `prometheus-client` only writes it): that crate finds the labels with the
/// regex `\{[^}]+\}` and splits them on `,` and `=`, so a `}`, `,` or `=` inside a quoted
/// label value misreads the line (the `x="a}b"` of the test `sums_label_sets_and_gateways`),
/// and it brings `regex`, `chrono` and `itertools` to read two things per line: a name and a
/// number, plus the `le` label of histogram buckets.
fn split_sample(line: &str) -> Option<(&str, &str, f64)> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let (labels, rest) = if line[name_end..].starts_with('{') {
        // The closing brace outside quotes.
        let body = &line[name_end + 1..];
        let (mut quoted, mut escaped, mut close) = (false, false, None);
        for (i, c) in body.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                '}' if !quoted => {
                    close = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let close = close?;
        (&body[..close], &body[close + 1..])
    } else {
        ("", &line[name_end..])
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let len = labels[start..].find('"')?;
    Some(&labels[start..start + len])
}

impl Samples {
    /// Parses Prometheus text, keeping the `rollgate_` series.
    pub fn parse(text: &str) -> Samples {
        let mut s = Samples::default();
        for line in text.lines() {
            let line = line.trim();
            if !line.starts_with("rollgate_") {
                continue;
            }
            let Some((name, labels, value)) = split_sample(line) else {
                continue;
            };
            if !value.is_finite() {
                continue;
            }
            match (name.strip_suffix("_bucket"), label(labels, "le")) {
                (Some(hist), Some(le)) => {
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        match le.parse() {
                            Ok(v) => v,
                            Err(_) => continue,
                        }
                    };
                    s.add_bucket(hist, le, value);
                }
                _ => *s.values.entry(name.to_string()).or_default() += value,
            }
        }
        s
    }

    fn add_bucket(&mut self, hist: &str, le: f64, count: f64) {
        let b = self.buckets.entry(hist.to_string()).or_default();
        match b.iter_mut().find(|(l, _)| *l == le) {
            Some((_, c)) => *c += count,
            None => {
                b.push((le, count));
                b.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
        }
    }

    /// Adds another gateway's samples.
    pub fn merge(&mut self, other: Samples) {
        for (k, v) in other.values {
            *self.values.entry(k).or_default() += v;
        }
        for (k, b) in other.buckets {
            for (le, c) in b {
                self.add_bucket(&k, le, c);
            }
        }
    }

    /// The canary's counters of policy `policy` (missing series count as 0: a gateway that
    /// has not loaded the policy yet has none).
    pub fn canary(&self, policy: &str, canary: &str) -> CanaryCounters {
        let base = format!(
            "rollgate_{}_variant_{}_",
            prom_name(policy),
            prom_name(canary)
        );
        let get = |s: &str| {
            self.values
                .get(&format!("{base}{s}"))
                .copied()
                .unwrap_or(0.0)
        };
        CanaryCounters {
            classes: ["rs_1xx", "rs_2xx", "rs_3xx", "rs_4xx", "rs_5xx"].map(get),
            network_errors: get("rs_network_error"),
            latency: self
                .buckets
                .get(&format!("{base}latency_ms"))
                .cloned()
                .unwrap_or_default(),
            shadow_classes: [
                "shadow_rs_1xx",
                "shadow_rs_2xx",
                "shadow_rs_3xx",
                "shadow_rs_4xx",
                "shadow_rs_5xx",
            ]
            .map(get),
            shadow_failed: get("shadow_failed"),
            shadow_mismatch: get("shadow_mismatch"),
            shadow_body_compared: get("shadow_body_compared"),
            shadow_body_mismatch: get("shadow_body_mismatch"),
            shadow_latency: self
                .buckets
                .get(&format!("{base}shadow_latency_ms"))
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// The trip counter of breaker `breaker` of policy `policy`, if exported.
    pub fn trips(&self, policy: &str, breaker: &str) -> Option<f64> {
        let name = format!(
            "rollgate_{}_breaker_{}_trips",
            prom_name(policy),
            prom_name(breaker)
        );
        self.values.get(&name).copied()
    }
}

/// Reads every gateway; the sum, or the first failure.
pub async fn scrape(admins: &[String]) -> Result<Samples, String> {
    let mut all = Samples::default();
    for admin in admins {
        let url = format!("{}/stats/prometheus", admin.trim_end_matches('/'));
        let resp = client::fetch("GET", &url, None, Duration::from_secs(3))
            .await
            .map_err(|e| e.to_string())?;
        if resp.status != 200 {
            return Err(format!("{url}: answered {}", resp.status));
        }
        all.merge(Samples::parse(&resp.text()));
    }
    Ok(all)
}

/// What the judge remembers of one rollout attempt between readings.
#[derive(Debug, Clone)]
pub struct Tracker {
    attempt: u32,
    baseline: Option<(CanaryCounters, Instant)>,
    trips: HashMap<String, f64>,
}

/// What a rollout's plan asks the judge to watch.
#[derive(Debug, Clone, PartialEq)]
pub struct Watch {
    /// The policy's name (the filter's stats prefix).
    pub policy: String,
    /// The canary variant.
    pub canary: String,
    /// The analysis, if the rollout has one.
    pub analysis: Option<AnalysisPlan>,
    /// The canary's breakers, whose trips end the attempt.
    pub breakers: Vec<String>,
}

impl Watch {
    /// What `plan` asks to watch; `None` when it has neither analysis nor canary breakers.
    pub fn of(plan: &Plan) -> Option<Watch> {
        (plan.analysis.is_some() || !plan.canary_breakers.is_empty()).then(|| Watch {
            policy: plan.name.clone(),
            canary: plan.spec.canary_variant.clone(),
            analysis: plan.analysis.clone(),
            breakers: plan.canary_breakers.clone(),
        })
    }
}

impl Tracker {
    /// Nothing read yet of `attempt`.
    pub fn new(attempt: u32) -> Tracker {
        Tracker {
            attempt,
            baseline: None,
            trips: HashMap::new(),
        }
    }

    /// Starts over when the rollout is in another attempt than the one tracked (a retry).
    pub fn follow(&mut self, attempt: u32) {
        if self.attempt != attempt {
            *self = Tracker::new(attempt);
        }
    }

    /// A reading failed: the next interval starts from the next good reading.
    pub fn lost_reading(&mut self) {
        self.baseline = None;
    }

    /// The events due after reading `samples` at `now` (`at` stamps measurements).
    pub fn judge(
        &mut self,
        watch: &Watch,
        samples: &Samples,
        now: Instant,
        at: Timestamp,
    ) -> Vec<Event> {
        let attempt = self.attempt;
        let mut events = Vec::new();
        for b in &watch.breakers {
            let Some(now_trips) = samples.trips(&watch.policy, b) else {
                continue;
            };
            if let Some(before) = self.trips.insert(b.clone(), now_trips) {
                if now_trips > before {
                    events.push(Event::BreakerTripped {
                        attempt,
                        breaker: b.clone(),
                        trips: (now_trips - before).round() as u64,
                    });
                }
            }
        }
        let Some(analysis) = &watch.analysis else {
            return events;
        };
        let counters = samples.canary(&watch.policy, &watch.canary);
        match &self.baseline {
            Some((base, since))
                if now.duration_since(*since).as_millis() >= u128::from(analysis.interval_ms) =>
            {
                if let Some(delta) = counters.since(base) {
                    events.push(Event::Analysis {
                        attempt,
                        measurement: measure(analysis, &delta, at),
                    });
                }
                self.baseline = Some((counters, now));
            }
            Some(_) => {}
            None => self.baseline = Some((counters, now)),
        }
        events
    }
}

/// What the judge remembers of every watched rollout, by a key of the mode's choosing (the
/// sidecar: the policy name; the controller: `ns/name`): the one tracker both modes keep.
#[derive(Debug, Default)]
pub struct Trackers(std::sync::Mutex<HashMap<String, Tracker>>);

impl Trackers {
    /// The events due for rollout `key`, watched as `watch`, in attempt `attempt`, after a
    /// reading (`None`: it failed). `awaiting`: some gateways still run the previous step's
    /// policy, so what they report is not yet all the step's: trips count, measurements do
    /// not, and the step's first interval starts at the first reading after they all serve
    /// it.
    pub fn judge(
        &self,
        key: &str,
        watch: &Watch,
        attempt: u32,
        awaiting: bool,
        samples: Option<&Samples>,
        at: Timestamp,
    ) -> Vec<Event> {
        let mut trackers = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let tr = trackers
            .entry(key.to_string())
            .or_insert_with(|| Tracker::new(attempt));
        tr.follow(attempt);
        let Some(samples) = samples else {
            // The next interval starts from the next good reading.
            tr.lost_reading();
            return Vec::new();
        };
        let judged = tr.judge(watch, samples, Instant::now(), at);
        if !awaiting {
            return judged;
        }
        tr.lost_reading();
        judged
            .into_iter()
            .filter(|e| !matches!(e, Event::Analysis { .. }))
            .collect()
    }

    /// A reading failed for every rollout.
    pub fn lost_reading(&self) {
        let mut trackers = self.0.lock().unwrap_or_else(|e| e.into_inner());
        trackers.values_mut().for_each(Tracker::lost_reading);
    }

    /// Forgets the rollouts `live` says are gone; how many remain.
    pub fn retain(&self, live: impl Fn(&str) -> bool) -> usize {
        let mut trackers = self.0.lock().unwrap_or_else(|e| e.into_inner());
        trackers.retain(|key, _| live(key));
        trackers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENVOY: &str = r#"# TYPE envoy_cluster_upstream_rq counter
envoy_cluster_upstream_rq{envoy_cluster_name="k8s-flask"} 12
# TYPE rollgate_fl_ask_breaker_cb_1_trips counter
rollgate_fl_ask_breaker_cb_1_trips{} 2
# TYPE rollgate_fl_ask_variant_can_ary_rs_2xx counter
rollgate_fl_ask_variant_can_ary_rs_2xx{} 28
rollgate_fl_ask_variant_can_ary_rs_5xx{} 4
rollgate_fl_ask_variant_can_ary_rs_network_error 1
# TYPE rollgate_fl_ask_variant_can_ary_latency_ms histogram
rollgate_fl_ask_variant_can_ary_latency_ms_bucket{le="0.5"} 10
rollgate_fl_ask_variant_can_ary_latency_ms_bucket{le="100"} 30
rollgate_fl_ask_variant_can_ary_latency_ms_bucket{le="+Inf"} 32
rollgate_fl_ask_variant_can_ary_latency_ms_sum{} 400
rollgate_fl_ask_variant_can_ary_latency_ms_count{} 32
"#;

    #[test]
    fn reads_envoys_prometheus_output() {
        let s = Samples::parse(ENVOY);
        assert_eq!(s.trips("fl-ask", "cb-1"), Some(2.0));
        assert_eq!(s.trips("fl-ask", "other"), None);
        let c = s.canary("fl-ask", "can-ary");
        assert_eq!(c.classes, [0.0, 28.0, 0.0, 0.0, 4.0]);
        assert_eq!(c.network_errors, 1.0);
        assert_eq!(
            c.latency,
            vec![(0.5, 10.0), (100.0, 30.0), (f64::INFINITY, 32.0)]
        );
        assert!(!s.values.contains_key("envoy_cluster_upstream_rq"));
    }

    #[test]
    fn sums_label_sets_and_gateways() {
        let mut a = Samples::parse(
            "rollgate_p_variant_c_rs_2xx{worker=\"0\"} 5\nrollgate_p_variant_c_rs_2xx{worker=\"1\"} 7\n\
             rollgate_p_variant_c_latency_ms_bucket{x=\"a}b\",le=\"10\"} 3\n",
        );
        a.merge(Samples::parse(
            "rollgate_p_variant_c_rs_2xx 10\nrollgate_p_variant_c_latency_ms_bucket{le=\"10\"} 4\n\
             rollgate_p_variant_c_latency_ms_bucket{le=\"5\"} 1\n",
        ));
        let c = a.canary("p", "c");
        assert_eq!(c.classes[1], 22.0);
        assert_eq!(c.latency, vec![(5.0, 1.0), (10.0, 7.0)]);
    }

    #[test]
    fn reads_the_shadow_counters() {
        let s = Samples::parse(
            "rollgate_p_variant_c_shadow_rs_2xx{} 40\nrollgate_p_variant_c_shadow_rs_5xx{} 7\n\
             rollgate_p_variant_c_shadow_failed{} 3\nrollgate_p_variant_c_shadow_mismatch{} 10\n\
             rollgate_p_variant_c_shadow_rq_total{} 55\nrollgate_p_variant_c_shadow_dropped{} 9\n\
             rollgate_p_variant_c_shadow_latency_ms_bucket{le=\"5\"} 30\n\
             rollgate_p_variant_c_shadow_latency_ms_bucket{le=\"+Inf\"} 47\n\
             rollgate_p_variant_c_shadow_body_compared{} 20\n\
             rollgate_p_variant_c_shadow_body_mismatch{} 2\n",
        );
        let c = s.canary("p", "c");
        // Answered (every class) and unanswered copies; the dropped were never sent.
        assert_eq!((c.shadow_answers(), c.shadow_mismatch), (50.0, 10.0));
        assert_eq!((c.shadow_classes[4], c.shadow_failed), (7.0, 3.0));
        assert_eq!(c.shadow_latency, vec![(5.0, 30.0), (f64::INFINITY, 47.0)]);
        assert!(
            c.latency.is_empty(),
            "the copies' latency is not the users'"
        );
        assert_eq!(c.responses(), 0.0, "copies are not user responses");
        assert_eq!(
            (c.shadow_body_compared, c.shadow_body_mismatch),
            (20.0, 2.0)
        );
    }

    #[test]
    fn tolerates_junk() {
        let s = Samples::parse("rollgate_x{le=\"1\"\nrollgate_y nan-ish\nrollgate_z{} NaN\n");
        assert!(s.values.is_empty() && s.buckets.is_empty());
        assert_eq!(prom_name("my-svc.v2"), "my_svc_v2");
    }

    fn watch() -> Watch {
        Watch {
            policy: "p".into(),
            canary: "c".into(),
            analysis: Some(AnalysisPlan {
                interval_ms: 1_000,
                failure_limit: 1,
                min_requests: 0,
                metrics: Vec::new(),
            }),
            breakers: vec!["b".into()],
        }
    }

    #[test]
    fn judges_trips_at_once_and_measures_once_per_interval() {
        let w = watch();
        let mut t = Tracker::new(1);
        let t0 = Instant::now();
        let read = |ok: f64, trips: f64| {
            Samples::parse(&format!(
                "rollgate_p_variant_c_rs_2xx {ok}\nrollgate_p_breaker_b_trips {trips}\n"
            ))
        };
        // The first reading is the baseline: nothing to judge yet.
        assert!(t
            .judge(&w, &read(10.0, 0.0), t0, Timestamp::now())
            .is_empty());
        // A trip is reported at the next reading, before the interval is over.
        let ev = t.judge(
            &w,
            &read(12.0, 2.0),
            t0 + Duration::from_millis(10),
            Timestamp::now(),
        );
        assert!(
            matches!(
                ev.as_slice(),
                [Event::BreakerTripped {
                    attempt: 1,
                    trips: 2,
                    ..
                }]
            ),
            "{ev:?}"
        );
        // Once the interval is over, one measurement of the traffic since the baseline.
        let ev = t.judge(
            &w,
            &read(30.0, 2.0),
            t0 + Duration::from_millis(1_000),
            Timestamp::now(),
        );
        let [Event::Analysis {
            attempt: 1,
            measurement,
        }] = ev.as_slice()
        else {
            panic!("{ev:?}")
        };
        assert_eq!(measurement.summary(), "20 canary responses");
        // A new attempt starts over: no baseline, no trips remembered.
        t.follow(2);
        assert!(t
            .judge(
                &w,
                &read(40.0, 5.0),
                t0 + Duration::from_millis(3_000),
                Timestamp::now()
            )
            .is_empty());
        // A failed reading drops the baseline: the next one is a baseline again.
        t.lost_reading();
        let ev = t.judge(
            &w,
            &read(50.0, 5.0),
            t0 + Duration::from_millis(9_000),
            Timestamp::now(),
        );
        assert!(ev.is_empty(), "{ev:?}");
    }

    #[test]
    fn trackers_count_trips_but_measure_only_once_every_gateway_serves_the_step() {
        let w = Watch {
            analysis: Some(AnalysisPlan {
                interval_ms: 0,
                ..watch().analysis.unwrap()
            }),
            ..watch()
        };
        let trackers = Trackers::default();
        let read = |ok: f64, trips: f64| {
            Samples::parse(&format!(
                "rollgate_p_variant_c_rs_2xx {ok}\nrollgate_p_breaker_b_trips {trips}\n"
            ))
        };
        let judge = |s: Option<&Samples>, awaiting| {
            trackers.judge("ns/p", &w, 1, awaiting, s, Timestamp::now())
        };
        assert!(judge(Some(&read(10.0, 0.0)), true).is_empty());
        // Awaiting: a trip is reported, the traffic is not measured.
        let ev = judge(Some(&read(20.0, 1.0)), true);
        assert!(
            matches!(ev.as_slice(), [Event::BreakerTripped { trips: 1, .. }]),
            "{ev:?}"
        );
        // The first reading once they all serve it is the step's baseline.
        assert!(judge(Some(&read(30.0, 1.0)), false).is_empty());
        let ev = judge(Some(&read(45.0, 1.0)), false);
        let [Event::Analysis { measurement, .. }] = ev.as_slice() else {
            panic!("{ev:?}")
        };
        assert_eq!(measurement.summary(), "15 canary responses");
        // A failed reading: the next one is a baseline again.
        assert!(judge(None, false).is_empty());
        assert!(judge(Some(&read(60.0, 1.0)), false).is_empty());
        assert_eq!(trackers.retain(|k| k == "ns/p"), 1);
        assert_eq!(trackers.retain(|_| false), 0);
    }
}
