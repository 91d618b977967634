//! Analysis figures from a Prometheus HTTP API (`--prometheus URL`) instead of the gateways'
//! admin endpoints: one instant query (`/api/v1/query`) for the policy's `rollgate_` series
//! over every scraped gateway, turned back into the exposition lines the sidecar's reader
//! ([`Samples::parse`]) sums, so both sources feed the engine the same counters.

use std::time::Duration;

use rollgate_rollout::client;
use rollgate_rollout::judge::{prom_name, Samples};

/// The query selecting every series of policy `policy`.
pub fn selector(policy: &str) -> String {
    format!("{{__name__=~\"rollgate_{}_.*\"}}", prom_name(policy))
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters pass).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Turns an instant-query answer (`resultType: vector`) into exposition text.
pub fn to_exposition(answer: &serde_json::Value) -> Result<String, String> {
    if answer["status"] != "success" {
        return Err(format!("prometheus: {}", answer["error"]));
    }
    let results = answer["data"]["result"]
        .as_array()
        .ok_or("prometheus: no result vector")?;
    let mut text = String::new();
    for r in results {
        let (Some(name), Some(value)) = (r["metric"]["__name__"].as_str(), r["value"][1].as_str())
        else {
            continue;
        };
        match r["metric"]["le"].as_str() {
            Some(le) => text.push_str(&format!("{name}{{le=\"{le}\"}} {value}\n")),
            None => text.push_str(&format!("{name} {value}\n")),
        }
    }
    Ok(text)
}

/// Reads policy `policy`'s series, summed over every gateway Prometheus scrapes.
pub async fn query(base: &str, policy: &str) -> Result<Samples, String> {
    let url = format!(
        "{}/api/v1/query?query={}",
        base.trim_end_matches('/'),
        encode(&selector(policy))
    );
    let resp = client::fetch("GET", &url, None, Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    if resp.status != 200 {
        return Err(format!("{url}: answered {}", resp.status));
    }
    let answer: serde_json::Value =
        serde_json::from_slice(&resp.body).map_err(|e| format!("{url}: {e}"))?;
    Ok(Samples::parse(&to_exposition(&answer)?))
}
