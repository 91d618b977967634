//! Fetching the policy from the sidecar, one worker at a time.
//!
//! Every worker ticks. A worker that finds no poll in flight anywhere takes a lease in shared
//! data (compare-and-swap) and long-polls the sidecar; a valid answer is published to shared
//! data (`<prefix>version`, `<prefix>policy`), and every worker adopts a newer published
//! version on its next tick. An answer that fails validation is refused: nothing is published
//! and the last good policy keeps serving. Failures back off exponentially from `poll` to 30 s.
//!
//! A VM can die (trap) while it holds the lease or while it applies a version. Its holder
//! renews the lease on every tick, so the lease of a dead VM lapses within [`LEASE_NS`] and the
//! fresh VM Envoy starts in its place (`failure_policy: FAIL_RELOAD`) polls again at once.
//! A worker applying a version counts itself in shared data (`<prefix>applying`) and out when
//! done; a fresh VM that finds VMs still counted adds them to that version's deaths, and a
//! version that killed [`MAX_DEATHS`] VMs is refused: never applied again (`<prefix>poisoned`),
//! and polling asks for a newer one.

use crate::config::Source;
use crate::policy::{accept_policy, Policy};
use crate::store::SharedStore;

const MAX_BACKOFF_NS: u64 = 30_000_000_000;
/// How long a lease lasts unless its holder renews it (every tick, 100 ms). It used to last the
/// whole long-poll wait plus 10 s: a VM that died holding it kept every other worker, and its
/// own replacement, from polling for 30 s with the shipped `wait: 20s`.
pub const LEASE_NS: u64 = 2_000_000_000;
/// VMs a version may kill while being applied before it is refused for good.
pub const MAX_DEATHS: u64 = 2;

/// One worker's fetch state.
#[derive(Debug, Clone)]
pub struct Fetcher {
    /// Where to fetch from.
    pub source: Source,
    worker: u64,
    /// Version this worker runs (0: none fetched yet).
    pub version: u64,
    /// The filter runs as a network filter: fetched policies must be network-only ones, and
    /// an HTTP filter's must route (the SDK fixes a VM's context kind; a policy of the other
    /// kind would make the next stream trap the VM).
    pub network: bool,
    /// Newest version refused; polling asks for newer than this.
    rejected: u64,
    in_flight: bool,
    next_attempt_ns: u64,
    failures: u32,
}

/// How a poll ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 200 with a policy of this version.
    Policy {
        /// `x-rollgate-version`.
        version: u64,
        /// The policy JSON.
        body: Vec<u8>,
    },
    /// 200 with a body over [`crate::limits::MAX_POLICY_BYTES`]: refused unread.
    Oversized {
        /// `x-rollgate-version`.
        version: u64,
        /// The body's size in bytes.
        size: usize,
    },
    /// 304: nothing newer within the wait.
    NotModified,
    /// Anything else: the reason.
    Failed(String),
}

/// What the glue should do after a poll ended.
#[derive(Debug)]
pub enum Reaction {
    /// Run this policy (this worker fetched and published it).
    Adopt(u64, Box<Policy>),
    /// The answer was refused; the message says why. The last good policy keeps serving.
    Refused(u64, String),
    /// Nothing new.
    Unchanged,
    /// The poll failed; retry after the back-off. The message says why.
    Failed(String, u64),
}

fn u64_le(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))
}

/// An id for this VM, distinct among the proxy's VMs (the fetch lease's holder): a sequence
/// number shared by every VM, counted up by compare-and-swap, in the high bits. Two VMs can
/// draw the same number only when both create the counter at once (a write to an absent key
/// takes no CAS token), so the low 32 bits of `clock_ns` tell those apart.
pub fn worker_id(store: &impl SharedStore, key: &str, clock_ns: u64) -> u64 {
    let low = clock_ns & 0xffff_ffff;
    // A few tries: each failure means another VM counted at that instant, not a fault.
    for _ in 0..16 {
        let (seq, cas) = match store.get(key) {
            Some((v, cas)) => (u64_le(&v).unwrap_or(0).wrapping_add(1), cas),
            None => (1, 0),
        };
        if store.set(key, &seq.to_le_bytes(), cas).is_ok() {
            return (seq << 32) | low;
        }
    }
    clock_ns
}

