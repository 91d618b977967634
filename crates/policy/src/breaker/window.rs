//! Rolling statistics: a window of ten buckets, each with request and network-error counts,
//! per-status-code counts and a log-linear latency histogram. Buckets are small and sparse so
//! workers can merge theirs into shared data cheaply.

use super::expr::{Metric, Stats};

/// Buckets per window.
pub const BUCKETS_PER_WINDOW: u64 = 10;

/// Sub-buckets per power of two: a bucket spans 1/32 of its value, so reporting its midpoint
/// is within ~1.6 % of any value in it (the issue asks ≤ 5 %).
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;

/// Histogram index of a latency in microseconds: exact below 32 µs, log-linear above.
pub fn latency_index(us: u64) -> u16 {
    if us < SUB {
        return us as u16;
    }
    let exp = 63 - us.leading_zeros(); // ≥ SUB_BITS
    let sub = (us >> (exp - SUB_BITS)) & (SUB - 1);
    (SUB + u64::from(exp - SUB_BITS) * SUB + sub).min(u64::from(u16::MAX)) as u16
}

/// The midpoint (µs) of histogram bucket `idx`.
pub fn latency_value(idx: u16) -> f64 {
    let idx = u64::from(idx);
    if idx < SUB {
        return idx as f64;
    }
    let exp = (idx - SUB) / SUB + u64::from(SUB_BITS);
    let sub = (idx - SUB) % SUB;
    let width = 1u64 << (exp - u64::from(SUB_BITS));
    let low = (SUB + sub) * width;
    low as f64 + (width as f64 - 1.0) / 2.0
}

/// One bucket of the window (or several merged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Which time slice: `now / bucket_ns`.
    pub epoch: u64,
    /// The breaker generation it belongs to; opening the breaker starts a new one.
    pub generation: u32,
    /// Requests.
    pub total: u64,
    /// Network errors (502, 504, upstream failures).
    pub net_errors: u64,
    /// (status code, count), sorted by code.
    pub codes: Vec<(u16, u64)>,
    /// (histogram index, count), sorted by index.
    pub latency: Vec<(u16, u64)>,
}

fn bump(list: &mut Vec<(u16, u64)>, key: u16, n: u64) {
    match list.binary_search_by_key(&key, |(k, _)| *k) {
        Ok(i) => {
            if let Some(e) = list.get_mut(i) {
                e.1 += n;
            }
        }
        Err(i) => list.insert(i, (key, n)),
    }
}

impl Bucket {
    /// An empty bucket for `epoch` and `generation`.
    pub fn new(epoch: u64, generation: u32) -> Bucket {
        Bucket {
            epoch,
            generation,
            ..Bucket::default()
        }
    }

    /// Counts one response.
    pub fn record(&mut self, status: u16, latency_us: u64, network_error: bool) {
        self.total += 1;
        self.net_errors += u64::from(network_error);
        bump(&mut self.codes, status, 1);
        bump(&mut self.latency, latency_index(latency_us), 1);
    }

    /// Adds another bucket's counts.
    pub fn merge(&mut self, other: &Bucket) {
        self.total += other.total;
        self.net_errors += other.net_errors;
        for &(c, n) in &other.codes {
            bump(&mut self.codes, c, n);
        }
        for &(i, n) in &other.latency {
            bump(&mut self.latency, i, n);
        }
    }

    /// Serialized form for shared data.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + 10 * (self.codes.len() + self.latency.len()));
        out.push(1u8);
        out.extend(self.epoch.to_le_bytes());
        out.extend(self.generation.to_le_bytes());
        out.extend(self.total.to_le_bytes());
        out.extend(self.net_errors.to_le_bytes());
        for list in [&self.codes, &self.latency] {
            out.extend((list.len() as u32).to_le_bytes());
            for (k, n) in list {
                out.extend(k.to_le_bytes());
                out.extend(n.to_le_bytes());
            }
        }
        out
    }

    /// Parses [`Bucket::encode`]'s output.
    pub fn decode(b: &[u8]) -> Option<Bucket> {
        let mut r = Reader { b, at: 0 };
        if r.take(1)? != [1] {
            return None;
        }
        let mut out = Bucket {
            epoch: r.u64()?,
            generation: r.u32()?,
            total: r.u64()?,
            net_errors: r.u64()?,
            ..Bucket::default()
        };
        for list in [&mut out.codes, &mut out.latency] {
            let n = r.u32()? as usize;
            if n > 4096 {
                return None;
            }
            for _ in 0..n {
                let k = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
                list.push((k, r.u64()?));
            }
            if list.windows(2).any(|w| w[0].0 >= w[1].0) {
                return None;
            }
        }
        (r.at == b.len()).then_some(out)
    }

    /// The q-th percentile latency in milliseconds (0 without data).
    pub fn latency_quantile_ms(&self, q: f64) -> f64 {
        let count: u64 = self.latency.iter().map(|(_, n)| n).sum();
        if count == 0 {
            return 0.0;
        }
        let rank = ((q / 100.0) * count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for &(i, n) in &self.latency {
            seen += n;
            if seen >= rank {
                return latency_value(i) / 1000.0;
            }
        }
        self.latency
            .last()
            .map_or(0.0, |(i, _)| latency_value(*i) / 1000.0)
    }

    fn codes_in(&self, from: u16, to: u16) -> u64 {
        self.codes
            .iter()
            .filter(|(c, _)| (from..to).contains(c))
            .map(|(_, n)| n)
            .sum()
    }
}

