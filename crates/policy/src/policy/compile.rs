//! Validation of a [`PolicySpec`] and its compilation into the [`Policy`] requests read.

use super::check::{request_sources, valid_header_name};
use super::errors::{Errors, PolicyError, PolicyErrors};
use super::number;
use super::spec::{MirrorSpec, PolicySpec, RouteSpec, StickySpec};
use super::{Action, Mirror, Policy, Route, Split, Sticky, Variant};
use crate::duration::parse_duration;
use crate::excerpt::{excerpt, list};
use crate::limits::{
    MAX_BREAKERS, MAX_MIRROR_BODY, MAX_MIRROR_BYTES, MAX_MIRROR_IN_FLIGHT, MAX_MIRROR_TIMEOUT_NS,
    MAX_NAME_BYTES, MAX_POLICY_BYTES, MAX_RATE_LIMITS, MAX_REGEXES, MAX_ROUTES, MAX_VARIANTS,
};
use crate::rule;
use crate::sticky::{KeySource, BUCKETS};

/// Parses policy JSON. Syntax, type and unknown-field errors name their JSON path; every
/// problem of the document is reported, not only the first.
pub fn parse_spec(json: &[u8]) -> Result<PolicySpec, PolicyErrors> {
    if json.len() > MAX_POLICY_BYTES {
        let message = format!(
            "the document may be at most {MAX_POLICY_BYTES} bytes, this one is {}",
            json.len()
        );
        return Err(PolicyErrors(vec![PolicyError {
            path: String::new(),
            message,
        }]));
    }
    // Said up front: a policy is an object, and a syntax error deep in an array would only
    // distract from that.
    if json
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b != b'{')
    {
        let message = "the configuration must be a JSON object".to_string();
        return Err(PolicyErrors(vec![PolicyError {
            path: String::new(),
            message,
        }]));
    }
    let doc = super::json::parse(json).map_err(|e| {
        PolicyErrors(vec![PolicyError {
            path: crate::excerpt::path(e.path),
            message: e.message,
        }])
    })?;
    super::decode::run(&doc)
}

impl Policy {
    /// Parses, validates and compiles policy JSON: [`super::accept_policy`].
    pub fn from_json(json: &[u8]) -> Result<Policy, PolicyErrors> {
        super::accept_policy(json)
    }

