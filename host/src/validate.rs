//! `rollgate validate`: checks a policy file natively, without Envoy or wasm.

use rollgate_plugin::policy::{Policy, PolicyErrors};

/// Validates policy JSON; `Ok` carries a one-line summary of what it would route.
pub fn validate(json: &[u8]) -> Result<String, PolicyErrors> {
    let p = Policy::from_json(json)?;
    Ok(format!(
        "ok: policy '{}': {} variants, {} routes, default {}",
        p.spec.name,
        p.variants.len(),
        p.spec.routes.len(),
        p.spec
            .default
            .as_deref()
            .unwrap_or("(none: unmatched requests pass untouched)")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_good_and_lists_every_error() {
        let ok = validate(br#"{"name":"f","variants":{"a":"ca"},"default":"a"}"#).unwrap();
        assert_eq!(ok, "ok: policy 'f': 1 variants, 0 routes, default a");
        let err = validate(br#"{"name":"f","variants":{"a":"ca"},"default":"b","routes":[{}]}"#)
            .unwrap_err();
        assert_eq!(err.0.len(), 2);
        assert_eq!(
            err.0[0].to_string(),
            "default: unknown variant 'b' (known: a)"
        );
    }
}
