//! Process-scoped state of one [`super::Host`]: what Envoy keeps outside the VMs and shares
//! between every worker's VM (shared data, shared queues, stats, the clock). Scoped per `Host`
//! rather than global so that two hosts in one test process never see each other.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use super::clock::Clock;
use super::metrics::MetricStore;

/// Locks a mutex, recovering from poisoning: a panicking test thread must not turn every later
/// host call into a second panic that hides the first.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a shared-data write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CasMismatch {
    Mismatch,
}

/// Where `on_queue_ready` goes: the VM and root context that registered the queue last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueOwner {
    pub plugin: u64,
    pub worker: usize,
    /// The VM instance generation (a reloaded VM does not get its predecessor's events).
    pub generation: u64,
    pub context_id: u32,
}

#[derive(Debug)]
struct Queue {
    owner: QueueOwner,
    items: VecDeque<Vec<u8>>,
}

/// A pending `on_queue_ready` for `owner`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueReady {
    pub owner: QueueOwner,
    pub queue_id: u32,
}

/// Shared data and shared queues, with Envoy's rules (cpp-host `shared_data.cc`,
/// `shared_queue.cc`).
#[derive(Debug)]
pub(crate) struct SharedStore {
    /// `(vm_id, key) → (value, cas)`.
    data: BTreeMap<(String, Vec<u8>), (Vec<u8>, u32)>,
    /// One counter for every key and vm_id; starts at 1 and never yields 0 (0 means "no CAS").
    next_cas: u32,
    queue_ids: HashMap<(String, Vec<u8>), u32>,
    queues: HashMap<u32, Queue>,
    next_queue_id: u32,
    /// Notifications not yet delivered, in enqueue order.
    ready: VecDeque<QueueReady>,
    /// Live VMs per vm_id: a vm_id's data is erased when its last VM goes (Envoy's
    /// `VmIdHandle`).
    vm_refs: HashMap<String, usize>,
}

impl Default for SharedStore {
    fn default() -> SharedStore {
        SharedStore {
            data: BTreeMap::new(),
            next_cas: 1,
            queue_ids: HashMap::new(),
            queues: HashMap::new(),
            next_queue_id: 1,
            ready: VecDeque::new(),
            vm_refs: HashMap::new(),
        }
    }
}

impl SharedStore {
    fn take_cas(&mut self) -> u32 {
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        cas
    }

    /// `proxy_get_shared_data`: the value and its cas, or `None` (NotFound).
    pub(crate) fn get(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.data.get(&(vm_id.to_string(), key.to_vec())).cloned()
    }

    /// `proxy_set_shared_data`: a non-zero `cas` must match the stored one when the key
    /// exists; an absent key accepts any `cas`. Every successful write gets a fresh cas.
    pub(crate) fn set(
        &mut self,
        vm_id: &str,
        key: &[u8],
        value: &[u8],
        cas: u32,
    ) -> Result<u32, CasMismatch> {
        let k = (vm_id.to_string(), key.to_vec());
        if let Some((_, stored)) = self.data.get(&k) {
            if cas != 0 && cas != *stored {
                return Err(CasMismatch::Mismatch);
            }
        }
        let new = self.take_cas();
        self.data.insert(k, (value.to_vec(), new));
        Ok(new)
    }

    /// `proxy_register_shared_queue`: creates the queue or takes it over (last registrant
    /// wins), returning its id.
    pub(crate) fn register_queue(&mut self, vm_id: &str, name: &[u8], owner: QueueOwner) -> u32 {
        let key = (vm_id.to_string(), name.to_vec());
        if let Some(&id) = self.queue_ids.get(&key) {
            if let Some(q) = self.queues.get_mut(&id) {
                q.owner = owner;
            }
            return id;
        }
        let id = self.next_queue_id;
        self.next_queue_id += 1;
        self.queue_ids.insert(key, id);
        self.queues.insert(
            id,
            Queue {
                owner,
                items: VecDeque::new(),
            },
        );
        id
    }

    /// `proxy_resolve_shared_queue`.
    pub(crate) fn resolve_queue(&self, vm_id: &str, name: &[u8]) -> Option<u32> {
        self.queue_ids
            .get(&(vm_id.to_string(), name.to_vec()))
            .copied()
    }

    /// `proxy_enqueue_shared_queue`: `false` for an unknown queue. Schedules `on_queue_ready`
    /// for the registrant.
    pub(crate) fn enqueue(&mut self, id: u32, value: &[u8]) -> bool {
        let Some(q) = self.queues.get_mut(&id) else {
            return false;
        };
        q.items.push_back(value.to_vec());
        let owner = q.owner;
        self.ready.push_back(QueueReady {
            owner,
            queue_id: id,
        });
        true
    }

