use super::*;
use crate::policy::accept_policy;
use crate::store::MemStore;

fn ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

fn limits(tcp: &str) -> TcpLimits {
    let json = format!(r#"{{"name":"db","tcp":{tcp}}}"#);
    accept_policy(json.as_bytes()).unwrap().tcp.unwrap()
}

#[test]
fn cidr_v4_v6_and_mapped() {
    let c = Cidr::parse("127.0.0.0/8").unwrap();
    assert!(c.contains("127.1.2.3".parse().unwrap()));
    assert!(
        c.contains("::ffff:127.0.0.1".parse().unwrap()),
        "v4-mapped v6"
    );
    assert!(!c.contains("128.0.0.1".parse().unwrap()));
    assert!(!c.contains("::1".parse().unwrap()));
    let c = Cidr::parse("::1/128").unwrap();
    assert!(c.contains("::1".parse().unwrap()));
    assert!(!c.contains("::2".parse().unwrap()));
    let c = Cidr::parse("2001:db8::/32").unwrap();
    assert!(c.contains("2001:db8:ffff::1".parse().unwrap()));
    assert!(!c.contains("2001:db9::1".parse().unwrap()));
    assert!(Cidr::parse("0.0.0.0/0")
        .unwrap()
        .contains("8.8.8.8".parse().unwrap()));
    assert!(Cidr::parse("::/0")
        .unwrap()
        .contains("fe80::1".parse().unwrap()));
    assert_eq!(Cidr::parse("10.1.2.3"), Cidr::parse("10.1.2.3/32"));
    for (bad, why) in [
        ("10.0.0.1/8", "'10.0.0.1/8' has host bits set below /8"),
        ("10.0.0.0/33", "prefix length '33' must be 0 to 32"),
        ("::/129", "prefix length '129' must be 0 to 128"),
        ("10.0.0.0/+8", "prefix length '+8' must be 0 to 32"),
        ("10.0.0/8", "'10.0.0' is not an IP address"),
        ("", "'' is not an IP address"),
    ] {
        assert_eq!(Cidr::parse(bad), Err(why.to_string()), "{bad}");
    }
}

#[test]
fn validation_names_fields() {
    let e = |tcp: &str| {
        accept_policy(format!(r#"{{"name":"db","tcp":{tcp}}}"#).as_bytes())
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        e(r#"{"allow":["127.0.0.0/8","x"]}"#),
        "tcp.allow[1]: 'x' is not an IP address"
    );
    assert_eq!(
        e(r#"{"in_flight":{"per_source":0}}"#),
        "tcp.in_flight.per_source: must be at least 1"
    );
    assert_eq!(
        e(r#"{"in_flight":{}}"#),
        "tcp.in_flight: give 'per_source', 'total' or both"
    );
    assert_eq!(
        e(r#"{"rate":{"average":0,"period":"0s"}}"#),
        "tcp.rate.average: must be a number above 0, got 0; tcp.rate.period: must be longer than 0"
    );
    assert!(e(r#"{"in_flight":{"per_sourc":1}}"#)
        .starts_with("tcp.in_flight.per_sourc: unknown field `per_sourc`"));
    // Without `tcp`, variants stay required: existing policies keep their meaning.
    assert_eq!(
        accept_policy(br#"{"name":"db"}"#).unwrap_err().to_string(),
        "variants: must name at least one variant"
    );
    assert!(accept_policy(br#"{"name":"db","variants":{"a":"ca"}}"#)
        .unwrap()
        .tcp
        .is_none());
}

#[test]
fn allow_refuses_outside_and_unknown_sources() {
    let t = limits(r#"{"allow":["127.0.0.0/8","::1/128"]}"#);
    let s = MemStore::default();
    let mut w = InFlight::new(1);
    assert!(t.open(&mut w, &s, ip("127.0.0.1"), 0).is_ok());
    assert!(t.open(&mut w, &s, ip("::1"), 0).is_ok());
    assert_eq!(t.open(&mut w, &s, ip("10.0.0.1"), 0), Err(Refusal::Allow));
    assert_eq!(t.open(&mut w, &s, None, 0), Err(Refusal::Allow));
}

#[test]
fn in_flight_is_shared_by_workers_and_released_on_close() {
    let t = limits(r#"{"in_flight":{"per_source":3,"total":4}}"#);
    let s = MemStore::default();
    let (mut a, mut b) = (InFlight::new(1), InFlight::new(2));
    let src = ip("127.0.0.1");
    let c1 = t.open(&mut a, &s, src, 0).unwrap();
    let _c2 = t.open(&mut b, &s, src, 0).unwrap();
    let _c3 = t.open(&mut a, &s, src, 0).unwrap();
    assert_eq!(t.open(&mut b, &s, src, 0), Err(Refusal::InFlight));
    assert_eq!(t.open(&mut a, &s, src, 0), Err(Refusal::InFlight));
    assert_eq!(t.open_count(&s, &t.key_of(src), 0), 3);
    // Another source still gets in, up to the total.
    let other = ip("127.0.0.2");
    let _d = t.open(&mut b, &s, other, 0).unwrap();
    assert_eq!(t.open(&mut b, &s, other, 0), Err(Refusal::InFlight));
    // The refused per-source count taken before the total said no was given back.
    assert_eq!(t.open_count(&s, &t.key_of(other), 0), 1);
    assert_eq!(t.open_count(&s, &t.key_of_total(), 0), 4);
    t.close(&mut a, &s, &c1, 1);
    assert_eq!(t.open_count(&s, &t.key_of(src), 1), 2);
    assert!(t.open(&mut b, &s, src, 1).is_ok());
}

#[test]
fn a_close_that_never_comes_is_reclaimed_by_the_sweep() {
    let t = limits(r#"{"in_flight":{"per_source":2}}"#);
    let s = MemStore::default();
    let src = ip("127.0.0.1");
    // Worker 1 admits two and dies (or loses both closes with its VM).
    let mut dead = InFlight::new(1);
    t.open(&mut dead, &s, src, 0).unwrap();
    t.open(&mut dead, &s, src, 0).unwrap();
    let mut live = InFlight::new(2);
    let held = t.open(&mut live, &s, src, 0);
    assert_eq!(held, Err(Refusal::InFlight));
    // The live worker keeps sweeping; worker 1 does not.
    let mut now = 0;
    while now < STALE_NS {
        now += REFRESH_NS;
        t.sweep(&live, &s, now);
    }
    let c = t.open(&mut live, &s, src, now).unwrap();
    t.open(&mut live, &s, src, now).unwrap();
    assert_eq!(t.open(&mut live, &s, src, now), Err(Refusal::InFlight));
    // Entries that are swept stay live, however long the connections last.
    for _ in 0..20 {
        now += REFRESH_NS;
        t.sweep(&live, &s, now);
    }
    assert_eq!(t.open_count(&s, &t.key_of(src), now), 2);
    assert_eq!(t.open(&mut live, &s, src, now), Err(Refusal::InFlight));
    t.close(&mut live, &s, &c, now);
    assert_eq!(t.open_count(&s, &t.key_of(src), now), 1);
    assert_eq!(live.held(&t.key_of(src)), 1);
}

#[test]
fn rate_is_a_token_bucket_per_source_and_spent_only_by_admissions() {
    let t = limits(r#"{"rate":{"average":20,"burst":5},"in_flight":{"per_source":100}}"#);
    let s = MemStore::default();
    let mut w = InFlight::new(1);
    let src = ip("127.0.0.1");
    let admitted = (0..10)
        .filter(|_| t.open(&mut w, &s, src, 0).is_ok())
        .count();
    assert_eq!(admitted, 5);
    assert_eq!(t.open(&mut w, &s, src, 0), Err(Refusal::Rate));
    // A refusal by rate gave its in-flight count back.
    assert_eq!(t.open_count(&s, &t.key_of(src), 0), 5);
    // 20/s: one more every 50 ms.
    assert!(t.open(&mut w, &s, src, 50_000_000).is_ok());
    assert!(t.open(&mut w, &s, ip("127.0.0.9"), 0).is_ok(), "own bucket");
}

/// A store where another worker writes between each of our reads and writes, `races` times.
struct Racing {
    inner: MemStore,
    races: std::cell::Cell<u32>,
    other: InFlight,
    limits: TcpLimits,
}

impl SharedStore for Racing {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), crate::store::StoreError> {
        if self.races.get() > 0 {
            self.races.set(self.races.get() - 1);
            // The other worker takes a place first: our token is now stale.
            let mut other = InFlight::new(self.other.worker);
            self.limits
                .open(&mut other, &self.inner, "127.0.0.1".parse().ok(), 0)
                .unwrap();
        }
        self.inner.set(key, value, cas)
    }
}

#[test]
fn a_lost_compare_and_swap_is_retried_on_fresh_counts() {
    let t = limits(r#"{"in_flight":{"per_source":2}}"#);
    let s = Racing {
        inner: MemStore::default(),
        races: std::cell::Cell::new(1),
        other: InFlight::new(9),
        limits: t.clone(),
    };
    let mut w = InFlight::new(1);
    let src = ip("127.0.0.1");
    // The key exists (a count key is never emptied, so later writes are all conditional).
    s.races.set(0);
    let c = t.open(&mut InFlight::new(5), &s.inner, src, 0).unwrap();
    t.close(&mut InFlight::new(5), &s.inner, &c, 0);
    assert_eq!(t.open_count(&s.inner, &t.key_of(src), 0), 0);
    s.races.set(1);
    // Our first write loses to the other worker's; the retry sees its count and still fits.
    assert!(t.open(&mut w, &s, src, 0).is_ok());
    assert_eq!(t.open_count(&s.inner, &t.key_of(src), 0), 2);
    // Full now, whoever asks.
    assert_eq!(t.open(&mut w, &s, src, 0), Err(Refusal::InFlight));
}
