//! One downstream connection through a network filter (`envoy.filters.network.wasm`), in the
//! order Envoy calls it. Copied from Envoy's `source/extensions/common/wasm/context.cc`
//! (envoyproxy/envoy, the version the index holds at commit b40935ac):
//!
//! - `Context::onNewConnection`: `onCreate()` (`proxy_on_context_create(id, root_id)`), then
//!   `onNetworkNewConnection()` (`proxy_on_new_connection(id)`: 0 is Continue, anything else
//!   StopIteration, so the next filter — `tcp_proxy` — does not see the connection).
//! - `Context::closeStream(WasmStreamType::Downstream)`: `connection().close(FlushWrite)`,
//!   which raises `LocalClose`; `Context::onEvent` turns `LocalClose`/`RemoteClose` into
//!   `onDownstreamConnectionClose(CloseType::Local / Remote)`
//!   (`proxy_on_downstream_connection_close(id, 1 / 2)`).
//! - `Context::onDownstreamConnectionClose` then `onCloseTCP()`: once per connection,
//!   `onDone()`, `onLog()`, `onDelete()` — in that order, unlike an HTTP stream's log first.
//!
//! A close the filter asks for during a callback is delivered after that callback returns, as
//! this host delivers every event a callback causes (Envoy's `DeferAfterCallActions`).

use super::plugin::PluginInner;
use super::shared::lock;
use super::vm::{Callback, StreamState, ROOT_CONTEXT_ID};
use super::{FailurePolicy, HostError, LogEntry};

/// `proxy_on_downstream_connection_close`'s peer type (proxy-wasm ABI `PeerType`).
const PEER_LOCAL: i32 = 1;
const PEER_REMOTE: i32 = 2;

/// What happened to a connection on one event ([`super::Plugin::open_connection`],
/// [`super::Plugin::close_connection`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionEvent {
    /// The worker VM holding the connection.
    pub worker: usize,
    /// The connection's context id (0 when no filter ran: a failed VM).
    pub context_id: u32,
    /// The connection goes on to the next filter (`tcp_proxy` opens its upstream): the filter
    /// returned Continue from `proxy_on_new_connection` and did not close it.
    pub admitted: bool,
    /// The filter closed the connection (`proxy_close_stream(Downstream)`); Envoy closes it at
    /// once, and the close callbacks have run.
    pub closed_by_filter: bool,
    /// The connection is closed (by the filter, by the client, or by Envoy on a failed VM).
    pub closed: bool,
    /// Why Envoy refused the connection without the filter: the VM had failed.
    pub failed_vm: bool,
    /// The log lines this event produced.
    pub logs: Vec<LogEntry>,
}

impl PluginInner {
    fn pick_worker(&mut self, worker: Option<usize>) -> Result<usize, HostError> {
        let workers = self.vms.len();
        match worker {
            Some(w) if w < workers => Ok(w),
            Some(worker) => Err(HostError::NoSuchWorker { worker, workers }),
            None => {
                let w = self.next_worker % workers;
                self.next_worker = self.next_worker.wrapping_add(1);
                Ok(w)
            }
        }
    }

    fn logs_since(&self, start: usize) -> Vec<LogEntry> {
        lock(&self.shared.logs)
            .get(start..)
            .map(<[LogEntry]>::to_vec)
            .unwrap_or_default()
    }

    /// A new downstream connection from `source` (`ip:port`, the plugin's `source.address`).
    pub(crate) fn open_connection(
        &mut self,
        source: Option<String>,
        worker: Option<usize>,
    ) -> Result<ConnectionEvent, HostError> {
        let w = self.pick_worker(worker)?;
        let log_start = lock(&self.shared.logs).len();
        if self.vms[w].failed.is_some() {
            let bypass = match self.failure_policy() {
                FailurePolicy::FailOpen => Some(true),
                FailurePolicy::FailClosed => Some(false),
                FailurePolicy::FailReload => self.reload(w).err().map(|_| false),
            };
            if let Some(admitted) = bypass {
                return Ok(ConnectionEvent {
                    worker: w,
                    context_id: 0,
                    admitted,
                    closed_by_filter: false,
                    closed: !admitted,
                    failed_vm: true,
                    logs: self.logs_since(log_start),
                });
            }
        }
        let ctx = self.vms[w].next_context_id();
        let result = self.connect(w, ctx, source, log_start);
        if result.is_err() {
            // The VM trapped: Envoy stops calling it.
            self.vms[w].store.data_mut().streams.remove(&ctx);
        }
        result
    }

