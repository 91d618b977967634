//! The shadow book and copies against a fake host that records metrics.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;

use super::*;
use crate::store::{MemStore, SharedStore, StoreError};

const MS: u64 = 1_000_000;
const S: u64 = 1_000 * MS;

#[derive(Default)]
struct Fake {
    store: MemStore,
    metrics: RefCell<HashMap<u32, i64>>,
    records: RefCell<Vec<(u32, u64)>>,
}

impl Fake {
    fn metric(&self, id: u32) -> i64 {
        self.metrics.borrow().get(&id).copied().unwrap_or(0)
    }
}

impl SharedStore for Fake {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.store.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        self.store.set(key, value, cas)
    }
}

impl Host for Fake {
    fn now_ns(&self) -> u64 {
        0
    }
    fn client_addr(&self) -> Option<IpAddr> {
        None
    }
    fn response_flags(&self) -> u64 {
        0
    }
    fn increment(&self, id: u32, n: i64) {
        *self.metrics.borrow_mut().entry(id).or_default() += n;
    }
    fn record(&self, id: u32, value: u64) {
        self.records.borrow_mut().push((id, value));
    }
}

const IDS: ShadowIds = ShadowIds {
    requests: 1,
    classes: [11, 12, 13, 14, 15],
    mismatch: 2,
    latency_ms: 3,
    skipped: 4,
    dropped: 5,
    failed: 6,
    body_compared: 7,
    body_mismatch: 8,
};

fn policy() -> Policy {
    Policy::from_json(
        br#"{"name":"flask","variants":{"stable":"k8s-flask","canary":"k8s-canary"},
        "default":"stable","cluster_header":"x-up","variant_header":"x-rollgate-variant",
        "routes":[{"variant":"stable","mirror":{"variant":"canary","percent":20,
        "max_in_flight":3,"timeout":"2s"}}]}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn mirror(p: &Policy) -> &Mirror {
    p.mirror(0).unwrap()
}

fn copy(id: u64) -> Copy {
    Copy {
        id,
        cluster: "k8s-canary".into(),
        headers: vec![],
        body: vec![],
        timeout_ns: 2 * S,
    }
}

#[test]
fn authority_is_suffixed_as_envoys_mirror_does() {
    // Envoy's ShadowWriterImpl newHost (envoyproxy/envoy source/common/router/
    // shadow_writer_impl.cc, lines 15-22 at 03c915284e14e484cff8dc63ba74cec91d42714a): split
    // on ':'; two parts become `host-shadow:port`, anything else gets `-shadow` at the end.
    assert_eq!(
        shadow_authority("pro.coding", "-shadow"),
        "pro.coding-shadow"
    );
    assert_eq!(
        shadow_authority("pro.coding:8080", "-shadow"),
        "pro.coding-shadow:8080"
    );
    assert_eq!(shadow_authority("[::1]:80", "-shadow"), "[::1]:80-shadow");
    assert_eq!(shadow_authority("pro.coding", ""), "pro.coding");
}

#[test]
fn a_copy_keeps_the_request_but_the_filters_own_headers() {
    let p = policy();
    let pairs: Vec<(&[u8], &[u8])> = vec![
        (b":authority", b"pro.coding:8080"),
        (b":path", b"/api/x?y=1"),
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b"x-user-id", b"alice"),
        (b"content-length", b"10240"),
        (b"x-rollgate-cluster", b"forged"),
        (b"x-up", b"k8s-flask"),
        (b"x-rollgate-variant", b"stable"),
        (b"accept", b"a"),
        (b"accept", b"b"),
    ];
    let h = copy_headers(&pairs, &p, mirror(&p)).unwrap();
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        h,
        [
            (":authority", "pro.coding-shadow:8080"),
            (":path", "/api/x?y=1"),
            (":method", "POST"),
            (":scheme", "http"),
            ("x-user-id", "alice"),
            ("accept", "a"),
            ("accept", "b"),
            ("x-rollgate-shadow", "1"),
        ]
    );
    let latin1: Vec<(&[u8], &[u8])> = vec![(b":authority", b"a"), (b"x-name", b"Jos\xe9")];
    assert_eq!(copy_headers(&latin1, &p, mirror(&p)), None);
    // Not copied anyway: a forged internal header that is not UTF-8 does not stop the copy.
    let forged: Vec<(&[u8], &[u8])> = vec![(b":authority", b"a"), (b"x-rollgate-x", b"\xff")];
    assert!(copy_headers(&forged, &p, mirror(&p)).is_some());
}

