//! A plugin's worker VMs: starting them in Envoy's lifecycle order, delivering asynchronous
//! events (callout responses, `on_queue_ready`), and firing timers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::Linker;

use super::shared::{lock, Process};
use super::vm::{Callback, PluginShared, Vm, VmState, ROOT_CONTEXT_ID};
use super::{
    linker, wasi, CalloutReply, FailurePolicy, GrpcReply, GrpcStreamCall, GrpcStreamHandler,
    GrpcStreamReply, GrpcStreamSent, HostError, HttpCall, LogEntry, PluginConfig, Response, Status,
    Wasm,
};

/// The state behind a [`super::Plugin`].
pub(crate) struct PluginInner {
    pub shared: Arc<PluginShared>,
    pub process: Arc<Process>,
    module: wasmtime::Module,
    /// Epoch ticks each call may run (interruptible modules only).
    deadline: Option<u64>,
    /// Counting fuel (a metered module).
    metered: bool,
    linker: Linker<VmState>,
    pub vms: Vec<Vm>,
    /// Bumped for every VM (re)started, so events for a replaced VM are not delivered to its
    /// successor.
    generation: u64,
    pub next_worker: usize,
}

impl PluginInner {
    pub(crate) fn start(
        id: u64,
        process: Arc<Process>,
        wasm: &Wasm,
        config: PluginConfig,
    ) -> Result<PluginInner, HostError> {
        let mut linker = Linker::new(wasm.module.engine());
        linker::add_to_linker(&mut linker).map_err(|e| HostError::Linker(format!("{e:#}")))?;
        wasi::add_to_linker(&mut linker).map_err(|e| HostError::Linker(format!("{e:#}")))?;
        let workers = config.workers;
        let deadline = wasm.interruptible.then(|| match config.call_timeout {
            Some(t) => {
                let tick = super::EPOCH_TICK.as_nanos();
                u64::try_from(t.as_nanos().div_ceil(tick))
                    .unwrap_or(u64::MAX / 2)
                    .max(1)
            }
            // Unbounded, in effect: ~89,000 years of 10 ms ticks, far from overflowing.
            None => 1 << 48,
        });
        let mut plugin = PluginInner {
            deadline,
            metered: wasm.metered,
            shared: Arc::new(PluginShared {
                id,
                config,
                logs: Mutex::new(Vec::new()),
                calls: Mutex::new(Vec::new()),
            }),
            process,
            module: wasm.module.clone(),
            linker,
            vms: Vec::with_capacity(workers),
            generation: 0,
            next_worker: 0,
        };
        for worker in 0..workers {
            let vm = plugin.start_vm(worker)?;
            plugin.vms.push(vm);
            plugin.pump()?;
        }
        Ok(plugin)
    }

    /// Instantiates and starts one VM: `_initialize`, root context, `on_vm_start`,
    /// `on_configure`.
    fn start_vm(&mut self, worker: usize) -> Result<Vm, HostError> {
        self.generation += 1;
        let state = VmState::new(
            Arc::clone(&self.process),
            Arc::clone(&self.shared),
            worker,
            self.generation,
        );
        let mut vm = Vm::instantiate(
            &self.module,
            &self.linker,
            state,
            self.deadline,
            self.metered,
        )?;
        let vm_id = self.shared.config.vm_id.clone();
        // From here the VM holds its vm_id's shared data alive (Envoy's VmIdHandle).
        lock(&self.process.shared).vm_started(&vm_id);
        let result = self.start_root(&mut vm, worker);
        if result.is_err() {
            lock(&self.process.shared).vm_stopped(&vm_id);
        }
        result.map(|()| vm)
    }

