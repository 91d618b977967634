//! Host calls the filter makes, wrapped so the rest reads like plain Rust.

use std::net::{IpAddr, SocketAddr};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{LogLevel, MetricType, Status};

use rollgate_policy::pipeline::Host;
use rollgate_policy::store::{SharedStore, StoreError};

/// Logs at `level`; logging never fails a request.
pub fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

/// The host's clock in nanoseconds since the Unix epoch (0 if unavailable).
pub fn now_ns() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Proxy-wasm shared data: one store for every worker VM of this plugin.
pub struct EnvoyStore;

/// The pipeline's host: each method is the one host call of the function it names.
impl Host for EnvoyStore {
    fn now_ns(&self) -> u64 {
        now_ns()
    }

    fn client_addr(&self) -> Option<IpAddr> {
        client_addr()
    }

    fn response_flags(&self) -> u64 {
        response_flags()
    }

    fn increment(&self, id: u32, n: i64) {
        increment(id, n)
    }

    fn record(&self, id: u32, value: u64) {
        record(id, value)
    }
}

impl SharedStore for EnvoyStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(v), Some(cas))) if !v.is_empty() => Some((v, cas)),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let cas = (cas != 0).then_some(cas);
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(_) => Err(StoreError::Failed),
        }
    }
}

/// Defines a metric; 0 (never a valid id in Envoy) when the host refuses.
pub fn define(kind: MetricType, name: &str) -> u32 {
    hostcalls::define_metric(kind, name).unwrap_or(0)
}

/// Adds `n` to a counter or gauge.
pub fn increment(id: u32, n: i64) {
    if id != 0 {
        let _ = hostcalls::increment_metric(id, n);
    }
}

/// Sets a gauge or records a histogram value.
pub fn record(id: u32, value: u64) {
    if id != 0 {
        let _ = hostcalls::record_metric(id, value);
    }
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_get_status(
        return_code: *mut u32,
        return_message_data: *mut *mut u8,
        return_message_size: *mut usize,
    ) -> u32;
}

/// A buffer the host fills for one call: `call` gets the out-pointers and returns the
/// host's status; empty on any failure.
fn host_buffer(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Vec<u8> {
    let mut ptr: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    if call(&mut ptr, &mut size) != 0 || ptr.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: on success the host allocated `size` bytes at `ptr` through our allocator
    // (`proxy_on_memory_allocate`, a `Vec<u8>` of that capacity) and hands us ownership,
    // exactly as the SDK's own getters assume.
    unsafe { Vec::from_raw_parts(ptr, size, size) }
}

/// The message of the gRPC call status just delivered (empty when there is none). The
/// SDK's `get_grpc_status` panics on a message that is not UTF-8 and on any host error;
/// the message comes from the service, so it is read here as bytes.
pub fn grpc_status_message() -> Vec<u8> {
    let mut code: u32 = 0;
    // SAFETY: the host writes only through the three out-pointers, valid for this call.
    host_buffer(|ptr, size| unsafe { proxy_get_status(&mut code, ptr, size) })
}

/// The request headers in the proxy's serialized form, read in one host call. The SDK's
/// getters would allocate a `String` and a `Vec` per header; we borrow from this buffer.
pub fn request_header_bytes() -> Vec<u8> {
    // SAFETY: the host writes only through the two out-pointers, valid for this call.
    host_buffer(|ptr, size| unsafe { proxy_get_header_map_pairs(0, ptr, size) })
}

/// Envoy's `source.address` (`ip:port`) as an address.
pub fn client_addr() -> Option<IpAddr> {
    let raw = hostcalls::get_property(vec!["source", "address"]).ok()??;
    let text = std::str::from_utf8(&raw).ok()?;
    text.parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| text.parse::<IpAddr>())
        .ok()
}

/// Envoy's `response.flags` bitmask (0 when unknown).
pub fn response_flags() -> u64 {
    match hostcalls::get_property(vec!["response", "flags"]) {
        Ok(Some(b)) => b
            .get(..8)
            .and_then(|s| s.try_into().ok())
            .map_or(0, u64::from_le_bytes),
        _ => 0,
    }
}

/// The response status from `:status` (0 when missing or malformed).
pub fn response_status() -> u16 {
    match hostcalls::get_map_value_bytes(proxy_wasm::types::MapType::HttpResponseHeaders, ":status")
    {
        Ok(Some(v)) => std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}
