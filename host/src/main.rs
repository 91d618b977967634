//! The `rollgate` command.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{bail, Context};

const USAGE: &str = "\
usage: rollgate <command> [args]

commands:
  validate POLICY.json   check a policy (use - for standard input); prints ok or every error
  help                   this text";

fn read_input(path: &str) -> anyhow::Result<Vec<u8>> {
    if path == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading standard input")?;
        return Ok(buf);
    }
    std::fs::read(path).with_context(|| format!("reading {path}"))
}

fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    match args.first().map(String::as_str) {
        Some("validate") => {
            let [_, path] = args else {
                bail!("validate takes one POLICY file\n\n{USAGE}")
            };
            match rollgate::validate::validate(&read_input(path)?) {
                Ok(summary) => {
                    println!("{summary}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    for e in &errors.0 {
                        eprintln!("{path}: {e}");
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Some("help" | "-h" | "--help") => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => bail!("unknown command '{other}'\n\n{USAGE}"),
        None => bail!("no command given\n\n{USAGE}"),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rollgate: {e:#}");
            ExitCode::from(2)
        }
    }
}
