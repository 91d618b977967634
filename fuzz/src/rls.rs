//! The `rls` target: the filter's decoder of a rate-limit service's answer
//! (`rollgate_policy::rls`), differentially against prost's, which `rollgate ratelimit` uses.

use fastrand::Rng;
use prost::Message;
use rollgate_policy::rls::{decode_answer, MAX_ANSWER_BYTES};
use rollgate_ratelimit::pb::rate_limit_response::{DescriptorStatus, RateLimit};
use rollgate_ratelimit::pb::{Duration, RateLimitResponse};

use crate::gen::chance;

/// An answer as a service writes it, now and then with odd values or damaged bytes.
pub fn generate(rng: &mut Rng) -> Vec<u8> {
    let statuses = (0..rng.usize(..3))
        .map(|_| DescriptorStatus {
            code: rng.i32(0..4),
            current_limit: chance(rng, 50).then(|| RateLimit {
                name: "api".into(),
                requests_per_unit: rng.u32(..1000),
                unit: rng.i32(0..8),
            }),
            limit_remaining: if chance(rng, 10) {
                u32::MAX
            } else {
                rng.u32(..500)
            },
            duration_until_reset: chance(rng, 80).then(|| Duration {
                seconds: if chance(rng, 5) {
                    i64::MAX
                } else {
                    rng.i64(-1..100)
                },
                nanos: if chance(rng, 5) {
                    -1
                } else {
                    rng.i32(0..1_000_000_000)
                },
            }),
        })
        .collect();
    let mut out = RateLimitResponse {
        overall_code: rng.i32(0..4),
        statuses,
    }
    .encode_to_vec();
    if chance(rng, 20) && !out.is_empty() {
        let i = rng.usize(..out.len());
        match rng.u32(..3) {
            0 => out.truncate(i),
            1 => out[i] = rng.u8(..),
            _ => out.insert(i, rng.u8(..)),
        }
    }
    out
}

/// Never panics; on a canonical encoding (prost decodes it and writes the same bytes back)
/// agrees with prost on the code, the first status's remaining count and its reset time.
pub fn check(input: &[u8]) -> Result<String, String> {
    let ours = decode_answer(input);
    let Ok(theirs) = RateLimitResponse::decode(input) else {
        return Ok(format!("prost refuses; ours {}", ours.is_ok()));
    };
    if theirs.encode_to_vec() != input || input.len() > MAX_ANSWER_BYTES {
        return Ok(format!("not canonical; ours {}", ours.is_ok()));
    }
    let first = theirs.statuses.first();
    let reset = first.and_then(|s| s.duration_until_reset.as_ref());
    let reset_in_range = reset.is_none_or(|d| {
        (0..=1 << 40).contains(&d.seconds) && (0..1_000_000_000).contains(&d.nanos)
    });
    let code_known = matches!(theirs.overall_code, 1 | 2);
    match ours {
        Err(_) if !code_known || !reset_in_range => Ok("refused".into()),
        Err(_) => Err(format!("a valid answer is refused: {theirs:?}")),
        Ok(_) if !code_known || !reset_in_range => {
            Err(format!("an invalid answer is accepted: {theirs:?}"))
        }
        Ok(a) => {
            let want_reset =
                reset.map(|d| d.seconds as u64 * 1000 + (d.nanos as u64).div_ceil(1_000_000));
            let want_remaining = first.map(|s| u64::from(s.limit_remaining));
            if a.over_limit != (theirs.overall_code == 2)
                || a.remaining.unwrap_or(0) != want_remaining.unwrap_or(0)
                || a.reset_ms != want_reset
            {
                return Err(format!("ours {a:?}, prost {theirs:?}"));
            }
            Ok(format!(
                "over={} statuses={}",
                a.over_limit,
                theirs.statuses.len().min(2)
            ))
        }
    }
}
