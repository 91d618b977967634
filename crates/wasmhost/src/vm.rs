//! One VM: a wasmtime instance of the module (Envoy runs one per worker thread), its store
//! state, and the calls into its exports with Envoy's failure rules.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use wasmtime::{Instance, Linker, Memory, Store, StoreLimits, StoreLimitsBuilder, TypedFunc};

use super::maps::Headers;
use super::metrics::MetricKind;
use super::shared::{lock, Process};
use super::{HostError, LocalResponse, LogEntry, LogLevel, PluginConfig, TrapError};

/// Root context id of every VM (cpp-host gives the VM context 0 and the first root 1).
pub(crate) const ROOT_CONTEXT_ID: u32 = 1;

/// What a plugin's VMs share: its configuration and its captured log.
pub(crate) struct PluginShared {
    pub id: u64,
    pub config: PluginConfig,
    pub logs: Mutex<Vec<LogEntry>>,
    /// The HTTP calls made since the current request began (see `Exchange::http_calls`).
    pub calls: Mutex<Vec<super::HttpCallRecord>>,
}

impl PluginShared {
    pub(crate) fn record_call(&self, record: super::HttpCallRecord) {
        let mut calls = lock(&self.calls);
        if calls.len() >= super::MAX_CALL_RECORDS {
            calls.remove(0);
        }
        calls.push(record);
    }

    /// The answer to `worker`'s call `token` arrived with `status`.
    pub(crate) fn call_answered(&self, worker: usize, token: u32, status: Option<u32>) {
        let mut calls = lock(&self.calls);
        if let Some(r) = calls
            .iter_mut()
            .rev()
            .find(|r| r.refused.is_none() && r.call.worker == worker && r.call.token == token)
        {
            r.answer_status = status;
        }
    }

    pub(crate) fn log(&self, entry: LogEntry) {
        lock(&self.logs).push(entry);
    }
}

/// Which top-level callback is running (some host calls only work inside some of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Callback {
    Idle,
    Start,
    VmStart,
    Configure,
    Stream,
    Tick,
    QueueReady,
    HttpCallResponse,
    GrpcCallResponse,
}

/// One HTTP stream's state as the host (Envoy's filter manager) holds it.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    pub source: Option<String>,
    pub request_headers: Headers,
    pub request_trailers: Option<Headers>,
    /// Request body data the filter has not let through yet.
    pub request_body: Vec<u8>,
    pub request_body_out: Vec<u8>,
    pub response_headers: Option<Headers>,
    pub response_trailers: Option<Headers>,
    pub response_body: Vec<u8>,
    pub response_body_out: Vec<u8>,
    /// Which maps/buffers the ABI may touch now (Envoy nulls its pointers once a phase
    /// continues, and the SDK then gets BadArgument).
    pub open_request_headers: bool,
    pub open_request_body: bool,
    pub open_request_trailers: bool,
    pub open_response_headers: bool,
    pub open_response_body: bool,
    pub open_response_trailers: bool,
    /// In `proxy_on_log`: maps are read-only and missing ones are NotFound.
    pub access_log: bool,
    pub local_reply: Option<LocalResponse>,
    pub continue_request: bool,
    pub continue_response: bool,
    pub closed: bool,
    /// A network filter's connection the filter closed (`proxy_close_stream(Downstream)`).
    pub downstream_closed: bool,
    /// The filter asked to close the upstream connection (`proxy_close_stream(Upstream)`).
    pub upstream_closed: bool,
    /// A network filter's connection (not an HTTP stream): the data buffers below apply.
    pub network: bool,
    /// Client bytes the filter holds (it paused; Envoy keeps them in the connection's read
    /// buffer and calls again with them and whatever arrives next).
    pub downstream_data: Vec<u8>,
    /// Upstream bytes held the same way (the upstream connection's read buffer).
    pub upstream_data: Vec<u8>,
    /// `proxy_get_buffer_bytes` may touch the buffer (during the data callback, and after a
    /// pause until the data goes on, as Envoy keeps its pointer).
    pub open_downstream_data: bool,
    pub open_upstream_data: bool,
    /// `proxy_continue_stream(Downstream)`: the held client bytes go on to the upstream.
    pub resume_downstream: bool,
    pub route_cache_clears: u32,
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
    /// The request's own properties ([`crate::HttpRequest::property`]).
    pub given: Vec<(Vec<u8>, Vec<u8>)>,
    pub start_ns: u64,
    pub code_details: Option<String>,
}

