//! A proxy-wasm (ABI 0.2.1) host on wasmtime that behaves like Envoy: run any compiled
//! proxy-wasm filter in-process, without Envoy, in tests (as the Go SDK's `proxytest` is used)
//! or from a command line (`rollgate try`). It depends on nothing else of rollgate.
//!
//! The model mirrors Envoy's: a [`Host`] is one proxy process (shared data, shared queues,
//! stats and a virtual clock, scoped to the `Host` — never global, so tests run in parallel);
//! [`Host::start`] loads a [`Wasm`] module as a plugin with a [`PluginConfig`] on N worker
//! VMs (one per Envoy worker thread); [`Plugin::run`] sends one [`HttpRequest`] through the
//! filter on one VM — `on_context_create`, request headers/body/trailers, the upstream's
//! [`Response`], response headers/body/trailers, `on_log`, `on_done`, `on_delete` — and
//! returns an [`Exchange`]: the request as forwarded, the response the client got, the local
//! response if the plugin sent one, and the log lines the stream produced.
//!
//! ```no_run
//! use rollgate_wasmhost::{Host, HttpRequest, PluginConfig, Wasm};
//! let wasm = Wasm::from_file("target/wasm32-wasip1/release/rollgate_plugin.wasm")?;
//! let host = Host::new();
//! let plugin = host.start(&wasm, PluginConfig::new(r#"{"name":"f","variants":{"a":"c"},"default":"a"}"#))?;
//! let ex = plugin.run(HttpRequest::get("pro.coding", "/"))?;
//! assert_eq!(ex.request_headers.get_str("x-rollgate-variant").as_deref(), Some("a"));
//! # Ok::<(), rollgate_wasmhost::HostError>(())
//! ```
//!
//! `examples/run_filter.rs` does the same from the command line with your own module and
//! configuration: `cargo run -p rollgate-wasmhost --example run_filter -- FILTER.wasm CONFIG`.
//!
//! Envoy behaviour copied (see the module docs of each part): the header-map byte layout, empty
//! results as pointer 0 / length 0 in guest-allocated memory, status codes (BadArgument for a
//! map outside its phase, NotFound for a missing property), shared-data CAS, the last
//! registrant of a queue getting `on_queue_ready`, ticks per VM, metrics (`wasmcustom.`
//! namespace), `clear_route_cache`, HTTP callouts, unary gRPC calls and gRPC streams answered
//! on the root context ([`PluginConfig::cluster`], [`PluginConfig::grpc_cluster`],
//! [`PluginConfig::grpc_stream_cluster`]: a [`GrpcStreamHandler`] per stream, asked after each
//! callback that acted on it; initial metadata, messages, trailing metadata and the close
//! delivered in Envoy's order, tokens 6, 10, …, ParseFailure for a missing cluster, at most
//! [`MAX_GRPC_STREAMS`] open per VM), and fail-closed VMs after a trap (503, details
//! `wasm_fail_stream`).
//!
//! Time only moves with [`Host::advance`]; ticks and callout timeouts fire then, in order.
//! Asynchronous events (callout responses, `on_queue_ready`) are delivered right after the
//! callback that caused them returns, as Envoy's event loop would.

mod clock;
mod config;
mod error;
mod grpc_stream;
mod imports;
mod linker;
mod maps;
mod metrics;
mod plugin;
mod props;
mod shared;
mod stream;
mod tcp;
mod types;
mod vm;
mod wasi;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

pub use clock::DEFAULT_EPOCH_SECS;
pub use config::{
    CalloutHandler, FailurePolicy, ForeignFunction, GrpcHandler, GrpcStreamOpener, PluginConfig,
    UpstreamHandler,
};
pub use error::{HostError, TrapError};
pub use grpc_stream::{
    GrpcStreamCall, GrpcStreamHandler, GrpcStreamReply, GrpcStreamSent, MAX_GRPC_STREAMS,
    MAX_GRPC_STREAM_QUEUED_BYTES,
};
pub use maps::Headers;
pub use metrics::{Metric, MetricKind, CUSTOM_NAMESPACE};
pub use stream::http_to_grpc_status;
pub use tcp::{ConnectionEvent, DataEvent, Direction};
pub use types::{
    CalloutReply, Exchange, GrpcCall, GrpcReply, HttpCall, HttpCallRecord, HttpRequest,
    LocalResponse, LogEntry, LogLevel, Phase, Response, Status, DEFAULT_SOURCE, MAX_CALL_RECORDS,
};

use plugin::PluginInner;
use shared::{lock, Process};

/// A compiled module, ready to be started any number of times (compile once, share across
/// hosts and tests: compilation is the expensive part).
#[derive(Clone)]
pub struct Wasm {
    module: wasmtime::Module,
    /// Compiled with epoch interruption: calls can be given a time limit.
    interruptible: bool,
    /// Compiled with fuel metering: [`Plugin::fuel_consumed`] counts the module's work.
    metered: bool,
}

