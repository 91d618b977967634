//! Proof that each Envoy does the job it is measured doing: before the rounds, a sample of the
//! mix is replayed and every answer's upstream checked; after each run, the clusters' counters
//! must show the split; after the rounds, a flood from one user must be throttled where a
//! limit is configured, and rollgate's breaker must be reporting. Any miss fails the bench.

use anyhow::{bail, ensure, Result};

use crate::envoy::{Case, Envoy, LIMIT_BURST};
use crate::http::Conn;
use crate::mix::{self, MixRequest};
use crate::upstream::body_of;

fn send(conn: &mut Conn, r: &MixRequest) -> Result<(u16, String)> {
    let resp = conn.get("pro.coding", "/api/items", &r.headers())?;
    Ok((
        resp.status,
        String::from_utf8_lossy(&resp.body).into_owned(),
    ))
}

/// What the sample showed, for the report.
#[derive(Debug, Clone, Default)]
pub struct RoutingSample {
    /// Requests sent.
    pub requests: usize,
    /// Of the requests with a user id and no A/B header: (stable, canary).
    pub split: (usize, usize),
    /// Requests with the A/B header, and how many reached canary.
    pub ab: (usize, usize),
    /// Users asked twice who got the same variant both times, of those asked.
    pub sticky: (usize, usize),
}

/// Replays 1,000 requests of the mix (and 200 users twice) through `envoy` and checks every
/// answer: 200 from the right upstream, the A/B header to canary, a split near 50/50 that
/// sticks per user where the case splits; everything to stable where it does not.
pub fn routing(envoy: &Envoy) -> Result<RoutingSample> {
    let case = envoy.case;
    let (stable, canary) = (body_of("stable"), body_of("canary"));
    let mut conn = Conn::open(envoy.ports.listener)?;
    let mut s = RoutingSample::default();
    let requests = mix::sample(1_000);
    for r in &requests {
        let (status, body) = send(&mut conn, r)?;
        ensure!(
            status == 200,
            "case ({}): {r:?} answered {status} {body:?}",
            case.label()
        );
        s.requests += 1;
        let to_canary = body == canary;
        ensure!(
            to_canary || body == stable,
            "case ({}): {r:?} reached an unexpected upstream ({body:?})",
            case.label()
        );
        if r.ab {
            s.ab.0 += 1;
            s.ab.1 += usize::from(to_canary);
        } else if r.user.is_some() {
            if to_canary {
                s.split.1 += 1;
            } else {
                s.split.0 += 1;
            }
        }
    }
    if case.splits() {
        ensure!(
            s.ab.0 > 0 && s.ab.1 == s.ab.0,
            "case ({}): only {} of {} A/B requests reached canary",
            case.label(),
            s.ab.1,
            s.ab.0
        );
        let share = s.split.1 as f64 / (s.split.0 + s.split.1).max(1) as f64;
        // Each case splits users at its own weight (d2: 10 %); within 30 % of it, at least 5
        // points, which a sample of a few hundred users keeps to.
        let w = case.canary_weight();
        let slack = (0.3 * w).max(0.05);
        ensure!(
            (w - slack..=w + slack).contains(&share),
            "case ({}): the {:.0} % split sent {:.0} % of users to canary (stable {}, canary {})",
            case.label(),
            w * 100.0,
            share * 100.0,
            s.split.0,
            s.split.1
        );
        for r in requests
            .iter()
            .filter(|r| r.user.is_some() && !r.ab)
            .take(200)
        {
            let first = send(&mut conn, r)?;
            let second = send(&mut conn, r)?;
            s.sticky.1 += 1;
            s.sticky.0 += usize::from(first == second && first.0 == 200);
        }
        ensure!(
            s.sticky.0 == s.sticky.1,
            "case ({}): only {} of {} users kept their variant",
            case.label(),
            s.sticky.0,
            s.sticky.1
        );
    } else {
        ensure!(
            s.split.1 == 0 && s.ab.1 == 0,
            "case ({}) sent traffic to canary",
            case.label()
        );
    }
    Ok(s)
}

/// Checks a measured run's upstream counters (`before`/`after` from
/// [`Envoy::upstream_requests`]): traffic reached stable, and canary got its share (about
/// 55 %: the A/B tenth plus half the rest) where the case splits, none where it does not.
pub fn run_split(case: Case, before: [u64; 3], after: [u64; 3]) -> Result<f64> {
    let d: Vec<u64> = after
        .iter()
        .zip(before)
        .map(|(a, b)| a.saturating_sub(b))
        .collect();
    let (stable, canary, dev) = (d[0], d[1], d[2]);
    let total = (stable + canary + dev).max(1);
    let share = canary as f64 / total as f64;
    ensure!(stable > 0, "case ({}): stable got no traffic", case.label());
    ensure!(dev == 0, "case ({}): dev got traffic", case.label());
    if case.splits() {
        ensure!(
            case.canary_share().contains(&share),
            "case ({}): canary got {:.1} % of the run's traffic (stable {stable}, canary {canary})",
            case.label(),
            share * 100.0
        );
    } else {
        ensure!(canary == 0, "case ({}): canary got traffic", case.label());
    }
    Ok(share)
}

/// What the after-rounds checks found, for the report.
#[derive(Debug, Clone, Default)]
pub struct Armed {
    /// Flood requests sent from one user, and how many were refused with 429.
    pub flood: Option<(usize, usize)>,
    /// rollgate's breaker: (state gauge, trips) from Envoy's stats.
    pub breaker: Option<(u64, u64)>,
}

/// The limit must bite: one user sends twice its burst back to back and must see 429s. The
/// breaker must be ticking (its state gauge exported) and closed, having never tripped.
pub fn armed(envoy: &Envoy) -> Result<Armed> {
    let case = envoy.case;
    let mut out = Armed::default();
    if case.limits() {
        let n = 2 * LIMIT_BURST as usize;
        let mut conn = Conn::open(envoy.ports.listener)?;
        let mut refused = 0;
        for _ in 0..n {
            let r = conn.get("pro.coding", "/api/items", &[("x-user-id", "bench-flood")])?;
            match r.status {
                200 => {}
                429 => refused += 1,
                s => bail!("case ({}): flood request answered {s}", case.label()),
            }
        }
        ensure!(
            refused > 0,
            "case ({}): {n} requests from one user and none refused: the limit is not armed",
            case.label()
        );
        out.flood = Some((n, refused));
    }
    if case.breaks() {
        let stats = envoy.stats("breaker.canary")?;
        let find = |suffix: &str| {
            stats
                .iter()
                .find(|(k, _)| k.ends_with(suffix))
                .map(|(_, v)| *v)
        };
        let (Some(state), Some(trips)) = (find("canary.state"), find("canary.trips")) else {
            bail!(
                "case ({}): rollgate exports no breaker stats; got {stats:?}\n{}",
                case.label(),
                envoy.log_tail(20)
            );
        };
        ensure!(
            state == 0 && trips == 0,
            "case ({}): the canary breaker tripped during the bench (state {state}, trips {trips})",
            case.label()
        );
        out.breaker = Some((state, trips));
    }
    Ok(out)
}
