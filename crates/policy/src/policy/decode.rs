//! Decoding a parsed policy ([`Json`]) into the spec types, field by field.
//!
//! Written out by hand instead of derived: serde's derived visitors, instantiated for
//! serde_json, were the largest part of the filter's `.wasm`. Every problem is reported with
//! its JSON path, all of them at once; unknown and repeated fields are refused; absent fields
//! take the defaults the spec types document. The spec types' `Deserialize` implementations
//! (for the CLI and the controller) run this same decoder, so there is one set of rules.

use std::collections::BTreeMap;

use crate::excerpt::excerpt;

use super::errors::{Errors, PolicyErrors};
use super::json::{Json, Num};
use super::spec::{
    BreakerSpec, ClientIpSpec, Empty, LimitSourceSpec, PolicySpec, RateLimitSpec, RouteSpec,
    SourceIpSpec, SourceSpec, SplitSpec, StickySpec, DEFAULT_CLUSTER_HEADER,
    DEFAULT_VARIANT_HEADER,
};

/// A decoder of one spec type: the value, its path, where problems go.
type Decoder<T> = fn(&Json, &str, &mut Errors) -> T;

/// Runs `decode` on a whole document; any problem fails it.
pub(super) fn run<T>(v: &Json, decode: Decoder<T>) -> Result<T, PolicyErrors> {
    let mut errs = Errors::new();
    let t = decode(v, "", &mut errs);
    errs.finish(t)
}

/// Path of member `key` of the value at `path`.
fn member(path: &str, key: &str) -> String {
    let mut at = path.to_string();
    super::json::push_key(&mut at, key);
    at
}

/// What a value is, for "invalid type" messages (serde's wording).
fn kind(v: &Json) -> String {
    match v {
        Json::Null => "null".into(),
        Json::Bool(b) => format!("boolean `{b}`"),
        Json::Num(Num::Uint(n)) => format!("integer `{n}`"),
        Json::Num(Num::Int(n)) => format!("integer `{n}`"),
        Json::Num(Num::Float(x)) => format!("floating point `{}`", super::number::text(*x)),
        Json::Str(s) => format!("string \"{}\"", excerpt(s)),
        Json::Arr(_) => "sequence".into(),
        Json::Obj(_) => "map".into(),
    }
}

fn invalid_type(v: &Json, expected: &str, path: &str, errs: &mut Errors) {
    errs.push(
        path,
        format!("invalid type: {}, expected {expected}", kind(v)),
    );
}

/// Calls `field` for each member of the object `v` whose key is in `fields`; reports unknown
/// and repeated keys, then required ones that are missing. `required` are indices in `fields`.
fn object(
    v: &Json,
    path: &str,
    fields: &[&str],
    required: &[usize],
    errs: &mut Errors,
    field: &mut dyn FnMut(&str, &Json, &str, &mut Errors),
) {
    let Json::Obj(members) = v else {
        invalid_type(v, "an object", path, errs);
        return;
    };
    let mut seen = 0u32;
    for (key, value) in members {
        let at = member(path, key);
        match fields.iter().position(|f| f == key) {
            Some(i) if seen & (1 << i) != 0 => {
                errs.push(at, format!("duplicate field `{}`", excerpt(key)))
            }
            Some(i) => {
                seen |= 1 << i;
                field(key, value, &at, errs);
            }
            None if fields.is_empty() => {
                errs.push(
                    at,
                    format!("unknown field `{}`, there are no fields", excerpt(key)),
                );
            }
            None => {
                let expected = fields
                    .iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                errs.push(
                    at,
                    format!(
                        "unknown field `{}`, expected one of {expected}",
                        excerpt(key)
                    ),
                );
            }
        }
    }
    for &i in required {
        if seen & (1 << i) == 0 {
            let name = fields.get(i).copied().unwrap_or_default();
            errs.push(path, format!("missing field `{name}`"));
        }
    }
}

fn string(v: &Json, path: &str, errs: &mut Errors) -> String {
    match v {
        Json::Str(s) => s.clone(),
        _ => {
            invalid_type(v, "a string", path, errs);
            String::new()
        }
    }
}

fn boolean(v: &Json, path: &str, errs: &mut Errors) -> bool {
    match v {
        Json::Bool(b) => *b,
        _ => {
            invalid_type(v, "a boolean", path, errs);
            false
        }
    }
}

