//! Analysis figures from the filter's cumulative counters: the canary's traffic between two
//! readings ([`CanaryCounters::since`]) judged against the metrics ([`measure`]). Pure; the
//! sidecar reads the counters from Envoy's `/stats/prometheus`.

use super::plan::{AnalysisPlan, MetricKind};
use super::status::{AnalysisStatus, Figure, Verdict};
use super::time::Timestamp;

/// The canary variant's counters, summed over every gateway.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CanaryCounters {
    /// Responses by class: 1xx … 5xx.
    pub classes: [f64; 5],
    /// Network errors (502, 504, upstream failures).
    pub network_errors: f64,
    /// Latency histogram: (upper bound in ms, cumulative count), ascending; `+Inf` last.
    pub latency: Vec<(f64, f64)>,
    /// Answers to mirrored copies by class: 1xx … 5xx.
    pub shadow_classes: [f64; 5],
    /// Mirrored copies that got no answer (timeout, connection refused or reset).
    pub shadow_failed: f64,
    /// Of the copies, answers whose class differed from the primary's.
    pub shadow_mismatch: f64,
    /// Latency histogram of the copies' answers, as `latency`.
    pub shadow_latency: Vec<(f64, f64)>,
    /// Copies whose response body was compared with the primary's.
    pub shadow_body_compared: f64,
    /// Of those, bodies that differed.
    pub shadow_body_mismatch: f64,
}

impl CanaryCounters {
    /// All responses.
    pub fn responses(&self) -> f64 {
        self.classes.iter().sum()
    }

    /// Mirrored copies that ended: answered (any class) or failed.
    pub fn shadow_answers(&self) -> f64 {
        self.shadow_classes.iter().sum::<f64>() + self.shadow_failed
    }

    /// The traffic since `base`, or `None` when a counter went down (a gateway restarted:
    /// the interval cannot be measured).
    pub fn since(&self, base: &CanaryCounters) -> Option<CanaryCounters> {
        let sub = |a: f64, b: f64| (a >= b).then_some(a - b);
        let mut classes = [0.0; 5];
        for (i, c) in classes.iter_mut().enumerate() {
            *c = sub(self.classes[i], base.classes[i])?;
        }
        let mut shadow_classes = [0.0; 5];
        for (i, c) in shadow_classes.iter_mut().enumerate() {
            *c = sub(self.shadow_classes[i], base.shadow_classes[i])?;
        }
        let histogram = |now: &[(f64, f64)], before: &[(f64, f64)]| {
            let mut out = Vec::with_capacity(now.len());
            for (le, count) in now {
                let was = before
                    .iter()
                    .find(|(l, _)| l == le)
                    .map_or(0.0, |(_, c)| *c);
                out.push((*le, sub(*count, was)?));
            }
            Some(out)
        };
        Some(CanaryCounters {
            classes,
            network_errors: sub(self.network_errors, base.network_errors)?,
            latency: histogram(&self.latency, &base.latency)?,
            shadow_classes,
            shadow_failed: sub(self.shadow_failed, base.shadow_failed)?,
            shadow_mismatch: sub(self.shadow_mismatch, base.shadow_mismatch)?,
            shadow_latency: histogram(&self.shadow_latency, &base.shadow_latency)?,
            shadow_body_compared: sub(self.shadow_body_compared, base.shadow_body_compared)?,
            shadow_body_mismatch: sub(self.shadow_body_mismatch, base.shadow_body_mismatch)?,
        })
    }
}

/// Two cumulative histograms as one: the count at each bound of either is the sum of each
/// one's count at its largest bound not above it (the filter's two histograms share Envoy's
/// default bounds, so this is the plain sum; other bounds only make the merge coarser).
fn merge_histograms(a: &[(f64, f64)], b: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if a.is_empty() || b.is_empty() {
        return if a.is_empty() { b.to_vec() } else { a.to_vec() };
    }
    let at = |h: &[(f64, f64)], le: f64| {
        h.iter()
            .take_while(|(l, _)| *l <= le)
            .last()
            .map_or(0.0, |(_, c)| *c)
    };
    let mut bounds: Vec<f64> = a.iter().chain(b).map(|(le, _)| *le).collect();
    bounds.sort_by(f64::total_cmp);
    bounds.dedup();
    bounds
        .into_iter()
        .map(|le| (le, at(a, le) + at(b, le)))
        .collect()
}