impl Stats for Bucket {
    fn metric(&self, m: Metric) -> f64 {
        match m {
            Metric::LatencyAtQuantileMs(q) => self.latency_quantile_ms(q),
            Metric::NetworkErrorRatio if self.total == 0 => 0.0,
            Metric::NetworkErrorRatio => self.net_errors as f64 / self.total as f64,
            Metric::RequestThreshold => self.total as f64,
            Metric::ResponseCodeRatio(a, b, c, d) => match self.codes_in(c, d) {
                0 => 0.0,
                div => self.codes_in(a, b) as f64 / div as f64,
            },
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_error_is_within_two_percent_everywhere() {
        let mut v = 1u64;
        while v < 3_600_000_000 {
            let est = latency_value(latency_index(v));
            let err = (est - v as f64).abs() / v as f64;
            assert!(err <= 0.02, "{v} µs estimated {est} ({:.2} %)", err * 100.0);
            v = v * 21 / 20 + 1;
        }
        assert_eq!(latency_value(latency_index(31)), 31.0);
        // Indices grow with the value.
        let idx: Vec<u16> = (0..100_000).step_by(7).map(latency_index).collect();
        assert!(idx.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn quantiles_of_known_distributions() {
        let mut b = Bucket::new(0, 1);
        for ms in 1..=100u64 {
            b.record(200, ms * 1000, false);
        }
        for (q, want) in [
            (50.0, 50.0),
            (90.0, 90.0),
            (99.0, 99.0),
            (100.0, 100.0),
            (1.0, 1.0),
        ] {
            let got = b.latency_quantile_ms(q);
            assert!((got - want).abs() / want <= 0.05, "p{q}: {got} vs {want}");
        }
        assert_eq!(Bucket::new(0, 1).latency_quantile_ms(50.0), 0.0);
        // 70 fast and 30 slow: the median is fast, p99 slow.
        let mut m = Bucket::new(0, 1);
        (0..70).for_each(|_| m.record(200, 5_000, false));
        (0..30).for_each(|_| m.record(200, 150_000, false));
        assert!(m.latency_quantile_ms(50.0) < 6.0);
        assert!((m.latency_quantile_ms(99.0) - 150.0).abs() < 3.0);
    }

    #[test]
    fn ratios_and_threshold() {
        let mut b = Bucket::new(0, 1);
        (0..6).for_each(|_| b.record(200, 1000, false));
        b.record(404, 1000, false);
        b.record(500, 1000, false);
        b.record(502, 1000, true);
        b.record(503, 1000, true); // an upstream connection failure Envoy answered with 503
        assert_eq!(b.metric(Metric::RequestThreshold), 10.0);
        assert_eq!(b.metric(Metric::NetworkErrorRatio), 0.2);
        assert_eq!(b.metric(Metric::ResponseCodeRatio(500, 600, 0, 600)), 0.3);
        assert_eq!(
            b.metric(Metric::ResponseCodeRatio(400, 500, 200, 300)),
            1.0 / 6.0
        );
        assert_eq!(
            b.metric(Metric::ResponseCodeRatio(500, 600, 300, 400)),
            0.0,
            "empty divisor"
        );
        assert_eq!(Bucket::new(0, 1).metric(Metric::NetworkErrorRatio), 0.0);
    }

    #[test]
    fn merge_and_encode_round_trip() {
        let mut a = Bucket::new(7, 2);
        a.record(200, 1200, false);
        a.record(504, 90_000, true);
        let mut b = Bucket::new(7, 2);
        b.record(200, 1100, false);
        b.record(201, 5, false);
        let mut m = a.clone();
        m.merge(&b);
        assert_eq!((m.total, m.net_errors), (4, 1));
        assert_eq!(m.codes, vec![(200, 2), (201, 1), (504, 1)]);
        assert_eq!(Bucket::decode(&m.encode()), Some(m.clone()));
        let enc = m.encode();
        for cut in 0..enc.len() {
            assert_eq!(Bucket::decode(&enc[..cut]), None);
        }
        assert_eq!(Bucket::decode(b"garbage"), None);
    }
}