fn number(v: &Json, path: &str, errs: &mut Errors) -> f64 {
    match v {
        Json::Num(n) => n.as_f64(),
        _ => {
            invalid_type(v, "a number", path, errs);
            0.0
        }
    }
}

/// An integer from 0 to `max` (serde's rules: a float, even `1.0`, is not an integer).
fn uint(v: &Json, max: u64, path: &str, errs: &mut Errors) -> u64 {
    match v {
        Json::Num(Num::Uint(n)) if *n <= max => *n,
        Json::Num(Num::Uint(_) | Num::Int(_)) => {
            errs.push(
                path,
                format!(
                    "invalid value: {}, expected an integer from 0 to {max}",
                    kind(v)
                ),
            );
            0
        }
        _ => {
            invalid_type(v, "an integer", path, errs);
            0
        }
    }
}

fn u8_(v: &Json, path: &str, errs: &mut Errors) -> u8 {
    u8::try_from(uint(v, u8::MAX.into(), path, errs)).unwrap_or_default()
}

fn u16_(v: &Json, path: &str, errs: &mut Errors) -> u16 {
    u16::try_from(uint(v, u16::MAX.into(), path, errs)).unwrap_or_default()
}

fn u32_(v: &Json, path: &str, errs: &mut Errors) -> u32 {
    u32::try_from(uint(v, u32::MAX.into(), path, errs)).unwrap_or_default()
}

fn u64_(v: &Json, path: &str, errs: &mut Errors) -> u64 {
    uint(v, u64::MAX, path, errs)
}

/// An optional field: `null` is the same as absent (as serde reads `Option`).
fn opt<T>(v: &Json, path: &str, errs: &mut Errors, decode: Decoder<T>) -> Option<T> {
    match v {
        Json::Null => None,
        _ => Some(decode(v, path, errs)),
    }
}

fn list<T>(v: &Json, path: &str, errs: &mut Errors, decode: Decoder<T>) -> Vec<T> {
    let Json::Arr(items) = v else {
        invalid_type(v, "a sequence", path, errs);
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| decode(item, &format!("{path}[{i}]"), errs))
        .collect()
}

/// `variants`: names to cluster names. A name given twice is refused, not silently replaced.
fn string_map(v: &Json, path: &str, errs: &mut Errors) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let Json::Obj(members) = v else {
        invalid_type(v, "an object", path, errs);
        return map;
    };
    for (key, value) in members {
        let at = member(path, key);
        let value = string(value, &at, errs);
        if map.insert(key.clone(), value).is_some() {
            errs.push(at, format!("duplicate key `{}`", excerpt(key)));
        }
    }
    map
}

/// Decodes a whole policy (or filter configuration).
pub(super) fn policy(v: &Json, path: &str, errs: &mut Errors) -> PolicySpec {
    let mut p = PolicySpec {
        name: String::new(),
        variants: BTreeMap::new(),
        default: None,
        routes: Vec::new(),
        cluster_header: DEFAULT_CLUSTER_HEADER.to_string(),
        variant_header: DEFAULT_VARIANT_HEADER.to_string(),
        expose_variant: false,
        rate_limits: Vec::new(),
        circuit_breakers: Vec::new(),
        source: None,
        rule_syntax: None,
    };
    let fields = [
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
        "rule_syntax",
    ];
    object(
        v,
        path,
        &fields,
        &[],
        errs,
        &mut |key, v, at, errs| match key {
            "name" => p.name = string(v, at, errs),
            "variants" => p.variants = string_map(v, at, errs),
            "default" => p.default = opt(v, at, errs, string),
            "routes" => p.routes = list(v, at, errs, route),
            "cluster_header" => p.cluster_header = string(v, at, errs),
            "variant_header" => p.variant_header = string(v, at, errs),
            "expose_variant" => p.expose_variant = boolean(v, at, errs),
            "rate_limits" => p.rate_limits = list(v, at, errs, rate_limit),
            "circuit_breakers" => p.circuit_breakers = list(v, at, errs, breaker),
            "source" => p.source = opt(v, at, errs, source),
            "rule_syntax" => p.rule_syntax = opt(v, at, errs, string),
            _ => {}
        },
    );
    p
}