    fn start_root(&self, vm: &mut Vm, worker: usize) -> Result<(), HostError> {
        let root = ROOT_CONTEXT_ID as i32;
        let config = &self.shared.config;
        if let Some(f) = vm.exports.on_context_create.clone() {
            vm.invoke(
                &f,
                ROOT_CONTEXT_ID,
                Callback::VmStart,
                "proxy_on_context_create",
                (root, 0),
            )?;
        }
        if let Some(f) = vm.exports.on_vm_start.clone() {
            let len = config.vm_configuration.len() as i32;
            let ok = vm.invoke(
                &f,
                ROOT_CONTEXT_ID,
                Callback::VmStart,
                "proxy_on_vm_start",
                (root, len),
            )?;
            if ok == 0 {
                return Err(HostError::VmStartFailed {
                    worker,
                    logs: self.worker_logs(worker),
                });
            }
        }
        if let Some(f) = vm.exports.on_configure.clone() {
            let len = config.configuration.len() as i32;
            let ok = vm.invoke(
                &f,
                ROOT_CONTEXT_ID,
                Callback::Configure,
                "proxy_on_configure",
                (root, len),
            )?;
            if ok == 0 {
                return Err(HostError::ConfigureFailed {
                    worker,
                    logs: self.worker_logs(worker),
                });
            }
        }
        Ok(())
    }

    fn worker_logs(&self, worker: usize) -> Vec<LogEntry> {
        lock(&self.shared.logs)
            .iter()
            .filter(|l| l.worker == worker)
            .cloned()
            .collect()
    }

    /// Replaces worker `worker`'s failed VM with a fresh one (FAIL_RELOAD).
    pub(crate) fn reload(&mut self, worker: usize) -> Result<(), HostError> {
        let vm = self.start_vm(worker)?;
        self.vms[worker] = vm;
        lock(&self.process.shared).vm_stopped(&self.shared.config.vm_id);
        self.pump()
    }

    /// Whether streams on `worker` bypass a failed VM, get a 503, or get a reloaded VM.
    pub(crate) fn failure_policy(&self) -> FailurePolicy {
        self.shared.config.failure_policy
    }