    /// Validates and compiles a parsed policy, reporting every problem found.
    pub fn compile(spec: PolicySpec) -> Result<Policy, PolicyErrors> {
        let mut errs = Errors::new();
        if spec.name.is_empty() {
            errs.push("name", "must not be empty");
        }
        errs.check_len("name", &spec.name);
        // A TCP-only policy (a network filter) routes nothing.
        if spec.variants.is_empty() && spec.tcp.is_none() {
            errs.push("variants", "must name at least one variant");
        }
        let before_counts = errs.count();
        if spec.variants.len() > MAX_VARIANTS {
            errs.push(
                "variants",
                format!(
                    "at most {MAX_VARIANTS} variants are allowed, this policy has {}",
                    spec.variants.len()
                ),
            );
        }
        errs.check_count("routes", spec.routes.len(), MAX_ROUTES, "routes");
        errs.check_count(
            "rate_limits",
            spec.rate_limits.len(),
            MAX_RATE_LIMITS,
            "rate limits",
        );
        errs.check_count(
            "circuit_breakers",
            spec.circuit_breakers.len(),
            MAX_BREAKERS,
            "circuit breakers",
        );
        if let Some(n) = spec.rule_syntax.as_deref() {
            if rule::Syntax::from_name(n).is_none() {
                errs.push("rule_syntax", format!("expected `v3` or `v2`, got `{n}`"));
            }
        }
        if errs.count() > before_counts {
            // Compiling thousands of entries only to refuse them would cost time for nothing.
            return Err(errs.into_errors());
        }
        let mut variants = Vec::with_capacity(spec.variants.len());
        for (name, cluster) in &spec.variants {
            if name.is_empty() {
                errs.push("variants", "a variant name must not be empty");
            }
            if name.len() > MAX_NAME_BYTES {
                // Not the usual `variants.<name>` path: it would repeat the whole name.
                errs.push(
                    "variants",
                    format!(
                        "a variant name may be at most {MAX_NAME_BYTES} bytes, this one is {}",
                        name.len()
                    ),
                );
                continue;
            }
            errs.check_len(format!("variants.{name}"), cluster);
            if cluster.is_empty() || cluster.bytes().any(|b| b.is_ascii_control()) {
                errs.push(
                    format!("variants.{name}"),
                    "must be a non-empty cluster name",
                );
            }
            variants.push(Variant {
                name: name.clone(),
                cluster: cluster.clone(),
            });
        }
        let known = || list(spec.variants.keys().map(String::as_str));
        // `variants` is in name order (it comes from a map): a binary search, not a scan per
        // lookup (routes × split entries × variants would be quadratic).
        let index = |name: &str| {
            variants
                .binary_search_by(|v| v.name.as_str().cmp(name))
                .ok()
        };
        let mut lookup = |path: String, name: &str, errs: &mut Errors| -> usize {
            match index(name) {
                Some(i) => i,
                None => {
                    errs.push_with(path, || {
                        format!("unknown variant '{}' (known: {})", excerpt(name), known())
                    });
                    0
                }
            }
        };
        let default = spec
            .default
            .as_deref()
            .map(|d| lookup("default".into(), d, &mut errs));
        // An empty header name means "do not write this header": plain Envoy routes on the
        // cluster header alone, Istio on the variant header alone. The filter must still write
        // one of them, or it would route nothing.
        for (field, value) in [
            ("cluster_header", &spec.cluster_header),
            ("variant_header", &spec.variant_header),
        ] {
            errs.check_len(field, value);
            if !value.is_empty() && !valid_header_name(value) {
                errs.push(field, format!("invalid header name '{}'", excerpt(value)));
            }
        }
        if spec.cluster_header.is_empty() && spec.variant_header.is_empty() {
            errs.push(
                "cluster_header",
                "must not be empty when variant_header is empty too: the filter would write no header",
            );
        } else if spec
            .cluster_header
            .eq_ignore_ascii_case(&spec.variant_header)
        {
            errs.push("variant_header", "must differ from cluster_header");
        }
        if spec.expose_variant && spec.variant_header.is_empty() {
            errs.push(
                "expose_variant",
                "needs a non-empty variant_header to return the variant in",
            );
        }
        if spec.route_default && spec.default.is_none() {
            errs.push(
                "route_default",
                "needs default: it names the variant Envoy's route sends requests without the cluster header to",
            );
        }
        if spec.route_default && spec.cluster_header.is_empty() {
            errs.push(
                "route_default",
                "needs a non-empty cluster_header (it saves writing that header)",
            );
        }
        let mut regexes_left = MAX_REGEXES;
        let mut routes = Vec::with_capacity(spec.routes.len());
        for (i, r) in spec.routes.iter().enumerate() {
            let route = compile_route(&spec, i, r, &mut errs, &mut lookup, &mut regexes_left);
            if let Some(route) = route {
                routes.push(route);
            }
        }
        let rate_limits = super::limits::compile_rate_limits(&spec, &mut errs, &mut regexes_left);
        let breakers = super::breakers::compile_breakers(&spec, &index, &mut errs);
        let tcp = super::limits::compile_tcp(&spec, &mut errs);
        errs.finish(())?;
        Ok(Policy {
            tcp,
            rate_limits,
            breakers,
            cluster_header: spec.cluster_header.to_ascii_lowercase(),
            variant_header: spec.variant_header.to_ascii_lowercase(),
            variants,
            default,
            routes,
            spec,
        })
    }
}

