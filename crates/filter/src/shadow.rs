//! Shadow traffic's proxy-wasm side: sending finished copies and taking their answers (the
//! bookkeeping is [`rollgate_policy::shadow`], tested natively).
//!
//! Copies are sent from the root context. The SDK delivers a call's answer to the context that
//! made the call, and silently drops it once that context is gone: a copy sent from the
//! request's own context would lose every answer slower than the primary's, which is exactly
//! the slow canary mirroring is for. A request context cannot act as the root, so it hands its
//! finished copy to the book and wakes the root through a shared queue of this worker's own
//! (Envoy runs `on_queue_ready` on the registering worker, in a later event-loop turn): the
//! root sends the copy, and its answer comes back to the root however long the request is gone.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType};

use super::host::{log, now_ns, EnvoyStore};
use rollgate_policy::shadow::{BodyHash, Book};

#[derive(Default)]
pub(crate) struct Shadow {
    pub(crate) book: RefCell<Book>,
    /// This root's wake-up queue, once registered.
    queue: Cell<Option<u32>>,
}

impl Shadow {
    /// Registers this root's wake-up queue (once); called from the root, which Envoy then wakes.
    pub(crate) fn register(&self) {
        if self.queue.get().is_some() {
            return;
        }
        // One queue per root context: Envoy wakes only a queue's last registrant.
        let seq = rollgate_policy::fetch::worker_id(&EnvoyStore, "rollgate.vm_seq", now_ns());
        match hostcalls::register_shared_queue(&format!("rollgate.shadow.{seq}")) {
            Ok(q) => self.queue.set(Some(q)),
            Err(e) => log(
                LogLevel::Warn,
                &format!("shadow queue not registered ({e:?}): copies are sent from their request"),
            ),
        }
    }

    /// Asks the root to send what is ready. False when there is no queue: the caller sends.
    pub(crate) fn wake(&self) -> bool {
        match self.queue.get() {
            Some(q) => hostcalls::enqueue_shared_queue(q, Some(b"1")).is_ok(),
            None => false,
        }
    }

    /// Empties the wake-up queue (its items only say "look at the book").
    pub(crate) fn drain(&self, queue: u32) {
        while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue) {}
    }

    /// Sends every ready copy from the context that runs this; its answers come back there.
    pub(crate) fn send_ready(&self) {
        loop {
            let Some(copy) = self
                .book
                .try_borrow_mut()
                .ok()
                .and_then(|mut b| b.take_ready())
            else {
                return;
            };
            let headers = copy
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let body = (!copy.body.is_empty()).then_some(copy.body.as_slice());
            let sent = hostcalls::dispatch_http_call(
                &copy.cluster,
                headers,
                body,
                vec![],
                Duration::from_nanos(copy.timeout_ns),
            );
            let Ok(mut book) = self.book.try_borrow_mut() else {
                return;
            };
            match sent {
                Ok(token) => book.sent(copy.id, token, now_ns(), &EnvoyStore),
                Err(_) => book.not_sent(copy.id, &EnvoyStore),
            }
        }
    }

    /// The answer to call `token`, if it is a copy's: read and booked. False otherwise.
    pub(crate) fn answer(&self, token: u32, body_size: usize) -> bool {
        let Ok(mut book) = self.book.try_borrow_mut() else {
            return false;
        };
        if !book.owns(token) {
            return false;
        }
        let status =
            match hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status") {
                Ok(Some(v)) => std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()),
                _ => None,
            };
        let limit = book.compare_body_of_call(token);
        let body = (limit > 0 && body_size <= limit)
            .then(|| {
                let mut hash = BodyHash::default();
                if body_size > 0 {
                    let chunk =
                        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size);
                    hash.add(&chunk.ok().flatten().unwrap_or_default());
                }
                hash.finish(limit)
            })
            .flatten();
        book.answer(token, status, body, now_ns(), &EnvoyStore)
    }
}
