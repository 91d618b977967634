//! The mutation loop: corpus entries mutated and spliced, fresh generated inputs, and a pool
//! that keeps every input whose outcome looks new (its [`crate::targets::shape`]d signature),
//! a stand-in for the coverage feedback a sanitizer build would give.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fastrand::Rng;

use crate::mutate;
use crate::targets::Target;

/// An input that takes longer than this (twice in a row, against a loaded machine's noise)
/// is a finding: every parser's time must be bounded, and the slowest allowed input takes
/// milliseconds.
pub const SLOW: Duration = Duration::from_secs(1);

/// Inputs kept in memory beside the corpus.
const POOL: usize = 4096;

/// Inputs saved to the corpus in one run with `save`: new behaviours, small ones only, so
/// the committed corpus stays a few hundred kilobytes.
const SAVE_AT_MOST: usize = 100;
const SAVE_MAX_BYTES: usize = 8 << 10;

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seconds to fuzz.
    pub secs: f64,
    /// Seed of the loop's random choices.
    pub seed: u64,
    /// Save inputs with new behaviour into the corpus directory.
    pub save: bool,
    /// File to hold the input being run, so a crash that kills the process leaves it behind.
    pub inflight: Option<PathBuf>,
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    /// Inputs run.
    pub runs: u64,
    /// Distinct behaviours seen.
    pub behaviours: usize,
    /// Inputs accepted (signatures starting `ok`): the agreement properties apply to these.
    pub accepted: u64,
    /// Corpus entries loaded.
    pub corpus: usize,
    /// Inputs saved to the corpus.
    pub saved: usize,
    /// The slowest input's time.
    pub slowest: Duration,
    /// The first property violation, if any.
    pub failure: Option<Failure>,
}

/// A violated property and the input that shows it.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong.
    pub why: String,
    /// Where the input was saved.
    pub file: PathBuf,
}

/// The workspace's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `fuzz/corpus/<target>/`.
pub fn corpus_dir(target: &str) -> PathBuf {
    workspace().join("fuzz").join("corpus").join(target)
}

/// `target/fuzz-failures/`.
pub fn failures_dir() -> PathBuf {
    workspace().join("target").join("fuzz-failures")
}

/// The corpus of `target`, in name order.
pub fn load_corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
        .collect()
}

/// FNV-1a: names corpus and failure files by content.
pub fn hash(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Runs one input: the check's verdict (a panic is a violation) and its time.
pub fn run_one(target: &Target, input: &[u8]) -> (Result<String, String>, Duration) {
    let t = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(|| (target.check)(input))).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(format!("panicked: {msg}"))
    });
    (r, t.elapsed())
}

/// Like [`run_one`], on a thread with the target's stack.
pub fn run_on_stack(target: &'static Target, input: Vec<u8>) -> (Result<String, String>, Duration) {
    std::thread::Builder::new()
        .stack_size(target.stack)
        .spawn(move || run_one(target, &input))
        .map_err(|e| e.to_string())
        .and_then(|h| h.join().map_err(|_| "the check's thread died".to_string()))
        .unwrap_or_else(|e| (Err(e), Duration::ZERO))
}

/// Saves a failing input; returns its file.
pub fn save_failure(target: &str, input: &[u8]) -> PathBuf {
    let dir = failures_dir();
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!("{target}-{:016x}", hash(input)));
    let _ = std::fs::write(&file, input);
    file
}

/// The command that runs a saved input again.
pub fn reproduce_command(target: &str, file: &Path) -> String {
    format!(
        "cargo run -p rollgate-fuzz -- repro {target} {}",
        file.display()
    )
}

/// Fuzzes `target` for `opts.secs` on a thread with the target's stack.
pub fn fuzz(target: &'static Target, opts: Options) -> Report {
    let o = opts.clone();
    std::thread::Builder::new()
        .name(format!("fuzz-{}", target.name))
        .stack_size(target.stack)
        .spawn(move || fuzz_here(target, &o))
        .ok()
        .and_then(|h| h.join().ok())
        .unwrap_or_else(|| Report {
            runs: 0,
            behaviours: 0,
            accepted: 0,
            corpus: 0,
            saved: 0,
            slowest: Duration::ZERO,
            failure: Some(Failure {
                why: "the fuzzing thread could not run".into(),
                file: PathBuf::new(),
            }),
        })
}

fn fuzz_here(target: &Target, opts: &Options) -> Report {
    let mut rng = Rng::with_seed(opts.seed);
    let corpus = load_corpus(target.name);
    let mut pool: Vec<Vec<u8>> = corpus.iter().map(|(_, b)| b.clone()).collect();
    let mut seen: HashSet<u64> = HashSet::new();
    let inflight = opts.inflight.as_ref().and_then(|p| File::create(p).ok());
    let mut report = Report {
        runs: 0,
        behaviours: 0,
        accepted: 0,
        corpus: corpus.len(),
        saved: 0,
        slowest: Duration::ZERO,
        failure: None,
    };
    let deadline = Instant::now() + Duration::from_secs_f64(opts.secs.max(0.0));
    // The corpus first, as it is: what passed before must still pass.
    let mut replay = pool.clone().into_iter();
    while Instant::now() < deadline || replay.len() > 0 {
        let input = match replay.next() {
            Some(i) => i,
            None => next_input(&mut rng, target, &pool),
        };
        if let Some(f) = &inflight {
            let _ = f.set_len(0);
            let _ = f.write_all_at(&input, 0);
        }
        let (mut verdict, mut took) = run_one(target, &input);
        if took > SLOW && verdict.is_ok() {
            (verdict, took) = run_one(target, &input);
            if took > SLOW {
                verdict = Err(format!(
                    "took {} ms (twice over {} ms)",
                    took.as_millis(),
                    SLOW.as_millis()
                ));
            }
        }
        report.runs += 1;
        report.slowest = report.slowest.max(took);
        match verdict {
            Ok(sig) => {
                report.accepted += u64::from(sig.starts_with("ok"));
                if seen.insert(crate::runner::hash(sig.as_bytes())) {
                    if opts.save
                        && report.saved < SAVE_AT_MOST
                        && input.len() <= SAVE_MAX_BYTES
                        && report.runs > report.corpus as u64
                    {
                        let dir = corpus_dir(target.name);
                        let _ = std::fs::create_dir_all(&dir);
                        let _ = std::fs::write(dir.join(format!("{:016x}", hash(&input))), &input);
                        report.saved += 1;
                    }
                    if pool.len() < POOL {
                        pool.push(input);
                    } else {
                        let i = rng.usize(..pool.len());
                        pool[i] = input;
                    }
                }
            }
            Err(why) => {
                let file = save_failure(target.name, &input);
                report.failure = Some(Failure { why, file });
                break;
            }
        }
    }
    if let Some(p) = &opts.inflight {
        let _ = std::fs::remove_file(p);
    }
    report.behaviours = seen.len();
    report
}

fn next_input(rng: &mut Rng, target: &Target, pool: &[Vec<u8>]) -> Vec<u8> {
    let pick = |rng: &mut Rng| pool[rng.usize(..pool.len())].clone();
    match rng.u32(..10) {
        0..=2 => (target.generate)(rng),
        _ if pool.is_empty() => (target.generate)(rng),
        3 if pool.len() > 1 => {
            let (a, b) = (pick(rng), pick(rng));
            mutate::splice(rng, &a, &b)
        }
        _ => {
            let mut i = pick(rng);
            mutate::mutate(rng, &mut i, target.dict);
            i
        }
    }
}