fn compile_route(
    spec: &PolicySpec,
    i: usize,
    r: &RouteSpec,
    errs: &mut Errors,
    lookup: &mut dyn FnMut(String, &str, &mut Errors) -> usize,
    regexes_left: &mut usize,
) -> Option<Route> {
    let at = |field: &str| format!("routes[{i}].{field}");
    let matcher = errs.rule(
        spec,
        &format!("routes[{i}]"),
        r.rule.as_deref(),
        r.rule_syntax.as_deref(),
        regexes_left,
    );
    let action = match (&r.variant, &r.split) {
        (Some(v), None) => {
            if r.sticky.is_some() {
                errs.push(at("sticky"), "only applies to a split");
            }
            if r.default.is_some() {
                errs.push(at("default"), "only applies to a split");
            }
            Action::Variant(lookup(at("variant"), v, errs))
        }
        (None, Some(split)) => {
            if split.len() > MAX_VARIANTS {
                errs.check_count(&at("split"), split.len(), MAX_VARIANTS, "split entries");
                return None;
            }
            let mut ranges = Vec::with_capacity(split.len());
            let mut end = 0u32;
            for (j, s) in split.iter().enumerate() {
                let path = format!("routes[{i}].split[{j}]");
                let v = lookup(format!("{path}.variant"), &s.variant, errs);
                let w = s.weight;
                if !(0.0..=100.0).contains(&w) || w.is_nan() {
                    errs.push(
                        format!("{path}.weight"),
                        format!("must be between 0 and 100, got {}", number::text(w)),
                    );
                    continue;
                }
                let buckets = (w * 100.0).round();
                if (buckets - w * 100.0).abs() > 1e-6 {
                    errs.push(
                        format!("{path}.weight"),
                        format!("at most two decimals, got {}", number::text(w)),
                    );
                }
                end += buckets as u32;
                ranges.push((end, v));
            }
            if end > BUCKETS {
                let total = number::text(f64::from(end) / 100.0);
                errs.push(
                    at("split"),
                    format!("weights add up to {total}, more than 100"),
                );
            }
            let default = r.default.as_deref().map(|d| lookup(at("default"), d, errs));
            let sticky = compile_sticky(spec, r.sticky.as_ref(), &at("sticky"), errs);
            Action::Split(Split {
                ranges,
                default,
                sticky,
            })
        }
        (Some(_), Some(_)) => {
            errs.push(
                format!("routes[{i}]"),
                "has both 'variant' and 'split'; give one",
            );
            return None;
        }
        (None, None) => {
            errs.push(format!("routes[{i}]"), "needs 'variant' or 'split'");
            return None;
        }
    };
    let mirror = r.mirror.as_ref().and_then(|m| {
        let v = lookup(at("mirror.variant"), &m.variant, errs);
        if r.variant.as_deref() == Some(m.variant.as_str()) {
            errs.push(
                at("mirror.variant"),
                "is the variant the route sends every request to: nothing to compare",
            );
        }
        compile_mirror(m, v, &at("mirror"), errs)
    });
    Some(Route {
        matcher,
        action,
        mirror,
    })
}

