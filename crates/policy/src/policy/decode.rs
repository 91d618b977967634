//! Decoding a parsed policy ([`Json`]) into the spec types: [`Decode`] for the value types,
//! and [`object`], which the spec types' decoders (generated from their field table in
//! `spec.rs`) run.
//!
//! Ours instead of serde's derived visitors: those, instantiated for serde_json, were the
//! largest part of the filter's `.wasm`. Every problem is reported with its JSON path, all of
//! them at once; unknown and repeated fields are refused; absent fields take the defaults the
//! spec types declare. The spec types' `Deserialize` implementations (for the CLI and the
//! controller) run this same decoder, so there is one set of rules.

use std::collections::BTreeMap;

use crate::excerpt::excerpt;

use super::errors::{Errors, PolicyErrors};
use super::json::{Json, Num};

/// A type read from a JSON value: the value, its path, where problems go. A problem leaves a
/// placeholder value, so that decoding goes on and reports everything at once.
pub(super) trait Decode: Sized {
    fn decode(v: &Json, path: &str, errs: &mut Errors) -> Self;
}

/// Decodes a whole document; any problem fails it.
pub(super) fn run<T: Decode>(v: &Json) -> Result<T, PolicyErrors> {
    let mut errs = Errors::new();
    let t = T::decode(v, "", &mut errs);
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
/// and repeated keys, then required ones that are missing (`required[i]` for `fields[i]`).
pub(super) fn object(
    v: &Json,
    path: &str,
    fields: &[&str],
    required: &[bool],
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
    for (i, (name, required)) in fields.iter().zip(required).enumerate() {
        if *required && seen & (1 << i) == 0 {
            errs.push(path, format!("missing field `{name}`"));
        }
    }
}

impl Decode for String {
    fn decode(v: &Json, path: &str, errs: &mut Errors) -> String {
        match v {
            Json::Str(s) => s.clone(),
            _ => {
                invalid_type(v, "a string", path, errs);
                String::new()
            }
        }
    }
}

impl Decode for bool {
    fn decode(v: &Json, path: &str, errs: &mut Errors) -> bool {
        match v {
            Json::Bool(b) => *b,
            _ => {
                invalid_type(v, "a boolean", path, errs);
                false
            }
        }
    }
}

impl Decode for f64 {
    fn decode(v: &Json, path: &str, errs: &mut Errors) -> f64 {
        match v {
            Json::Num(n) => n.as_f64(),
            _ => {
                invalid_type(v, "a number", path, errs);
                0.0
            }
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

macro_rules! decode_uint {
    ($($t:ty),*) => {$(
        impl Decode for $t {
            fn decode(v: &Json, path: &str, errs: &mut Errors) -> $t {
                <$t>::try_from(uint(v, <$t>::MAX.into(), path, errs)).unwrap_or_default()
            }
        }
    )*};
}

decode_uint!(u8, u16, u32, u64);

/// An optional field: `null` is the same as absent (as serde reads `Option`).
impl<T: Decode> Decode for Option<T> {
    fn decode(v: &Json, path: &str, errs: &mut Errors) -> Option<T> {
        match v {
            Json::Null => None,
            _ => Some(T::decode(v, path, errs)),
        }
    }
}

impl<T: Decode> Decode for Vec<T> {
    fn decode(v: &Json, path: &str, errs: &mut Errors) -> Vec<T> {
        let Json::Arr(items) = v else {
            invalid_type(v, "a sequence", path, errs);
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| T::decode(item, &format!("{path}[{i}]"), errs))
            .collect()
    }
}

/// `variants`: names to cluster names. A name given twice is refused, not silently replaced.
impl Decode for BTreeMap<String, String> {
    fn decode(v: &Json, path: &str, errs: &mut Errors) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        let Json::Obj(members) = v else {
            invalid_type(v, "an object", path, errs);
            return map;
        };
        for (key, value) in members {
            let at = member(path, key);
            let value = String::decode(value, &at, errs);
            if map.insert(key.clone(), value).is_some() {
                errs.push(at, format!("duplicate key `{}`", excerpt(key)));
            }
        }
        map
    }
}