#[test]
fn answer_and_primary_join_in_either_order() {
    let (p, host, mut book) = (policy(), Fake::default(), Book::default());
    let m = mirror(&p);
    // Primary first, then the shadow's 500: a mismatch.
    let a = book.start(m, &IDS, S, &host).unwrap();
    assert!(book.ready(copy(a)));
    assert_eq!(book.take_ready().map(|c| c.id), Some(a));
    book.sent(a, 4, S, &host);
    book.primary(a, 200, &host);
    assert!(book.answer(4, Some(500), None, S + 30 * MS, &host));
    assert_eq!(host.metric(IDS.requests), 1);
    assert_eq!(host.metric(IDS.classes[4]), 1);
    assert_eq!(host.metric(IDS.mismatch), 1);
    assert_eq!(host.records.borrow().as_slice(), [(IDS.latency_ms, 30)]);
    assert!(book.is_empty());
    // Shadow first (201), then the primary (204): same class, no mismatch.
    let b = book.start(m, &IDS, 2 * S, &host).unwrap();
    book.ready(copy(b));
    book.take_ready();
    book.sent(b, 8, 2 * S, &host);
    assert!(book.answer(8, Some(201), None, 2 * S + MS, &host));
    assert_eq!(book.in_flight(), 0);
    assert_eq!(book.len(), 1);
    book.primary(b, 204, &host);
    assert_eq!(host.metric(IDS.classes[1]), 1);
    assert_eq!(host.metric(IDS.mismatch), 1);
    assert!(book.is_empty());
    // No answer at all (reset): failed, and a mismatch with the primary's answer.
    let c = book.start(m, &IDS, 3 * S, &host).unwrap();
    book.ready(copy(c));
    book.take_ready();
    book.sent(c, 12, 3 * S, &host);
    book.primary(c, 200, &host);
    book.answer(12, None, None, 3 * S, &host);
    assert_eq!(host.metric(IDS.failed), 1);
    assert_eq!(host.metric(IDS.mismatch), 2);
    // A token the book never sent is not its own.
    assert!(!book.answer(99, Some(200), None, 3 * S, &host));
}

fn hash(body: &[&[u8]]) -> BodyHash {
    let mut h = BodyHash::default();
    for chunk in body {
        h.add(chunk);
    }
    h
}

#[test]
fn bodies_hash_the_same_however_chunked_and_only_under_the_limit() {
    let whole = hash(&[b"hello world"]);
    assert_eq!(
        whole.finish(11),
        hash(&[b"hel", b"", b"lo wor", b"ld"]).finish(11)
    );
    assert_ne!(whole.finish(11), hash(&[b"hello worle"]).finish(11));
    assert_ne!(hash(&[]).finish(0), hash(&[b"x"]).finish(1));
    assert_eq!(whole.len(), 11);
    assert_eq!(whole.finish(10), None, "over the limit: not compared");
}

#[test]
fn bodies_are_compared_when_the_mirror_says_so() {
    let p = Policy::from_json(
        br#"{"name":"flask","variants":{"stable":"k8s-flask","canary":"k8s-canary"},
        "default":"stable","routes":[{"variant":"stable","mirror":{"variant":"canary",
        "percent":20,"compare_body":16}}]}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (m, host, mut book) = (mirror(&p), Fake::default(), Book::default());
    let send = |book: &mut Book, token: u32| {
        let id = book.start(m, &IDS, S, &host).unwrap();
        book.ready(copy(id));
        book.take_ready();
        book.sent(id, token, S, &host);
        id
    };
    let same = hash(&[b"{\"a\":1}"]).finish(16);
    let other = hash(&[b"{\"a\":2}"]).finish(16);
    // Equal bodies, the copy's answer first: joined only once the primary's body ended.
    let a = send(&mut book, 4);
    assert_eq!(book.compare_body(a), 16);
    assert_eq!(book.compare_body_of_call(4), 16);
    book.answer(4, Some(200), same, S + MS, &host);
    book.primary(a, 200, &host);
    assert_eq!(book.len(), 1, "waits for the primary's body");
    book.primary_body(a, same, &host);
    assert!(book.is_empty());
    assert_eq!(
        (
            host.metric(IDS.body_compared),
            host.metric(IDS.body_mismatch)
        ),
        (1, 0)
    );
    // Different bodies, same status: a body mismatch only.
    let b = send(&mut book, 8);
    book.primary(b, 200, &host);
    book.primary_body(b, same, &host);
    book.answer(8, Some(200), other, S + MS, &host);
    assert_eq!(
        (
            host.metric(IDS.body_compared),
            host.metric(IDS.body_mismatch)
        ),
        (2, 1)
    );
    assert_eq!(host.metric(IDS.mismatch), 0);
    // A body over the limit on either side, or no answer: not compared.
    let c = send(&mut book, 12);
    book.primary(c, 200, &host);
    book.primary_body(c, None, &host);
    book.answer(12, Some(200), same, S + MS, &host);
    let d = send(&mut book, 16);
    book.primary(d, 200, &host);
    book.primary_body(d, same, &host);
    book.answer(16, None, None, S + MS, &host);
    assert!(book.is_empty());
    assert_eq!(
        (
            host.metric(IDS.body_compared),
            host.metric(IDS.body_mismatch)
        ),
        (2, 1)
    );
    assert_eq!(host.metric(IDS.mismatch), 1, "the unanswered copy");
    // Without compare_body the primary's status alone completes the join.
    let plain = policy();
    assert_eq!(mirror(&plain).compare_body, 0);
    assert!(Policy::from_json(
        br#"{"name":"f","variants":{"s":"c","t":"d"},"default":"s","routes":[{"variant":"s",
        "mirror":{"variant":"t","percent":1,"compare_body":2000000}}]}"#
    )
    .is_err_and(|e| e.to_string().contains("routes[0].mirror.compare_body")));
}