impl Fetcher {
    /// A fetcher for worker `worker` (any id unique among the proxy's workers: [`worker_id`]).
    pub fn new(source: Source, worker: u64) -> Fetcher {
        Fetcher {
            source,
            worker,
            version: 0,
            network: false,
            rejected: 0,
            in_flight: false,
            next_attempt_ns: 0,
            failures: 0,
        }
    }

    fn key(&self, what: &str) -> String {
        format!("{}{what}", self.source.key_prefix)
    }

    /// A published policy newer than the one this worker runs, if any (one small read when
    /// there is none).
    pub fn published(&self, store: &dyn SharedStore) -> Option<(u64, Vec<u8>)> {
        let v = store
            .get(&self.key("version"))
            .and_then(|(b, _)| u64_le(&b))?;
        if v <= self.version {
            return None;
        }
        let (rec, _) = store.get(&self.key("policy"))?;
        let body_version = u64_le(&rec)?;
        // A published version that then killed the VMs applying it is never applied again.
        (body_version > self.version.max(self.stored(store, "poisoned")))
            .then(|| (body_version, rec.get(8..).unwrap_or(&[]).to_vec()))
    }

    /// A version number kept in shared data under `what` (0 if none).
    fn stored(&self, store: &dyn SharedStore, what: &str) -> u64 {
        store
            .get(&self.key(what))
            .and_then(|(b, _)| u64_le(&b))
            .unwrap_or(0)
    }

    /// On every tick: keeps this worker's lease alive while its poll is in flight, so only a
    /// dead holder's lease lapses.
    pub fn renew(&self, store: &dyn SharedStore, now: u64) {
        if !self.in_flight {
            return;
        }
        let key = self.key("lease");
        if let Some((b, cas)) = store.get(&key) {
            if u64_le(&b) == Some(self.worker) {
                let mut lease = self.worker.to_le_bytes().to_vec();
                lease.extend(now.saturating_add(LEASE_NS).to_le_bytes());
                let _ = store.set(&key, &lease, cas);
            }
        }
    }

    /// `<prefix>applying`: the version being applied and how many VMs are applying it.
    fn applying_mark(&self, store: &dyn SharedStore) -> Option<(u64, u64, u32)> {
        let (b, cas) = store.get(&self.key("applying"))?;
        Some((u64_le(&b)?, b.get(8..).and_then(u64_le).unwrap_or(0), cas))
    }

    /// Sets `<prefix>applying` to `version` applied by `count` VMs if it is still as read
    /// (`cas`).
    fn set_applying(&self, store: &dyn SharedStore, version: u64, count: u64, cas: u32) -> bool {
        let mut mark = version.to_le_bytes().to_vec();
        mark.extend(count.to_le_bytes());
        store.set(&self.key("applying"), &mark, cas).is_ok()
    }

    /// Counts this worker in among those applying `version`; [`Fetcher::applied`] counts it
    /// out. A VM that traps in between stays counted, for [`Fetcher::recover`].
    pub fn applying(&self, store: &dyn SharedStore, version: u64) {
        // Compare-and-swap against the other workers; a few tries, then give up (the count
        // only decides how soon a version that kills VMs is refused).
        for _ in 0..4 {
            let (count, cas) = match self.applying_mark(store) {
                Some((v, n, cas)) if v == version => (n.saturating_add(1), cas),
                Some((_, _, cas)) => (1, cas),
                None => (1, 0),
            };
            if self.set_applying(store, version, count, cas) {
                return;
            }
        }
    }

    /// Counts this worker out of those applying `version`.
    pub fn applied(&self, store: &dyn SharedStore, version: u64) {
        for _ in 0..4 {
            match self.applying_mark(store) {
                Some((v, n, cas)) if v == version && n > 0 => {
                    if self.set_applying(store, version, n - 1, cas) {
                        return;
                    }
                }
                _ => return,
            }
        }
    }