    /// Delivers what is due "right after the current callback": fresh callouts (asking their
    /// cluster's handler) and `on_queue_ready` for queues this plugin's VMs registered. Repeats
    /// until nothing is left, since a delivery may cause more.
    pub(crate) fn pump(&mut self) -> Result<(), HostError> {
        loop {
            let mut progressed = false;
            for w in 0..self.vms.len() {
                if self.vms[w].failed.is_some() {
                    continue;
                }
                let fresh: Vec<u32> = self.vms[w]
                    .store
                    .data()
                    .callouts
                    .iter()
                    .filter(|(_, c)| c.fresh)
                    .map(|(t, _)| *t)
                    .collect();
                for token in fresh {
                    progressed = true;
                    let call = match self.vms[w].store.data_mut().callouts.get_mut(&token) {
                        Some(c) => {
                            c.fresh = false;
                            c.request.clone()
                        }
                        None => continue,
                    };
                    let handler = self.shared.config.clusters.get(&call.cluster).cloned();
                    let reply = handler.map_or(CalloutReply::Reset, |h| h(&call));
                    if reply != CalloutReply::Pending {
                        self.deliver_callout(w, token, reply)?;
                    }
                }
            }
            for w in 0..self.vms.len() {
                loop {
                    if self.vms[w].failed.is_some() {
                        break;
                    }
                    let Some((_, call)) = self.vms[w].store.data_mut().grpc_calls.pop_first()
                    else {
                        break;
                    };
                    progressed = true;
                    let reply = match self.shared.config.grpc_clusters.get(&call.cluster) {
                        Some(h) => h.clone()(&call),
                        None => GrpcReply::refused(),
                    };
                    self.deliver_grpc(w, call.token, reply)?;
                }
            }
            for w in 0..self.vms.len() {
                while self.vms[w].failed.is_none() && self.exchange_grpc_stream(w)? {
                    progressed = true;
                }
            }
            let ready = lock(&self.process.shared).take_ready(Some(self.shared.id));
            for r in ready {
                progressed = true;
                let Some(vm) = self.vms.get_mut(r.owner.worker) else {
                    continue;
                };
                if vm.store.data().generation != r.owner.generation || vm.failed.is_some() {
                    continue;
                }
                if let Some(f) = vm.exports.on_queue_ready.clone() {
                    vm.invoke(
                        &f,
                        r.owner.context_id,
                        Callback::QueueReady,
                        "proxy_on_queue_ready",
                        (r.owner.context_id as i32, r.queue_id as i32),
                    )?;
                }
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    /// Calls `proxy_on_http_call_response` on the root context (Envoy runs callouts on the
    /// root context; the SDK switches to the originating stream itself).
    fn deliver_callout(
        &mut self,
        w: usize,
        token: u32,
        reply: CalloutReply,
    ) -> Result<(), HostError> {
        let vm = &mut self.vms[w];
        if vm.store.data_mut().callouts.remove(&token).is_none() {
            return Err(HostError::NoSuchCall { worker: w, token });
        }
        let answer = match &reply {
            CalloutReply::Respond(r) => Some(u32::from(r.status)),
            _ => None,
        };
        self.shared.call_answered(w, token, answer);
        let vm = &mut self.vms[w];
        let counts = {
            let st = vm.store.data_mut();
            match reply {
                CalloutReply::Respond(r) => {
                    let headers = r.header_map();
                    let counts = (headers.len(), r.body.len(), r.trailers.len());
                    st.call_response = Some((headers, r.body, r.trailers));
                    st.status = (Status::Ok as u32, String::new());
                    counts
                }
                _ => {
                    st.call_response = None;
                    st.status = (Status::BrokenConnection as u32, "reset".into());
                    (0, 0, 0)
                }
            }
        };
        let result = match vm.exports.on_http_call_response.clone() {
            Some(f) => vm
                .invoke(
                    &f,
                    ROOT_CONTEXT_ID,
                    Callback::HttpCallResponse,
                    "proxy_on_http_call_response",
                    (
                        ROOT_CONTEXT_ID as i32,
                        token as i32,
                        counts.0 as i32,
                        counts.1 as i32,
                        counts.2 as i32,
                    ),
                )
                .map_err(HostError::from),
            None => Ok(()),
        };
        let st = vm.store.data_mut();
        st.call_response = None;
        st.status = (Status::Ok as u32, String::new());
        result
    }

    /// Calls `proxy_on_grpc_receive` (a message) or `proxy_on_grpc_close` (a status) on the
    /// root context, as Envoy does for a unary call (the SDK 0.2.5 turns either into
    /// `on_grpc_call_response(token, status, size)` on the context that made the call).
    fn deliver_grpc(&mut self, w: usize, token: u32, reply: GrpcReply) -> Result<(), HostError> {
        let vm = &mut self.vms[w];
        let (export, name, arg) = {
            let st = vm.store.data_mut();
            match reply {
                GrpcReply::Message(m) => {
                    let size = m.len();
                    st.grpc_receive = Some(m);
                    st.status = (Status::Ok as u32, String::new());
                    (
                        vm.exports.on_grpc_receive.clone(),
                        "proxy_on_grpc_receive",
                        size as i32,
                    )
                }
                GrpcReply::Close { status, message } => {
                    st.grpc_receive = None;
                    st.status = (status, message);
                    (
                        vm.exports.on_grpc_close.clone(),
                        "proxy_on_grpc_close",
                        status as i32,
                    )
                }
            }
        };
        let result = match export {
            Some(f) => vm
                .invoke(
                    &f,
                    ROOT_CONTEXT_ID,
                    Callback::GrpcCallResponse,
                    name,
                    (ROOT_CONTEXT_ID as i32, token as i32, arg),
                )
                .map_err(HostError::from),
            None => Ok(()),
        };
        let st = vm.store.data_mut();
        st.grpc_receive = None;
        st.status = (Status::Ok as u32, String::new());
        result
    }

    /// Asks one gRPC stream's handler about what the plugin did (a cancelled stream's first),
    /// and delivers its answer; `false` when no stream of worker `w` had anything to ask.
    fn exchange_grpc_stream(&mut self, w: usize) -> Result<bool, HostError> {
        let st = self.vms[w].store.data_mut();
        if !st.grpc_cancelled.is_empty() {
            let c = st.grpc_cancelled.remove(0);
            // The handler hears of the cancel; nothing it answers is delivered.
            let mut handler = match c.handler {
                Some(h) => h,
                None => self.open_grpc_stream(&c.call),
            };
            handler.exchange(&c.outbox);
            return Ok(true);
        }
        let Some(token) = st
            .grpc_streams
            .iter()
            .find(|(_, s)| s.due())
            .map(|(t, _)| *t)
        else {
            return Ok(false);
        };
        let (call, handler, outbox) = match st.grpc_streams.get_mut(&token) {
            Some(s) => {
                s.outbox_bytes = 0;
                (
                    s.call.clone(),
                    s.handler.take(),
                    std::mem::take(&mut s.outbox),
                )
            }
            None => return Ok(false),
        };
        let mut handler = match handler {
            Some(h) => h,
            None => self.open_grpc_stream(&call),
        };
        let replies = handler.exchange(&outbox);
        if let Some(s) = self.vms[w].store.data_mut().grpc_streams.get_mut(&token) {
            s.handler = Some(handler);
        }
        for reply in replies {
            if self.vms[w].failed.is_some() {
                break;
            }
            // Cancelled (or closed on both sides) meanwhile: nothing more is delivered.
            match self.vms[w].store.data().grpc_streams.get(&token) {
                Some(s) if !s.remote_closed => {}
                _ => break,
            }
            self.deliver_grpc_stream(w, token, reply)?;
        }
        Ok(true)
    }

    /// The server side of a new stream: its cluster's handler, or a refused connection for a
    /// cluster declared only for HTTP or unary calls.
    fn open_grpc_stream(&self, call: &GrpcStreamCall) -> Box<dyn GrpcStreamHandler> {
        match self.shared.config.grpc_stream_clusters.get(&call.cluster) {
            Some(open) => open(call),
            None => {
                let mut refused = Some(GrpcStreamReply::refused());
                Box::new(move |_: &[GrpcStreamSent]| refused.take().unwrap_or_default())
            }
        }
    }

    /// Delivers one thing the server sent on stream `token` to the root context, as Envoy's
    /// `GrpcStreamClientHandler` does (context.h; `Context::onGrpcReceive*Wrapper` and
    /// `onGrpcCloseWrapper` in context.cc).
    fn deliver_grpc_stream(
        &mut self,
        w: usize,
        token: u32,
        reply: GrpcStreamReply,
    ) -> Result<(), HostError> {
        let vm = &mut self.vms[w];
        let (export, name, arg) = {
            let st = vm.store.data_mut();
            match reply {
                GrpcStreamReply::InitialMetadata(h) => {
                    let n = h.len();
                    st.grpc_metadata = Some((4, h));
                    (
                        vm.exports.on_grpc_receive_initial_metadata.clone(),
                        "proxy_on_grpc_receive_initial_metadata",
                        n as i32,
                    )
                }
                GrpcStreamReply::Message(m) => {
                    let size = m.len();
                    st.grpc_receive = Some(m);
                    (
                        vm.exports.on_grpc_receive.clone(),
                        "proxy_on_grpc_receive",
                        size as i32,
                    )
                }
                GrpcStreamReply::TrailingMetadata(h) => {
                    let n = h.len();
                    st.grpc_metadata = Some((5, h));
                    (
                        vm.exports.on_grpc_receive_trailing_metadata.clone(),
                        "proxy_on_grpc_receive_trailing_metadata",
                        n as i32,
                    )
                }
                GrpcStreamReply::Close { status, message } => {
                    // The stream is forgotten once both sides are closed; until the plugin
                    // closes its side, sends are accepted and go nowhere.
                    if let Some(s) = st.grpc_streams.get_mut(&token) {
                        s.remote_closed = true;
                        s.outbox.clear();
                        s.handler = None;
                        if s.local_closed {
                            st.grpc_streams.remove(&token);
                        }
                    }
                    st.status = (status, message);
                    (
                        vm.exports.on_grpc_close.clone(),
                        "proxy_on_grpc_close",
                        status as i32,
                    )
                }
            }
        };
        let result = match export {
            Some(f) => vm
                .invoke(
                    &f,
                    ROOT_CONTEXT_ID,
                    Callback::GrpcCallResponse,
                    name,
                    (ROOT_CONTEXT_ID as i32, token as i32, arg),
                )
                .map_err(HostError::from),
            None => Ok(()),
        };
        let st = vm.store.data_mut();
        st.grpc_receive = None;
        st.grpc_metadata = None;
        st.status = (Status::Ok as u32, String::new());
        result
    }

    /// The earliest tick or callout timeout of any live VM (elapsed-clock ns).
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.vms
            .iter()
            .filter(|vm| vm.failed.is_none())
            .flat_map(|vm| {
                let st = vm.store.data();
                st.next_tick_ns
                    .into_iter()
                    .chain(st.callouts.values().filter_map(|c| c.deadline_ns))
            })
            .min()
    }

    /// Fires every tick and timeout due at `now`, worker by worker.
    pub(crate) fn fire_due(&mut self, now: u64) -> Result<(), HostError> {
        for w in 0..self.vms.len() {
            if self.vms[w].failed.is_some() {
                continue;
            }
            let vm = &mut self.vms[w];
            let st = vm.store.data_mut();
            if st.next_tick_ns.is_some_and(|t| t <= now) {
                // Envoy re-arms the timer when it fires: the next tick is one period later.
                st.next_tick_ns = Some(now + u64::from(st.tick_period_ms) * 1_000_000);
                if let Some(f) = vm.exports.on_tick.clone() {
                    vm.invoke(
                        &f,
                        ROOT_CONTEXT_ID,
                        Callback::Tick,
                        "proxy_on_tick",
                        ROOT_CONTEXT_ID as i32,
                    )?;
                }
            }
            let expired: Vec<u32> = self.vms[w]
                .store
                .data()
                .callouts
                .iter()
                .filter(|(_, c)| !c.fresh && c.deadline_ns.is_some_and(|d| d <= now))
                .map(|(t, _)| *t)
                .collect();
            for token in expired {
                // Envoy's async client answers a timed-out call with its router's local reply.
                let timeout = Response::new(504)
                    .header("content-length", "24")
                    .header("content-type", "text/plain")
                    .body("upstream request timeout");
                if self.vms[w].failed.is_none() {
                    self.deliver_callout(w, token, CalloutReply::Respond(timeout))?;
                }
            }
        }
        self.pump()
    }

    pub(crate) fn fuel_consumed(&self) -> Option<u64> {
        self.metered
            .then(|| self.vms.iter().map(Vm::fuel_consumed).sum())
    }

    pub(crate) fn workers(&self) -> usize {
        self.vms.len()
    }

    pub(crate) fn logs(&self) -> Vec<LogEntry> {
        lock(&self.shared.logs).clone()
    }

    pub(crate) fn clear_logs(&self) {
        lock(&self.shared.logs).clear();
    }

    pub(crate) fn failure(&self, worker: usize) -> Option<String> {
        self.vms.get(worker)?.failed.clone()
    }

    pub(crate) fn tick_period(&self, worker: usize) -> Option<Duration> {
        let st = self.vms.get(worker)?.store.data();
        (st.tick_period_ms > 0).then(|| Duration::from_millis(st.tick_period_ms.into()))
    }

    pub(crate) fn pending_http_calls(&self) -> Vec<HttpCall> {
        self.vms
            .iter()
            .flat_map(|vm| vm.store.data().callouts.values())
            .filter(|c| !c.fresh)
            .map(|c| c.request.clone())
            .collect()
    }

    pub(crate) fn respond_http_call(
        &mut self,
        worker: usize,
        token: u32,
        reply: CalloutReply,
    ) -> Result<(), HostError> {
        let workers = self.vms.len();
        let vm = self
            .vms
            .get(worker)
            .ok_or(HostError::NoSuchWorker { worker, workers })?;
        if !vm.store.data().callouts.contains_key(&token) {
            return Err(HostError::NoSuchCall { worker, token });
        }
        if reply == CalloutReply::Pending {
            return Ok(());
        }
        self.deliver_callout(worker, token, reply)?;
        self.pump()
    }
}

impl Drop for PluginInner {
    fn drop(&mut self) {
        let mut shared = lock(&self.process.shared);
        for _ in &self.vms {
            shared.vm_stopped(&self.shared.config.vm_id);
        }
    }
}
