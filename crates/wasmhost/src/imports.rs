//! The bodies of the `env.proxy_*` host functions of ABI 0.2.1 (registered in
//! [`super::linker`]: the whole set Envoy registers), with
//! Envoy's status codes and buffer conventions: returned data is allocated through the
//! guest's allocator, and an empty result is written as pointer 0 / length 0.

use wasmtime::Caller;

use super::maps::Headers;
use super::metrics::{MetricKind, Refusal, ID_INCREMENT, TYPE_MASK};
use super::shared::{lock, QueueOwner};
use super::vm::{Callback, Callout, VmState, ROOT_CONTEXT_ID};
use super::{HttpCall, HttpCallRecord, LocalResponse, LogLevel, Status};

/// How a host function ends: a status for the guest, or a trap (the guest's allocator
/// trapped, or the guest asked to exit).
pub(crate) enum Fail {
    Status(Status),
    Trap(wasmtime::Error),
}

impl From<Status> for Fail {
    fn from(s: Status) -> Fail {
        Fail::Status(s)
    }
}

impl From<wasmtime::Error> for Fail {
    fn from(e: wasmtime::Error) -> Fail {
        Fail::Trap(e)
    }
}

pub(crate) type R<T> = Result<T, Fail>;

/// The i32 a host function returns.
pub(crate) fn finish(r: R<()>) -> wasmtime::Result<i32> {
    match r {
        Ok(()) => Ok(Status::Ok as i32),
        Err(Fail::Status(s)) => Ok(s as i32),
        Err(Fail::Trap(e)) => Err(e),
    }
}

/// Guest pointers and sizes are u32 carried in i32s.
pub(crate) fn u(v: i32) -> usize {
    v as u32 as usize
}

pub(crate) fn read(c: &mut Caller<'_, VmState>, ptr: i32, len: i32) -> R<Vec<u8>> {
    let mem = c.data().memory.ok_or(Status::InternalFailure)?;
    let data = mem.data(&*c);
    let (start, len) = (u(ptr), u(len));
    data.get(start..start.checked_add(len).ok_or(Status::InvalidMemoryAccess)?)
        .map(<[u8]>::to_vec)
        .ok_or(Fail::Status(Status::InvalidMemoryAccess))
}

pub(crate) fn write(c: &mut Caller<'_, VmState>, ptr: i32, bytes: &[u8]) -> R<()> {
    let mem = c.data().memory.ok_or(Status::InternalFailure)?;
    let start = u(ptr);
    let end = start
        .checked_add(bytes.len())
        .ok_or(Status::InvalidMemoryAccess)?;
    mem.data_mut(&mut *c)
        .get_mut(start..end)
        .ok_or(Status::InvalidMemoryAccess)?
        .copy_from_slice(bytes);
    Ok(())
}

pub(crate) fn write_u32(c: &mut Caller<'_, VmState>, ptr: i32, v: u32) -> R<()> {
    write(c, ptr, &v.to_le_bytes())
}

pub(crate) fn write_u64(c: &mut Caller<'_, VmState>, ptr: i32, v: u64) -> R<()> {
    write(c, ptr, &v.to_le_bytes())
}

/// Copies `bytes` into memory the guest allocator hands out and writes pointer and size.
/// Nothing is allocated for no bytes: pointer 0, size 0 (cpp-host `copyToPointerSize`).
pub(crate) fn copy_out(
    c: &mut Caller<'_, VmState>,
    bytes: &[u8],
    ptr_ptr: i32,
    size_ptr: i32,
) -> R<()> {
    if bytes.is_empty() {
        write_u32(c, ptr_ptr, 0)?;
        return write_u32(c, size_ptr, 0);
    }
    let alloc = c.data().alloc.clone().ok_or(Status::InternalFailure)?;
    let len = i32::try_from(bytes.len()).map_err(|_| Status::InvalidMemoryAccess)?;
    let ptr = alloc.call(&mut *c, len)?;
    if ptr == 0 {
        return Err(Status::InvalidMemoryAccess.into());
    }
    write(c, ptr, bytes)?;
    write_u32(c, ptr_ptr, ptr as u32)?;
    write_u32(c, size_ptr, bytes.len() as u32)
}

