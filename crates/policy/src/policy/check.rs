//! Checks that decoding and compiling of several sections share: names, header names, key
//! sources.

use super::errors::Errors;
use crate::excerpt::excerpt;
use crate::limits::MAX_NAME_BYTES;
use crate::sticky::KeySource;

/// The key sources sticky splits and rate limits share: a header, a cookie, a query parameter.
pub(super) fn request_sources(
    header: &Option<String>,
    cookie: &Option<String>,
    query: &Option<String>,
    path: &str,
    errs: &mut Errors,
) -> Vec<KeySource> {
    let mut sources = Vec::new();
    for (field, value) in [("header", header), ("cookie", cookie), ("query", query)] {
        if let Some(v) = value {
            errs.check_len(format!("{path}.{field}"), v);
        }
    }
    if let Some(h) = header {
        if !valid_header_name(h) {
            errs.push(
                format!("{path}.header"),
                format!("invalid header name '{}'", excerpt(h)),
            );
        }
        sources.push(KeySource::Header(
            h.to_ascii_lowercase().into_bytes().into(),
        ));
    }
    for (field, value) in [("cookie", cookie), ("query", query)] {
        let Some(v) = value else { continue };
        if v.is_empty() {
            errs.push(format!("{path}.{field}"), "must not be empty");
        }
        sources.push(if field == "cookie" {
            KeySource::Cookie(v.as_bytes().into())
        } else {
            KeySource::Query(v.clone())
        });
    }
    sources
}

/// An RFC 9110 `token`: what a header (or cookie) name may be.
pub(super) fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"(),/:;<=>?@[\\]{}".contains(&b))
}

/// Names end up in stat names and shared-data keys: keep them to a safe alphabet. `seen` is
/// scanned, not hashed: there are at most 64 of each kind (`crate::limits`), and a set would
/// grow the filter.
pub(super) fn check_name(name: &str, path: &str, seen: &mut Vec<String>, errs: &mut Errors) {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if name.len() > MAX_NAME_BYTES {
        errs.check_len(format!("{path}.name"), name);
    } else if !ok {
        errs.push(
            format!("{path}.name"),
            format!(
                "must be letters, digits, '-' or '_', got '{}'",
                crate::excerpt::excerpt(name)
            ),
        );
    } else if seen.iter().any(|s| s == name) {
        errs.push(
            format!("{path}.name"),
            format!("'{}' is used twice", crate::excerpt::excerpt(name)),
        );
    } else {
        seen.push(name.to_string());
    }
}
