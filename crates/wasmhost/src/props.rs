//! `proxy_get_property` / `proxy_set_property`: the attributes Envoy exposes (connection,
//! request, response, plugin), encoded as Envoy encodes them — strings raw, integers and
//! timestamps as 8 little-endian bytes, maps as pairs.

use super::imports::{Fail, R};
use super::maps::{serialize_pairs, Headers};
use super::vm::{StreamState, VmState};
use super::Status;

fn int(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn port_of(addr: &str) -> Option<i64> {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

/// A header map the way Envoy's CEL wrapper presents it: one entry per name, repeated
/// values joined with `,`.
fn header_map(h: &Headers) -> Vec<u8> {
    let mut merged: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (k, v) in h.pairs() {
        match merged.iter_mut().find(|(mk, _)| mk.eq_ignore_ascii_case(k)) {
            Some((_, mv)) => {
                mv.push(b',');
                mv.extend_from_slice(v);
            }
            None => merged.push((k.clone(), v.clone())),
        }
    }
    serialize_pairs(merged.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
}

fn header(h: &Headers, name: &[u8]) -> Option<Vec<u8>> {
    let values: Vec<&[u8]> = h
        .pairs()
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
        .collect();
    (!values.is_empty()).then(|| values.join(&b","[..]))
}

fn request(s: &StreamState, rest: &[&[u8]]) -> Option<Vec<u8>> {
    let h = &s.request_headers;
    let path = h.get(":path").unwrap_or_default();
    let (url_path, query) = match path.iter().position(|&b| b == b'?') {
        Some(q) => (&path[..q], &path[q + 1..]),
        None => (path, &b""[..]),
    };
    let value = match rest {
        [b"path"] => path.to_vec(),
        [b"url_path"] => url_path.to_vec(),
        [b"query"] => query.to_vec(),
        [b"host"] => h.get(":authority").or_else(|| h.get("host"))?.to_vec(),
        [b"scheme"] => h.get(":scheme").unwrap_or(b"http").to_vec(),
        [b"method"] => h.get(":method")?.to_vec(),
        [b"referer"] => header(h, b"referer")?,
        [b"useragent"] => header(h, b"user-agent")?,
        [b"id"] => header(h, b"x-request-id")?,
        [b"protocol"] => b"HTTP/1.1".to_vec(),
        [b"time"] => int(s.start_ns as i64),
        [b"headers"] => header_map(h),
        [b"headers", name] => header(h, name)?,
        _ => return None,
    };
    Some(value)
}

fn response(s: &StreamState, rest: &[&[u8]]) -> Option<Vec<u8>> {
    let h = s.response_headers.as_ref();
    let value = match rest {
        [b"code"] => {
            let code = h
                .and_then(|h| h.get(":status"))
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
                .or_else(|| s.local_reply.as_ref().map(|l| i64::from(l.status)))?;
            int(code)
        }
        [b"code_details"] => s.code_details.clone()?.into_bytes(),
        [b"headers"] => header_map(h?),
        [b"headers", name] => header(h?, name)?,
        [b"trailers"] => header_map(s.response_trailers.as_ref()?),
        _ => return None,
    };
    Some(value)
}

/// The value of the property at `path` for the current context.
pub(crate) fn get(st: &mut VmState, path: &[&[u8]]) -> R<Vec<u8>> {
    let joined = path.join(&0u8);
    let ctx = st.context();
    let stream = st.streams.get(&ctx);
    if let Some((_, v)) = stream.and_then(|s| s.given.iter().find(|(p, _)| *p == joined)) {
        return Ok(v.clone());
    }
    let config = &st.plugin.config;
    if let Some((_, v)) = config.properties.iter().find(|(p, _)| *p == joined) {
        return Ok(v.clone());
    }
    let value = match path {
        [b"plugin_name"] => Some(config.name.clone().into_bytes()),
        [b"plugin_root_id"] => Some(config.root_id.clone().into_bytes()),
        [b"plugin_vm_id"] => Some(config.vm_id.clone().into_bytes()),
        [b"source", b"address"] => stream
            .and_then(|s| s.source.clone())
            .map(String::into_bytes),
        [b"source", b"port"] => stream
            .and_then(|s| s.source.as_deref().and_then(port_of))
            .map(int),
        [b"destination", b"address"] => stream.map(|_| config.destination.clone().into_bytes()),
        [b"destination", b"port"] => stream.and_then(|_| port_of(&config.destination)).map(int),
        [b"connection", b"id"] | [b"connection_id"] => stream.map(|_| int(i64::from(ctx))),
        [b"connection", b"mtls"] => stream.map(|_| vec![0]),
        [b"request", rest @ ..] => stream.and_then(|s| request(s, rest)),
        [b"response", rest @ ..] => stream.and_then(|s| response(s, rest)),
        _ => None,
    };
    if let Some(v) = value {
        return Ok(v);
    }
    // What the plugin stored with proxy_set_property (Envoy's `wasm.`-prefixed filter state).
    // Envoy stores the whole path as one key but looks a read up by its first segment alone
    // (then walks into structured values, which a set never makes): a value set at a path of
    // two or more segments is never read back (observed against Envoy 1.40:
    // crates/rollgate/tests/try_like_envoy.rs, properties_read_like_envoys).
    if joined.contains(&0) {
        return Err(Fail::Status(Status::NotFound));
    }
    let overlay = match st.streams.get(&ctx) {
        Some(s) => s.properties.get(&joined),
        None => st.root_properties.get(&joined),
    };
    overlay.cloned().ok_or(Fail::Status(Status::NotFound))
}

/// Stores a property for the current context (stream, or root).
pub(crate) fn set(st: &mut VmState, path: Vec<u8>, value: Vec<u8>) {
    let ctx = st.context();
    match st.streams.get_mut(&ctx) {
        Some(s) => {
            s.properties.insert(path, value);
        }
        None => {
            st.root_properties.insert(path, value);
        }
    }
}