/// A dispatched `proxy_http_call`.
#[derive(Debug, Clone)]
pub(crate) struct Callout {
    pub request: super::HttpCall,
    /// Elapsed-clock deadline in ns, if the call has a timeout.
    pub deadline_ns: Option<u64>,
    /// The handler has not been asked yet.
    pub fresh: bool,
}

/// The store data of one VM: everything host functions need.
pub(crate) struct VmState {
    pub process: Arc<Process>,
    pub plugin: Arc<PluginShared>,
    pub worker: usize,
    pub generation: u64,
    pub memory: Option<Memory>,
    pub alloc: Option<TypedFunc<i32, i32>>,
    pub next_context_id: u32,
    /// The context the host called into.
    pub current: u32,
    /// Set by `proxy_set_effective_context` for the rest of the current callback.
    pub effective: Option<u32>,
    pub callback: Callback,
    pub streams: HashMap<u32, StreamState>,
    pub root_properties: HashMap<Vec<u8>, Vec<u8>>,
    pub tick_period_ms: u32,
    pub next_tick_ns: Option<u64>,
    pub next_token: u32,
    pub callouts: BTreeMap<u32, Callout>,
    /// The next gRPC call token (Envoy counts them apart from HTTP calls: 5, 9, 13, …).
    pub next_grpc_token: u32,
    /// gRPC calls not answered yet.
    pub grpc_calls: BTreeMap<u32, super::GrpcCall>,
    /// The message being delivered to `proxy_on_grpc_receive` (GrpcReceiveBuffer).
    pub grpc_receive: Option<Vec<u8>>,
    /// The next gRPC stream token (6, 10, 14, …).
    pub next_grpc_stream_token: u32,
    /// The gRPC streams the VM knows, by token.
    pub grpc_streams: BTreeMap<u32, super::grpc_stream::OpenStream>,
    /// Streams the plugin cancelled whose handler has not heard of it yet.
    pub grpc_cancelled: Vec<super::grpc_stream::Cancelled>,
    /// The metadata being delivered to `proxy_on_grpc_receive_initial_metadata` (map type 4)
    /// or `proxy_on_grpc_receive_trailing_metadata` (map type 5).
    pub grpc_metadata: Option<(i32, Headers)>,
    /// The response being delivered to `proxy_on_http_call_response`.
    pub call_response: Option<(Headers, Vec<u8>, Headers)>,
    /// `proxy_get_status`: code and message.
    pub status: (u32, String),
    pub metric_ids: HashMap<u32, (String, MetricKind)>,
    pub next_metric_id: [u32; 3],
    pub rng: u64,
    /// Critical logs and standard-error output of the current callback: a Rust panic's message.
    pub panic_text: Vec<String>,
    /// The plugin's memory bound ([`PluginConfig::max_memory`]), if any.
    pub limits: StoreLimits,
}

