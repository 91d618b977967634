//! Spec + status → the policy the filter runs. One pure function, [`render`].
//!
//! Route order: the spec's fixed routes, then the header route while one is active (its rule
//! joined to the spec's `match`, to the canary), then the split route (the spec's `match`,
//! `split: [{variant: canary, weight}]`, the sticky key, and while a `setMirror` is active the
//! mirror of that share to the canary). The default is the stable variant,
//! so whatever the split leaves goes there. The split route is always present, at weight 0
//! too, so the policy's shape never depends on the weight.
//!
//! A Rollout's connection limits (`spec.tcp`) are a second policy, [`render_tcp`]: a
//! network filter runs only connection-limit policies and an HTTP filter only routing ones
//! (README, "Connection limits (TCP)"), and a gateway's HTTP filter refuses a field it does
//! not know, so nothing new is ever added to the HTTP policy.

use rollgate_policy::policy::spec::{MirrorSpec, PolicySpec, RouteSpec, SplitSpec};
use rollgate_policy::policy::spec::{DEFAULT_CLUSTER_HEADER, DEFAULT_VARIANT_HEADER};
use rollgate_policy::policy::{accept_policy, PolicyError, PolicyErrors};

use super::status::RolloutStatus;
use super::types::RolloutSpec;

/// Joins two rules with `&&`, parenthesising a side only when it holds an `||` (which binds
/// looser than `&&`).
pub fn and_rules(a: Option<&str>, b: &str) -> String {
    let wrap = |r: &str| {
        if r.contains("||") {
            format!("({r})")
        } else {
            r.to_string()
        }
    };
    match a {
        Some(a) => format!("{} && {}", wrap(a), wrap(b)),
        None => b.to_string(),
    }
}

/// The JSON to serve for a rendered policy, once the filter's own acceptance function
/// ([`accept_policy`]: its parser, limits and compiler) accepts that very text. The sidecar and
/// the controller serve nothing else, so no policy the filter would refuse reaches a gateway.
pub fn accept_rendered(policy: &PolicySpec) -> Result<String, PolicyErrors> {
    let json = serde_json::to_string(policy).map_err(|e| {
        PolicyErrors(vec![PolicyError {
            path: String::new(),
            message: format!("the policy does not serialize: {e}"),
        }])
    })?;
    accept_policy(json.as_bytes())?;
    Ok(json)
}

/// The policy for rollout `name` with `spec` in state `status`.
pub fn render(name: &str, spec: &RolloutSpec, status: &RolloutStatus) -> PolicySpec {
    let mut routes: Vec<RouteSpec> = spec.routes.iter().map(|r| r.to_policy()).collect();
    if let Some(rule) = &status.header_route {
        routes.push(RouteSpec {
            rule: Some(and_rules(spec.rule.as_deref(), rule)),
            variant: Some(spec.canary_variant.clone()),
            ..RouteSpec::default()
        });
    }
    routes.push(RouteSpec {
        rule: spec.rule.clone(),
        split: Some(vec![SplitSpec {
            variant: spec.canary_variant.clone(),
            weight: status.canary_weight,
        }]),
        sticky: spec.sticky.as_ref().map(|s| s.to_policy()),
        // Copies of the requests the split keeps on stable (the filter never copies a request
        // already going to the canary), sticky by the same key.
        mirror: (status.mirror_percent > 0.0).then(|| MirrorSpec {
            variant: spec.canary_variant.clone(),
            percent: status.mirror_percent,
            compare_body: status.mirror_compare_body,
            ..MirrorSpec::default()
        }),
        ..RouteSpec::default()
    });
    PolicySpec {
        name: name.to_string(),
        variants: spec.variants.clone(),
        default: Some(spec.stable_variant.clone()),
        routes,
        cluster_header: spec
            .cluster_header
            .clone()
            .unwrap_or_else(|| DEFAULT_CLUSTER_HEADER.to_string()),
        variant_header: spec
            .variant_header
            .clone()
            .unwrap_or_else(|| DEFAULT_VARIANT_HEADER.to_string()),
        expose_variant: spec.expose_variant,
        rule_syntax: spec.rule_syntax.map(|s| s.name().to_string()),
        rate_limits: spec.rate_limits.iter().map(|l| l.to_policy()).collect(),
        circuit_breakers: spec
            .circuit_breakers
            .iter()
            .map(|b| b.to_policy())
            .collect(),
        source: None,
        // A Rollout renders the HTTP policy; TCP limits are not part of a Rollout yet.
        tcp: None,
        // Numbered by the controller when it writes the policy (`with_version`).
        version: None,
        // A Rollout's Envoy route is not known here; the header is written for every variant.
        route_default: false,
    }
}

/// Suffix of the TCP policy's name: rollout `flask` renders `flask-tcp`.
pub const TCP_SUFFIX: &str = "-tcp";

/// The name of rollout `name`'s TCP policy: what `serve --dir` serves it as
/// (`/v1/policies/flask-tcp`) and the gateway's stats call it.
pub fn tcp_policy_name(name: &str) -> String {
    format!("{name}{TCP_SUFFIX}")
}

