//! `--profile`: where Envoy's CPU goes, by code region, from `perf record -e cpu-clock`
//! (software sampling: works in VMs without hardware counters). Envoy's binary is stripped, so
//! the split is by region — Envoy's own code, the Wasm code V8 compiled (`[JIT]`), the kernel,
//! libc — not by function. The JIT share bounds what the filter's own Rust code costs; the
//! rest of a filter's added cost is Envoy servicing its host calls.

use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::envoy::Envoy;
use crate::load::Wrk;
use crate::sys;

/// Envoy CPU per request, split by region.
#[derive(Debug, Clone, Default)]
pub struct Split {
    /// Envoy CPU µs per request over the sampled window.
    pub cpu_us_per_request: f64,
    /// (region, share of samples).
    pub shares: Vec<(String, f64)>,
}

/// Whether `perf record` works here.
pub fn available() -> bool {
    Command::new("perf")
        .args([
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-o",
            "/dev/null",
            "--",
            "true",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn region(dso: &str) -> &'static str {
    if dso.starts_with("[JIT]") {
        "Wasm code (V8 JIT)"
    } else if dso == "envoy" {
        "Envoy (native code)"
    } else if dso.starts_with("[kernel") {
        "kernel"
    } else if dso.starts_with("libc") || dso.starts_with("libm") || dso.starts_with("[vdso") {
        "libc, vdso"
    } else {
        "other"
    }
}

/// Samples `envoy` for `secs` seconds under the loaded mix and splits its CPU by region.
pub fn sample(
    envoy: &Envoy,
    wrk: &Wrk<'_>,
    connections: u32,
    secs: u32,
    dir: &Path,
) -> Result<Split> {
    let data = dir.join(format!("perf-{}.data", envoy.case.label()));
    let pid = envoy.proc.pid();
    let cpu0 = sys::process_cpu_ns(pid)?;
    let load = thread::scope(|s| {
        let load = s.spawn(|| wrk.run(envoy.ports.listener, connections, secs + 2, 7));
        thread::sleep(Duration::from_secs(1));
        let rec = Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-F", "2000", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(&data)
            .args(["--", "sleep", &secs.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let run = load
            .join()
            .map_err(|_| anyhow::anyhow!("wrk thread panicked"));
        (rec, run)
    });
    let cpu1 = sys::process_cpu_ns(pid)?;
    let (rec, run) = load;
    if !rec.context("running perf record")?.success() {
        bail!("perf record failed on envoy ({})", envoy.case.label());
    }
    let run = run??;
    let out = Command::new("perf")
        .args(["report", "--stdio", "--sort", "dso", "-i"])
        .arg(&data)
        .stderr(Stdio::null())
        .output()
        .context("running perf report")?;
    let mut shares: Vec<(String, f64)> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((pct, dso)) = line.split_once('%') else {
            continue;
        };
        let Ok(pct) = pct.trim().parse::<f64>() else {
            continue;
        };
        let name = region(dso.trim());
        match shares.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v += pct / 100.0,
            None => shares.push((name.to_string(), pct / 100.0)),
        }
    }
    let _ = std::fs::remove_file(&data);
    Ok(Split {
        cpu_us_per_request: cpu1.saturating_sub(cpu0) as f64 / 1e3 / run.requests.max(1) as f64,
        shares,
    })
}