fn compile_mirror(m: &MirrorSpec, variant: usize, path: &str, errs: &mut Errors) -> Option<Mirror> {
    let n = errs.count();
    let p = m.percent;
    let buckets = (p * 100.0).round();
    if !(0.0..=100.0).contains(&p) || p.is_nan() {
        errs.push(
            format!("{path}.percent"),
            format!("must be between 0 and 100, got {}", number::text(p)),
        );
    } else if (buckets - p * 100.0).abs() > 1e-6 {
        errs.push(
            format!("{path}.percent"),
            format!("at most two decimals, got {}", number::text(p)),
        );
    }
    if m.max_body > MAX_MIRROR_BODY {
        errs.push(
            format!("{path}.max_body"),
            format!("may be at most {MAX_MIRROR_BODY} bytes, got {}", m.max_body),
        );
    }
    // Bodies are hashed as they pass, never held: the bound is the hashing work per request.
    if m.compare_body > MAX_MIRROR_BODY {
        errs.push(
            format!("{path}.compare_body"),
            format!(
                "may be at most {MAX_MIRROR_BODY} bytes, got {}",
                m.compare_body
            ),
        );
    }
    if m.max_in_flight == 0 || m.max_in_flight > MAX_MIRROR_IN_FLIGHT {
        errs.push(
            format!("{path}.max_in_flight"),
            format!(
                "must be between 1 and {MAX_MIRROR_IN_FLIGHT}, got {}",
                m.max_in_flight
            ),
        );
    } else if u64::from(m.max_body) * u64::from(m.max_in_flight) > MAX_MIRROR_BYTES {
        errs.push(
            format!("{path}.max_in_flight"),
            format!(
                "max_in_flight × max_body may be at most {MAX_MIRROR_BYTES} bytes (the bodies one worker holds), got {}",
                u64::from(m.max_body) * u64::from(m.max_in_flight)
            ),
        );
    }
    errs.check_len(format!("{path}.host_suffix"), &m.host_suffix);
    // It becomes part of a host name: the characters a DNS label or a registered name may hold.
    if !m
        .host_suffix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    {
        errs.push(
            format!("{path}.host_suffix"),
            format!(
                "may hold letters, digits, '-', '.', '_' and '~' only, got '{}'",
                excerpt(&m.host_suffix)
            ),
        );
    }
    let timeout_ns = match parse_duration(&m.timeout) {
        Ok(0) => {
            errs.push(format!("{path}.timeout"), "must be longer than 0");
            0
        }
        Ok(ns) if ns > MAX_MIRROR_TIMEOUT_NS => {
            errs.push(format!("{path}.timeout"), "may be at most 1m");
            0
        }
        Ok(ns) => ns,
        Err(e) => {
            errs.push(format!("{path}.timeout"), e);
            0
        }
    };
    (errs.count() == n).then(|| Mirror {
        variant,
        buckets: buckets as u32,
        max_body: m.max_body as usize,
        max_in_flight: m.max_in_flight,
        host_suffix: m.host_suffix.clone(),
        timeout_ns,
        compare_body: m.compare_body as usize,
    })
}

fn compile_sticky(
    spec: &PolicySpec,
    s: Option<&StickySpec>,
    path: &str,
    errs: &mut Errors,
) -> Sticky {
    let default_salt = || spec.name.as_bytes().into();
    let Some(s) = s else {
        return Sticky {
            key: KeySource::SourceIp {
                xff_depth: None,
                ipv6_prefix: None,
            },
            salt: default_salt(),
            assign_cookie: None,
        };
    };
    let mut sources = request_sources(&s.header, &s.cookie, &s.query, path, errs);
    if let Some(ip) = &s.source_ip {
        sources.push(KeySource::SourceIp {
            xff_depth: ip.xff_depth,
            ipv6_prefix: None,
        });
    }
    if sources.len() > 1 {
        errs.push(
            path,
            "give exactly one of 'header', 'cookie', 'query', 'source_ip'",
        );
    }
    if let Some(salt) = &s.salt {
        errs.check_len(format!("{path}.salt"), salt);
    }
    if let Some(name) = &s.assign_cookie {
        errs.check_len(format!("{path}.assign_cookie"), name);
        // A cookie name is an RFC 6265 token, as a header name is (RFC 9110 `token`).
        if !valid_header_name(name) {
            errs.push(
                format!("{path}.assign_cookie"),
                format!("invalid cookie name '{}'", excerpt(name)),
            );
        }
    }
    let key = sources.into_iter().next().unwrap_or(KeySource::SourceIp {
        xff_depth: None,
        ipv6_prefix: None,
    });
    let salt = s
        .salt
        .as_ref()
        .map_or_else(default_salt, |salt| salt.as_bytes().into());
    Sticky {
        key,
        salt,
        assign_cookie: s.assign_cookie.clone(),
    }
}
