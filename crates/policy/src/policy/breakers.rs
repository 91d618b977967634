//! Validation and compilation of `circuit_breakers`.

use super::check::check_name;
use super::errors::Errors;
use super::spec::PolicySpec;
use crate::breaker::{expr, window::BUCKETS_PER_WINDOW, Breaker};
use crate::duration::parse_duration;
use crate::murmur3::murmur3_x86_32;

fn duration(text: &str, path: String, min_ns: u64, errs: &mut Errors) -> u64 {
    match parse_duration(text) {
        Ok(ns) if ns >= min_ns => ns,
        Ok(_) => {
            errs.push(
                path,
                format!(
                    "must be at least {}ms, got {}",
                    min_ns / 1_000_000,
                    crate::excerpt::excerpt(text)
                ),
            );
            min_ns
        }
        Err(e) => {
            errs.push(path, e);
            min_ns
        }
    }
}

pub(super) fn compile_breakers(
    spec: &PolicySpec,
    variant_index: &dyn Fn(&str) -> Option<usize>,
    errs: &mut Errors,
) -> Vec<Breaker> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    let known = || crate::excerpt::list(spec.variants.keys().map(String::as_str));
    for (i, b) in spec.circuit_breakers.iter().enumerate() {
        let path = format!("circuit_breakers[{i}]");
        let n = errs.count();
        check_name(&b.name, &path, &mut seen, errs);
        let mut variant = |field: &str, name: &Option<String>| {
            let name = name.as_deref()?;
            let idx = variant_index(name);
            if idx.is_none() {
                errs.push_with(format!("{path}.{field}"), || {
                    format!(
                        "unknown variant '{}' (known: {})",
                        crate::excerpt::excerpt(name),
                        known()
                    )
                });
            }
            idx
        };
        let scope = variant("variant", &b.variant);
        let fallback_variant = variant("fallback_variant", &b.fallback_variant);
        if scope.is_some() && scope == fallback_variant {
            errs.push(
                format!("{path}.fallback_variant"),
                "must differ from the guarded variant",
            );
        }
        let cond = match expr::parse(&b.expression) {
            Ok(c) => Some(c),
            Err(e) => {
                errs.push(format!("{path}.expression"), e.to_string());
                None
            }
        };
        let ms = 1_000_000;
        let check_period_ns = duration(&b.check_period, format!("{path}.check_period"), ms, errs);
        let fallback_ns = duration(
            &b.fallback_duration,
            format!("{path}.fallback_duration"),
            ms,
            errs,
        );
        let recovery_ns = duration(
            &b.recovery_duration,
            format!("{path}.recovery_duration"),
            ms,
            errs,
        );
        let window_ns = duration(&b.window, format!("{path}.window"), 10 * ms, errs);
        if !(200..=599).contains(&b.response_code) {
            errs.push(
                format!("{path}.response_code"),
                format!("must be an HTTP status 200 to 599, got {}", b.response_code),
            );
        }
        let (Some(cond), true) = (cond, errs.count() == n) else {
            continue;
        };
        // The expression's length keeps `|` inside it from making two shapes one text.
        let shape = format!(
            "{}:{}|{window_ns}|{}",
            b.expression.len(),
            b.expression,
            b.variant
                .as_ref()
                .map(|v| format!("={v}"))
                .unwrap_or_default()
        );
        out.push(Breaker {
            name: b.name.clone(),
            variant: scope,
            cond,
            check_period_ns,
            fallback_ns,
            recovery_ns,
            bucket_ns: window_ns / BUCKETS_PER_WINDOW,
            response_code: b.response_code,
            fallback_variant,
            config: murmur3_x86_32(shape.as_bytes(), 0),
            key_prefix: format!("rollgate/{}/cb/{}/", spec.name, b.name),
        });
    }
    out
}