/// The TCP policy of rollout `name`: `spec.tcp` alone, no variants (so the filter runs it as
/// a network filter), named [`tcp_policy_name`]; `None` without `spec.tcp`. It depends on the
/// spec only: the same limits at every step, after an abort and after promotion.
pub fn render_tcp(name: &str, spec: &RolloutSpec) -> Option<PolicySpec> {
    Some(PolicySpec {
        name: tcp_policy_name(name),
        tcp: Some(spec.tcp.as_ref()?.to_policy()),
        ..PolicySpec::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Phase;
    use crate::testdata::seed;
    use rollgate_policy::policy::Policy;

    fn status(weight: f64, header: Option<&str>) -> RolloutStatus {
        RolloutStatus {
            phase: Phase::Progressing,
            canary_weight: weight,
            header_route: header.map(str::to_string),
            ..RolloutStatus::default()
        }
    }

    #[test]
    fn seed_with_header_route_and_half_split_is_the_seed_policy() {
        let plan = seed();
        let p = render(
            "flask",
            &plan.spec,
            &status(50.0, Some("Headers(`location`, `shenzhen`)")),
        );
        let seed_policy = rollgate_policy::policy::parse_spec(
            std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../examples/policy.json"
            ))
            .unwrap()
            .as_slice(),
        )
        .unwrap();
        // The seed policy's routing, plus the rollout's rate limit and breaker.
        assert_eq!(p.routes, seed_policy.routes);
        assert_eq!(p.variants, seed_policy.variants);
        assert_eq!(p.default, seed_policy.default);
        assert_eq!(p.rate_limits.len(), 1);
        assert_eq!(p.rate_limits[0].average, 500.0);
        assert_eq!(p.rate_limits[0].burst, Some(1000));
        assert_eq!(
            p.circuit_breakers[0].fallback_variant.as_deref(),
            Some("stable")
        );
        Policy::compile(p).unwrap();
    }

    #[test]
    fn without_header_route_the_split_follows_fixed_routes() {
        let plan = seed();
        let p = render("flask", &plan.spec, &status(0.0, None));
        assert_eq!(p.routes.len(), 2);
        assert_eq!(p.routes[0].variant.as_deref(), Some("dev"));
        assert_eq!(p.routes[1].rule.as_deref(), Some("Host(`pro.coding`)"));
        assert_eq!(p.routes[1].split.as_ref().unwrap()[0].weight, 0.0);
        assert_eq!(
            p.routes[1].sticky.as_ref().unwrap().header.as_deref(),
            Some("x-user-id")
        );
        let json = serde_json::to_string(&p).unwrap();
        assert!(
            json.contains(r#""split":[{"variant":"canary","weight":0.0}]"#),
            "{json}"
        );
        Policy::compile(p).unwrap();
    }

    #[test]
    fn full_weight_and_custom_variants_and_headers() {
        let mut spec = seed().spec;
        spec.stable_variant = "v1".into();
        spec.canary_variant = "v2".into();
        spec.variants = [("v1", "c1"), ("v2", "c2")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        spec.routes.clear();
        spec.circuit_breakers.clear();
        spec.rule = None;
        spec.cluster_header = Some("x-cluster".into());
        spec.expose_variant = true;
        let p = render(
            "svc",
            &spec,
            &status(100.0, Some("Cookie(`beta`) || Query(`beta`)")),
        );
        assert_eq!(p.name, "svc");
        assert_eq!(p.default.as_deref(), Some("v1"));
        assert_eq!(
            p.routes[0].rule.as_deref(),
            Some("Cookie(`beta`) || Query(`beta`)")
        );
        assert_eq!(p.routes[0].variant.as_deref(), Some("v2"));
        assert_eq!(p.routes[1].rule, None);
        assert_eq!(p.routes[1].split.as_ref().unwrap()[0].weight, 100.0);
        assert_eq!(p.cluster_header, "x-cluster");
        assert_eq!(p.variant_header, DEFAULT_VARIANT_HEADER);
        assert!(p.expose_variant);
        Policy::compile(p).unwrap();
    }

    #[test]
    fn the_rendered_text_passes_the_filters_acceptance_or_is_refused() {
        let plan = seed();
        let json = accept_rendered(&render("flask", &plan.spec, &status(10.0, None))).unwrap();
        let served = accept_policy(json.as_bytes()).unwrap();
        assert_eq!(served.spec.routes.len(), 2);
        // Every part within its own limit, the whole beyond the filter's document limit: only
        // the text says so, and it is refused rather than served.
        let mut spec = plan.spec;
        let rule = format!("Host(`{}`)", "a".repeat(60 << 10));
        spec.rule = Some(rule);
        spec.routes.clear();
        spec.circuit_breakers.clear();
        let mut p = render("flask", &spec, &status(10.0, Some("Cookie(`beta`)")));
        for _ in 0..20 {
            p.routes.push(p.routes[1].clone());
        }
        Policy::compile(p.clone()).unwrap();
        let e = accept_rendered(&p).unwrap_err().to_string();
        assert!(
            e.starts_with("the document may be at most 1048576 bytes"),
            "{e}"
        );
    }

    #[test]
    fn tcp_limits_are_a_policy_of_their_own_the_same_at_every_step() {
        let mut spec = seed().spec;
        assert_eq!(render_tcp("flask", &spec), None);
        let http = render("flask", &spec, &status(10.0, None));
        spec.tcp = Some(
            serde_yaml::from_str(
                "{allow: [10.0.0.0/8], inFlight: {perSource: 3}, rate: {average: 20, burst: 5}}",
            )
            .unwrap(),
        );
        // The HTTP policy is not touched: byte for byte what it was without `tcp`.
        let with_tcp = render("flask", &spec, &status(10.0, None));
        assert_eq!(
            accept_rendered(&with_tcp).unwrap(),
            accept_rendered(&http).unwrap()
        );
        let tcp = render_tcp("flask", &spec).unwrap();
        let json = accept_rendered(&tcp).unwrap();
        assert_eq!(
            json,
            r#"{"name":"flask-tcp","variants":{},"routes":[],"cluster_header":"x-rollgate-cluster","variant_header":"x-rollgate-variant","tcp":{"allow":["10.0.0.0/8"],"in_flight":{"per_source":3},"rate":{"average":20.0,"period":"1s","burst":5}}}"#
        );
        // What the filter makes of it: a network filter's policy.
        let served = accept_policy(json.as_bytes()).unwrap();
        assert!(served.network_only());
        assert_eq!(served.tcp.as_ref().unwrap().per_source, Some(3));
        // Nothing in it depends on the status.
        let aborted = RolloutStatus {
            phase: Phase::Aborted,
            ..status(0.0, None)
        };
        let promoted = RolloutStatus {
            phase: Phase::Promoted,
            ..status(100.0, None)
        };
        for st in [aborted, promoted, status(50.0, Some("Cookie(`b`)"))] {
            assert_eq!(render("flask", &spec, &st).tcp, None);
            assert_eq!(render_tcp("flask", &spec).as_ref(), Some(&tcp));
        }
    }

    #[test]
    fn rules_join_with_the_right_precedence() {
        assert_eq!(and_rules(None, "A"), "A");
        assert_eq!(and_rules(Some("H"), "A"), "H && A");
        assert_eq!(and_rules(Some("H || I"), "A || B"), "(H || I) && (A || B)");
    }

    /// Every key of the policy a filter of the first release knew (its `policy/spec.rs`
    /// before the fleet, mirroring, TCP and acknowledgement fields, commit fea95a8). A
    /// gateway's filter refuses a key it does not know and keeps its last good policy.
    const FIRST_RELEASE_KEYS: &[&str] = &[
        "name",
        "variants",
        "default",
        "routes",
        "cluster_header",
        "variant_header",
        "expose_variant",
        "rate_limits",
        "circuit_breakers",
        "source",
        "cluster",
        "path",
        "poll",
        "wait",
        "authority",
        "match",
        "average",
        "period",
        "burst",
        "headers",
        "slots",
        "header",
        "cookie",
        "query",
        "host",
        "client_ip",
        "xff_depth",
        "variant",
        "expression",
        "check_period",
        "fallback_duration",
        "recovery_duration",
        "window",
        "response_code",
        "fallback_variant",
        "split",
        "sticky",
        "weight",
        "source_ip",
        "salt",
        "assign_cookie",
    ];

    fn keys(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    out.push(k.clone());
                    // Variant names are the user's, not fields.
                    if k != "variants" {
                        keys(v, out);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
            _ => {}
        }
    }

    /// The upgrade order the README states: a Rollout using none of the newer features
    /// (the seed's `examples/rollout.yaml`) renders, at every step, after promotion and after
    /// an abort, only keys a first-release filter knows, so gateways can be upgraded after
    /// the controller or sidecar.
    #[test]
    fn the_seed_rollout_renders_only_what_a_first_release_filter_knows() {
        use crate::{step, Event, Phase, Timestamp};
        let plan = seed();
        let now = Timestamp::now();
        let mut st = step(&plan, &RolloutStatus::default(), Event::SpecChanged, now)
            .unwrap()
            .status;
        let mut seen = Vec::new();
        let mut check = |st: &RolloutStatus| {
            let v = serde_json::to_value(render("flask", &plan.spec, st)).unwrap();
            let mut ks = Vec::new();
            keys(&v, &mut ks);
            for k in ks {
                assert!(FIRST_RELEASE_KEYS.contains(&k.as_str()), "{k} in {v}");
            }
            seen.push(st.current_step);
        };
        check(&st);
        let aborted = step(&plan, &st, Event::Abort, now).unwrap().status;
        check(&aborted);
        while st.phase != Phase::Promoted {
            st = step(&plan, &st, Event::Promote, now).unwrap().status;
            check(&st);
        }
        assert!(seen.len() >= 4, "{seen:?}");
    }
}