/// How often the engine of an [interruptible](Wasm::interruptible_from_bytes) module advances
/// its epoch: the granularity of [`PluginConfig::call_timeout`].
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

impl fmt::Debug for Wasm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wasm").finish_non_exhaustive()
    }
}

impl Wasm {
    /// Compiles a binary module (a `.wasm` file's bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Wasm, HostError> {
        Wasm::compile(bytes, false, false)
    }

    /// Compiles a module whose work is counted: wasmtime's fuel, about one unit per Wasm
    /// instruction executed, read with [`Plugin::fuel_consumed`]. Unlike a timing it is
    /// the same on every run and machine, so two builds of a filter can be compared on a
    /// noisy one. Host calls cost no fuel: the count is the module's own code. Metering
    /// makes the generated code slower; time unmetered modules.
    pub fn metered_from_bytes(bytes: &[u8]) -> Result<Wasm, HostError> {
        Wasm::compile(bytes, false, true)
    }

    /// Reads and compiles a `.wasm` file as [`Wasm::metered_from_bytes`] does.
    pub fn metered_from_file(path: impl AsRef<Path>) -> Result<Wasm, HostError> {
        Wasm::metered_from_bytes(&read(path.as_ref())?)
    }

    /// Compiles a module whose calls can be bounded in time ([`PluginConfig::call_timeout`]),
    /// with wasmtime's epoch interruption: the generated code checks the engine's epoch at
    /// function entries and loop back-edges, and a thread advances it every [`EPOCH_TICK`]
    /// while the module lives. Without a timeout its calls run unbounded, as with
    /// [`Wasm::from_bytes`].
    pub fn interruptible_from_bytes(bytes: &[u8]) -> Result<Wasm, HostError> {
        Wasm::compile(bytes, true, false)
    }

    fn compile(bytes: &[u8], interruptible: bool, metered: bool) -> Result<Wasm, HostError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(interruptible);
        config.consume_fuel(metered);
        let engine =
            wasmtime::Engine::new(&config).map_err(|e| HostError::Compile(format!("{e:#}")))?;
        let module = wasmtime::Module::new(&engine, bytes)
            .map_err(|e| HostError::Compile(format!("{e:#}")))?;
        if interruptible {
            let weak = engine.weak();
            std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || {
                    // Ends once every handle on the engine (modules, stores) is gone.
                    while let Some(engine) = weak.upgrade() {
                        engine.increment_epoch();
                        drop(engine);
                        std::thread::sleep(EPOCH_TICK);
                    }
                })
                .map_err(|e| HostError::Compile(format!("starting the epoch thread: {e}")))?;
        }
        Ok(Wasm {
            module,
            interruptible,
            metered,
        })
    }

    /// Reads and compiles a `.wasm` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Wasm, HostError> {
        Wasm::from_bytes(&read(path.as_ref())?)
    }

    /// Reads and compiles a `.wasm` file as [`Wasm::interruptible_from_bytes`] does.
    pub fn interruptible_from_file(path: impl AsRef<Path>) -> Result<Wasm, HostError> {
        Wasm::interruptible_from_bytes(&read(path.as_ref())?)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, HostError> {
    std::fs::read(path).map_err(|error| HostError::Io {
        path: path.to_path_buf(),
        error,
    })
}

/// The plugins a host started, by id; weak, so dropping a [`Plugin`] ends it.
type PluginList = Vec<(u64, Weak<Mutex<PluginInner>>)>;

/// One proxy process: shared data, queues, stats and the clock of every plugin started on it.
#[derive(Clone, Default)]
pub struct Host {
    process: Arc<Process>,
    plugins: Arc<Mutex<PluginList>>,
    next_plugin: Arc<AtomicU64>,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host").finish_non_exhaustive()
    }
}

impl Host {
    /// A fresh host at [`DEFAULT_EPOCH_SECS`].
    pub fn new() -> Host {
        Host::default()
    }

    /// Starts `wasm` as a plugin on `config.workers` VMs: instantiate, `_initialize`, root
    /// context, `on_vm_start`, `on_configure` — each VM in turn. Fails as Envoy would refuse
    /// the configuration: on a missing import, a trap, or either callback returning false.
    pub fn start(&self, wasm: &Wasm, config: PluginConfig) -> Result<Plugin, HostError> {
        let id = self.next_plugin.fetch_add(1, Ordering::Relaxed) + 1;
        let inner = PluginInner::start(id, Arc::clone(&self.process), wasm, config)?;
        let inner = Arc::new(Mutex::new(inner));
        {
            let mut plugins = lock(&self.plugins);
            plugins.retain(|(_, w)| w.strong_count() > 0);
            plugins.push((id, Arc::downgrade(&inner)));
        }
        Ok(Plugin {
            inner,
            host: self.clone(),
        })
    }

