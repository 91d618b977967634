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
//! - `Context::onData(data, end_stream)`: `proxy_on_downstream_data(id, size, eos)` with the
//!   connection's read buffer as `DownstreamData`; Continue hands the buffer, as the filter
//!   left it, to `tcp_proxy`; StopIteration leaves it in the read buffer, so the next call sees
//!   it again followed by whatever arrived since. `proxy_continue_stream(Downstream)` is
//!   `continueReading()`: the held bytes go on without calling the filter again.
//! - `Context::onWrite(data, end_stream)`: `proxy_on_upstream_data` the same way for bytes on
//!   their way to the client, and on `end_stream` `proxy_on_upstream_connection_close(id, 0)`
//!   (Unknown: Envoy calls it there rather than on an upstream connection event).
//!
//! A close the filter asks for during a callback is delivered after that callback returns, as
//! this host delivers every event a callback causes (Envoy's `DeferAfterCallActions`).

use super::plugin::PluginInner;
use super::shared::lock;
use super::vm::{Callback, StreamState, ROOT_CONTEXT_ID};
use super::{FailurePolicy, HostError, LogEntry};

/// `proxy_on_downstream_connection_close`'s peer type (proxy-wasm ABI `PeerType`).
const PEER_UNKNOWN: i32 = 0;
const PEER_LOCAL: i32 = 1;
const PEER_REMOTE: i32 = 2;

/// Which way bytes travel through a network filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client towards the upstream (`proxy_on_downstream_data`).
    Downstream,
    /// From the upstream towards the client (`proxy_on_upstream_data`).
    Upstream,
}