    /// `proxy_dequeue_shared_queue`: `Err` for an unknown queue, `Ok(None)` when empty.
    pub(crate) fn dequeue(&mut self, id: u32) -> Result<Option<Vec<u8>>, ()> {
        let q = self.queues.get_mut(&id).ok_or(())?;
        Ok(q.items.pop_front())
    }

    /// Number of items waiting in queue `(vm_id, name)`.
    pub(crate) fn queue_len(&self, vm_id: &str, name: &[u8]) -> Option<usize> {
        let id = self.resolve_queue(vm_id, name)?;
        self.queues.get(&id).map(|q| q.items.len())
    }

    /// Takes the pending notifications for `plugin`, leaving the others.
    pub(crate) fn take_ready(&mut self, plugin: Option<u64>) -> Vec<QueueReady> {
        let (mine, rest): (Vec<_>, Vec<_>) = self
            .ready
            .drain(..)
            .partition(|r| plugin.is_none_or(|p| r.owner.plugin == p));
        self.ready = rest.into();
        mine
    }

    /// Plugins with notifications waiting.
    pub(crate) fn ready_plugins(&self) -> Vec<u64> {
        let mut p: Vec<u64> = self.ready.iter().map(|r| r.owner.plugin).collect();
        p.dedup();
        p
    }

    /// A VM with `vm_id` started.
    pub(crate) fn vm_started(&mut self, vm_id: &str) {
        *self.vm_refs.entry(vm_id.to_string()).or_default() += 1;
    }

    /// A VM with `vm_id` went away; the last one takes the vm_id's shared data with it.
    pub(crate) fn vm_stopped(&mut self, vm_id: &str) {
        let left = match self.vm_refs.get_mut(vm_id) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        if left == 0 {
            self.vm_refs.remove(vm_id);
            self.data.retain(|(v, _), _| v != vm_id);
        }
    }
}

/// Everything one host process shares.
#[derive(Debug, Default)]
pub(crate) struct Process {
    pub clock: Mutex<Clock>,
    pub shared: Mutex<SharedStore>,
    pub metrics: Mutex<MetricStore>,
}

impl Process {
    /// Current wall-clock time in ns.
    pub(crate) fn realtime_ns(&self) -> u64 {
        lock(&self.clock).realtime_ns()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_rules_follow_envoy() {
        let mut s = SharedStore::default();
        assert_eq!(
            s.set("", b"k", b"v1", 77),
            Ok(1),
            "absent key accepts any cas"
        );
        assert_eq!(s.get("", b"k"), Some((b"v1".to_vec(), 1)));
        assert_eq!(s.set("", b"k", b"v2", 5), Err(CasMismatch::Mismatch));
        assert_eq!(s.set("", b"k", b"v2", 1), Ok(2));
        assert_eq!(s.set("", b"k", b"v3", 0), Ok(3), "cas 0 is unconditional");
        assert_eq!(s.get("other", b"k"), None, "keyed by vm_id too");
        s.next_cas = u32::MAX;
        assert_eq!(s.set("", b"x", b"", 0), Ok(u32::MAX));
        assert_eq!(s.set("", b"y", b"", 0), Ok(1), "the counter skips 0");
    }

    #[test]
    fn last_registrant_gets_the_queue() {
        let mut s = SharedStore::default();
        let a = QueueOwner {
            plugin: 1,
            worker: 0,
            generation: 0,
            context_id: 1,
        };
        let b = QueueOwner { worker: 1, ..a };
        let id = s.register_queue("", b"q", a);
        assert_eq!(s.register_queue("", b"q", b), id);
        assert!(s.enqueue(id, b"m"));
        let ready = s.take_ready(Some(1));
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].owner, b);
        assert_eq!(s.dequeue(id), Ok(Some(b"m".to_vec())));
        assert_eq!(s.dequeue(id), Ok(None));
        assert_eq!(s.dequeue(99), Err(()));
        assert!(!s.enqueue(99, b""));
    }

    #[test]
    fn last_vm_takes_its_data() {
        let mut s = SharedStore::default();
        s.vm_started("a");
        s.vm_started("a");
        s.set("a", b"k", b"v", 0).unwrap();
        s.vm_stopped("a");
        assert!(s.get("a", b"k").is_some());
        s.vm_stopped("a");
        assert!(s.get("a", b"k").is_none());
    }
}