pub(super) fn source(v: &Json, path: &str, errs: &mut Errors) -> SourceSpec {
    let mut s = SourceSpec {
        cluster: String::new(),
        path: String::new(),
        poll: super::spec::default_poll(),
        wait: super::spec::default_wait(),
        authority: None,
    };
    let fields = ["cluster", "path", "poll", "wait", "authority"];
    object(
        v,
        path,
        &fields,
        &[0, 1],
        errs,
        &mut |key, v, at, errs| match key {
            "cluster" => s.cluster = string(v, at, errs),
            "path" => s.path = string(v, at, errs),
            "poll" => s.poll = string(v, at, errs),
            "wait" => s.wait = string(v, at, errs),
            "authority" => s.authority = opt(v, at, errs, string),
            _ => {}
        },
    );
    s
}

pub(super) fn route(v: &Json, path: &str, errs: &mut Errors) -> RouteSpec {
    let mut r = RouteSpec {
        rule: None,
        rule_syntax: None,
        variant: None,
        split: None,
        sticky: None,
        default: None,
    };
    let fields = [
        "match",
        "variant",
        "split",
        "sticky",
        "default",
        "rule_syntax",
    ];
    object(
        v,
        path,
        &fields,
        &[],
        errs,
        &mut |key, v, at, errs| match key {
            "match" => r.rule = opt(v, at, errs, string),
            "variant" => r.variant = opt(v, at, errs, string),
            "split" => r.split = opt(v, at, errs, |v, at, errs| list(v, at, errs, split)),
            "sticky" => r.sticky = opt(v, at, errs, sticky),
            "default" => r.default = opt(v, at, errs, string),
            "rule_syntax" => r.rule_syntax = opt(v, at, errs, string),
            _ => {}
        },
    );
    r
}

pub(super) fn split(v: &Json, path: &str, errs: &mut Errors) -> SplitSpec {
    let mut s = SplitSpec {
        variant: String::new(),
        weight: 0.0,
    };
    let fields = ["variant", "weight"];
    object(
        v,
        path,
        &fields,
        &[0, 1],
        errs,
        &mut |key, v, at, errs| match key {
            "variant" => s.variant = string(v, at, errs),
            "weight" => s.weight = number(v, at, errs),
            _ => {}
        },
    );
    s
}

pub(super) fn sticky(v: &Json, path: &str, errs: &mut Errors) -> StickySpec {
    let mut s = StickySpec::default();
    let fields = [
        "header",
        "cookie",
        "query",
        "source_ip",
        "salt",
        "assign_cookie",
    ];
    object(
        v,
        path,
        &fields,
        &[],
        errs,
        &mut |key, v, at, errs| match key {
            "header" => s.header = opt(v, at, errs, string),
            "cookie" => s.cookie = opt(v, at, errs, string),
            "query" => s.query = opt(v, at, errs, string),
            "source_ip" => s.source_ip = opt(v, at, errs, source_ip),
            "salt" => s.salt = opt(v, at, errs, string),
            "assign_cookie" => s.assign_cookie = opt(v, at, errs, string),
            _ => {}
        },
    );
    s
}

pub(super) fn source_ip(v: &Json, path: &str, errs: &mut Errors) -> SourceIpSpec {
    let mut s = SourceIpSpec::default();
    object(v, path, &["xff_depth"], &[], errs, &mut |_, v, at, errs| {
        s.xff_depth = opt(v, at, errs, u32_);
    });
    s
}

pub(super) fn rate_limit(v: &Json, path: &str, errs: &mut Errors) -> RateLimitSpec {
    let mut l = RateLimitSpec {
        name: String::new(),
        rule: None,
        rule_syntax: None,
        average: 0.0,
        period: super::spec::default_period(),
        burst: None,
        source: None,
        headers: false,
        slots: super::spec::default_slots(),
    };
    let fields = [
        "name",
        "average",
        "match",
        "period",
        "burst",
        "source",
        "headers",
        "slots",
        "rule_syntax",
    ];
    object(
        v,
        path,
        &fields,
        &[0, 1],
        errs,
        &mut |key, v, at, errs| match key {
            "name" => l.name = string(v, at, errs),
            "average" => l.average = number(v, at, errs),
            "match" => l.rule = opt(v, at, errs, string),
            "period" => l.period = string(v, at, errs),
            "burst" => l.burst = opt(v, at, errs, u64_),
            "source" => l.source = opt(v, at, errs, limit_source),
            "headers" => l.headers = boolean(v, at, errs),
            "slots" => l.slots = u32_(v, at, errs),
            "rule_syntax" => l.rule_syntax = opt(v, at, errs, string),
            _ => {}
        },
    );
    l
}

