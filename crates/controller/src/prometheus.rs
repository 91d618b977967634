//! Analysis figures from a Prometheus HTTP API (`--prometheus URL`) instead of the gateways'
//! admin endpoints: one instant query (`/api/v1/query`) for the policy's `rollgate_` series
//! over every scraped gateway, turned back into the exposition lines the sidecar's reader
//! ([`Samples::parse`]) sums, so both sources feed the engine the same counters; and, for
//! the acknowledgement rule, the policy-version gauge per gateway ([`gateways`]).

use std::time::Duration;

use rollgate_rollout::client;
use rollgate_rollout::gateways::Reading;
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

/// One instant query's answer.
async fn instant(base: &str, query: &str) -> Result<serde_json::Value, String> {
    let url = format!(
        "{}/api/v1/query?query={}",
        base.trim_end_matches('/'),
        encode(query)
    );
    let resp = client::fetch("GET", &url, None, Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    if resp.status != 200 {
        return Err(format!("{url}: answered {}", resp.status));
    }
    serde_json::from_slice(&resp.body).map_err(|e| format!("{url}: {e}"))
}

/// Reads policy `policy`'s series, summed over every gateway Prometheus scrapes.
pub async fn query(base: &str, policy: &str) -> Result<Samples, String> {
    let answer = instant(base, &selector(policy)).await?;
    Ok(Samples::parse(&to_exposition(&answer)?))
}

/// How far back a gateway that stopped being scraped still counts as one (unreachable): a
/// failed scrape ends its series at once (Prometheus's staleness marker), so without this a
/// paused gateway would simply vanish, and a step would go on without it. A gateway removed
/// for good holds a waiting step this long.
pub const GATEWAY_MEMORY: &str = "5m";

/// The queries of [`gateways`]: the version gauge of each gateway scraped now, and the
/// instances that reported it within [`GATEWAY_MEMORY`] but not now.
pub fn gateway_queries(policy: &str) -> (String, String) {
    let gauge = format!("rollgate_{}_policy_version", prom_name(policy));
    let gone = format!("last_over_time({gauge}[{GATEWAY_MEMORY}]) unless on(instance) {gauge}");
    (gauge, gone)
}

/// The gateway a series comes from: its `instance` label (Prometheus sets it on every
/// scraped series), else its `pod`.
fn instance(r: &serde_json::Value) -> Option<String> {
    let m = &r["metric"];
    m["instance"]
        .as_str()
        .or(m["pod"].as_str())
        .map(str::to_string)
}

/// Each gateway Prometheus scrapes for policy `policy`, with its reading of the version gauge
/// ([`gateways::versions`](rollgate_rollout::gateways::versions) turns it into the status):
/// those scraped now read their version; those no longer scraped read as unreachable.
pub async fn gateways(base: &str, policy: &str) -> Result<Vec<Reading>, String> {
    let (now, gone) = gateway_queries(policy);
    let (now_answer, gone_answer) = (instant(base, &now).await?, instant(base, &gone).await?);
    readings(policy, &now_answer, &gone_answer)
}

/// [`gateways`] from the two answers.
pub fn readings(
    policy: &str,
    now: &serde_json::Value,
    gone: &serde_json::Value,
) -> Result<Vec<Reading>, String> {
    let gauge = format!("rollgate_{}_policy_version", prom_name(policy));
    let mut out = Vec::new();
    for (answer, scraped) in [(now, true), (gone, false)] {
        if answer["status"] != "success" {
            return Err(format!("prometheus: {}", answer["error"]));
        }
        let results = answer["data"]["result"]
            .as_array()
            .ok_or("prometheus: no result vector")?;
        for r in results {
            let Some(gateway) = instance(r) else { continue };
            let samples = match (scraped, r["value"][1].as_str()) {
                (true, Some(v)) => Ok(Samples::parse(&format!("{gauge} {v}\n"))),
                _ => Err(format!("{gateway}: no longer scraped by Prometheus")),
            };
            out.push(Reading { gateway, samples });
        }
    }
    out.sort_by(|a, b| a.gateway.cmp(&b.gateway));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gateways_now_and_gone() {
        let (now, gone) = gateway_queries("my.app");
        assert_eq!(now, "rollgate_my_app_policy_version");
        assert_eq!(
            gone,
            "last_over_time(rollgate_my_app_policy_version[5m]) unless on(instance) \
             rollgate_my_app_policy_version"
        );
        let series = |inst: &str, v: &str| {
            json!({"metric": {"__name__": "rollgate_my_app_policy_version", "instance": inst},
                   "value": [1.5, v]})
        };
        let ok = |v: Vec<serde_json::Value>| json!({"status": "success", "data": {"resultType": "vector", "result": v}});
        let r = readings(
            "my.app",
            &ok(vec![series("gw-b:9901", "5"), series("gw-a:9901", "4")]),
            &ok(vec![series("gw-c:9901", "5")]),
        )
        .unwrap();
        let shown: Vec<String> = rollgate_rollout::gateways::versions(&r, "my.app")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            [
                "gw-a:9901 on v4",
                "gw-b:9901 on v5",
                "gw-c:9901 unreachable"
            ]
        );
        let bad = json!({"status": "error", "error": "parse error"});
        assert!(readings("my.app", &bad, &ok(vec![])).is_err());
    }
}