/// What one data event did ([`super::Plugin::connection_data`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataEvent {
    /// Bytes that went on to the upstream, as the filter left them (this event's client
    /// bytes, or held ones a `proxy_continue_stream(Downstream)` released).
    pub to_upstream: Vec<u8>,
    /// Bytes that went on to the client, as the filter left them.
    pub to_client: Vec<u8>,
    /// The filter paused: this direction's bytes are held (Envoy keeps them in the read
    /// buffer and calls the filter again with them and the next bytes).
    pub held: bool,
    /// The filter closed the connection (`proxy_close_stream(Downstream)`); its close
    /// callbacks have run.
    pub closed_by_filter: bool,
    /// The filter asked Envoy to close the upstream side (`proxy_close_stream(Upstream)`).
    pub upstream_closed_by_filter: bool,
    /// The connection is closed: by the filter, or by Envoy because the VM had failed (the
    /// filter is not called; FAIL_OPEN passes the bytes unchanged instead).
    pub closed: bool,
    /// The log lines this event produced.
    pub logs: Vec<LogEntry>,
}

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
                network: true,
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
        self.close_with(w, ctx, PEER_REMOTE)
    }

    /// Envoy closes connection `ctx` on worker `w` itself (`LocalClose`).
    pub(crate) fn end_connection(
        &mut self,
        w: usize,
        ctx: u32,
    ) -> Result<ConnectionEvent, HostError> {
        self.close_with(w, ctx, PEER_LOCAL)
    }

    fn close_with(&mut self, w: usize, ctx: u32, peer: i32) -> Result<ConnectionEvent, HostError> {
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
            self.finish_connection(w, ctx, peer)
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

    /// `bytes` arrive on connection `ctx` of worker `w`, travelling `dir`; `end_of_stream`
    /// is the sender's half-close.
    pub(crate) fn connection_data(
        &mut self,
        w: usize,
        ctx: u32,
        dir: Direction,
        bytes: &[u8],
        end_of_stream: bool,
    ) -> Result<DataEvent, HostError> {
        let workers = self.vms.len();
        let vm = self
            .vms
            .get_mut(w)
            .ok_or(HostError::NoSuchWorker { worker: w, workers })?;
        if ctx == ROOT_CONTEXT_ID || !vm.store.data().streams.get(&ctx).is_some_and(|s| s.network) {
            return Err(HostError::NoSuchConnection {
                worker: w,
                context_id: ctx,
            });
        }
        let log_start = lock(&self.shared.logs).len();
        if self.vms[w].failed.is_some() {
            // proxy-wasm-cpp-host's CHECK_FAIL: fail open passes the bytes on; otherwise
            // `failStream` closes the connection and the filter is not called.
            let mut event = DataEvent::default();
            if self.failure_policy() == FailurePolicy::FailOpen {
                match dir {
                    Direction::Downstream => event.to_upstream = bytes.to_vec(),
                    Direction::Upstream => event.to_client = bytes.to_vec(),
                }
            } else {
                self.vms[w].store.data_mut().streams.remove(&ctx);
                event.closed = true;
            }
            event.logs = self.logs_since(log_start);
            return Ok(event);
        }
        let result = self.deliver(w, ctx, dir, bytes, end_of_stream, log_start);
        if result.is_err() {
            self.vms[w].store.data_mut().streams.remove(&ctx);
        }
        result
    }

    fn deliver(
        &mut self,
        w: usize,
        ctx: u32,
        dir: Direction,
        bytes: &[u8],
        end_of_stream: bool,
        log_start: usize,
    ) -> Result<DataEvent, HostError> {
        let size = {
            let Some(s) = self.vms[w].store.data_mut().streams.get_mut(&ctx) else {
                return Err(HostError::NoSuchConnection {
                    worker: w,
                    context_id: ctx,
                });
            };
            let (buf, open) = match dir {
                Direction::Downstream => (&mut s.downstream_data, &mut s.open_downstream_data),
                Direction::Upstream => (&mut s.upstream_data, &mut s.open_upstream_data),
            };
            buf.extend_from_slice(bytes);
            *open = true;
            buf.len()
        };
        let (f, name) = match dir {
            Direction::Downstream => (
                self.vms[w].exports.on_downstream_data.clone(),
                "proxy_on_downstream_data",
            ),
            Direction::Upstream => (
                self.vms[w].exports.on_upstream_data.clone(),
                "proxy_on_upstream_data",
            ),
        };
        let c = ctx as i32;
        let size = i32::try_from(size).unwrap_or(i32::MAX);
        let action = match f {
            Some(f) => self.vms[w].invoke(
                &f,
                ctx,
                Callback::Stream,
                name,
                (c, size, i32::from(end_of_stream)),
            )?,
            None => 0,
        };
        self.pump()?;
        if dir == Direction::Upstream && end_of_stream {
            if let Some(f) = self.vms[w].exports.on_upstream_connection_close.clone() {
                self.vms[w].invoke(
                    &f,
                    ctx,
                    Callback::Stream,
                    "proxy_on_upstream_connection_close",
                    (c, PEER_UNKNOWN),
                )?;
            }
            self.pump()?;
        }
        let mut event = DataEvent {
            held: action != 0,
            ..DataEvent::default()
        };
        let mut closed_by_filter = false;
        if let Some(s) = self.vms[w].store.data_mut().streams.get_mut(&ctx) {
            if !event.held {
                let (buf, open, out) = match dir {
                    Direction::Downstream => (
                        &mut s.downstream_data,
                        &mut s.open_downstream_data,
                        &mut event.to_upstream,
                    ),
                    Direction::Upstream => (
                        &mut s.upstream_data,
                        &mut s.open_upstream_data,
                        &mut event.to_client,
                    ),
                };
                *out = std::mem::take(buf);
                *open = false;
            }
            if std::mem::take(&mut s.resume_downstream) {
                event
                    .to_upstream
                    .extend_from_slice(&std::mem::take(&mut s.downstream_data));
                s.open_downstream_data = false;
            }
            event.upstream_closed_by_filter = s.upstream_closed;
            closed_by_filter = s.downstream_closed;
        }
        if closed_by_filter {
            self.finish_connection(w, ctx, PEER_LOCAL)?;
            event.closed_by_filter = true;
            event.closed = true;
        }
        event.logs = self.logs_since(log_start);
        Ok(event)
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
