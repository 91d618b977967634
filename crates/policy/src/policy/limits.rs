//! Validation and compilation of `rate_limits`.

use super::check::{check_name, request_sources};
use super::errors::Errors;
use super::spec::{LimitSourceSpec, PolicySpec, RateLimitSpec, SCOPE_LOCAL};
use crate::duration::{parse_duration, NANOS_PER_SEC};
use crate::murmur3::murmur3_x86_32;
use crate::ratelimit::{Global, Rate, RateLimit};
use crate::sticky::KeySource;
use crate::tcp::{Cidr, TcpLimits};

pub(super) fn compile_rate_limits(
    spec: &PolicySpec,
    errs: &mut Errors,
    regexes_left: &mut usize,
) -> Vec<RateLimit> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for (i, l) in spec.rate_limits.iter().enumerate() {
        let path = format!("rate_limits[{i}]");
        check_name(&l.name, &path, &mut seen, errs);
        if let Some(limit) = compile_one(spec, l, &path, errs, regexes_left) {
            out.push(limit);
        }
    }
    out
}

fn compile_one(
    spec: &PolicySpec,
    l: &RateLimitSpec,
    path: &str,
    errs: &mut Errors,
    regexes_left: &mut usize,
) -> Option<RateLimit> {
    let n = errs.count();
    let matcher = errs.rule(
        spec,
        path,
        l.rule.as_deref(),
        l.rule_syntax.as_deref(),
        regexes_left,
    );
    if !(l.average.is_finite() && l.average > 0.0) {
        errs.push(
            format!("{path}.average"),
            format!(
                "must be a number above 0, got {}",
                super::number::text(l.average)
            ),
        );
    }
    let period_ns = match parse_duration(&l.period) {
        Ok(0) => {
            errs.push(format!("{path}.period"), "must be longer than 0");
            0
        }
        Ok(ns) => ns,
        Err(e) => {
            errs.push(format!("{path}.period"), e);
            0
        }
    };
    let burst = l.burst.unwrap_or(1);
    if burst == 0 {
        errs.push(format!("{path}.burst"), "must be at least 1");
    }
    if l.slots == 0 || l.slots > 1 << 20 {
        errs.push(
            format!("{path}.slots"),
            format!("must be between 1 and 1048576, got {}", l.slots),
        );
    }
    let source = compile_source(l.source.as_ref(), &format!("{path}.source"), errs);
    let global = compile_global(spec, l, path, period_ns, errs);
    if errs.count() > n {
        return None;
    }
    // Everything that shapes a bucket; `match` and `headers` may change without a reset.
    // Spelled out rather than `{}`/`{:?}`: float and string `Debug` formatting are large in
    // the filter, and only the hash of this text matters.
    let shape = format!(
        "{}|{period_ns}|{burst}|{}|{}",
        l.average.to_bits(),
        key_shape(&source),
        l.slots
    );
    Some(RateLimit {
        name: l.name.clone(),
        matcher,
        rate: Rate::new(l.average, period_ns, burst),
        burst,
        source,
        headers: l.headers,
        slots: l.slots,
        config: murmur3_x86_32(shape.as_bytes(), 0),
        key_prefix: format!("rollgate/{}/rl/{}/", spec.name, l.name),
        global,
        shadow: l.shadow,
    })
}

/// Longest wait for a rate-limit service's answer a policy may ask for.
const MAX_SERVICE_TIMEOUT_NS: u64 = 10 * NANOS_PER_SEC;

/// The `global` part of limit `l`: Limitador counts whole requests in fixed windows of whole
/// seconds, so `average` and `period` must be whole and there is no `burst` (nor `slots`: the
/// service keeps the counters).
fn compile_global(
    spec: &PolicySpec,
    l: &RateLimitSpec,
    path: &str,
    period_ns: u64,
    errs: &mut Errors,
) -> Option<Global> {
    match l.scope.as_str() {
        SCOPE_LOCAL => {
            if l.service.is_some() {
                errs.push(
                    format!("{path}.service"),
                    "only a 'global' limit asks a service",
                );
            }
            return None;
        }
        "global" => {}
        other => {
            errs.push(
                format!("{path}.scope"),
                format!(
                    "must be 'local' or 'global', got '{}'",
                    crate::excerpt::excerpt(other)
                ),
            );
            return None;
        }
    }
    let Some(svc) = &l.service else {
        errs.push(
            format!("{path}.service"),
            "a global limit needs the rate-limit service: {\"cluster\": …}",
        );
        return None;
    };
    if l.burst.is_some() {
        errs.push(
            format!("{path}.burst"),
            "does not apply to a global limit: it admits 'average' requests per fixed 'period' window",
        );
    }
    if l.slots != super::spec::RateLimitSpec::default().slots {
        errs.push(
            format!("{path}.slots"),
            "does not apply to a global limit: the service keeps the counters",
        );
    }
    if l.average.fract() != 0.0 || l.average < 1.0 || l.average > u32::MAX as f64 {
        errs.push(
            format!("{path}.average"),
            format!(
                "a global limit counts whole requests: give a whole number from 1, got {}",
                super::number::text(l.average)
            ),
        );
    }
    if period_ns != 0 && !period_ns.is_multiple_of(NANOS_PER_SEC) {
        errs.push(
            format!("{path}.period"),
            "a global limit's window is whole seconds (Limitador's `seconds`), e.g. 1s, 3s, 1m",
        );
    }
    let sp = format!("{path}.service");
    if svc.cluster.is_empty() {
        errs.push(
            format!("{sp}.cluster"),
            "must name the service's Envoy cluster",
        );
    }
    errs.check_len(format!("{sp}.cluster"), &svc.cluster);
    let domain = svc.domain.clone().unwrap_or_else(|| spec.name.clone());
    if domain.is_empty() {
        errs.push(format!("{sp}.domain"), "must not be empty");
    }
    errs.check_len(format!("{sp}.domain"), &domain);
    let timeout_ns = match parse_duration(&svc.timeout) {
        Ok(ns) if ns > 0 && ns <= MAX_SERVICE_TIMEOUT_NS => ns,
        Ok(_) => {
            errs.push(
                format!("{sp}.timeout"),
                "must be longer than 0 and at most 10s",
            );
            0
        }
        Err(e) => {
            errs.push(format!("{sp}.timeout"), e);
            0
        }
    };
    let deny = match svc.failure_mode.as_str() {
        "allow" => false,
        "deny" => true,
        other => {
            errs.push(
                format!("{sp}.failure_mode"),
                format!(
                    "must be 'allow' or 'deny', got '{}'",
                    crate::excerpt::excerpt(other)
                ),
            );
            false
        }
    };
    Some(Global {
        cluster: svc.cluster.clone(),
        domain,
        timeout_ms: (timeout_ns / 1_000_000).max(1),
        deny,
        max: l.average as u64,
        window_secs: period_ns / NANOS_PER_SEC,
    })
}

