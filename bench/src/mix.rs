//! The request mix in Rust, for the checks and the host part; `wrk/mix.lua` is its twin for
//! the load. Host `pro.coding`; a user id from a pool of 10,000 on 95 % of requests; the A/B
//! header (`location: shenzhen`) on 10 %, independently.

/// Users in the pool.
pub const USERS: u64 = 10_000;

/// A small deterministic generator (xorshift64*), so a sample is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// One request of the mix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixRequest {
    /// `x-user-id`, if the request carries one.
    pub user: Option<String>,
    /// Whether it carries `location: shenzhen`.
    pub ab: bool,
}

impl MixRequest {
    /// Its headers besides `Host`.
    pub fn headers(&self) -> Vec<(&str, &str)> {
        let mut h = Vec::new();
        if let Some(u) = &self.user {
            h.push(("x-user-id", u.as_str()));
        }
        if self.ab {
            h.push(("location", "shenzhen"));
        }
        h
    }
}

/// The first `n` requests of the mix's deterministic sample.
pub fn sample(n: usize) -> Vec<MixRequest> {
    let mut rng = Rng(0x5eed_1234_abcd_9876);
    (0..n)
        .map(|_| {
            let user = (!rng.chance(5)).then(|| format!("user-{}", 1 + rng.next() % USERS));
            MixRequest {
                user,
                ab: rng.chance(10),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_has_the_mix_shares() {
        let s = sample(20_000);
        let keyless = s.iter().filter(|r| r.user.is_none()).count() as f64 / 20_000.0;
        let ab = s.iter().filter(|r| r.ab).count() as f64 / 20_000.0;
        assert!((0.04..0.06).contains(&keyless), "{keyless}");
        assert!((0.09..0.11).contains(&ab), "{ab}");
        assert_eq!(s, sample(20_000));
    }
}
