//! `make test` fuzzes every target for a short budget: `ROLLGATE_FUZZ_SECS` in all (default
//! 35 s, about 5 s a target), each in its own process so a crash names its input. The corpus
//! is replayed first, whatever the budget. The seed is fixed (`ROLLGATE_FUZZ_SEED` overrides
//! it) so that CI on an unchanged tree explores the same inputs and a red run is a change's,
//! not the clock's; `make fuzz` runs longer from a new seed each time.

use std::process::Command;

use rollgate_fuzz::runner::load_corpus;
use rollgate_fuzz::targets::TARGETS;

#[test]
fn every_target_keeps_its_properties_for_the_test_budget() {
    let secs = std::env::var("ROLLGATE_FUZZ_SECS").unwrap_or_else(|_| "35".into());
    let seed = std::env::var("ROLLGATE_FUZZ_SEED").unwrap_or_else(|_| "20261203".into());
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate-fuzz"))
        .args(["--secs", &secs, "--seed", &seed])
        .output()
        .expect("run rollgate-fuzz");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "fuzzing found a problem:\n{stdout}");
    // Every target ran, and ran more than its corpus: the loop did not stall.
    for t in TARGETS {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(t.name))
            .unwrap_or_else(|| panic!("no report for target {}:\n{stdout}", t.name));
        let runs: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no input count in {line:?}"));
        let corpus = load_corpus(t.name).len() as u64;
        assert!(
            runs > corpus,
            "{}: only {runs} inputs for a corpus of {corpus}",
            t.name
        );
    }
}

#[test]
fn every_target_has_a_committed_corpus_of_modest_size() {
    let mut total = 0;
    for t in TARGETS {
        let corpus = load_corpus(t.name);
        assert!(
            corpus.len() >= 10,
            "{}: {} corpus entries",
            t.name,
            corpus.len()
        );
        total += corpus.iter().map(|(_, b)| b.len()).sum::<usize>();
    }
    assert!(
        total < 1 << 20,
        "the corpus is {total} bytes: keep it under 1 MiB"
    );
}
