//! The report: Markdown for people (`report.md`), tab-separated rows for tools
//! (`results.tsv`).

use std::fmt::Write as _;

use crate::envoy::{Ablation, Case, PROBES};
use crate::stats::Summary;
use crate::{Results, Sample};

/// The targets.
const TARGET_D_OVER_B: f64 = 0.95;
const TARGET_D_OVER_C: f64 = 0.92;
const TARGET_P99_ADDED_US: f64 = 50.0;
const TARGET_WASM_BYTES: u64 = 250_000;

fn samples(r: &Results, case: Case) -> &[Sample] {
    r.cases
        .iter()
        .find(|(c, _)| *c == case)
        .map_or(&[], |(_, s)| s.as_slice())
}

fn summary(s: &[Sample], f: impl Fn(&Sample) -> f64) -> Summary {
    Summary::of(&s.iter().map(f).collect::<Vec<_>>())
}

/// A light-load percentile, NaN (left out of summaries) when the run was skipped.
fn light(s: &Sample, f: impl Fn(&crate::load::WrkRun) -> f64) -> f64 {
    s.light.as_ref().map_or(f64::NAN, f)
}

/// A light-load summary as text, `–` when no run was made.
fn light_cell(s: &[Sample], f: impl Fn(&crate::load::WrkRun) -> f64 + Copy) -> String {
    if s.iter().all(|x| x.light.is_none()) {
        "–".to_string()
    } else {
        summary(s, |x| light(x, f)).fmt(0)
    }
}

/// Per-round ratio `f(x)/f(y)` of two cases (rounds pair them: same round, adjacent runs).
fn paired(r: &Results, x: Case, y: Case, f: impl Fn(&Sample) -> f64) -> Summary {
    let (xs, ys) = (samples(r, x), samples(r, y));
    let v: Vec<f64> = xs
        .iter()
        .zip(ys)
        .map(|(a, b)| f(a) / f(b).max(1e-12))
        .collect();
    Summary::of(&v)
}

/// Per-round difference `f(x) - f(y)`.
fn paired_diff(r: &Results, x: Case, y: Case, f: impl Fn(&Sample) -> f64) -> Summary {
    let (xs, ys) = (samples(r, x), samples(r, y));
    let v: Vec<f64> = xs.iter().zip(ys).map(|(a, b)| f(a) - f(b)).collect();
    Summary::of(&v)
}

fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn rps(s: Summary) -> String {
    format!(
        "{} [{}–{}]",
        thousands(s.median),
        thousands(s.min),
        thousands(s.max)
    )
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

fn signed(s: Summary) -> String {
    format!("{:+.0} µs [{:+.0} to {:+.0}]", s.median, s.min, s.max)
}

/// What case `x` adds over `y` in the same rounds: Envoy CPU per request, light-load p50 and
/// p99, loaded p99.
fn added_over(r: &Results, x: Case, y: Case) -> String {
    let cpu = paired_diff(r, x, y, Sample::cpu_us_per_request);
    format!(
        "Envoy CPU per request {:+.1} µs [{:+.1} to {:+.1}]; at light load p50 {}, p99 {}; \
         loaded p99 {}",
        cpu.median,
        cpu.min,
        cpu.max,
        signed(paired_diff(r, x, y, |s| light(s, |l| l.p50_us))),
        signed(paired_diff(r, x, y, |s| light(s, |l| l.p99_us))),
        signed(paired_diff(r, x, y, |s| s.load.p99_us)),
    )
}

/// The Markdown report.
pub fn markdown(r: &Results) -> String {
    let a = &r.args;
    let m = &r.machine;
    let mut o = String::new();
    let _ = writeln!(o, "# rollgate bench\n");
    let _ = writeln!(
        o,
        "Machine: {} × {}{}, {:.0} GiB RAM, {}, kernel {}. Envoy on {}; wrk and nginx on {}. \
         Run started {}, took {:.0} s.\n",
        m.nproc,
        m.cpu_model,
        if m.virtualized {
            " (virtual machine)"
        } else {
            ""
        },
        m.mem_gib,
        m.os,
        m.kernel,
        r.pins.0.describe(),
        r.pins.1.describe(),
        r.started,
        r.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        o,
        "{}\n",
        r.versions
            .iter()
            .map(|(k, v)| format!("{k}: `{v}`"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = writeln!(
        o,
        "Envoy `--concurrency 1`, HTTP/1.1 over loopback, `generate_request_id: false`, router \
         `dynamic_stats: false` in every case. Mix (wrk Lua, `bench/wrk/mix.lua`): Host \
         `pro.coding`; `x-user-id` from 10,000 users on 95 %; `location: shenzhen` on 10 %. \
         Per-user limits in (c) and (d): 100/s, burst 1,000, on requests carrying `x-user-id`. \
         {} rounds, cases interleaved (order rotated each round); per case and round: {} s \
         warm-up, {} s loaded (`wrk -t1 -c{}`), {} s light load (`-c{}`). Figures: median \
         [min–max] over rounds.\n",
        a.rounds, a.warmup, a.duration, a.connections, a.light_duration, a.light_connections
    );

    let _ = writeln!(
        o,
        "| case | req/s (loaded) | p50 µs (loaded) | p99 µs (loaded) | Envoy CPU µs/req | p50 µs (light) | p99 µs (light) |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|");
    for (case, s) in &r.cases {
        let _ = writeln!(
            o,
            "| ({}) {} | {} | {} | {} | {} | {} | {} |",
            case.label(),
            case.describe(),
            rps(summary(s, |x| x.load.rps)),
            summary(s, |x| x.load.p50_us).fmt(0),
            summary(s, |x| x.load.p99_us).fmt(0),
            summary(s, Sample::cpu_us_per_request).fmt(1),
            light_cell(s, |l| l.p50_us),
            light_cell(s, |l| l.p99_us),
        );
    }

    let (ca, cb, cc, cd) = (
        Case::NoFilter,
        Case::Passthrough,
        Case::Native,
        Case::Rollgate,
    );
    let thr = |x, y| paired(r, x, y, |s| s.load.rps);
    // Throughput an Envoy-bound run would see: the inverse ratio of CPU per request.
    let cpu = |x, y| paired(r, y, x, Sample::cpu_us_per_request);
    let _ = writeln!(
        o,
        "\nRatios, per round (each pair ran in the same round), median [min–max]. \"CPU\" is \
         the inverse ratio of Envoy CPU per request: the throughput ratio a fully Envoy-bound \
         run would show, and the figure least disturbed by other load on the machine.\n"
    );
    let _ = writeln!(o, "| ratio | throughput | CPU |");
    let _ = writeln!(o, "|---|---|---|");
    let (cd2, cdm) = (Case::Canary10, Case::Mirror);
    for (name, x, y) in [
        ("d/a", cd, ca),
        ("d/b", cd, cb),
        ("d/c", cd, cc),
        ("b/a", cb, ca),
        ("c/a", cc, ca),
        ("d2/b", cd2, cb),
        ("d2/c", cd2, cc),
        ("dm/d", cdm, cd),
        ("e/d", Case::Global, cd),
    ] {
        if samples(r, x).is_empty() || samples(r, y).is_empty() {
            continue;
        }
        let _ = writeln!(
            o,
            "| {name} | {} | {} |",
            thr(x, y).fmt(3),
            cpu(x, y).fmt(3)
        );
    }

    let d_b = thr(cd, cb).median;
    let d_c = thr(cd, cc).median;
    let p99_light = paired_diff(r, cd, ca, |s| light(s, |l| l.p99_us));
    let p99_load = paired_diff(r, cd, ca, |s| s.load.p99_us);
    let cpu_added = paired_diff(r, cd, ca, Sample::cpu_us_per_request);
    let (wasm, pass) = r.wasm_sizes;
    let _ = writeln!(o, "\n| target | measured | |");
    let _ = writeln!(o, "|---|---|---|");
    let _ = writeln!(
        o,
        "| throughput d/b ≥ {TARGET_D_OVER_B} | {d_b:.3} | {} |",
        verdict(d_b >= TARGET_D_OVER_B)
    );
    let _ = writeln!(
        o,
        "| throughput d/c ≥ {TARGET_D_OVER_C} | {d_c:.3} | {} |",
        verdict(d_c >= TARGET_D_OVER_C)
    );
    let _ = writeln!(
        o,
        "| p99 added over (a) ≤ {TARGET_P99_ADDED_US:.0} µs | light load: {}; loaded: {} | {} (light) / {} (loaded) |",
        signed(p99_light),
        signed(p99_load),
        if r.args.light_duration == 0 {
            "not measured"
        } else {
            verdict(p99_light.median <= TARGET_P99_ADDED_US)
        },
        verdict(p99_load.median <= TARGET_P99_ADDED_US),
    );
    let _ = writeln!(
        o,
        "| `.wasm` ≤ 250 KB (250,000 B) | {} B ({:.1} KiB) | {} |",
        thousands(wasm as f64),
        wasm as f64 / 1024.0,
        verdict(wasm <= TARGET_WASM_BYTES)
    );
    if r.args.light_duration > 0 {
        let _ = writeln!(
            o,
            "\nLatency added by rollgate over (a), per round: at light load p50 {}, p99 {}; \
             the pass-through filter: p50 {}, p99 {}. Loaded latencies follow throughput \
             (closed loop, {} connections: latency ≈ connections / req/s), so the loaded \
             difference mostly restates the throughput gap; the light-load runs are the latency \
             figure.",
            signed(paired_diff(r, cd, ca, |s| light(s, |l| l.p50_us))),
            signed(p99_light),
            signed(paired_diff(r, cb, ca, |s| light(s, |l| l.p50_us))),
            signed(paired_diff(r, cb, ca, |s| light(s, |l| l.p99_us))),
            r.args.connections
        );
    }
    if !samples(r, cdm).is_empty() && !samples(r, cd).is_empty() {
        let _ = writeln!(
            o,
            "\nMirroring 10 % of stable's requests (dm) over (d), per round: {}.",
            added_over(r, cdm, cd)
        );
    }
    let ce = Case::Global;
    if !samples(r, ce).is_empty() && !samples(r, cd).is_empty() {
        let calls = r.global.as_ref().map_or_else(
            || "not read".to_string(),
            |g| {
                format!(
                    "{} service calls for {} requests ({:.2} %), {} without a usable answer",
                    thousands(g.calls as f64),
                    thousands(g.requests as f64),
                    g.share() * 100.0,
                    g.failed
                )
            },
        );
        let _ = writeln!(
            o,
            "\nOne global limit (e) over (d), per round: {}. {calls}.",
            added_over(r, ce, cd)
        );
    }
    let _ = writeln!(
        o,
        "\nEnvoy CPU per request added by rollgate over (a): {:.1} µs [{:.1}–{:.1}]; by the \
         pass-through filter: {:.1} µs; by the native chain: {:.1} µs.",
        cpu_added.median,
        cpu_added.min,
        cpu_added.max,
        paired_diff(r, cb, ca, Sample::cpu_us_per_request).median,
        paired_diff(r, cc, ca, Sample::cpu_us_per_request).median,
    );

    if r.args.profile {
        let (route, limit, breaker) = (
            Case::RollgateVariant(Ablation::RoutingOnly),
            Case::RollgateVariant(Ablation::WithLimit),
            Case::RollgateVariant(Ablation::WithBreaker),
        );
        let d = |x, y| paired_diff(r, x, y, Sample::cpu_us_per_request);
        let _ = writeln!(
            o,
            "\nWhere rollgate's Envoy CPU goes (per-round differences of CPU µs per request, \
             median [min–max]):\n"
        );
        let _ = writeln!(o, "| part | added CPU per request |");
        let _ = writeln!(o, "|---|---|");
        for (name, x, y) in [
            ("Wasm itself: (b) − (a)", cb, ca),
            ("routing + sticky split: (d-route) − (b)", route, cb),
            ("rate limit: (d-route+limit) − (d-route)", limit, route),
            ("breaker: (d-route+breaker) − (d-route)", breaker, route),
            ("everything: (d) − (b)", cd, cb),
        ] {
            let _ = writeln!(o, "| {name} | {} µs |", d(x, y).fmt(2));
        }
        let _ = writeln!(
            o,
            "\nWhat host calls cost inside Envoy: the probe filter makes them per request; cost \
             per unit = (probe − (b)) / units, Envoy CPU µs, median [min–max] over rounds.\n"
        );
        let _ = writeln!(o, "| probe operations | units | µs per unit |");
        let _ = writeln!(o, "|---|---|---|");
        for (i, (ops, units)) in PROBES.iter().enumerate() {
            let per = Summary::of(
                &samples(r, Case::Probe(i))
                    .iter()
                    .zip(samples(r, cb))
                    .map(|(p, b)| {
                        (p.cpu_us_per_request() - b.cpu_us_per_request()) / f64::from(*units)
                    })
                    .collect::<Vec<_>>(),
            );
            let _ = writeln!(o, "| `{ops}` | {units} | {} |", per.fmt(2));
        }
    }

    if !r.perf.is_empty() {
        let regions: Vec<&str> = [
            "Envoy (native code)",
            "Wasm code (V8 JIT)",
            "kernel",
            "libc, vdso",
            "other",
        ]
        .into_iter()
        .filter(|name| {
            r.perf
                .iter()
                .any(|(_, s)| s.shares.iter().any(|(n, v)| n == name && *v > 0.0))
        })
        .collect();
        let _ = writeln!(
            o,
            "\nEnvoy's CPU per request by code region (`perf record -e cpu-clock` on the Envoy \
             process, 4 s under the loaded mix; Envoy is stripped, so regions, not functions), \
             µs per request (share):\n"
        );
        let _ = writeln!(
            o,
            "| region | {} |",
            r.perf
                .iter()
                .map(|(c, _)| format!("({})", c.label()))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(o, "|---|{}", "---|".repeat(r.perf.len()));
        for name in regions {
            let cells: Vec<String> = r
                .perf
                .iter()
                .map(|(_, s)| {
                    let share = s
                        .shares
                        .iter()
                        .find(|(n, _)| n == name)
                        .map_or(0.0, |(_, v)| *v);
                    format!(
                        "{:.1} ({:.1} %)",
                        share * s.cpu_us_per_request,
                        share * 100.0
                    )
                })
                .collect();
            let _ = writeln!(o, "| {name} | {} |", cells.join(" | "));
        }
        let totals: Vec<String> = r
            .perf
            .iter()
            .map(|(_, s)| format!("{:.1}", s.cpu_us_per_request))
            .collect();
        let _ = writeln!(o, "| total | {} |", totals.join(" | "));
    }

    let _ = writeln!(
        o,
        "\nFilter sizes: rollgate `rollgate_plugin.wasm` {} B ({:.1} KiB); pass-through \
         `rollgate_bench_passthrough.wasm` {} B ({:.1} KiB).",
        thousands(wasm as f64),
        wasm as f64 / 1024.0,
        thousands(pass as f64),
        pass as f64 / 1024.0
    );
    match &r.host {
        Ok(h) => {
            let _ = writeln!(
                o,
                "\nHost part (wasmtime, `rollgate::bench::routing_cost`, the same mix, \
                 whole stream per request; rollgate's own host, not Envoy's V8): rollgate {} \
                 µs/request, pass-through {} µs/request, so rollgate adds ≈ {:.2} µs/request \
                 under wasmtime (its host calls and its Wasm code); the same routing decisions \
                 natively (`Policy::decide`): {} µs/request.",
                h.rollgate_us.fmt(2),
                h.passthrough_us.fmt(2),
                h.rollgate_us.median - h.passthrough_us.median,
                h.native_decide_us.fmt(3)
            );
            let _ = writeln!(
                o,
                "\nWasm work per request (wasmtime fuel: about one unit per instruction the \
                 filter's own code runs, host calls excluded; the same on every run): rollgate \
                 {}, pass-through {}.",
                thousands(h.fuel.0),
                thousands(h.fuel.1)
            );
        }
        Err(e) => {
            let _ = writeln!(o, "\nHost part (wasmtime): **not measured**: {e}");
        }
    }

    let _ = writeln!(o, "\nChecks (a failed check stops the bench):\n");
    for (case, s) in &r.routing {
        let mut line = format!(
            "- ({}) sample of {} requests, all 200 from the expected upstream",
            case.label(),
            s.requests
        );
        if case.splits() {
            let _ = write!(
                line,
                "; user split stable/canary {}/{}; A/B header to canary {}/{}; same variant on \
                 a second request {}/{} users",
                s.split.0, s.split.1, s.ab.1, s.ab.0, s.sticky.0, s.sticky.1
            );
        } else {
            line.push_str("; everything to stable");
        }
        let share = summary(samples(r, *case), |x| x.canary_share);
        if case.splits() {
            let _ = write!(
                line,
                "; canary share of the loaded runs {:.1} % [{:.1}–{:.1}]",
                share.median * 100.0,
                share.min * 100.0,
                share.max * 100.0
            );
        }
        if let Some((_, armed)) = r.armed.iter().find(|(c, _)| c == case) {
            if let Some((n, refused)) = armed.flood {
                let _ = write!(
                    line,
                    "; no 429 in any run, and {refused} of {n} back-to-back requests of one user refused (limit armed)"
                );
            }
            if let Some((state, trips)) = armed.breaker {
                let _ = write!(
                    line,
                    "; canary breaker ticking, state {state} (closed), {trips} trips"
                );
            }
        }
        let _ = writeln!(o, "{line}.");
    }

    let pct = |v: &[f64]| {
        v.iter()
            .enumerate()
            .map(|(i, b)| format!("cpu{i} {:.0} %", b * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        o,
        "\nOther work on the machine, measured over 2 s with none of the bench's processes \
         running: before the rounds {}; after {}. The loaded runs (median per case): Envoy's \
         own CPU use, and how busy each CPU was (anything above Envoy's share on its CPU is \
         other work).\n",
        pct(&r.background.0),
        pct(&r.background.1)
    );
    let _ = writeln!(o, "| case | Envoy CPU use | CPU busy |");
    let _ = writeln!(o, "|---|---|---|");
    for (case, s) in &r.cases {
        let ncpu = s.first().map_or(0, |x| x.cpu_busy.len());
        let busy: Vec<String> = (0..ncpu)
            .map(|i| {
                format!(
                    "cpu{i} {:.0} %",
                    summary(s, |x| x.cpu_busy.get(i).copied().unwrap_or(0.0)).median * 100.0
                )
            })
            .collect();
        let _ = writeln!(
            o,
            "| ({}) | {:.0} % | {} |",
            case.label(),
            summary(s, Sample::envoy_busy).median * 100.0,
            busy.join(", ")
        );
    }
    o
}

/// One row per case and round.
pub fn tsv(r: &Results) -> String {
    let mut o = String::from(
        "case\tround\trequests\trps\tp50_us\tp99_us\tenvoy_cpu_us_per_req\tenvoy_busy\tlight_p50_us\tlight_p99_us\tcanary_share\tcpu_busy\n",
    );
    for (case, samples) in &r.cases {
        for s in samples {
            let busy: Vec<String> = s.cpu_busy.iter().map(|b| format!("{b:.3}")).collect();
            let _ = writeln!(
                o,
                "{}\t{}\t{}\t{:.1}\t{:.0}\t{:.0}\t{:.2}\t{:.3}\t{:.0}\t{:.0}\t{:.3}\t{}",
                case.label(),
                s.round,
                s.load.requests,
                s.load.rps,
                s.load.p50_us,
                s.load.p99_us,
                s.cpu_us_per_request(),
                s.envoy_busy(),
                s.light.map_or(f64::NAN, |l| l.p50_us),
                s.light.map_or(f64::NAN, |l| l.p99_us),
                s.canary_share,
                busy.join(",")
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_thousands() {
        assert_eq!(thousands(20497.06), "20,497");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(-1234.0), "-1,234");
    }
}