    /// In a VM that just started: VMs still counted as applying a version died doing it
    /// (applying takes microseconds; a VM is replaced a second after it died). Adds them to
    /// that version's deaths, and refuses the version once it has killed [`MAX_DEATHS`] VMs.
    /// Returns the version and its deaths so far, if there were new ones.
    ///
    /// A worker applying at this very instant is counted too; that takes a reload to coincide
    /// with an apply, within microseconds.
    pub fn recover(&mut self, store: &dyn SharedStore) -> Option<(u64, u64)> {
        let (version, dead, cas) = self.applying_mark(store)?;
        // Only the VM whose compare-and-swap wins counts these deaths.
        if dead == 0 || !self.set_applying(store, version, 0, cas) {
            return None;
        }
        let deaths_key = self.key("deaths");
        let before = match store.get(&deaths_key) {
            Some((d, _)) if u64_le(&d) == Some(version) => d.get(8..).and_then(u64_le).unwrap_or(0),
            _ => 0,
        };
        let deaths = before.saturating_add(dead);
        let mut rec = version.to_le_bytes().to_vec();
        rec.extend(deaths.to_le_bytes());
        let _ = store.set(&deaths_key, &rec, 0);
        if deaths >= MAX_DEATHS {
            let poisoned = version.max(self.stored(store, "poisoned"));
            let _ = store.set(&self.key("poisoned"), &poisoned.to_le_bytes(), 0);
            self.refuse(store, version);
        }
        Some((version, deaths))
    }

    /// Records that this worker now runs `version`.
    pub fn adopted(&mut self, version: u64) {
        self.version = self.version.max(version);
    }

    /// On a tick: the path (with query) to poll now, if this worker should poll — it then holds
    /// the lease and must report the outcome with [`Fetcher::finished`].
    pub fn poll_now(&mut self, store: &dyn SharedStore, now: u64) -> Option<String> {
        if self.in_flight || now < self.next_attempt_ns {
            return None;
        }
        let key = self.key("lease");
        let current = store.get(&key);
        let cas = current.as_ref().map_or(0, |(_, c)| *c);
        if let Some((b, _)) = &current {
            let (owner, expires) = (
                u64_le(b).unwrap_or(0),
                b.get(8..).and_then(u64_le).unwrap_or(0),
            );
            if owner != self.worker && now < expires {
                return None;
            }
        }
        let mut lease = self.worker.to_le_bytes().to_vec();
        lease.extend(now.saturating_add(LEASE_NS).to_le_bytes());
        store.set(&key, &lease, cas).ok()?;
        self.in_flight = true;
        // A version refused by any worker is not worth fetching again.
        let have = self
            .version
            .max(self.rejected)
            .max(self.stored(store, "refused"));
        Some(format!(
            "{}?version={have}&wait={}",
            self.source.path, self.source.wait
        ))
    }

    /// The timeout to give the poll: the wait plus a margin for the answer to travel.
    pub fn timeout_ns(&self) -> u64 {
        self.source.wait_ns + 5_000_000_000
    }

    /// Handles the end of this worker's poll: validates and publishes a new policy, or backs
    /// off. Releases the lease.
    pub fn finished(&mut self, store: &dyn SharedStore, now: u64, outcome: Outcome) -> Reaction {
        self.in_flight = false;
        self.release(store);
        match outcome {
            Outcome::NotModified => {
                self.failures = 0;
                Reaction::Unchanged
            }
            Outcome::Policy { version, .. } if version <= self.version => {
                self.failures = 0;
                Reaction::Unchanged
            }
            Outcome::Oversized { version, .. } if version <= self.version => {
                self.failures = 0;
                Reaction::Unchanged
            }
            Outcome::Oversized { version, size } => {
                self.failures = 0;
                self.refuse(store, version);
                Reaction::Refused(
                    version,
                    format!(
                        "policy: {size} bytes, more than the limit of {} bytes",
                        crate::limits::MAX_POLICY_BYTES
                    ),
                )
            }
            Outcome::Policy { version, .. } if version <= self.stored(store, "poisoned") => {
                // Asked for before the version was refused (it killed VMs applying it).
                self.failures = 0;
                Reaction::Unchanged
            }
            Outcome::Policy { version, body } => {
                self.failures = 0;
                // Cleared by the glue once the policy runs ([`Fetcher::applied`]).
                self.applying(store, version);
                let fits = accept_policy(&body).and_then(|p| {
                    if p.network_only() == self.network {
                        return Ok(p);
                    }
                    let why = if self.network {
                        "this network filter runs connection-limit policies only (tcp, no variants)"
                    } else {
                        "a connection-limit policy without variants runs only in a network filter, not in this HTTP filter"
                    };
                    Err(crate::policy::PolicyErrors(vec![crate::policy::PolicyError {
                        path: "tcp".into(),
                        message: why.into(),
                    }]))
                });
                match fits {
                    Ok(p) => {
                        let mut rec = version.to_le_bytes().to_vec();
                        rec.extend(&body);
                        // Policy first, then the version that points at it.
                        let _ = store.set(&self.key("policy"), &rec, 0);
                        let _ = store.set(&self.key("version"), &version.to_le_bytes(), 0);
                        self.version = version;
                        Reaction::Adopt(version, Box::new(p))
                    }
                    Err(e) => {
                        self.applied(store, version);
                        self.refuse(store, version);
                        Reaction::Refused(version, e.to_string())
                    }
                }
            }
            Outcome::Failed(why) => {
                self.failures = self.failures.saturating_add(1);
                let backoff = self
                    .source
                    .poll_ns
                    .saturating_mul(1 << self.failures.min(16).saturating_sub(1))
                    .min(MAX_BACKOFF_NS);
                self.next_attempt_ns = now + backoff;
                Reaction::Failed(why, backoff)
            }
        }
    }

