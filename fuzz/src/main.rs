//! `rollgate-fuzz`: runs the fuzz targets (`make fuzz`), one child process per target so a
//! crash that kills the process (a stack overflow aborts) still names its input.
//!
//! ```text
//! rollgate-fuzz [--secs N] [--seed S] [--save] [TARGET...]   fuzz N seconds in all (default 300)
//! rollgate-fuzz repro TARGET FILE                           run one saved input again
//! rollgate-fuzz corpus [TARGET...]                          run the committed corpus once
//! ```
//! Environment: ROLLGATE_FUZZ_SECS, ROLLGATE_FUZZ_SEED, ROLLGATE_FUZZ_SAVE=1 (same as flags).

use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use rollgate_fuzz::runner::{self, Options};
use rollgate_fuzz::targets::{by_name, excerpt, TARGETS};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("repro") => repro(&args[1..]),
        Some("corpus") => corpus(&args[1..]),
        Some("child") => child(&args[1..]),
        _ => parent(&args),
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: rollgate-fuzz [--secs N] [--seed S] [--save] [TARGET...]\n       \
         rollgate-fuzz repro TARGET FILE\n       rollgate-fuzz corpus [TARGET...]\n\
         targets: {}",
        TARGETS
            .iter()
            .map(|t| t.name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    ExitCode::from(2)
}

fn targets(names: &[String]) -> Option<Vec<&'static rollgate_fuzz::targets::Target>> {
    if names.is_empty() {
        return Some(TARGETS.iter().collect());
    }
    names.iter().map(|n| by_name(n)).collect()
}

fn parent(args: &[String]) -> ExitCode {
    let mut secs: f64 = env_or("ROLLGATE_FUZZ_SECS", 300.0);
    let default_seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let mut seed: u64 = env_or("ROLLGATE_FUZZ_SEED", default_seed);
    let mut save = std::env::var("ROLLGATE_FUZZ_SAVE").is_ok_and(|v| v == "1");
    let mut names = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--secs" => match it.next().and_then(|v| v.parse().ok()) {
                Some(v) => secs = v,
                None => return usage(),
            },
            "--seed" => match it.next().and_then(|v| v.parse().ok()) {
                Some(v) => seed = v,
                None => return usage(),
            },
            "--save" => save = true,
            n if n.starts_with('-') => return usage(),
            n => names.push(n.to_string()),
        }
    }
    let Some(list) = targets(&names) else {
        return usage();
    };
    let each = secs / list.len() as f64;
    println!(
        "fuzzing {} target(s), {each:.1} s each, seed {seed} (ROLLGATE_FUZZ_SEED={seed} repeats the choices)",
        list.len()
    );
    let Ok(exe) = std::env::current_exe() else {
        eprintln!("cannot find this executable to run the targets");
        return ExitCode::FAILURE;
    };
    let dir = runner::failures_dir();
    let _ = std::fs::create_dir_all(&dir);
    let mut failed = 0;
    for t in list {
        let inflight = dir.join(format!("{}.inflight", t.name));
        let started = Instant::now();
        let child = Command::new(&exe)
            .args(["child", t.name, &each.to_string(), &seed.to_string()])
            .arg(if save { "save" } else { "nosave" })
            .arg(&inflight)
            .stdin(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{}: cannot start: {e}", t.name);
                failed += 1;
                continue;
            }
        };
        // A hang inside one input: the child cannot report it, so its parent does.
        let limit = Duration::from_secs_f64(each) + Duration::from_secs(60);
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if started.elapsed() > limit => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => break None,
            }
        };
        match status {
            Some(s) if s.success() => {}
            Some(s) if s.code() == Some(1) => failed += 1,
            other => {
                failed += 1;
                let why = match other {
                    Some(s) => format!("the process died ({s}): a crash, such as a stack overflow"),
                    None => format!("no result after {} s: an input hangs", limit.as_secs()),
                };
                match std::fs::read(&inflight) {
                    Ok(input) => {
                        let file = runner::save_failure(t.name, &input);
                        let _ = std::fs::remove_file(&inflight);
                        println!(
                            "{}: FAILED: {why}\n  input: {}\n  reproduce: {}",
                            t.name,
                            file.display(),
                            runner::reproduce_command(t.name, &file)
                        );
                    }
                    Err(_) => println!("{}: FAILED: {why} (its input was not recorded)", t.name),
                }
            }
        }
    }
    if failed > 0 {
        println!("{failed} target(s) failed");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn child(args: &[String]) -> ExitCode {
    let (Some(t), Some(secs), Some(seed), Some(save), Some(inflight)) = (
        args.first().and_then(|n| by_name(n)),
        args.get(1).and_then(|s| s.parse::<f64>().ok()),
        args.get(2).and_then(|s| s.parse::<u64>().ok()),
        args.get(3),
        args.get(4),
    ) else {
        return usage();
    };
    let opts = Options {
        secs,
        seed,
        save: save == "save",
        inflight: Some(inflight.into()),
    };
    let r = runner::fuzz(t, opts);
    println!(
        "{:<10} {:>8} inputs, {:>5} behaviours, {:>7} accepted, corpus {:>4}{}, slowest {} ms",
        t.name,
        r.runs,
        r.behaviours,
        r.accepted,
        r.corpus,
        if r.saved > 0 {
            format!(" (+{} saved)", r.saved)
        } else {
            String::new()
        },
        r.slowest.as_millis()
    );
    match r.failure {
        None => ExitCode::SUCCESS,
        Some(f) => {
            println!(
                "{}: FAILED: {}\n  input: {}\n  reproduce: {}",
                t.name,
                excerpt(&f.why, 2000),
                f.file.display(),
                runner::reproduce_command(t.name, &f.file)
            );
            ExitCode::from(1)
        }
    }
}

fn repro(args: &[String]) -> ExitCode {
    let (Some(t), Some(file)) = (args.first().and_then(|n| by_name(n)), args.get(1)) else {
        return usage();
    };
    let input = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{file}: {e}");
            return ExitCode::from(2);
        }
    };
    let (verdict, took) = runner::run_on_stack(t, input);
    match verdict {
        Ok(sig) => {
            println!("{}: ok in {} ms: {sig}", t.name, took.as_millis());
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("{}: FAILED in {} ms: {why}", t.name, took.as_millis());
            ExitCode::FAILURE
        }
    }
}

fn corpus(names: &[String]) -> ExitCode {
    let Some(list) = targets(names) else {
        return usage();
    };
    let mut failed = 0;
    for t in list {
        let corpus = runner::load_corpus(t.name);
        for (path, input) in &corpus {
            if let (Err(why), _) = runner::run_on_stack(t, input.clone()) {
                println!("{}: {}: {why}", t.name, path.display());
                failed += 1;
            }
        }
        println!("{}: {} corpus entries", t.name, corpus.len());
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
