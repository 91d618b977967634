//! The load: wrk (Debian's) with one thread, a fixed number of keep-alive connections, and the
//! request mix of `wrk/mix.lua`; plus the parsing of its `--latency` report.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::sys::Pin;

/// The request mix (written next to the configs, and handed to wrk with `-s`).
pub const MIX_LUA: &str = include_str!("../wrk/mix.lua");

/// One wrk run.
#[derive(Debug, Clone, Copy, Default)]
pub struct WrkRun {
    /// Requests completed.
    pub requests: u64,
    /// Requests per second over the run.
    pub rps: f64,
    /// Latency percentiles, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Responses outside 2xx/3xx.
    pub non_2xx: u64,
    /// Connect, read, write errors and timeouts.
    pub socket_errors: u64,
}

/// How to run wrk.
pub struct Wrk<'a> {
    /// The wrk binary.
    pub bin: &'a Path,
    /// The Lua script.
    pub script: &'a Path,
    /// Pinning.
    pub pin: &'a Pin,
}

impl Wrk<'_> {
    /// Runs `-t1 -c<connections> -d<secs>s --latency` against `127.0.0.1:port`; `seed` varies
    /// the mix's random stream between runs.
    pub fn run(&self, port: u16, connections: u32, secs: u32, seed: u32) -> Result<WrkRun> {
        let mut cmd = self.pin.command(self.bin);
        cmd.args(["-t1", "--latency", "--timeout", "5s"])
            .arg(format!("-c{connections}"))
            .arg(format!("-d{secs}s"))
            .arg("-s")
            .arg(self.script)
            .arg(format!("http://127.0.0.1:{port}/"))
            .arg("--")
            .arg(seed.to_string());
        let out = run(cmd, self.pin)?;
        parse(&out).with_context(|| format!("parsing wrk's report:\n{out}"))
    }
}

fn run(mut cmd: Command, pin: &Pin) -> Result<String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    pin.apply(child.id());
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "wrk failed ({}):\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

/// `250.00us`, `1.47ms`, `2.00s`, `3.00m` in µs.
fn duration_us(s: &str) -> Option<f64> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    Some(v * scale)
}

/// Parses wrk's report.
pub fn parse(out: &str) -> Result<WrkRun> {
    let mut r = WrkRun::default();
    let (mut p50, mut p99, mut rps, mut requests) = (None, None, None, None);
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => p50 = duration_us(v),
            ["99%", v] => p99 = duration_us(v),
            ["Requests/sec:", v] => rps = v.parse().ok(),
            [n, "requests", "in", ..] => requests = n.parse().ok(),
            ["Non-2xx", "or", "3xx", "responses:", n] => r.non_2xx = n.parse().unwrap_or(u64::MAX),
            ["Socket", "errors:", rest @ ..] => {
                r.socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    r.p50_us = p50.context("no 50% line")?;
    r.p99_us = p99.context("no 99% line")?;
    r.rps = rps.context("no Requests/sec line")?;
    r.requests = requests.context("no request count")?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 4s test @ http://127.0.0.1:19000/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.55ms  395.31us   5.53ms   87.50%
    Req/Sec    20.61k     1.17k   22.37k    72.50%
  Latency Distribution
     50%    1.47ms
     75%    1.66ms
     90%    1.95ms
     99%    3.34ms
  82036 requests in 4.00s, 9.70MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  20497.06
Transfer/sec:      2.42MB
";

    #[test]
    fn parses_wrk_latency_report() {
        let r = parse(REPORT).unwrap();
        assert_eq!(r.requests, 82036);
        assert!((r.rps - 20497.06).abs() < 1e-6);
        assert!((r.p50_us - 1470.0).abs() < 1e-6);
        assert!((r.p99_us - 3340.0).abs() < 1e-6);
        assert_eq!((r.non_2xx, r.socket_errors), (7, 3));
        assert_eq!(duration_us("250.00us"), Some(250.0));
        assert_eq!(duration_us("2.00s"), Some(2e6));
        assert!(parse("garbage").is_err());
    }
}
