//! Limiter tests on the in-memory store (Envoy's CAS rules) and a virtual clock.

use super::*;
use crate::duration::NANOS_PER_SEC;
use crate::policy::Policy;
use crate::store::MemStore;

fn limit(json_limit: &str) -> RateLimit {
    let json = format!(
        r#"{{"name":"flask","variants":{{"a":"ca"}},"default":"a","rate_limits":[{json_limit}]}}"#
    );
    Policy::from_json(json.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"))
        .rate_limits
        .remove(0)
}

fn req(headers: &[(&'static str, &'static str)], ip: &str) -> Request<'static> {
    let pairs = headers
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect();
    Request::new(pairs, Some(ip.parse().unwrap()))
}

const MS: u64 = 1_000_000;

#[test]
fn admits_burst_then_average_per_period() {
    let l = limit(r#"{"name":"api","average":500,"period":"1s","burst":1000}"#);
    let store = MemStore::default();
    let key = l.key_fingerprint(&req(&[], "10.0.0.1"));
    // 4× the rate for 5 s, one request every 0.5 ms.
    let mut admitted = 0u64;
    let mut t = 0;
    while t < 5 * NANOS_PER_SEC {
        admitted += u64::from(l.check(&store, key, t).admitted);
        t += MS / 2;
    }
    let expected = 1000 + 500 * 5;
    assert!(
        admitted.abs_diff(expected) <= 2,
        "admitted {admitted}, expected {expected}"
    );
}

#[test]
fn refusal_reports_retry_after_and_limit_headers() {
    let l = limit(r#"{"name":"api","average":1,"period":"10s","burst":2}"#);
    let store = MemStore::default();
    let v1 = l.check(&store, 1, 0);
    assert_eq!((v1.admitted, v1.limit, v1.remaining), (true, 2, 1));
    assert_eq!(v1.reset_secs, 10, "one token at 0.1/s takes 10 s");
    let v2 = l.check(&store, 1, 0);
    assert_eq!((v2.admitted, v2.remaining, v2.reset_secs), (true, 0, 20));
    let v3 = l.check(&store, 1, 4 * NANOS_PER_SEC);
    assert!(!v3.admitted);
    assert_eq!(
        (v3.remaining, v3.retry_after_secs, v3.reset_secs),
        (0, 6, 16)
    );
    let v4 = l.check(&store, 1, 10 * NANOS_PER_SEC);
    assert!(v4.admitted);
}

#[test]
fn workers_sharing_the_store_do_not_each_grant_the_rate() {
    // Two "workers" interleave on the same store: together they get one bucket's worth.
    let l = limit(r#"{"name":"api","average":100,"burst":100}"#);
    let store = MemStore::default();
    let workers: [&dyn SharedStore; 2] = [&store, &store];
    let admitted = (0..1000)
        .filter(|i| l.check(workers[i % 2], 7, 0).admitted)
        .count();
    assert_eq!(admitted, 100);
}

/// A store whose first `conflicts` writes lose the race, as when another worker writes first.
struct Contended {
    inner: MemStore,
    conflicts: std::cell::Cell<u32>,
}

impl SharedStore for Contended {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        if self.conflicts.get() > 0 {
            self.conflicts.set(self.conflicts.get() - 1);
            // The other worker spent a token in between.
            let (v, c) = self.inner.get(key).unwrap_or((Vec::new(), 0));
            let mut s = BucketState::decode(&v).unwrap_or(BucketState {
                config: 0,
                key: 0,
                tokens: 0.0,
                last_ns: 0,
            });
            s.tokens -= 1.0;
            self.inner.set(key, &s.encode(), c).unwrap();
            return Err(StoreError::CasMismatch);
        }
        self.inner.set(key, value, cas)
    }
}

#[test]
fn cas_conflicts_are_retried_against_fresh_state() {
    let l = limit(r#"{"name":"api","average":1,"period":"1h","burst":5}"#);
    let store = Contended {
        inner: MemStore::default(),
        conflicts: 0.into(),
    };
    assert!(l.check(&store, 9, 0).admitted); // 4 left
    store.conflicts.set(3); // three rival writes take 3 tokens: 1 left for us
    let v = l.check(&store, 9, 0);
    assert_eq!((v.admitted, v.remaining), (true, 0));
    assert!(!l.check(&store, 9, 0).admitted);
}

#[test]
fn keys_are_independent_and_keyless_requests_use_the_client_address() {
    let l = limit(
        r#"{"name":"api","average":1,"period":"1h","burst":1,"source":{"header":"x-api-key"}}"#,
    );
    let store = MemStore::default();
    let a = l.key_fingerprint(&req(&[("x-api-key", "a")], "10.0.0.1"));
    let b = l.key_fingerprint(&req(&[("x-api-key", "b")], "10.0.0.1"));
    let anon1 = l.key_fingerprint(&req(&[], "10.0.0.1"));
    let anon2 = l.key_fingerprint(&req(&[], "10.0.0.2"));
    let ip_text_key = l.key_fingerprint(&req(&[("x-api-key", "10.0.0.1")], "10.0.0.9"));
    assert_eq!(
        l.key_fingerprint(&req(&[("x-api-key", "a")], "10.9.9.9")),
        a
    );
    let all = [a, b, anon1, anon2, ip_text_key];
    for (i, x) in all.iter().enumerate() {
        for y in &all[i + 1..] {
            assert_ne!(
                x, y,
                "a header value equal to an address is still another key"
            );
        }
    }
    for k in all {
        assert!(l.check(&store, k, 0).admitted);
        assert!(!l.check(&store, k, 0).admitted);
    }
}

#[test]
fn unchanged_limit_keeps_state_across_policy_updates_changed_one_starts_afresh() {
    let spec = r#"{"name":"api","average":1,"period":"1h","burst":1}"#;
    let store = MemStore::default();
    assert!(limit(spec).check(&store, 5, 0).admitted);
    // A new policy with the same limit (its match and headers may differ): still spent.
    let same = limit(
        r#"{"name":"api","match":"PathPrefix(`/`)","average":1,"period":"1h","burst":1,"headers":true}"#,
    );
    assert!(!same.check(&store, 5, 0).admitted);
    let changed = limit(r#"{"name":"api","average":2,"period":"1h","burst":1}"#);
    assert!(changed.check(&store, 5, 0).admitted);
}

#[test]
fn footprint_is_bounded_by_slots_for_200k_keys() {
    let l = limit(r#"{"name":"api","average":10,"burst":10,"slots":4096}"#);
    let store = MemStore::default();
    for i in 0..200_000u64 {
        let key = fingerprint(b'h', format!("key-{i}").as_bytes());
        l.check(&store, key, i * 1000);
    }
    assert!(store.len() <= 4096, "{} keys stored", store.len());
    assert!(store.len() > 4000, "slots are used: {}", store.len());
    let per_entry = store.bytes() / store.len();
    assert!(per_entry < 64, "{per_entry} bytes per slot");
}

#[test]
fn idle_slot_is_taken_over_busy_slot_is_shared() {
    let l = limit(r#"{"name":"api","average":1,"period":"10s","burst":2,"slots":1}"#);
    let store = MemStore::default();
    // Key 1 spends its bucket; key 2 collides while key 1 is active: they share it.
    assert!(l.check(&store, 1, 0).admitted);
    assert!(l.check(&store, 1, 0).admitted);
    assert!(
        !l.check(&store, 2, 0).admitted,
        "a collision shares the busy bucket"
    );
    // After 20 s key 1's bucket is full again: idle, so key 2 takes a fresh bucket.
    let later = 20 * NANOS_PER_SEC;
    assert!(l.check(&store, 2, later).admitted);
    let (v, _) = store.get(&l.slot_key(2)).unwrap();
    assert_eq!(BucketState::decode(&v).unwrap().key, 2);
}

#[test]
fn garbage_in_the_slot_is_treated_as_empty_and_a_failing_store_fails_open() {
    let l = limit(r#"{"name":"api","average":1,"period":"1h","burst":1}"#);
    let store = MemStore::default();
    store.set(&l.slot_key(3), b"not a bucket", 0).unwrap();
    assert!(l.check(&store, 3, 0).admitted);
    assert!(!l.check(&store, 3, 0).admitted);
    struct Broken;
    impl SharedStore for Broken {
        fn get(&self, _: &str) -> Option<(Vec<u8>, u32)> {
            None
        }
        fn set(&self, _: &str, _: &[u8], _: u32) -> Result<(), StoreError> {
            Err(StoreError::Failed)
        }
    }
    assert!(l.check(&Broken, 3, 0).admitted);
}

#[test]
fn itoa_matches_display() {
    for n in [0u64, 7, 10, 65_535, u64::MAX] {
        assert_eq!(itoa(n), n.to_string());
    }
}

#[test]
fn compile_errors_name_fields() {
    let errs = |l: &str| {
        let json = format!(r#"{{"name":"f","variants":{{"a":"ca"}},"rate_limits":[{l}]}}"#);
        Policy::from_json(json.as_bytes()).unwrap_err().to_string()
    };
    assert_eq!(
        errs(r#"{"name":"x","average":0}"#),
        "rate_limits[0].average: must be a number above 0, got 0"
    );
    assert_eq!(
        errs(r#"{"name":"x","average":1,"period":"1"}"#),
        "rate_limits[0].period: invalid duration '1': missing unit (ns, us, ms, s, m, h)"
    );
    assert_eq!(
        errs(r#"{"name":"x","average":1,"burst":0}"#),
        "rate_limits[0].burst: must be at least 1"
    );
    assert_eq!(
        errs(r#"{"name":"a b","average":1}"#),
        "rate_limits[0].name: must be letters, digits, '-' or '_', got 'a b'"
    );
    assert_eq!(
        errs(r#"{"name":"x","average":1,"source":{"header":"h","host":{}}}"#),
        "rate_limits[0].source: give exactly one of 'header', 'cookie', 'query', 'host', 'client_ip'"
    );
    assert_eq!(
        errs(r#"{"name":"x","average":1,"source":{"client_ip":{"ipv6_prefix":129}}}"#),
        "rate_limits[0].source.client_ip.ipv6_prefix: must be 0 to 128, got 129"
    );
    assert!(errs(r#"{"name":"x","average":1,"match":"Path("}"#)
        .starts_with("rate_limits[0].match: column 6"));
    assert_eq!(
        errs(r#"{"name":"x","average":1},{"name":"x","average":2}"#),
        "rate_limits[1].name: 'x' is used twice"
    );
}

#[test]
fn lease_size_is_exact_for_small_bursts_and_bounded_for_large() {
    assert_eq!(lease_size(1), 1);
    assert_eq!(lease_size(127), 1, "under 128 every request is one CAS");
    assert_eq!(lease_size(128), 2);
    assert_eq!(lease_size(1000), 15);
    assert_eq!(lease_size(1_000_000), lease::MAX_LEASE);
}

/// Counts shared-data calls, to show leases keep requests off the store.
#[derive(Default)]
struct Counting {
    inner: MemStore,
    gets: std::cell::Cell<u32>,
    sets: std::cell::Cell<u32>,
}

impl SharedStore for Counting {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.gets.set(self.gets.get() + 1);
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        self.sets.set(self.sets.get() + 1);
        self.inner.set(key, value, cas)
    }
}

#[test]
fn leased_one_worker_admits_exactly_what_the_bucket_allows() {
    let l = limit(r#"{"name":"api","average":500,"period":"1s","burst":1000}"#);
    let store = MemStore::default();
    let mut leases = Leases::default();
    let (mut admitted, mut t) = (0u64, 0);
    while t < 5 * NANOS_PER_SEC {
        admitted += u64::from(l.check_leased(&store, &mut leases, 7, t).admitted);
        t += MS / 2;
    }
    let expected = 1000 + 500 * 5;
    // One worker spends every token it leases: only the last lease's leftover is unspent.
    assert!(
        admitted <= expected && admitted + lease_size(1000) >= expected,
        "admitted {admitted}, expected {expected}"
    );
}

#[test]
fn leased_keys_under_their_limit_rarely_touch_shared_data() {
    let l = limit(r#"{"name":"api","average":500,"period":"1s","burst":1000}"#);
    let store = Counting::default();
    let mut leases = Leases::default();
    let (mut admitted, mut t) = (0u32, 0);
    // Half the average: everything passes.
    while t < 5 * NANOS_PER_SEC {
        admitted += u32::from(l.check_leased(&store, &mut leases, 7, t).admitted);
        t += 4 * MS;
    }
    assert_eq!(admitted, 1250);
    let (gets, sets) = (store.gets.get(), store.sets.get());
    assert_eq!(
        gets, sets,
        "no contention, no refusal: every read leads to a write"
    );
    assert!(
        sets <= 1250 / 15 + 1,
        "{sets} shared writes for 1250 requests"
    );
    // Without leases every request is a read and a write.
    let exact = Counting::default();
    for i in 0..100 {
        assert!(l.check(&exact, 7, i * 4 * MS).admitted);
    }
    assert_eq!((exact.gets.get(), exact.sets.get()), (100, 100));
}

#[test]
fn leased_two_workers_stay_within_their_leases_of_the_exact_count() {
    let l = limit(r#"{"name":"api","average":100,"period":"1s","burst":2000}"#);
    let lease = lease_size(2000);
    assert_eq!(lease, 31);
    let store = MemStore::default();
    let mut workers = [Leases::default(), Leases::default()];
    let (mut admitted, mut t, mut i) = (0u64, 0, 0usize);
    while t < 10 * NANOS_PER_SEC {
        // Uneven sharing: three requests on one worker for every one on the other.
        let w = usize::from(i % 4 == 3);
        admitted += u64::from(l.check_leased(&store, &mut workers[w], 9, t).admitted);
        i += 1;
        t += MS;
    }
    let expected = 2000 + 100 * 10;
    assert!(
        admitted <= expected && admitted + 2 * lease >= expected,
        "admitted {admitted}, expected {expected} (within 2 leases of {lease})"
    );
}

#[test]
fn leases_refuse_when_the_bucket_is_empty_and_report_what_is_left() {
    let l = limit(r#"{"name":"api","average":1,"period":"1m","burst":256}"#);
    assert_eq!(lease_size(256), 4);
    let store = MemStore::default();
    let mut leases = Leases::default();
    let first = l.check_leased(&store, &mut leases, 1, 0);
    assert_eq!((first.admitted, first.remaining), (true, 255));
    assert_eq!(leases.tokens(1), 3, "three more tokens held locally");
    let admitted = (0..300)
        .filter(|_| l.check_leased(&store, &mut leases, 1, 0).admitted)
        .count();
    assert_eq!(admitted, 255, "the whole burst, then nothing");
    let refused = l.check_leased(&store, &mut leases, 1, 0);
    assert!(!refused.admitted);
    assert_eq!(refused.retry_after_secs, 60);
    // Another key still has its own bucket (another slot), leased separately.
    assert!(l.check_leased(&store, &mut leases, 2, 0).admitted);
}

#[test]
fn lease_table_is_bounded_and_keeps_recent_keys() {
    let mut leases = Leases::default();
    for k in 0..(lease::MAX_LEASES as u64 * 3) {
        leases.keep(k, 5, 0.0);
        // Key 1 is used all along: it never ages out.
        if k % 1000 == 0 {
            assert!(leases.spend(1).is_some() || leases.tokens(1) == 0);
            leases.keep(1, 5, 0.0);
        }
    }
    assert!(leases.len() <= lease::MAX_LEASES, "{}", leases.len());
    assert_eq!(leases.tokens(1), 5, "a recently used key keeps its lease");
    assert_eq!(leases.tokens(3), 0, "an old key's lease is dropped");
    let last = lease::MAX_LEASES as u64 * 3 - 1;
    assert_eq!(leases.tokens(last), 5);
    assert_eq!(leases.spend(u64::MAX), None);
    leases.keep(u64::MAX, 1, 10.0);
    assert_eq!(leases.spend(u64::MAX), Some(10.0));
    assert_eq!(leases.spend(u64::MAX), None, "spent leases are forgotten");
}