#[test]
fn in_flight_is_capped_and_every_exit_frees_a_slot() {
    let (p, host, mut book) = (policy(), Fake::default(), Book::default());
    let m = mirror(&p);
    let ids: Vec<u64> = (0..3)
        .map(|_| book.start(m, &IDS, S, &host).unwrap())
        .collect();
    assert_eq!(book.start(m, &IDS, S, &host), None);
    assert_eq!(host.metric(IDS.dropped), 1);
    book.skip(ids[0], &host);
    assert_eq!(host.metric(IDS.skipped), 1);
    book.abandon(ids[1]);
    book.ready(copy(ids[2]));
    book.take_ready();
    book.not_sent(ids[2], &host);
    assert_eq!(host.metric(IDS.dropped), 2);
    assert_eq!((book.in_flight(), book.len()), (0, 0));
    // Abandoned copies are never sent, even when they were already waiting.
    let d = book.start(m, &IDS, S, &host).unwrap();
    assert!(book.ready(copy(d)));
    book.abandon(d);
    assert_eq!(book.take_ready(), None);
    assert!(!book.ready(copy(d)));
}

#[test]
fn nothing_outlives_its_deadline() {
    let (p, host, mut book) = (policy(), Fake::default(), Book::default());
    let m = mirror(&p);
    // Three copies sent, never answered; later, a new request finds their slots free.
    for token in [4, 8, 12] {
        let id = book.start(m, &IDS, S, &host).unwrap();
        book.ready(copy(id));
        book.take_ready();
        book.sent(id, token, S, &host);
    }
    assert_eq!(book.start(m, &IDS, S + S, &host), None);
    // timeout 2 s + 1 s of slack after sending.
    assert_eq!(book.start(m, &IDS, S + 3 * S - MS, &host), None);
    assert!(book.start(m, &IDS, S + 3 * S + MS, &host).is_some());
    assert_eq!((book.in_flight(), book.len()), (1, 1));
    // Their late answers are no longer the book's, and count nothing.
    assert!(!book.answer(4, Some(200), None, 5 * S, &host));
    assert_eq!(host.metric(IDS.classes[1]), 0);
    // An answered copy whose primary never reports is forgotten too.
    let (p2, mut book) = (policy(), Book::default());
    let id = book.start(mirror(&p2), &IDS, S, &host).unwrap();
    book.sent(id, 4, S, &host);
    book.answer(4, Some(200), None, S + MS, &host);
    assert_eq!(book.len(), 1);
    book.sweep(10 * S);
    assert!(book.is_empty());
}

#[test]
fn the_book_never_holds_more_than_its_cap() {
    let host = Fake::default();
    let p = Policy::from_json(
        br#"{"name":"f","variants":{"s":"s","c":"c"},"default":"s",
        "routes":[{"variant":"s","mirror":{"variant":"c","percent":100,"max_in_flight":1000,
        "max_body":1024,"timeout":"1m"}}]}"#,
    )
    .unwrap();
    let mut book = Book::default();
    // Answered copies whose primaries never report pile up only to the cap.
    for i in 0..(MAX_ENTRIES as u32 + 500) {
        let id = book.start(mirror(&p), &IDS, S, &host).unwrap();
        book.sent(id, i, S, &host);
        book.answer(i, Some(200), None, S, &host);
    }
    assert_eq!(book.len(), MAX_ENTRIES);
    assert_eq!(book.in_flight(), 0);
}