/// The `q`-quantile (0–1) of a cumulative histogram, interpolating linearly inside the
/// bucket as Prometheus' `histogram_quantile` does; a quantile in the `+Inf` bucket is the
/// largest finite bound. `None` without observations.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, count) in buckets {
        if *count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            let frac = if inside > 0.0 {
                (rank - below) / inside
            } else {
                1.0
            };
            return Some(lower + (le - lower) * frac);
        }
        lower = *le;
        below = *count;
    }
    Some(lower)
}

/// Judges the canary's traffic in one interval (`delta`) against `plan`'s metrics. The
/// canary's answers to mirrored copies count with its answers to users, for `minRequests`,
/// the rates and the latency: while a rollout only mirrors, they are all the canary answers
/// (issue 16), so a canary that fails or is slow on copies is aborted before any user reaches
/// it. A copy without an answer counts as a network error (and not a success).
pub fn measure(plan: &AnalysisPlan, delta: &CanaryCounters, at: Timestamp) -> AnalysisStatus {
    let shadow = delta.shadow_answers();
    let answers = delta.responses() + shadow;
    let requests = answers.round() as u64;
    let errors = delta.classes[4] + delta.shadow_classes[4] + delta.shadow_failed;
    let ratio = |n: f64| (answers > 0.0).then(|| n / answers);
    let figures: Vec<Figure> = plan
        .metrics
        .iter()
        .map(|m| {
            let value = match m.kind {
                MetricKind::SuccessRate => ratio(answers - errors),
                MetricKind::ErrorRate => ratio(errors),
                MetricKind::NetworkErrorRate => ratio(delta.network_errors + delta.shadow_failed),
                MetricKind::Latency(q) => {
                    quantile(q, &merge_histograms(&delta.latency, &delta.shadow_latency))
                }
                MetricKind::ShadowMismatch => {
                    (shadow > 0.0).then(|| delta.shadow_mismatch / shadow)
                }
                MetricKind::ShadowBodyMismatch => (delta.shadow_body_compared > 0.0)
                    .then(|| delta.shadow_body_mismatch / delta.shadow_body_compared),
            };
            let passed = value.is_none_or(|v| {
                m.min.is_none_or(|min| v >= min) && m.max.is_none_or(|max| v <= max)
            });
            Figure {
                metric: m.name.clone(),
                value,
                min: m.min,
                max: m.max,
                passed,
            }
        })
        .collect();
    let verdict = if requests < plan.min_requests || figures.iter().all(|f| f.value.is_none()) {
        Verdict::Inconclusive
    } else if figures.iter().any(|f| !f.passed) {
        Verdict::Failed
    } else {
        Verdict::Passed
    };
    AnalysisStatus {
        at,
        verdict,
        requests,
        figures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::MetricPlan;

    fn plan(min_requests: u64) -> AnalysisPlan {
        AnalysisPlan {
            interval_ms: 1000,
            failure_limit: 0,
            min_requests,
            metrics: vec![
                MetricPlan {
                    name: "success-rate".into(),
                    kind: MetricKind::SuccessRate,
                    min: Some(0.99),
                    max: None,
                },
                MetricPlan {
                    name: "latency-p99".into(),
                    kind: MetricKind::Latency(0.99),
                    min: None,
                    max: Some(500.0),
                },
            ],
        }
    }

    fn counters(ok: f64, errors: f64, latency: &[(f64, f64)]) -> CanaryCounters {
        CanaryCounters {
            classes: [0.0, ok, 0.0, 0.0, errors],
            network_errors: 0.0,
            latency: latency.to_vec(),
            ..CanaryCounters::default()
        }
    }

    const INF: f64 = f64::INFINITY;

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let b = [(10.0, 50.0), (100.0, 90.0), (500.0, 100.0), (INF, 100.0)];
        assert_eq!(quantile(0.5, &b), Some(10.0));
        assert_eq!(quantile(0.7, &b), Some(55.0));
        assert_eq!(quantile(0.25, &b), Some(5.0));
        assert_eq!(quantile(0.99, &b), Some(460.0));
        // In the +Inf bucket: the largest finite bound.
        let b = [(10.0, 1.0), (INF, 10.0)];
        assert_eq!(quantile(0.99, &b), Some(10.0));
        assert_eq!(quantile(0.5, &[(10.0, 0.0), (INF, 0.0)]), None);
        assert_eq!(quantile(0.5, &[]), None);
    }

    #[test]
    fn deltas_and_resets() {
        let a = counters(10.0, 1.0, &[(10.0, 5.0), (INF, 11.0)]);
        let b = counters(30.0, 3.0, &[(10.0, 20.0), (INF, 33.0)]);
        let d = b.since(&a).unwrap();
        assert_eq!(d.classes[1], 20.0);
        assert_eq!(d.classes[4], 2.0);
        assert_eq!(d.latency, vec![(10.0, 15.0), (INF, 22.0)]);
        assert_eq!(a.since(&b), None, "counters went down: a gateway restarted");
    }

    #[test]
    fn healthy_canary_passes() {
        let d = counters(1000.0, 5.0, &[(5.0, 900.0), (100.0, 1005.0), (INF, 1005.0)]);
        let m = measure(&plan(1), &d, Timestamp(1));
        assert_eq!(m.verdict, Verdict::Passed, "{m:?}");
        assert_eq!(m.requests, 1005);
        assert!((m.figures[0].value.unwrap() - 1000.0 / 1005.0).abs() < 1e-9);
        assert!(m.figures[1].value.unwrap() < 100.0);
    }

    #[test]
    fn failing_canary_fails_with_figures() {
        let d = counters(50.0, 50.0, &[(5.0, 100.0), (INF, 100.0)]);
        let m = measure(&plan(1), &d, Timestamp(1));
        assert_eq!(m.verdict, Verdict::Failed);
        assert!(!m.figures[0].passed);
        assert!(m.figures[1].passed);
        assert_eq!(
            m.summary(),
            "success-rate 0.5 < min 0.99, latency-p99 5ms (max 500ms) (100 canary responses)"
        );
        let slow = counters(100.0, 0.0, &[(500.0, 10.0), (1000.0, 100.0), (INF, 100.0)]);
        let m = measure(&plan(1), &slow, Timestamp(1));
        assert_eq!(m.verdict, Verdict::Failed);
        assert!(!m.figures[1].passed && m.figures[1].value.unwrap() > 500.0);
    }

    #[test]
    fn too_little_traffic_or_no_latency_data() {
        let d = counters(3.0, 3.0, &[]);
        assert_eq!(
            measure(&plan(10), &d, Timestamp(1)).verdict,
            Verdict::Inconclusive
        );
        assert_eq!(
            measure(&plan(1), &CanaryCounters::default(), Timestamp(1)).verdict,
            Verdict::Inconclusive
        );
        // Envoy publishes histograms at its stats flush: latency may lag the counters; the
        // figures that exist decide.
        let d = counters(100.0, 0.0, &[]);
        let m = measure(&plan(1), &d, Timestamp(1));
        assert_eq!(m.verdict, Verdict::Passed);
        assert_eq!(m.figures[1].value, None);
    }

    #[test]
    fn shadow_mismatch_judges_the_copies_alone_while_only_mirroring() {
        let plan = AnalysisPlan {
            interval_ms: 1000,
            failure_limit: 0,
            min_requests: 20,
            metrics: vec![
                MetricPlan {
                    name: "success-rate".into(),
                    kind: MetricKind::SuccessRate,
                    min: Some(0.99),
                    max: None,
                },
                MetricPlan {
                    name: "shadow-mismatch".into(),
                    kind: MetricKind::parse("shadow-mismatch").unwrap(),
                    min: None,
                    max: Some(0.05),
                },
            ],
        };
        let copies = |answers: f64, mismatch: f64| CanaryCounters {
            shadow_classes: [0.0, answers, 0.0, 0.0, 0.0],
            shadow_mismatch: mismatch,
            ..CanaryCounters::default()
        };
        // No user reaches the canary; its answers to copies decide.
        let m = measure(&plan, &copies(100.0, 10.0), Timestamp(1));
        assert_eq!((m.verdict, m.requests), (Verdict::Failed, 100));
        assert_eq!(m.figures[0].value, Some(1.0), "the copies' success rate");
        assert_eq!(m.figures[1].value, Some(0.1));
        assert!(!m.figures[1].passed);
        assert_eq!(
            measure(&plan, &copies(100.0, 5.0), Timestamp(1)).verdict,
            Verdict::Passed
        );
        assert_eq!(
            measure(&plan, &copies(19.0, 19.0), Timestamp(1)).verdict,
            Verdict::Inconclusive
        );
        // Between two readings, as the judge takes them.
        let (a, b) = (copies(100.0, 1.0), copies(160.0, 31.0));
        let d = b.since(&a).unwrap();
        assert_eq!((d.shadow_answers(), d.shadow_mismatch), (60.0, 30.0));
        assert_eq!(a.since(&b), None, "counters went down: a gateway restarted");
    }

    /// Issue 16: while only mirroring, success rate and latency judge the copies' answers.
    #[test]
    fn copies_failing_or_slow_fail_the_rates_and_latency() {
        let plan = plan(20);
        let copies = |ok: f64, errors: f64, failed: f64, latency: &[(f64, f64)]| CanaryCounters {
            shadow_classes: [0.0, ok, 0.0, 0.0, errors],
            shadow_failed: failed,
            shadow_latency: latency.to_vec(),
            ..CanaryCounters::default()
        };
        // 5xx answers and copies with no answer are both failures.
        let m = measure(&plan, &copies(90.0, 5.0, 5.0, &[]), Timestamp(1));
        assert_eq!((m.verdict, m.requests), (Verdict::Failed, 100));
        assert_eq!(m.figures[0].value, Some(0.9));
        // A slow canary: its copies' p99 is over 500 ms.
        let slow = copies(
            100.0,
            0.0,
            0.0,
            &[(500.0, 10.0), (1000.0, 100.0), (INF, 100.0)],
        );
        let m = measure(&plan, &slow, Timestamp(1));
        assert_eq!(m.verdict, Verdict::Failed, "{m:?}");
        assert!(m.figures[1].value.unwrap() > 500.0, "{m:?}");
        // Users' answers and copies' together, once some users reach the canary.
        let mut both = counters(100.0, 0.0, &[(5.0, 100.0), (INF, 100.0)]);
        both.shadow_classes[1] = 100.0;
        both.shadow_latency = vec![(5.0, 99.0), (INF, 100.0)];
        let m = measure(&plan, &both, Timestamp(1));
        assert_eq!((m.verdict, m.requests), (Verdict::Passed, 200));
        assert_eq!(m.figures[0].value, Some(1.0));
        // Rank 198 of 200, 199 of them at most 5 ms: 5 × 198/199 as Prometheus interpolates.
        assert_eq!(m.figures[1].value, Some(5.0 * 198.0 / 199.0));
        let d = both.since(&CanaryCounters::default()).unwrap();
        assert_eq!(d.shadow_latency, both.shadow_latency);
    }

    #[test]
    fn body_mismatch_is_a_share_of_the_compared_bodies() {
        let mut plan = plan(10);
        plan.metrics = vec![MetricPlan {
            name: "shadow-body-mismatch".into(),
            kind: MetricKind::parse("shadow-body-mismatch").unwrap(),
            min: None,
            max: Some(0.01),
        }];
        let mut d = CanaryCounters {
            shadow_classes: [0.0, 100.0, 0.0, 0.0, 0.0],
            shadow_body_compared: 80.0,
            shadow_body_mismatch: 8.0,
            ..CanaryCounters::default()
        };
        let m = measure(&plan, &d, Timestamp(1));
        assert_eq!(
            (m.verdict, m.figures[0].value),
            (Verdict::Failed, Some(0.1))
        );
        d.shadow_body_mismatch = 0.0;
        assert_eq!(measure(&plan, &d, Timestamp(1)).verdict, Verdict::Passed);
        // Nothing compared (bodies over the limit): no figure, no verdict from it.
        d.shadow_body_compared = 0.0;
        assert_eq!(
            measure(&plan, &d, Timestamp(1)).verdict,
            Verdict::Inconclusive
        );
        let later = CanaryCounters {
            shadow_body_compared: 90.0,
            shadow_body_mismatch: 9.0,
            ..CanaryCounters::default()
        };
        let base = CanaryCounters {
            shadow_body_compared: 80.0,
            shadow_body_mismatch: 8.0,
            ..CanaryCounters::default()
        };
        let delta = later.since(&base).unwrap();
        assert_eq!(
            (delta.shadow_body_compared, delta.shadow_body_mismatch),
            (10.0, 1.0)
        );
    }

    #[test]
    fn histograms_merge_at_every_bound() {
        let a = [(5.0, 1.0), (10.0, 3.0), (INF, 4.0)];
        let b = [(10.0, 2.0), (50.0, 5.0), (INF, 6.0)];
        assert_eq!(
            merge_histograms(&a, &b),
            vec![(5.0, 1.0), (10.0, 5.0), (50.0, 8.0), (INF, 10.0)]
        );
        assert_eq!(merge_histograms(&a, &[]), a.to_vec());
        assert_eq!(merge_histograms(&[], &b), b.to_vec());
    }
}
