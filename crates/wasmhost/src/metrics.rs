//! Metrics as Envoy keeps them for Wasm: one process-wide stat per name (every VM that defines
//! the same name shares it), with per-VM metric ids whose low two bits encode the type.
//!
//! Naming: Envoy registers a custom metric `NAME` as the stat `wasmcustom.NAME` and strips the
//! `wasmcustom` namespace in `/stats` and Prometheus output. [`MetricStore`] keys stats by the
//! name the plugin defined (what users see); lookups also accept the `wasmcustom.` form.

use std::collections::BTreeMap;

/// Envoy's custom stat namespace for Wasm-defined metrics.
pub const CUSTOM_NAMESPACE: &str = "wasmcustom";

/// Low bits of a metric id: its type (cpp-host `kMetricTypeMask`).
pub(crate) const TYPE_MASK: u32 = 0x3;
/// Step between two ids of one type (cpp-host `kMetricIdIncrement`).
pub(crate) const ID_INCREMENT: u32 = 0x4;

/// A metric's type, numbered as in the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter = 0,
    /// Goes up and down, or is set.
    Gauge = 1,
    /// Records values.
    Histogram = 2,
}

impl MetricKind {
    pub(crate) fn from_abi(t: u32) -> Option<MetricKind> {
        match t {
            0 => Some(MetricKind::Counter),
            1 => Some(MetricKind::Gauge),
            2 => Some(MetricKind::Histogram),
            _ => None,
        }
    }
}

/// A metric's current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metric {
    /// A counter's total.
    Counter(u64),
    /// A gauge's value (unsigned, as Envoy's gauges are).
    Gauge(u64),
    /// Every value a histogram recorded, in order.
    Histogram(Vec<u64>),
}

impl Metric {
    /// The counter or gauge value; a histogram's number of samples.
    pub fn value(&self) -> u64 {
        match self {
            Metric::Counter(v) | Metric::Gauge(v) => *v,
            Metric::Histogram(samples) => samples.len() as u64,
        }
    }

    fn kind(&self) -> MetricKind {
        match self {
            Metric::Counter(_) => MetricKind::Counter,
            Metric::Gauge(_) => MetricKind::Gauge,
            Metric::Histogram(_) => MetricKind::Histogram,
        }
    }
}

/// The process-wide stats. Envoy's stats are keyed by name only; a name defined with two
/// types keeps the first definition's type (the second definer's updates then fail).
#[derive(Debug, Default)]
pub(crate) struct MetricStore {
    stats: BTreeMap<String, Metric>,
}

impl MetricStore {
    /// Creates `name` of `kind` unless it exists.
    pub(crate) fn define(&mut self, name: &str, kind: MetricKind) {
        self.stats.entry(name.to_string()).or_insert(match kind {
            MetricKind::Counter => Metric::Counter(0),
            MetricKind::Gauge => Metric::Gauge(0),
            MetricKind::Histogram => Metric::Histogram(Vec::new()),
        });
    }

    fn slot(&mut self, name: &str, kind: MetricKind) -> Option<&mut Metric> {
        self.stats.get_mut(name).filter(|m| m.kind() == kind)
    }

    /// `proxy_increment_metric` on a defined metric: counters refuse offsets ≤ 0.
    pub(crate) fn increment(
        &mut self,
        name: &str,
        kind: MetricKind,
        offset: i64,
    ) -> Result<(), Refusal> {
        match (self.slot(name, kind).ok_or(Refusal::NotFound)?, kind) {
            (Metric::Counter(v), _) if offset > 0 => {
                *v = v.wrapping_add(offset as u64);
                Ok(())
            }
            (Metric::Counter(_), _) => Err(Refusal::BadArgument),
            (Metric::Gauge(v), _) => {
                *v = if offset >= 0 {
                    v.wrapping_add(offset as u64)
                } else {
                    v.wrapping_sub(offset.unsigned_abs())
                };
                Ok(())
            }
            (Metric::Histogram(_), _) => Err(Refusal::BadArgument),
        }
    }

    /// `proxy_record_metric`: a counter adds, a gauge is set, a histogram records.
    pub(crate) fn record(
        &mut self,
        name: &str,
        kind: MetricKind,
        value: u64,
    ) -> Result<(), Refusal> {
        match self.slot(name, kind).ok_or(Refusal::NotFound)? {
            Metric::Counter(v) => *v = v.wrapping_add(value),
            Metric::Gauge(v) => *v = value,
            Metric::Histogram(samples) => samples.push(value),
        }
        Ok(())
    }

    /// `proxy_get_metric`: histograms cannot be read.
    pub(crate) fn get(&self, name: &str, kind: MetricKind) -> Result<u64, Refusal> {
        match self.stats.get(name).filter(|m| m.kind() == kind) {
            Some(Metric::Counter(v) | Metric::Gauge(v)) => Ok(*v),
            Some(Metric::Histogram(_)) => Err(Refusal::BadArgument),
            None => Err(Refusal::NotFound),
        }
    }

    /// A metric by the plugin's name or by its `wasmcustom.`-prefixed stat name.
    pub(crate) fn lookup(&self, name: &str) -> Option<Metric> {
        let short = name
            .strip_prefix(CUSTOM_NAMESPACE)
            .and_then(|rest| rest.strip_prefix('.'))
            .unwrap_or(name);
        self.stats.get(short).cloned()
    }

    /// Every metric, by the plugin's name.
    pub(crate) fn all(&self) -> BTreeMap<String, Metric> {
        self.stats.clone()
    }
}

/// Why a metric operation was refused (maps to NotFound / BadArgument).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    NotFound,
    BadArgument,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_refuse_non_positive_and_gauges_go_both_ways() {
        let mut m = MetricStore::default();
        m.define("c", MetricKind::Counter);
        m.define("g", MetricKind::Gauge);
        m.define("h", MetricKind::Histogram);
        assert_eq!(
            m.increment("c", MetricKind::Counter, 0),
            Err(Refusal::BadArgument)
        );
        assert_eq!(
            m.increment("c", MetricKind::Counter, -1),
            Err(Refusal::BadArgument)
        );
        m.increment("c", MetricKind::Counter, 2).unwrap();
        m.record("c", MetricKind::Counter, 3).unwrap();
        assert_eq!(m.get("c", MetricKind::Counter), Ok(5));
        m.increment("g", MetricKind::Gauge, 5).unwrap();
        m.increment("g", MetricKind::Gauge, -2).unwrap();
        assert_eq!(m.get("g", MetricKind::Gauge), Ok(3));
        m.record("h", MetricKind::Histogram, 7).unwrap();
        assert_eq!(m.get("h", MetricKind::Histogram), Err(Refusal::BadArgument));
        assert_eq!(m.lookup("wasmcustom.h"), Some(Metric::Histogram(vec![7])));
        assert_eq!(m.get("nope", MetricKind::Counter), Err(Refusal::NotFound));
    }
}