    fn connect(
        &mut self,
        w: usize,
        ctx: u32,
        source: Option<String>,
        log_start: usize,
    ) -> Result<ConnectionEvent, HostError> {
        let start_ns = self.process.realtime_ns();
        self.vms[w].store.data_mut().streams.insert(
            ctx,
            StreamState {
                source,
                start_ns,
                ..StreamState::default()
            },
        );
        let c = ctx as i32;
        if let Some(f) = self.vms[w].exports.on_context_create.clone() {
            self.vms[w].invoke(
                &f,
                ctx,
                Callback::Stream,
                "proxy_on_context_create",
                (c, ROOT_CONTEXT_ID as i32),
            )?;
        }
        self.pump()?;
        let action = match self.vms[w].exports.on_new_connection.clone() {
            Some(f) => {
                self.vms[w].invoke(&f, ctx, Callback::Stream, "proxy_on_new_connection", c)?
            }
            None => 0,
        };
        self.pump()?;
        let closed_by_filter = self.vms[w]
            .store
            .data()
            .streams
            .get(&ctx)
            .is_some_and(|s| s.downstream_closed);
        if closed_by_filter {
            self.finish_connection(w, ctx, PEER_LOCAL)?;
        }
        Ok(ConnectionEvent {
            worker: w,
            context_id: ctx,
            admitted: action == 0 && !closed_by_filter,
            closed_by_filter,
            closed: closed_by_filter,
            failed_vm: false,
            logs: self.logs_since(log_start),
        })
    }

    /// The client closes connection `ctx` on worker `w`.
    pub(crate) fn close_connection(
        &mut self,
        w: usize,
        ctx: u32,
    ) -> Result<ConnectionEvent, HostError> {
        let workers = self.vms.len();
        let vm = self
            .vms
            .get_mut(w)
            .ok_or(HostError::NoSuchWorker { worker: w, workers })?;
        if !vm.store.data().streams.contains_key(&ctx) || ctx == ROOT_CONTEXT_ID {
            return Err(HostError::NoSuchConnection {
                worker: w,
                context_id: ctx,
            });
        }
        let log_start = lock(&self.shared.logs).len();
        let result = if self.vms[w].failed.is_some() {
            // A failed VM is not called again; the connection just goes.
            self.vms[w].store.data_mut().streams.remove(&ctx);
            Ok(())
        } else {
            self.finish_connection(w, ctx, PEER_REMOTE)
        };
        if result.is_err() {
            self.vms[w].store.data_mut().streams.remove(&ctx);
        }
        result?;
        Ok(ConnectionEvent {
            worker: w,
            context_id: ctx,
            admitted: false,
            closed_by_filter: false,
            closed: true,
            failed_vm: false,
            logs: self.logs_since(log_start),
        })
    }

    /// `onDownstreamConnectionClose(peer)` then `onCloseTCP()`: `proxy_on_done`,
    /// `proxy_on_log`, `proxy_on_delete`; the context is gone afterwards.
    fn finish_connection(&mut self, w: usize, ctx: u32, peer: i32) -> Result<(), HostError> {
        let c = ctx as i32;
        let vm = &mut self.vms[w];
        if let Some(f) = vm.exports.on_downstream_connection_close.clone() {
            vm.invoke(
                &f,
                ctx,
                Callback::Stream,
                "proxy_on_downstream_connection_close",
                (c, peer),
            )?;
        }
        if let Some(f) = vm.exports.on_done.clone() {
            vm.invoke(&f, ctx, Callback::Stream, "proxy_on_done", c)?;
        }
        if let Some(f) = vm.exports.on_log.clone() {
            vm.invoke(&f, ctx, Callback::Stream, "proxy_on_log", c)?;
        }
        if let Some(f) = vm.exports.on_delete.clone() {
            vm.invoke(&f, ctx, Callback::Stream, "proxy_on_delete", c)?;
        }
        vm.store.data_mut().streams.remove(&ctx);
        self.pump()
    }

    /// Connections open on the plugin's VMs: `(worker, context id)`.
    pub(crate) fn open_connections(&self) -> Vec<(usize, u32)> {
        let mut out: Vec<(usize, u32)> = self
            .vms
            .iter()
            .enumerate()
            .flat_map(|(w, vm)| vm.store.data().streams.keys().map(move |c| (w, *c)))
            .collect();
        out.sort_unstable();
        out
    }
}