impl VmState {
    pub(crate) fn new(
        process: Arc<Process>,
        plugin: Arc<PluginShared>,
        worker: usize,
        generation: u64,
    ) -> VmState {
        let seed = plugin.config.seed
            ^ (worker as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ generation.rotate_left(32);
        VmState {
            process,
            worker,
            generation,
            memory: None,
            alloc: None,
            next_context_id: ROOT_CONTEXT_ID + 1,
            current: 0,
            effective: None,
            callback: Callback::Idle,
            streams: HashMap::new(),
            root_properties: HashMap::new(),
            tick_period_ms: 0,
            next_tick_ns: None,
            next_token: 4,
            callouts: BTreeMap::new(),
            next_grpc_token: 5,
            grpc_calls: BTreeMap::new(),
            grpc_receive: None,
            next_grpc_stream_token: 6,
            grpc_streams: BTreeMap::new(),
            grpc_cancelled: Vec::new(),
            grpc_metadata: None,
            call_response: None,
            status: (0, String::new()),
            metric_ids: HashMap::new(),
            next_metric_id: [0, 1, 2],
            rng: seed | 1,
            panic_text: Vec::new(),
            limits: match plugin.config.max_memory {
                Some(bytes) => StoreLimitsBuilder::new()
                    .memory_size(bytes)
                    .trap_on_grow_failure(true)
                    .build(),
                None => StoreLimits::default(),
            },
            plugin,
        }
    }

    /// The context host calls act on.
    pub(crate) fn context(&self) -> u32 {
        self.effective.unwrap_or(self.current)
    }

    /// The stream host calls act on, if the context is a stream.
    pub(crate) fn stream(&mut self) -> Option<&mut StreamState> {
        let id = self.context();
        self.streams.get_mut(&id)
    }

    /// Whether `id` names a live context of this VM.
    pub(crate) fn has_context(&self, id: u32) -> bool {
        id == ROOT_CONTEXT_ID || self.streams.contains_key(&id)
    }

    /// xorshift64*: deterministic per VM, so runs are reproducible.
    pub(crate) fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Records a guest log line (and keeps Critical ones as a possible panic message).
    /// Logs a line of the host's about the plugin (a call refused by one of its bounds).
    pub(crate) fn log_host(&mut self, message: String) {
        self.plugin.log(LogEntry {
            level: LogLevel::Warn,
            message,
            worker: self.worker,
            context_id: self.context(),
            from_host: true,
        });
    }

    pub(crate) fn log(&mut self, level: LogLevel, message: String) {
        if level == LogLevel::Critical {
            self.panic_text.push(message.clone());
        }
        self.plugin.log(LogEntry {
            level,
            message,
            worker: self.worker,
            context_id: self.context(),
            from_host: false,
        });
    }

    /// Elapsed clock in ns.
    pub(crate) fn elapsed_ns(&self) -> u64 {
        lock(&self.process.clock).elapsed_ns()
    }
}

type F1 = TypedFunc<i32, ()>;
type F1R = TypedFunc<i32, i32>;
type F2 = TypedFunc<(i32, i32), ()>;
type F2R = TypedFunc<(i32, i32), i32>;
type F3R = TypedFunc<(i32, i32, i32), i32>;
type F3 = TypedFunc<(i32, i32, i32), ()>;
type F5 = TypedFunc<(i32, i32, i32, i32, i32), ()>;

/// The module's exports the host calls; a missing callback means "nothing to do".
pub(crate) struct Exports {
    pub on_context_create: Option<F2>,
    pub on_vm_start: Option<F2R>,
    pub on_configure: Option<F2R>,
    pub on_tick: Option<F1>,
    pub on_queue_ready: Option<F2>,
    pub on_request_headers: Option<F3R>,
    pub on_request_body: Option<F3R>,
    pub on_request_trailers: Option<F2R>,
    pub on_response_headers: Option<F3R>,
    pub on_response_body: Option<F3R>,
    pub on_response_trailers: Option<F2R>,
    pub on_http_call_response: Option<F5>,
    pub on_grpc_receive: Option<F3>,
    pub on_grpc_close: Option<F3>,
    pub on_grpc_receive_initial_metadata: Option<F3>,
    pub on_grpc_receive_trailing_metadata: Option<F3>,
    pub on_done: Option<F1R>,
    pub on_log: Option<F1>,
    pub on_delete: Option<F1>,
    /// Network-filter callbacks (a filter in Envoy's TCP filter chain).
    pub on_new_connection: Option<F1R>,
    pub on_downstream_data: Option<F3R>,
    pub on_upstream_data: Option<F3R>,
    pub on_downstream_connection_close: Option<F2>,
    pub on_upstream_connection_close: Option<F2>,
}

/// A metered VM's fuel at start: counting, not limiting (2^62 units last centuries).
const FUEL: u64 = 1 << 62;

/// A running VM.
pub(crate) struct Vm {
    pub store: Store<VmState>,
    pub exports: Exports,
    /// Why the VM failed (a trap), if it did: Envoy stops calling it.
    pub failed: Option<String>,
    /// Epoch ticks each call may run, for an interruptible module.
    deadline: Option<u64>,
}

fn typed<P, R>(
    store: &mut Store<VmState>,
    instance: &Instance,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>, String>
where
    P: wasmtime::WasmParams,
    R: wasmtime::WasmResults,
{
    match instance.get_func(&mut *store, name) {
        None => Ok(None),
        Some(f) => f
            .typed::<P, R>(&*store)
            .map(Some)
            .map_err(|e| format!("export {name} has the wrong signature: {e}")),
    }
}

impl Vm {
    /// Fuel consumed since start (0 unless metered).
    pub(crate) fn fuel_consumed(&self) -> u64 {
        self.store
            .get_fuel()
            .map_or(0, |left| FUEL.saturating_sub(left))
    }

    /// Instantiates the module and runs `_initialize` (or `_start`), as cpp-host does before
    /// any context exists.
    pub(crate) fn instantiate(
        module: &wasmtime::Module,
        linker: &Linker<VmState>,
        state: VmState,
        deadline: Option<u64>,
        metered: bool,
    ) -> Result<Vm, HostError> {
        let worker = state.worker;
        let mut store = Store::new(module.engine(), state);
        store.limiter(|st| &mut st.limits);
        if metered {
            store.set_fuel(FUEL).map_err(|e| HostError::Instantiate {
                worker,
                message: format!("setting fuel: {e:#}"),
            })?;
        }
        if let Some(ticks) = deadline {
            // Every entry into the guest, host-initiated allocations included, has a deadline
            // (an interruptible module's default of 0 would trap at once).
            store.set_epoch_deadline(ticks);
        }
        let inst_err = |message: String| HostError::Instantiate { worker, message };
        let instance = linker
            .instantiate(&mut store, module)
            .map_err(|e| inst_err(format!("{e:#}")))?;
        if !["proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0"]
            .iter()
            .any(|abi| instance.get_export(&mut store, abi).is_some())
        {
            return Err(inst_err(
                "the module exports no proxy_abi_version_0_2_1 (or 0_2_0): not a proxy-wasm 0.2 module"
                    .into(),
            ));
        }
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| inst_err("the module exports no memory".into()))?;
        // cpp-host looks for `malloc` first (wasm32-unknown-unknown SDK builds), then
        // `proxy_on_memory_allocate` (wasip1 builds).
        let alloc = match typed::<i32, i32>(&mut store, &instance, "malloc").map_err(inst_err)? {
            Some(f) => f,
            None => typed::<i32, i32>(&mut store, &instance, "proxy_on_memory_allocate")
                .map_err(inst_err)?
                .ok_or_else(|| {
                    inst_err(
                        "the module exports neither malloc nor proxy_on_memory_allocate".into(),
                    )
                })?,
        };
        store.data_mut().memory = Some(memory);
        store.data_mut().alloc = Some(alloc);
        let exports = Exports {
            on_context_create: typed(&mut store, &instance, "proxy_on_context_create")
                .map_err(inst_err)?,
            on_vm_start: typed(&mut store, &instance, "proxy_on_vm_start").map_err(inst_err)?,
            on_configure: typed(&mut store, &instance, "proxy_on_configure").map_err(inst_err)?,
            on_tick: typed(&mut store, &instance, "proxy_on_tick").map_err(inst_err)?,
            on_queue_ready: typed(&mut store, &instance, "proxy_on_queue_ready")
                .map_err(inst_err)?,
            on_request_headers: typed(&mut store, &instance, "proxy_on_request_headers")
                .map_err(inst_err)?,
            on_request_body: typed(&mut store, &instance, "proxy_on_request_body")
                .map_err(inst_err)?,
            on_request_trailers: typed(&mut store, &instance, "proxy_on_request_trailers")
                .map_err(inst_err)?,
            on_response_headers: typed(&mut store, &instance, "proxy_on_response_headers")
                .map_err(inst_err)?,
            on_response_body: typed(&mut store, &instance, "proxy_on_response_body")
                .map_err(inst_err)?,
            on_response_trailers: typed(&mut store, &instance, "proxy_on_response_trailers")
                .map_err(inst_err)?,
            on_http_call_response: typed(&mut store, &instance, "proxy_on_http_call_response")
                .map_err(inst_err)?,
            on_grpc_receive: typed(&mut store, &instance, "proxy_on_grpc_receive")
                .map_err(inst_err)?,
            on_grpc_close: typed(&mut store, &instance, "proxy_on_grpc_close").map_err(inst_err)?,
            on_grpc_receive_initial_metadata: typed(
                &mut store,
                &instance,
                "proxy_on_grpc_receive_initial_metadata",
            )
            .map_err(inst_err)?,
            on_grpc_receive_trailing_metadata: typed(
                &mut store,
                &instance,
                "proxy_on_grpc_receive_trailing_metadata",
            )
            .map_err(inst_err)?,
            on_done: typed(&mut store, &instance, "proxy_on_done").map_err(inst_err)?,
            on_log: typed(&mut store, &instance, "proxy_on_log").map_err(inst_err)?,
            on_delete: typed(&mut store, &instance, "proxy_on_delete").map_err(inst_err)?,
            on_new_connection: typed(&mut store, &instance, "proxy_on_new_connection")
                .map_err(inst_err)?,
            on_downstream_data: typed(&mut store, &instance, "proxy_on_downstream_data")
                .map_err(inst_err)?,
            on_upstream_data: typed(&mut store, &instance, "proxy_on_upstream_data")
                .map_err(inst_err)?,
            on_downstream_connection_close: typed(
                &mut store,
                &instance,
                "proxy_on_downstream_connection_close",
            )
            .map_err(inst_err)?,
            on_upstream_connection_close: typed(
                &mut store,
                &instance,
                "proxy_on_upstream_connection_close",
            )
            .map_err(inst_err)?,
        };
        let init = match typed::<(), ()>(&mut store, &instance, "_initialize").map_err(inst_err)? {
            Some(f) => Some(("_initialize", f)),
            None => typed::<(), ()>(&mut store, &instance, "_start")
                .map_err(inst_err)?
                .map(|f| ("_start", f)),
        };
        let mut vm = Vm {
            store,
            exports,
            failed: None,
            deadline,
        };
        if let Some((name, f)) = init {
            vm.invoke(&f, 0, Callback::Start, name, ())
                .map_err(HostError::Trap)?;
        }
        Ok(vm)
    }

    /// Calls `f` on `context`. A trap fails the VM and comes back with the guest's own panic
    /// message when it printed one.
    pub(crate) fn invoke<P, R>(
        &mut self,
        f: &TypedFunc<P, R>,
        context: u32,
        callback: Callback,
        name: &'static str,
        params: P,
    ) -> Result<R, TrapError>
    where
        P: wasmtime::WasmParams,
        R: wasmtime::WasmResults,
    {
        {
            let st = self.store.data_mut();
            st.current = context;
            st.effective = None;
            st.callback = callback;
            st.panic_text.clear();
        }
        if let Some(ticks) = self.deadline {
            self.store.set_epoch_deadline(ticks);
        }
        let result = f.call(&mut self.store, params);
        let st = self.store.data_mut();
        st.effective = None;
        st.callback = Callback::Idle;
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                let trap = format!("{e:#}");
                let guest = st.panic_text.join("\n");
                let message = if guest.is_empty() {
                    trap.clone()
                } else {
                    guest
                };
                let err = TrapError {
                    worker: st.worker,
                    context_id: context,
                    callback: name,
                    message,
                    trap,
                };
                // Envoy logs the failed call at critical level and fails the VM.
                st.plugin.log(LogEntry {
                    level: LogLevel::Critical,
                    message: format!("Function: {name} failed: {}", err.trap),
                    worker: st.worker,
                    context_id: context,
                    from_host: true,
                });
                self.failed = Some(err.message.clone());
                Err(err)
            }
        }
    }

    /// A new context id for a stream.
    pub(crate) fn next_context_id(&mut self) -> u32 {
        let st = self.store.data_mut();
        let id = st.next_context_id;
        st.next_context_id += 1;
        id
    }
}