    /// Remembers a refused version so no worker fetches it again.
    fn refuse(&mut self, store: &dyn SharedStore, version: u64) {
        self.rejected = self
            .rejected
            .max(version)
            .max(self.stored(store, "refused"));
        let _ = store.set(&self.key("refused"), &self.rejected.to_le_bytes(), 0);
    }

    fn release(&self, store: &dyn SharedStore) {
        let key = self.key("lease");
        if let Some((b, cas)) = store.get(&key) {
            if u64_le(&b) == Some(self.worker) {
                let mut lease = self.worker.to_le_bytes().to_vec();
                lease.extend(0u64.to_le_bytes());
                let _ = store.set(&key, &lease, cas);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids_are_distinct_even_at_the_same_instant() {
        let store = crate::store::MemStore::default();
        let ids: Vec<u64> = (0..100).map(|_| worker_id(&store, "w", 42)).collect();
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "{ids:?}");
        assert_eq!(ids[0] >> 32, 1);
        assert_eq!(ids[99] >> 32, 100);
    }
    use crate::config::accept_config;
    use crate::store::MemStore;

    const S: u64 = 1_000_000_000;
    const GOOD: &[u8] =
        br#"{"name":"flask","variants":{"stable":"s","canary":"c"},"default":"canary"}"#;

    fn fetcher(worker: u64) -> Fetcher {
        let c = accept_config(br#"{"source":{"cluster":"rollgate","path":"/v1/policies/flask","poll":"1s","wait":"20s"}}"#).unwrap();
        Fetcher::new(c.source.unwrap(), worker)
    }

    #[test]
    fn one_worker_polls_publishes_and_the_others_adopt() {
        let store = MemStore::default();
        let (mut a, mut b) = (fetcher(1), fetcher(2));
        let path = a.poll_now(&store, 0).unwrap();
        assert_eq!(path, "/v1/policies/flask?version=0&wait=20s");
        assert_eq!(b.poll_now(&store, 0), None, "the lease is taken");
        assert_eq!(a.poll_now(&store, 0), None, "one poll in flight per worker");
        match a.finished(
            &store,
            S,
            Outcome::Policy {
                version: 3,
                body: GOOD.to_vec(),
            },
        ) {
            Reaction::Adopt(3, p) => assert_eq!(p.spec.name, "flask"),
            r => panic!("{r:?}"),
        }
        let (v, body) = b.published(&store).unwrap();
        assert_eq!((v, body.as_slice()), (3, GOOD));
        b.adopted(3);
        assert!(b.published(&store).is_none());
        assert!(
            a.published(&store).is_none(),
            "the publisher already runs it"
        );
        // The lease was released: the next poll may come from either worker, asking for > 3.
        assert_eq!(
            b.poll_now(&store, S).unwrap(),
            "/v1/policies/flask?version=3&wait=20s"
        );
    }

    #[test]
    fn a_policy_of_the_other_filter_kind_is_refused_and_not_published() {
        const TCP_ONLY: &[u8] = br#"{"name":"db","tcp":{"in_flight":{"per_source":3}}}"#;
        for (network, body) in [(false, TCP_ONLY), (true, GOOD)] {
            let store = MemStore::default();
            let mut a = fetcher(1);
            a.network = network;
            a.poll_now(&store, 0).unwrap();
            let r = a.finished(
                &store,
                S,
                Outcome::Policy {
                    version: 2,
                    body: body.to_vec(),
                },
            );
            match r {
                Reaction::Refused(2, why) => assert!(why.contains("network filter"), "{why}"),
                r => panic!("network {network}: {r:?}"),
            }
            assert!(fetcher(2).published(&store).is_none());
        }
        // The same kind is taken.
        let store = MemStore::default();
        let mut a = fetcher(1);
        a.network = true;
        a.poll_now(&store, 0).unwrap();
        let r = a.finished(
            &store,
            S,
            Outcome::Policy {
                version: 2,
                body: TCP_ONLY.to_vec(),
            },
        );
        assert!(matches!(r, Reaction::Adopt(2, _)), "{r:?}");
    }

    #[test]
    fn invalid_policy_is_refused_and_not_published() {
        let store = MemStore::default();
        let mut a = fetcher(1);
        a.poll_now(&store, 0).unwrap();
        a.finished(
            &store,
            0,
            Outcome::Policy {
                version: 1,
                body: GOOD.to_vec(),
            },
        );
        a.poll_now(&store, 0).unwrap();
        let bad = br#"{"name":"flask","variants":{"stable":"s"},"default":"canary"}"#.to_vec();
        match a.finished(
            &store,
            0,
            Outcome::Policy {
                version: 2,
                body: bad,
            },
        ) {
            Reaction::Refused(2, why) => {
                assert_eq!(why, "default: unknown variant 'canary' (known: stable)")
            }
            r => panic!("{r:?}"),
        }
        assert_eq!(a.version, 1);
        let mut b = fetcher(2);
        assert_eq!(
            b.published(&store).map(|(v, _)| v),
            Some(1),
            "only the good one is published"
        );
        // Polling resumes past the refused version, so it is not fetched again and again.
        assert_eq!(
            b.poll_now(&store, 0).unwrap(),
            "/v1/policies/flask?version=2&wait=20s"
        );
    }

    #[test]
    fn a_hostile_policy_is_refused_by_the_same_limits() {
        // 8,000 parentheses trapped every worker that fetched them.
        let store = MemStore::default();
        let mut a = fetcher(1);
        a.poll_now(&store, 0).unwrap();
        let deep = format!(
            r#"{{"name":"flask","variants":{{"s":"s"}},"routes":[{{"match":"{}Host(`a`){}","variant":"s"}}]}}"#,
            "(".repeat(8000),
            ")".repeat(8000)
        );
        let outcome = Outcome::Policy {
            version: 1,
            body: deep.into_bytes(),
        };
        match a.finished(&store, 0, outcome) {
            Reaction::Refused(1, why) => {
                assert_eq!(why, "routes[0].match: column 33: nesting deeper than 32")
            }
            r => panic!("{r:?}"),
        }
        assert!(fetcher(2).published(&store).is_none());
    }

    #[test]
    fn an_oversized_answer_is_refused_unread_and_not_fetched_again() {
        let store = MemStore::default();
        let mut a = fetcher(1);
        a.poll_now(&store, 0).unwrap();
        let size = crate::limits::MAX_POLICY_BYTES + 1;
        match a.finished(&store, 0, Outcome::Oversized { version: 4, size }) {
            Reaction::Refused(4, why) => assert_eq!(
                why,
                format!("policy: {size} bytes, more than the limit of 1048576 bytes")
            ),
            r => panic!("{r:?}"),
        }
        assert!(fetcher(2).published(&store).is_none());
        assert_eq!(
            fetcher(2).poll_now(&store, 0).unwrap(),
            "/v1/policies/flask?version=4&wait=20s"
        );
    }

    #[test]
    fn failures_back_off_exponentially_up_to_30s() {
        let store = MemStore::default();
        let mut a = fetcher(1);
        let mut now = 0;
        let mut backoffs = Vec::new();
        for _ in 0..8 {
            assert!(a.poll_now(&store, now).is_some());
            match a.finished(&store, now, Outcome::Failed("connection refused".into())) {
                Reaction::Failed(_, b) => backoffs.push(b / S),
                r => panic!("{r:?}"),
            }
            assert!(
                a.poll_now(&store, now + 1).is_none(),
                "waits out the back-off"
            );
            now = a.next_attempt_ns;
        }
        assert_eq!(backoffs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert!(a.poll_now(&store, now).is_some());
        a.finished(&store, now, Outcome::NotModified);
        assert!(
            a.poll_now(&store, now).is_some(),
            "success resets the back-off"
        );
    }

    #[test]
    fn a_dead_holders_lease_lapses_within_2s_and_a_live_one_is_renewed() {
        let store = MemStore::default();
        let (mut a, mut b) = (fetcher(1), fetcher(2));
        a.poll_now(&store, 0).unwrap();
        // Worker 1 is alive: it renews on each tick through its 20 s long poll.
        let mut now = 0;
        while now < 25 * S {
            now += S / 10;
            a.renew(&store, now);
            assert!(b.poll_now(&store, now).is_none(), "taken at {now} ns");
        }
        // Worker 1's VM dies: no more renewals. It used to block polls for 30 s.
        assert!(b.poll_now(&store, now + S).is_none());
        assert!(b.poll_now(&store, now + LEASE_NS + 1).is_some());
    }

    fn apply(f: &mut Fetcher, store: &MemStore, version: u64, body: &[u8]) -> Reaction {
        f.poll_now(store, 0);
        f.finished(
            store,
            0,
            Outcome::Policy {
                version,
                body: body.to_vec(),
            },
        )
    }

    #[test]
    fn workers_dying_together_on_one_version_all_count() {
        let store = MemStore::default();
        let (mut a, b, c) = (fetcher(1), fetcher(2), fetcher(3));
        assert!(matches!(
            apply(&mut a, &store, 1, GOOD),
            Reaction::Adopt(1, _)
        ));
        b.applying(&store, 1);
        c.applying(&store, 1);
        c.applied(&store, 1); // c survives; a and b die
        assert_eq!(fetcher(4).recover(&store), Some((1, 2)));
        assert!(fetcher(5).published(&store).is_none(), "refused at once");
    }

    #[test]
    fn a_version_that_kills_two_vms_applying_it_is_refused_and_a_newer_one_applies() {
        let store = MemStore::default();
        let mut a = fetcher(1);
        assert!(matches!(
            apply(&mut a, &store, 1, GOOD),
            Reaction::Adopt(1, _)
        ));
        a.applied(&store, 1);
        assert_eq!(
            fetcher(9).recover(&store),
            None,
            "a finished apply is no death"
        );

        // Worker 1 fetches version 2, publishes it, and dies applying it.
        assert!(matches!(
            apply(&mut a, &store, 2, GOOD),
            Reaction::Adopt(2, _)
        ));
        let mut a2 = fetcher(3);
        assert_eq!(a2.recover(&store), Some((2, 1)));
        assert_eq!(fetcher(4).recover(&store), None, "one death counts once");
        // One death is not enough to give up on a version: the fresh VM tries it again.
        let (v, _) = a2.published(&store).unwrap();
        assert_eq!(v, 2);
        a2.applying(&store, 2); // and dies again
        let mut a3 = fetcher(5);
        assert_eq!(a3.recover(&store), Some((2, 2)));
        assert!(
            a3.published(&store).is_none(),
            "version 2 is never applied again"
        );
        assert_eq!(
            a3.poll_now(&store, 0).unwrap(),
            "/v1/policies/flask?version=2&wait=20s",
            "polling asks for a newer version"
        );
        // A poll sent before the refusal that answers version 2 changes nothing.
        assert!(matches!(
            a3.finished(
                &store,
                0,
                Outcome::Policy {
                    version: 2,
                    body: GOOD.to_vec()
                }
            ),
            Reaction::Unchanged
        ));
        assert!(matches!(
            apply(&mut a3, &store, 3, GOOD),
            Reaction::Adopt(3, _)
        ));
        a3.applied(&store, 3);
        assert_eq!(fetcher(6).published(&store).map(|(v, _)| v), Some(3));
        assert_eq!(fetcher(7).recover(&store), None);
    }

    #[test]
    fn stale_answers_change_nothing() {
        let store = MemStore::default();
        let mut a = fetcher(1);
        a.poll_now(&store, 0).unwrap();
        a.finished(
            &store,
            0,
            Outcome::Policy {
                version: 5,
                body: GOOD.to_vec(),
            },
        );
        a.poll_now(&store, 0).unwrap();
        assert!(matches!(
            a.finished(
                &store,
                0,
                Outcome::Policy {
                    version: 4,
                    body: b"junk".to_vec()
                }
            ),
            Reaction::Unchanged
        ));
        assert_eq!(a.version, 5);
    }
}