    fn live_plugins(&self) -> Vec<(u64, Arc<Mutex<PluginInner>>)> {
        lock(&self.plugins)
            .iter()
            .filter_map(|(id, w)| w.upgrade().map(|p| (*id, p)))
            .collect()
    }

    /// The wall-clock time the plugins see.
    pub fn now(&self) -> SystemTime {
        lock(&self.process.clock).now()
    }

    /// Time advanced since the host started.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(lock(&self.process.clock).elapsed_ns())
    }

    /// Sets the wall clock (ticks and timeouts are not affected).
    pub fn set_wall_clock(&self, now: SystemTime) {
        lock(&self.process.clock).set_wall_clock(now);
    }

    /// Moves time forward by `by`, firing every tick (per VM) and callout timeout that falls
    /// due, in time order, with the clock reading each one's due time. Stops at the first
    /// trap. Must not be called from a callout handler or upstream closure.
    pub fn advance(&self, by: Duration) -> Result<(), HostError> {
        let target = {
            let clock = lock(&self.process.clock);
            clock.elapsed_ns().saturating_add(by.as_nanos() as u64)
        };
        loop {
            let mut best: Option<(u64, Arc<Mutex<PluginInner>>)> = None;
            for (_, p) in self.live_plugins() {
                let due = lock(&p).next_deadline();
                if let Some(due) = due.filter(|d| *d <= target) {
                    if best.as_ref().is_none_or(|(b, _)| due < *b) {
                        best = Some((due, p));
                    }
                }
            }
            let Some((due, plugin)) = best else { break };
            lock(&self.process.clock).set_elapsed(due);
            lock(&plugin).fire_due(due)?;
        }
        lock(&self.process.clock).set_elapsed(target);
        self.run_pending()
    }

    /// Delivers pending `on_queue_ready` events to every plugin (each plugin also delivers its
    /// own after each of its operations).
    pub fn run_pending(&self) -> Result<(), HostError> {
        let waiting = lock(&self.process.shared).ready_plugins();
        for (id, p) in self.live_plugins() {
            if waiting.contains(&id) {
                lock(&p).pump()?;
            }
        }
        // Events for plugins that are gone are dropped, as Envoy drops them with the VM.
        let live: Vec<u64> = self.live_plugins().iter().map(|(id, _)| *id).collect();
        let mut shared = lock(&self.process.shared);
        for id in shared.ready_plugins() {
            if !live.contains(&id) {
                shared.take_ready(Some(id));
            }
        }
        Ok(())
    }

    /// A metric by the name the plugin defined (what Envoy's `/stats` and Prometheus show) or
    /// by its internal stat name `wasmcustom.<name>`.
    pub fn metric(&self, name: &str) -> Option<Metric> {
        lock(&self.process.metrics).lookup(name)
    }

    /// Every metric, by the name the plugin defined.
    pub fn metrics(&self) -> BTreeMap<String, Metric> {
        lock(&self.process.metrics).all()
    }

    /// Shared data `(value, cas)` under `(vm_id, key)`.
    pub fn shared_data(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        lock(&self.process.shared).get(vm_id, key)
    }

    /// Writes shared data unconditionally (cas 0), as a plugin could; returns the new cas.
    pub fn set_shared_data(&self, vm_id: &str, key: &[u8], value: &[u8]) -> u32 {
        lock(&self.process.shared)
            .set(vm_id, key, value, 0)
            .unwrap_or_default()
    }

    /// Items waiting in shared queue `name` of `vm_id`, if it exists.
    pub fn queue_len(&self, vm_id: &str, name: &str) -> Option<usize> {
        lock(&self.process.shared).queue_len(vm_id, name.as_bytes())
    }
}

/// A started plugin: N worker VMs of one module with one configuration. Cheap to share by
/// reference; calls are serialized (one stream at a time, like one event loop per worker).
pub struct Plugin {
    inner: Arc<Mutex<PluginInner>>,
    host: Host,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin").finish_non_exhaustive()
    }
}

impl Plugin {
    /// The host this plugin runs in.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Runs one request through the filter, start to end (see [`Exchange`]). A trap is an
    /// error of this request, and fails the VM: later requests on that worker follow the
    /// [`FailurePolicy`] (by default a 503 `wasm_fail_stream` local response).
    pub fn run(&self, request: HttpRequest) -> Result<Exchange, HostError> {
        lock(&self.inner).run(request)
    }

