//! Which policy version each gateway serves, for the acknowledgement rule of the step engine
//! ([`Event::Gateways`](crate::Event::Gateways)): each gateway's Envoy admin
//! `/stats/prometheus` is read on its own, and the filter's gauge
//! `rollgate.<source stat name>.policy.version` (`rollgate_<name>_policy_version` there) says
//! the version it serves of each policy it fetches.
//!
//! A gateway counts for a rollout when it exports that rollout's gauge (its filter fetches
//! that policy; 0 until the first fetch) or cannot be read at all (it may be one, and a
//! gateway that cannot be read cannot be said to serve anything). A gateway that reads fine
//! and has no such gauge serves other policies: it does not hold this rollout back.

use std::time::Duration;

use crate::client;
use crate::judge::{prom_name, Samples};
use crate::status::GatewayStatus;

/// One gateway's reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The gateway's name in the status (`127.0.0.1:9901`).
    pub gateway: String,
    /// Its `rollgate_` samples, or why they could not be read.
    pub samples: Result<Samples, String>,
}

/// `http://127.0.0.1:9901/` → `127.0.0.1:9901`: what status messages call the gateway.
pub fn gateway_name(admin: &str) -> String {
    let rest = admin.split_once("://").map_or(admin, |(_, r)| r);
    rest.trim_end_matches('/').to_string()
}

/// The version of policy `policy` a gateway's samples report, if it fetches that policy.
pub fn policy_version(samples: &Samples, policy: &str) -> Option<u64> {
    let name = format!("rollgate_{}_policy_version", prom_name(policy));
    // A gauge is a whole number the filter set; anything else is not ours.
    let v = *samples.values.get(&name)?;
    (v >= 0.0 && v.fract() == 0.0).then_some(v as u64)
}

/// The gateways of policy `policy` and the version each serves (see the module's rule).
pub fn versions(readings: &[Reading], policy: &str) -> Vec<GatewayStatus> {
    readings
        .iter()
        .filter_map(|r| match &r.samples {
            Ok(s) => policy_version(s, policy).map(|v| GatewayStatus {
                gateway: r.gateway.clone(),
                version: Some(v),
                unreachable: false,
            }),
            Err(_) => Some(GatewayStatus {
                gateway: r.gateway.clone(),
                version: None,
                unreachable: true,
            }),
        })
        .collect()
}

/// Reads every admin's `/stats/prometheus` at once, each within `timeout`: a paused or dead
/// gateway costs one timeout, not one per gateway, and does not hide the others.
pub async fn read_each(admins: &[String], timeout: Duration) -> Vec<Reading> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, admin) in admins.iter().enumerate() {
        let url = format!("{}/stats/prometheus", admin.trim_end_matches('/'));
        tasks.spawn(async move {
            let samples = match client::fetch("GET", &url, None, timeout).await {
                Ok(resp) if resp.status == 200 => Ok(Samples::parse(&resp.text())),
                Ok(resp) => Err(format!("{url}: answered {}", resp.status)),
                Err(e) => Err(e.to_string()),
            };
            (i, samples)
        });
    }
    let mut out: Vec<Reading> = admins
        .iter()
        .map(|a| Reading {
            gateway: gateway_name(a),
            samples: Err("not read".to_string()),
        })
        .collect();
    while let Some(done) = tasks.join_next().await {
        // A task that panicked leaves its gateway "not read": unreachable, never skipped.
        if let Ok((i, samples)) = done {
            if let Some(r) = out.get_mut(i) {
                r.samples = samples;
            }
        }
    }
    out
}

/// The sum of every reading (what the analysis judges), or the first failure.
pub fn sum(readings: &[Reading]) -> Result<Samples, String> {
    let mut all = Samples::default();
    for r in readings {
        all.merge(r.samples.clone()?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(gateway: &str, text: Result<&str, &str>) -> Reading {
        Reading {
            gateway: gateway.into(),
            samples: text.map(Samples::parse).map_err(str::to_string),
        }
    }

    #[test]
    fn each_gateway_of_the_policy_with_its_version() {
        let readings = [
            reading(
                "a:1",
                Ok("# TYPE rollgate_my_app_policy_version gauge\n\
                    rollgate_my_app_policy_version{} 5\nrollgate_other_policy_version{} 9\n"),
            ),
            reading("b:2", Ok("rollgate_my_app_policy_version 0\n")),
            // Fetches another policy only: not a gateway of my-app.
            reading("c:3", Ok("rollgate_other_policy_version 9\n")),
            reading("d:4", Err("timed out")),
        ];
        let v = versions(&readings, "my-app");
        let shown: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["a:1 on v5", "b:2 serving no policy", "d:4 unreachable"]
        );
        assert_eq!(versions(&readings, "other").len(), 3);
        assert!(sum(&readings).is_err(), "the analysis needs every gateway");
        assert_eq!(
            sum(&readings[..2]).unwrap().values["rollgate_my_app_policy_version"],
            5.0
        );
    }

    #[test]
    fn names_and_odd_values() {
        assert_eq!(gateway_name("http://127.0.0.1:9901/"), "127.0.0.1:9901");
        assert_eq!(gateway_name("https://gw.example:443"), "gw.example:443");
        assert_eq!(gateway_name("10.0.0.1:9901"), "10.0.0.1:9901");
        let s = Samples::parse("rollgate_p_policy_version 1.5\nrollgate_q_policy_version -1\n");
        assert_eq!(
            (policy_version(&s, "p"), policy_version(&s, "q")),
            (None, None)
        );
    }
}
