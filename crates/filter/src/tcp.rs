//! One connection through the filter running as a network filter: admitted or closed before
//! the next filter (`tcp_proxy`) sees it, so no upstream connection is ever opened for a
//! refused one. The decision is [`rollgate_policy::tcp`], tested natively.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, StreamContext};
use proxy_wasm::types::{Action, LogLevel, PeerType};

use super::host::{client_addr, increment, log, now_ns, EnvoyStore};
use super::Runtime;
use rollgate_policy::tcp::{Admitted, InFlight, Refusal};

pub(crate) struct Conn {
    rt: Option<Rc<Runtime>>,
    in_flight: Rc<RefCell<InFlight>>,
    /// What this connection holds until it closes; `None` once given back.
    admitted: Option<Admitted>,
}

impl Conn {
    pub(crate) fn new(rt: Option<Rc<Runtime>>, in_flight: Rc<RefCell<InFlight>>) -> Conn {
        Conn {
            rt,
            in_flight,
            admitted: None,
        }
    }

    /// Gives the connection's counts back, once, whichever close event comes first.
    fn release(&mut self) {
        let (Some(rt), Some(a)) = (&self.rt, self.admitted.take()) else {
            return;
        };
        let Some(tcp) = &rt.worker.policy.tcp else {
            return;
        };
        if let Ok(mut w) = self.in_flight.try_borrow_mut() {
            tcp.close(&mut w, &EnvoyStore, &a, now_ns());
        }
        increment(rt.tcp_ids.active, -1);
    }
}

impl Context for Conn {}

impl StreamContext for Conn {
    fn on_new_connection(&mut self) -> Action {
        let Some(rt) = self.rt.clone() else {
            return Action::Continue;
        };
        let Some(tcp) = &rt.worker.policy.tcp else {
            return Action::Continue;
        };
        let Ok(mut w) = self.in_flight.try_borrow_mut() else {
            return Action::Continue;
        };
        let ip = client_addr();
        match tcp.open(&mut w, &EnvoyStore, ip, now_ns()) {
            Ok(a) => {
                self.admitted = Some(a);
                increment(rt.tcp_ids.active, 1);
                Action::Continue
            }
            Err(why) => {
                let id = match why {
                    Refusal::Allow => rt.tcp_ids.refused_allow,
                    Refusal::InFlight => rt.tcp_ids.refused_in_flight,
                    Refusal::Rate => rt.tcp_ids.refused_rate,
                };
                increment(id, 1);
                if let Err(e) = hostcalls::close_downstream() {
                    log(
                        LogLevel::Error,
                        &format!("cannot close a refused connection: {e:?}"),
                    );
                }
                // Stops the filter chain: `tcp_proxy` never sees the connection.
                Action::Pause
            }
        }
    }

    // Test builds only (`make wasm-test-trap`): a client that sends `x-rollgate-test-trap` kills
    // the VM holding its connection, to test that the dead VM's counts are reclaimed.
    #[cfg(feature = "test-trap")]
    fn on_downstream_data(&mut self, size: usize, _: bool) -> Action {
        if let Ok(Some(data)) = hostcalls::get_buffer(
            proxy_wasm::types::BufferType::DownstreamData,
            0,
            size.min(64),
        ) {
            if data.starts_with(b"x-rollgate-test-trap") {
                core::arch::wasm32::unreachable();
            }
        }
        Action::Continue
    }

    fn on_downstream_close(&mut self, _: PeerType) {
        self.release();
    }

    fn on_upstream_close(&mut self, _: PeerType) {
        // `tcp_proxy` closes the downstream after the upstream; released either way.
        self.release();
    }

    fn on_log(&mut self) {
        self.release();
    }
}

impl Drop for Conn {
    // The context's deletion, the last event Envoy delivers, also when a close is not.
    fn drop(&mut self) {
        self.release();
    }
}