    /// A new downstream connection from `source` (`ip:port`; the plugin's `source.address`)
    /// through the plugin as a network filter, on `worker` (or the next, round-robin): the
    /// context is created, `proxy_on_new_connection` runs, and a connection the filter closes
    /// gets its close callbacks at once, as Envoy 1.40 does (see [`ConnectionEvent`]). A trap
    /// is an error of this connection and fails the VM.
    pub fn open_connection(
        &self,
        source: &str,
        worker: Option<usize>,
    ) -> Result<ConnectionEvent, HostError> {
        lock(&self.inner).open_connection(Some(source.to_string()), worker)
    }

    /// The client closes an open connection (the `worker` and `context_id` its
    /// [`Plugin::open_connection`] reported): `proxy_on_downstream_connection_close` with the
    /// remote peer, then `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`.
    pub fn close_connection(
        &self,
        worker: usize,
        context_id: u32,
    ) -> Result<ConnectionEvent, HostError> {
        lock(&self.inner).close_connection(worker, context_id)
    }

    /// `bytes` arrive on an open connection (the `worker` and `context_id` its
    /// [`Plugin::open_connection`] reported), from the client ([`Direction::Downstream`]) or
    /// from the upstream ([`Direction::Upstream`]); `end_of_stream` is the sender's
    /// half-close. The filter sees them as Envoy 1.40 delivers them: held bytes come again
    /// with the next ones, and the upstream's end of stream is followed by
    /// `proxy_on_upstream_connection_close` with peer Unknown (see [`DataEvent`]).
    pub fn connection_data(
        &self,
        worker: usize,
        context_id: u32,
        direction: Direction,
        bytes: &[u8],
        end_of_stream: bool,
    ) -> Result<DataEvent, HostError> {
        lock(&self.inner).connection_data(worker, context_id, direction, bytes, end_of_stream)
    }

    /// Envoy closes an open connection itself: after both directions ended (the client's
    /// and the upstream's half-close), or when `tcp_proxy`'s upstream went away.
    /// `proxy_on_downstream_connection_close` gets the local peer; then `proxy_on_done`,
    /// `proxy_on_log`, `proxy_on_delete`.
    pub fn end_connection(
        &self,
        worker: usize,
        context_id: u32,
    ) -> Result<ConnectionEvent, HostError> {
        lock(&self.inner).end_connection(worker, context_id)
    }

    /// Connections (and HTTP streams) open on the plugin's VMs, as `(worker, context id)`.
    pub fn open_connections(&self) -> Vec<(usize, u32)> {
        lock(&self.inner).open_connections()
    }

    /// What Envoy answers on the stream whose VM trapped (the `worker` of the [`TrapError`]
    /// [`Plugin::run`] returned): 503 `wasm_fail_stream` under every [`FailurePolicy`], as
    /// Envoy 1.40 answers it (the policy decides only the next requests). The plugin is not
    /// called.
    pub fn trapped_answer(&self, worker: usize, request: &HttpRequest) -> Exchange {
        lock(&self.inner).trapped_answer(worker, request)
    }

    /// Number of worker VMs.
    pub fn workers(&self) -> usize {
        lock(&self.inner).workers()
    }

    /// Every log line so far, in order.
    pub fn logs(&self) -> Vec<LogEntry> {
        lock(&self.inner).logs()
    }

    /// The messages logged at exactly `level`, in order.
    pub fn logs_at(&self, level: LogLevel) -> Vec<String> {
        self.logs()
            .into_iter()
            .filter(|l| l.level == level)
            .map(|l| l.message)
            .collect()
    }

    /// Forgets the captured log.
    pub fn clear_logs(&self) {
        lock(&self.inner).clear_logs();
    }

    /// Fuel the VMs now running have consumed since they started (about one unit per Wasm
    /// instruction; see [`Wasm::metered_from_bytes`]); `None` for a module compiled
    /// without metering. A VM restarted after a trap starts its count again.
    pub fn fuel_consumed(&self) -> Option<u64> {
        lock(&self.inner).fuel_consumed()
    }

    /// Why worker `worker`'s VM failed, if it did.
    pub fn failure(&self, worker: usize) -> Option<String> {
        lock(&self.inner).failure(worker)
    }

    /// The tick period worker `worker`'s root context set, if any.
    pub fn tick_period(&self, worker: usize) -> Option<Duration> {
        lock(&self.inner).tick_period(worker)
    }

    /// HTTP calls waiting for an answer (their handler said [`CalloutReply::Pending`]).
    pub fn pending_http_calls(&self) -> Vec<HttpCall> {
        lock(&self.inner).pending_http_calls()
    }

    /// Answers a pending HTTP call now.
    pub fn respond_http_call(
        &self,
        worker: usize,
        token: u32,
        reply: CalloutReply,
    ) -> Result<(), HostError> {
        lock(&self.inner).respond_http_call(worker, token, reply)
    }
}