/// The header map `map_type` of the current context, if the ABI may touch it now. Envoy
/// answers BadArgument outside a map's phase, and NotFound for a missing map in `on_log`.
pub(crate) fn map_of(st: &mut VmState, map_type: i32, write: bool) -> Result<&mut Headers, Status> {
    match map_type {
        0..=3 => {}
        4 | 5 => {
            // The gRPC stream metadata being delivered (Envoy's
            // `grpc_receive_{initial,trailing}_metadata_`, null outside their callbacks, and
            // writable within them as the call response's maps are).
            return match st.grpc_metadata.as_mut() {
                Some((t, h)) if *t == map_type => Ok(h),
                _ => Err(Status::BadArgument),
            };
        }
        6 | 7 => {
            let (h, _, t) = st.call_response.as_mut().ok_or(Status::BadArgument)?;
            return Ok(if map_type == 6 { h } else { t });
        }
        _ => return Err(Status::BadArgument),
    }
    let s = st.stream().ok_or(Status::BadArgument)?;
    if s.access_log {
        if write {
            return Err(Status::BadArgument);
        }
        return match map_type {
            0 => Some(&mut s.request_headers),
            2 => s.response_headers.as_mut(),
            3 => s.response_trailers.as_mut(),
            _ => None,
        }
        .ok_or(Status::NotFound);
    }
    match map_type {
        0 if s.open_request_headers => Ok(&mut s.request_headers),
        1 if s.open_request_trailers => s.request_trailers.as_mut().ok_or(Status::BadArgument),
        2 if s.open_response_headers => s.response_headers.as_mut().ok_or(Status::BadArgument),
        3 if s.open_response_trailers => s.response_trailers.as_mut().ok_or(Status::BadArgument),
        _ => Err(Status::BadArgument),
    }
}

/// After a request-header mutation Envoy clears the route cache (ABI ≤ 0.2.1).
pub(crate) fn request_headers_modified(st: &mut VmState, map_type: i32) {
    if map_type == 0 {
        if let Some(s) = st.stream() {
            s.route_cache_clears += 1;
        }
    }
}

/// A buffer as `proxy_get_buffer_bytes` sees it.
pub(crate) enum Buf<'a> {
    Mutable(&'a mut Vec<u8>),
    Const(Vec<u8>),
}

impl Buf<'_> {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Buf::Mutable(b) => b,
            Buf::Const(b) => b,
        }
    }
}

pub(crate) fn buffer_of(st: &mut VmState, buffer_type: i32) -> Result<Buf<'_>, Status> {
    match buffer_type {
        0 | 1 => {
            let s = st.stream().ok_or(Status::NotFound)?;
            match buffer_type {
                0 if s.open_request_body => Ok(Buf::Mutable(&mut s.request_body)),
                1 if s.open_response_body => Ok(Buf::Mutable(&mut s.response_body)),
                _ => Err(Status::NotFound),
            }
        }
        4 => st
            .call_response
            .as_ref()
            .map(|(_, body, _)| Buf::Const(body.clone()))
            .ok_or(Status::NotFound),
        5 => st
            .grpc_receive
            .as_ref()
            .map(|m| Buf::Const(m.clone()))
            .ok_or(Status::NotFound),
        6 => Ok(Buf::Const(st.plugin.config.vm_configuration.clone())),
        // The plugin configuration is only handed out while on_configure runs (Envoy's
        // `temp_plugin_`).
        7 if st.callback == Callback::Configure => {
            Ok(Buf::Const(st.plugin.config.configuration.clone()))
        }
        2 | 3 => {
            let s = st.stream().ok_or(Status::NotFound)?;
            match buffer_type {
                2 if s.open_downstream_data => Ok(Buf::Mutable(&mut s.downstream_data)),
                3 if s.open_upstream_data => Ok(Buf::Mutable(&mut s.upstream_data)),
                _ => Err(Status::NotFound),
            }
        }
        7 | 8 => Err(Status::NotFound),
        _ => Err(Status::BadArgument),
    }
}

pub(crate) fn log(c: &mut Caller<'_, VmState>, level: i32, ptr: i32, len: i32) -> R<()> {
    let level = LogLevel::from_abi(level as u32).ok_or(Status::BadArgument)?;
    let message = String::from_utf8_lossy(&read(c, ptr, len)?).into_owned();
    c.data_mut().log(level, message);
    Ok(())
}