/// A key source as unambiguous text, for the fingerprint of a limit's shape.
fn key_shape(k: &KeySource) -> String {
    let opt = |n: Option<u32>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
    match k {
        KeySource::Header(h) => format!("header:{}", String::from_utf8_lossy(h)),
        KeySource::Cookie(c) => format!("cookie:{}", String::from_utf8_lossy(c)),
        KeySource::Query(q) => format!("query:{q}"),
        KeySource::Host => "host".to_string(),
        KeySource::SourceIp {
            xff_depth,
            ipv6_prefix,
        } => format!("ip:{}:{}", opt(*xff_depth), opt(ipv6_prefix.map(u32::from))),
    }
}

fn compile_source(s: Option<&LimitSourceSpec>, path: &str, errs: &mut Errors) -> KeySource {
    let client = KeySource::SourceIp {
        xff_depth: None,
        ipv6_prefix: None,
    };
    let Some(s) = s else { return client };
    let mut found = request_sources(&s.header, &s.cookie, &s.query, path, errs);
    if s.host.is_some() {
        found.push(KeySource::Host);
    }
    if let Some(ip) = &s.client_ip {
        if let Some(p) = ip.ipv6_prefix.filter(|p| *p > 128) {
            errs.push(
                format!("{path}.client_ip.ipv6_prefix"),
                format!("must be 0 to 128, got {p}"),
            );
        }
        found.push(KeySource::SourceIp {
            xff_depth: ip.xff_depth,
            ipv6_prefix: ip.ipv6_prefix,
        });
    }
    if found.len() != 1 {
        errs.push(
            path,
            "give exactly one of 'header', 'cookie', 'query', 'host', 'client_ip'",
        );
    }
    found.into_iter().next().unwrap_or(client)
}

/// Validates and compiles `tcp`.
pub(super) fn compile_tcp(spec: &PolicySpec, errs: &mut Errors) -> Option<TcpLimits> {
    let t = spec.tcp.as_ref()?;
    let n = errs.count();
    let allow = t.allow.as_ref().map(|list| {
        if list.len() > MAX_ALLOW {
            errs.push(
                "tcp.allow",
                format!("at most {MAX_ALLOW} networks, this list has {}", list.len()),
            );
        }
        list.iter()
            .enumerate()
            .filter_map(|(i, c)| {
                Cidr::parse(c)
                    .map_err(|e| errs.push(format!("tcp.allow[{i}]"), e))
                    .ok()
            })
            .collect::<Vec<_>>()
    });
    let (mut per_source, mut total) = (None, None);
    if let Some(f) = &t.in_flight {
        for (field, v) in [("per_source", f.per_source), ("total", f.total)] {
            if v == Some(0) {
                errs.push(format!("tcp.in_flight.{field}"), "must be at least 1");
            }
        }
        if f.per_source.is_none() && f.total.is_none() {
            errs.push("tcp.in_flight", "give 'per_source', 'total' or both");
        }
        (per_source, total) = (f.per_source, f.total);
    }
    let key_prefix = format!("rollgate/{}/tcp/", spec.name);
    let rate = t.rate.as_ref().and_then(|r| {
        // The HTTP limit's compiler, so the two read `average`, `period`, `burst` alike.
        let as_limit = RateLimitSpec {
            name: "tcp".into(),
            average: r.average,
            period: r.period.clone(),
            burst: r.burst,
            ..RateLimitSpec::default()
        };
        let mut no_regexes = 0;
        compile_one(spec, &as_limit, "tcp.rate", errs, &mut no_regexes).map(|l| RateLimit {
            key_prefix: format!("{key_prefix}rate/"),
            ..l
        })
    });
    if errs.count() > n {
        return None;
    }
    Some(TcpLimits {
        allow,
        per_source,
        total,
        rate,
        key_prefix,
    })
}

/// Most networks in `tcp.allow`.
pub(crate) const MAX_ALLOW: usize = 1024;