pub(super) fn limit_source(v: &Json, path: &str, errs: &mut Errors) -> LimitSourceSpec {
    let mut s = LimitSourceSpec::default();
    let fields = ["header", "cookie", "query", "host", "client_ip"];
    object(
        v,
        path,
        &fields,
        &[],
        errs,
        &mut |key, v, at, errs| match key {
            "header" => s.header = opt(v, at, errs, string),
            "cookie" => s.cookie = opt(v, at, errs, string),
            "query" => s.query = opt(v, at, errs, string),
            "host" => s.host = opt(v, at, errs, empty),
            "client_ip" => s.client_ip = opt(v, at, errs, client_ip),
            _ => {}
        },
    );
    s
}

pub(super) fn empty(v: &Json, path: &str, errs: &mut Errors) -> Empty {
    object(v, path, &[], &[], errs, &mut |_, _, _, _| {});
    Empty {}
}

pub(super) fn client_ip(v: &Json, path: &str, errs: &mut Errors) -> ClientIpSpec {
    let mut c = ClientIpSpec::default();
    let fields = ["xff_depth", "ipv6_prefix"];
    object(
        v,
        path,
        &fields,
        &[],
        errs,
        &mut |key, v, at, errs| match key {
            "xff_depth" => c.xff_depth = opt(v, at, errs, u32_),
            "ipv6_prefix" => c.ipv6_prefix = opt(v, at, errs, u8_),
            _ => {}
        },
    );
    c
}

pub(super) fn breaker(v: &Json, path: &str, errs: &mut Errors) -> BreakerSpec {
    let mut b = BreakerSpec {
        name: String::new(),
        variant: None,
        expression: String::new(),
        check_period: super::spec::default_check_period(),
        fallback_duration: super::spec::default_ten_seconds(),
        recovery_duration: super::spec::default_ten_seconds(),
        window: super::spec::default_ten_seconds(),
        response_code: super::spec::default_response_code(),
        fallback_variant: None,
    };
    let fields = [
        "name",
        "expression",
        "variant",
        "check_period",
        "fallback_duration",
        "recovery_duration",
        "window",
        "response_code",
        "fallback_variant",
    ];
    object(
        v,
        path,
        &fields,
        &[0, 1],
        errs,
        &mut |key, v, at, errs| match key {
            "name" => b.name = string(v, at, errs),
            "expression" => b.expression = string(v, at, errs),
            "variant" => b.variant = opt(v, at, errs, string),
            "check_period" => b.check_period = string(v, at, errs),
            "fallback_duration" => b.fallback_duration = string(v, at, errs),
            "recovery_duration" => b.recovery_duration = string(v, at, errs),
            "window" => b.window = string(v, at, errs),
            "response_code" => b.response_code = u16_(v, at, errs),
            "fallback_variant" => b.fallback_variant = opt(v, at, errs, string),
            _ => {}
        },
    );
    b
}

/// `Deserialize` for spec types through [`Json`] and this decoder: the CLI and the controller
/// (status files, the defaults of rendered policies) read policies exactly as the filter does.
/// Generic over the format, so never instantiated in the filter itself.
macro_rules! deserialize_with {
    ($($ty:ty => $decode:path),* $(,)?) => {$(
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = Json::deserialize(d)?;
                run(&v, $decode).map_err(serde::de::Error::custom)
            }
        }
    )*};
}

deserialize_with! {
    PolicySpec => policy,
    SourceSpec => source,
    RouteSpec => route,
    SplitSpec => split,
    StickySpec => sticky,
    SourceIpSpec => source_ip,
    RateLimitSpec => rate_limit,
    LimitSourceSpec => limit_source,
    Empty => empty,
    ClientIpSpec => client_ip,
    BreakerSpec => breaker,
}