pub(crate) fn get_buffer_bytes(
    c: &mut Caller<'_, VmState>,
    t: i32,
    start: i32,
    max: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> R<()> {
    let data = {
        let st = c.data_mut();
        let buf = buffer_of(st, t)?;
        let bytes = buf.bytes();
        let start = u(start).min(bytes.len());
        let end = start.saturating_add(u(max)).min(bytes.len());
        bytes[start..end].to_vec()
    };
    copy_out(c, &data, ptr_ptr, size_ptr)
}

pub(crate) fn set_buffer_bytes(
    c: &mut Caller<'_, VmState>,
    t: i32,
    start: i32,
    size: i32,
    ptr: i32,
    len: i32,
) -> R<()> {
    let data = read(c, ptr, len)?;
    let st = c.data_mut();
    let Buf::Mutable(buf) = buffer_of(st, t)? else {
        return Err(Status::BadArgument.into());
    };
    // Envoy's Buffer::copyFrom: prepend, replace everything, or append; nothing else.
    let (start, size) = (u(start), u(size));
    if start == 0 && size == 0 {
        buf.splice(0..0, data);
    } else if start == 0 && size >= buf.len() {
        *buf = data;
    } else if start >= buf.len() {
        buf.extend_from_slice(&data);
    } else {
        return Err(Status::BadArgument.into());
    }
    Ok(())
}

pub(crate) fn get_map_pairs(
    c: &mut Caller<'_, VmState>,
    t: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> R<()> {
    let bytes = map_of(c.data_mut(), t, false)?.serialize();
    copy_out(c, &bytes, ptr_ptr, size_ptr)
}

pub(crate) fn set_map_pairs(c: &mut Caller<'_, VmState>, t: i32, ptr: i32, len: i32) -> R<()> {
    let pairs = Headers::deserialize(&read(c, ptr, len)?);
    let st = c.data_mut();
    let map = map_of(st, t, true)?;
    *map = Headers::new();
    for (k, v) in pairs.pairs() {
        map.add(k, v);
    }
    request_headers_modified(st, t);
    Ok(())
}

pub(crate) fn get_map_value(
    c: &mut Caller<'_, VmState>,
    t: i32,
    kp: i32,
    kl: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> R<()> {
    let key = read(c, kp, kl)?;
    let value = {
        let map = map_of(c.data_mut(), t, false)?;
        // Envoy returns the first value only.
        map.pairs()
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&key))
            .map(|(_, v)| v.clone())
            .ok_or(Status::NotFound)?
    };
    copy_out(c, &value, ptr_ptr, size_ptr)
}

pub(crate) fn edit_map_value(
    c: &mut Caller<'_, VmState>,
    t: i32,
    kp: i32,
    kl: i32,
    value: Option<(i32, i32, bool)>,
) -> R<()> {
    let key = read(c, kp, kl)?;
    let value = match value {
        Some((vp, vl, add)) => Some((read(c, vp, vl)?, add)),
        None => None,
    };
    let st = c.data_mut();
    let map = map_of(st, t, true)?;
    match value {
        Some((v, true)) => map.add(&key, v),
        Some((v, false)) => map.replace(&key, v),
        None => map.remove(&key),
    }
    request_headers_modified(st, t);
    Ok(())
}

pub(crate) fn get_shared_data(
    c: &mut Caller<'_, VmState>,
    kp: i32,
    kl: i32,
    ptr_ptr: i32,
    size_ptr: i32,
    cas_ptr: i32,
) -> R<()> {
    let key = read(c, kp, kl)?;
    let (value, cas) = {
        let st = c.data();
        lock(&st.process.shared)
            .get(&st.plugin.config.vm_id, &key)
            .ok_or(Status::NotFound)?
    };
    copy_out(c, &value, ptr_ptr, size_ptr)?;
    write_u32(c, cas_ptr, cas)
}

pub(crate) fn set_shared_data(
    c: &mut Caller<'_, VmState>,
    kp: i32,
    kl: i32,
    vp: i32,
    vl: i32,
    cas: i32,
) -> R<()> {
    let key = read(c, kp, kl)?;
    let value = read(c, vp, vl)?;
    let st = c.data();
    lock(&st.process.shared)
        .set(&st.plugin.config.vm_id, &key, &value, cas as u32)
        .map(|_| ())
        .map_err(|_| Status::CasMismatch.into())
}

pub(crate) fn register_queue(c: &mut Caller<'_, VmState>, np: i32, nl: i32, id_ptr: i32) -> R<()> {
    let name = read(c, np, nl)?;
    let id = {
        let st = c.data();
        let owner = QueueOwner {
            plugin: st.plugin.id,
            worker: st.worker,
            generation: st.generation,
            context_id: ROOT_CONTEXT_ID,
        };
        lock(&st.process.shared).register_queue(&st.plugin.config.vm_id, &name, owner)
    };
    write_u32(c, id_ptr, id)
}

pub(crate) fn resolve_queue(
    c: &mut Caller<'_, VmState>,
    vp: i32,
    vl: i32,
    np: i32,
    nl: i32,
    id_ptr: i32,
) -> R<()> {
    let vm_id = String::from_utf8_lossy(&read(c, vp, vl)?).into_owned();
    let name = read(c, np, nl)?;
    let id = lock(&c.data().process.shared)
        .resolve_queue(&vm_id, &name)
        .ok_or(Status::NotFound)?;
    write_u32(c, id_ptr, id)
}

pub(crate) fn dequeue(c: &mut Caller<'_, VmState>, id: i32, ptr_ptr: i32, size_ptr: i32) -> R<()> {
    let item = lock(&c.data().process.shared)
        .dequeue(id as u32)
        .map_err(|()| Status::NotFound)?
        .ok_or(Status::Empty)?;
    copy_out(c, &item, ptr_ptr, size_ptr)
}

pub(crate) fn enqueue(c: &mut Caller<'_, VmState>, id: i32, vp: i32, vl: i32) -> R<()> {
    let value = read(c, vp, vl)?;
    if lock(&c.data().process.shared).enqueue(id as u32, &value) {
        Ok(())
    } else {
        Err(Status::NotFound.into())
    }
}

pub(crate) fn continue_stream(c: &mut Caller<'_, VmState>, stream_type: i32) -> R<()> {
    match stream_type {
        0 | 1 => {
            if let Some(s) = c.data_mut().stream() {
                if stream_type == 0 {
                    s.continue_request = true;
                } else {
                    s.continue_response = true;
                }
                // Envoy's continueStream drops the request-side pointers for either
                // direction (context.cc), so copy that.
                s.open_request_headers = false;
                s.open_request_body = false;
                s.open_request_trailers = false;
            }
            Ok(())
        }
        // Downstream: Envoy's `continueReading()` (deferred) hands the held client bytes to
        // the next filter; an HTTP context has no read-filter callbacks and nothing happens.
        2 => {
            if let Some(s) = c.data_mut().stream() {
                if s.network {
                    s.resume_downstream = true;
                }
            }
            Ok(())
        }
        3 => Err(Status::Unimplemented.into()),
        _ => Err(Status::BadArgument.into()),
    }
}

pub(crate) fn close_stream(c: &mut Caller<'_, VmState>, stream_type: i32) -> R<()> {
    match stream_type {
        0 | 1 => {
            if let Some(s) = c.data_mut().stream() {
                s.closed = true;
                s.code_details
                    .get_or_insert_with(|| "wasm_close_stream".into());
            }
            Ok(())
        }
        // Downstream: Envoy closes the connection (`Context::closeStream`, FlushWrite) when
        // the context is a network filter's; an HTTP context has no read-filter callbacks
        // there and the call does nothing.
        2 => {
            if let Some(s) = c.data_mut().stream() {
                s.downstream_closed = true;
            }
            Ok(())
        }
        3 => {
            if let Some(s) = c.data_mut().stream() {
                if s.network {
                    s.upstream_closed = true;
                }
            }
            Ok(())
        }
        _ => Err(Status::BadArgument.into()),
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn send_local_response(
    c: &mut Caller<'_, VmState>,
    status: i32,
    dp: i32,
    dl: i32,
    bp: i32,
    bl: i32,
    hp: i32,
    hl: i32,
    grpc_status: i32,
) -> R<()> {
    let details = read(c, dp, dl)?;
    let body = read(c, bp, bl)?;
    let headers = Headers::deserialize(&read(c, hp, hl)?);
    if let Some(s) = c.data_mut().stream() {
        // Envoy replaces whitespace in details (StringUtil::replaceAllEmptySpace) and sends
        // grpc-status only for a known gRPC code (the SDK passes -1 for plain HTTP).
        let details: String = String::from_utf8_lossy(&details)
            .chars()
            .map(|ch| if ch.is_whitespace() { '_' } else { ch })
            .collect();
        s.local_reply = Some(LocalResponse {
            status: status as u32,
            body,
            headers: headers
                .pairs()
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            details,
            grpc_status: (0..=16)
                .contains(&grpc_status)
                .then_some(grpc_status as u32),
        });
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn http_call(
    c: &mut Caller<'_, VmState>,
    up: i32,
    ul: i32,
    hp: i32,
    hl: i32,
    bp: i32,
    bl: i32,
    tp: i32,
    tl: i32,
    timeout_ms: i32,
    token_ptr: i32,
) -> R<()> {
    let cluster = String::from_utf8_lossy(&read(c, up, ul)?).into_owned();
    let mut headers = Headers::deserialize(&read(c, hp, hl)?);
    let body = read(c, bp, bl)?;
    let trailers = Headers::deserialize(&read(c, tp, tl)?);
    let token = {
        let st = c.data_mut();
        if !body.is_empty() {
            headers.replace("content-length", body.len().to_string());
        }
        // Envoy's `Context::httpCall` refuses, in this order, a cluster it does not have and a
        // call without `:path`, `:method` or `:authority`: BadArgument, no token. Recorded, so
        // `rollgate try` shows a call Envoy would refuse.
        let refused = !st.plugin.config.clusters.contains_key(&cluster)
            || [":path", ":method", ":authority"]
                .iter()
                .any(|h| !headers.contains(h));
        if refused {
            let timeout_ms = timeout_ms as u32;
            st.plugin.record_call(HttpCallRecord {
                call: HttpCall {
                    worker: st.worker,
                    token: 0,
                    cluster,
                    headers,
                    body,
                    trailers,
                    timeout: (timeout_ms > 0)
                        .then(|| std::time::Duration::from_millis(timeout_ms.into())),
                },
                refused: Some(Status::BadArgument),
                answer_status: None,
            });
            return Err(Status::BadArgument.into());
        }
        // Envoy 1.40 numbers a VM's HTTP calls 4, 8, 12, … (observed:
        // crates/rollgate/tests/try_like_envoy.rs, http_call_outs_like_envoys).
        let token = st.next_token;
        st.next_token = st.next_token.wrapping_add(4);
        // A timeout of 0 means none (Envoy only arms the timer for > 0).
        let timeout_ms = timeout_ms as u32;
        let deadline_ns =
            (timeout_ms > 0).then(|| st.elapsed_ns() + u64::from(timeout_ms) * 1_000_000);
        let request = HttpCall {
            worker: st.worker,
            token,
            cluster,
            headers,
            body,
            trailers,
            timeout: (timeout_ms > 0).then(|| std::time::Duration::from_millis(timeout_ms.into())),
        };
        st.plugin.record_call(HttpCallRecord {
            call: request.clone(),
            refused: None,
            answer_status: None,
        });
        st.callouts.insert(
            token,
            Callout {
                request,
                deadline_ns,
                fresh: true,
            },
        );
        token
    };
    write_u32(c, token_ptr, token)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn grpc_call(
    c: &mut Caller<'_, VmState>,
    (cp, cl): (i32, i32),
    (sp, sl): (i32, i32),
    (mp, ml): (i32, i32),
    (hp, hl): (i32, i32),
    (bp, bl): (i32, i32),
    timeout_ms: i32,
    token_ptr: i32,
) -> R<()> {
    let cluster = String::from_utf8_lossy(&read(c, cp, cl)?).into_owned();
    let service = String::from_utf8_lossy(&read(c, sp, sl)?).into_owned();
    let method = String::from_utf8_lossy(&read(c, mp, ml)?).into_owned();
    let metadata = Headers::deserialize(&read(c, hp, hl)?);
    let message = read(c, bp, bl)?;
    let token = {
        let st = c.data_mut();
        let config = &st.plugin.config;
        // Envoy 1.40 answers ParseFailure for a cluster it does not have (observed:
        // try_grpc_like_envoy.rs). A serialized GrpcService proto is not understood here.
        if !config.grpc_clusters.contains_key(&cluster) && !config.clusters.contains_key(&cluster) {
            return Err(Status::ParseFailure.into());
        }
        let token = st.next_grpc_token;
        st.next_grpc_token = st.next_grpc_token.wrapping_add(4);
        let timeout_ms = timeout_ms as u32;
        st.grpc_calls.insert(
            token,
            super::GrpcCall {
                worker: st.worker,
                token,
                cluster,
                service,
                method,
                metadata,
                message,
                timeout: (timeout_ms > 0)
                    .then(|| std::time::Duration::from_millis(timeout_ms.into())),
            },
        );
        token
    };
    write_u32(c, token_ptr, token)
}

pub(crate) fn cancel_grpc_call(st: &mut VmState, token: u32) -> Status {
    match st.grpc_calls.remove(&token) {
        Some(_) => Status::Ok,
        None => Status::NotFound,
    }
}

pub(crate) fn get_status(
    c: &mut Caller<'_, VmState>,
    code_ptr: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> R<()> {
    let (code, message) = c.data().status.clone();
    write_u32(c, code_ptr, code)?;
    copy_out(c, message.as_bytes(), ptr_ptr, size_ptr)
}

pub(crate) fn call_foreign(
    c: &mut Caller<'_, VmState>,
    np: i32,
    nl: i32,
    ap: i32,
    al: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> R<()> {
    let name = String::from_utf8_lossy(&read(c, np, nl)?).into_owned();
    let args = read(c, ap, al)?;
    let result = if name == "clear_route_cache" {
        if let Some(s) = c.data_mut().stream() {
            s.route_cache_clears += 1;
        }
        Vec::new()
    } else {
        let f = c
            .data()
            .plugin
            .config
            .foreign_functions
            .get(&name)
            .cloned()
            .ok_or(Status::NotFound)?;
        f(&args)?
    };
    copy_out(c, &result, ptr_ptr, size_ptr)
}

pub(crate) fn define_metric(
    c: &mut Caller<'_, VmState>,
    t: i32,
    np: i32,
    nl: i32,
    id_ptr: i32,
) -> R<()> {
    let kind = MetricKind::from_abi(t as u32).ok_or(Status::BadArgument)?;
    let name = String::from_utf8_lossy(&read(c, np, nl)?).into_owned();
    let id = {
        let st = c.data_mut();
        lock(&st.process.metrics).define(&name, kind);
        let slot = &mut st.next_metric_id[kind as usize];
        *slot += ID_INCREMENT;
        let id = *slot;
        st.metric_ids.insert(id, (name, kind));
        id
    };
    write_u32(c, id_ptr, id)
}

/// The metric behind `id`, if this VM defined it and its type bits say `kind`.
pub(crate) fn metric_of(st: &VmState, id: i32) -> Result<(String, MetricKind), Status> {
    let kind = MetricKind::from_abi(id as u32 & TYPE_MASK).ok_or(Status::BadArgument)?;
    st.metric_ids
        .get(&(id as u32))
        .filter(|(_, k)| *k == kind)
        .cloned()
        .ok_or(Status::NotFound)
}

pub(crate) fn refusal(r: Refusal) -> Fail {
    match r {
        Refusal::NotFound => Status::NotFound.into(),
        Refusal::BadArgument => Status::BadArgument.into(),
    }
}

pub(crate) fn increment_metric(c: &mut Caller<'_, VmState>, id: i32, offset: i64) -> R<()> {
    let st = c.data();
    if id as u32 & TYPE_MASK == MetricKind::Histogram as u32 {
        return Err(Status::BadArgument.into());
    }
    let (name, kind) = metric_of(st, id)?;
    lock(&st.process.metrics)
        .increment(&name, kind, offset)
        .map_err(refusal)
}

pub(crate) fn record_metric(c: &mut Caller<'_, VmState>, id: i32, value: i64) -> R<()> {
    let st = c.data();
    let (name, kind) = metric_of(st, id).map_err(|_| Status::NotFound)?;
    lock(&st.process.metrics)
        .record(&name, kind, value as u64)
        .map_err(refusal)
}

pub(crate) fn get_metric(c: &mut Caller<'_, VmState>, id: i32, ret: i32) -> R<()> {
    let value = {
        let st = c.data();
        if id as u32 & TYPE_MASK == MetricKind::Histogram as u32 {
            return Err(Status::BadArgument.into());
        }
        let (name, kind) = metric_of(st, id)?;
        lock(&st.process.metrics)
            .get(&name, kind)
            .map_err(refusal)?
    };
    write_u64(c, ret, value)
}
