//! The binary's bench hook (`rollgate::bench`, used by `make bench`) runs the filter in the host
//! and natively and decides alike (moved from the host's tests, which live with the host).

#[path = "../../wasmhost/tests/common/mod.rs"]
mod common;

#[test]
fn the_bench_hook_runs_the_same_decisions_both_ways() {
    use rollgate::bench::{request_mix, routing_cost};
    let requests = request_mix(40);
    let report = routing_cost(common::filter(), &common::example_policy(), &requests, 1).unwrap();
    assert_eq!(report.requests, 40);
    assert_eq!(report.mismatches, 0, "host and native decide alike");
    assert!(
        report.ratio().is_finite() && report.ratio() > 0.0,
        "{report}"
    );
}
