//! `rollgate-bench` (`make bench`): Envoy 1.40 with one worker, side by side in one run —
//! (a) no filter, (b) a pass-through proxy-wasm filter, (c) Envoy's native filters doing
//! rollgate's job, (d) rollgate — under the same request mix from wrk, against an nginx
//! upstream. Several interleaved rounds; medians and spreads; ratios d/a, d/b, d/c; the
//! filter's size and its per-request cost under wasmtime. Writes `target/bench/report.md`
//! (and `results.tsv`, the raw runs) and prints the report.
//!
//! Flow: build the configs and check each (`envoy --mode validate`, the policy with the
//! filter's own compiler) → start nginx and the four Envoys → replay a sample of the mix
//! through each and check every answer's upstream → rounds → after the rounds, prove the
//! limits bite and the breaker ticks → stop everything → the host part → the report.
//! Any failed check stops the bench with an error: a config that does not route is not
//! measured.

mod checks;
mod envoy;
mod host_cost;
mod http;
mod load;
mod mix;
mod perf;
mod report;
mod rls;
mod stats;
mod sys;
mod upstream;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use envoy::{Case, Envoy, Inputs, Ports};
use load::{Wrk, WrkRun};
use sys::Pin;

const USAGE: &str = "\
usage: rollgate-bench [options]

  --rounds N            interleaved rounds (5)
  --duration S          seconds of each loaded run (5)
  --warmup S            seconds of warm-up before each loaded run (2)
  --connections N       wrk connections of the loaded runs (32)
  --light-duration S    seconds of each light-load latency run (3; 0 skips them)
  --light-connections N wrk connections of the light-load runs (1)
  --envoy-cpu LIST      taskset CPU list for Envoy (0)
  --load-cpu LIST       taskset CPU list for wrk and nginx (1)
  --nice N              nice value for Envoy, wrk and nginx (-20: other work on the machine
                        yields to them; 0 leaves priorities alone)
  --profile             also run rollgate with parts of its policy left out, and the probe
                        filter making rollgate's host calls one kind at a time: where the
                        CPU goes (needs ROLLGATE_PROBE_WASM; use with --light-duration 0)
  --cases LIST          run only these cases (labels, comma-separated: a,b,d,p6,...)
  --no-host             skip the wasmtime part
  --out DIR             where report.md, results.tsv and the configs go (target/bench)

Paths come from the environment, as `make bench` sets them: ROLLGATE_ENVOY, ROLLGATE_WASM,
ROLLGATE_PASSTHROUGH_WASM, ROLLGATE_PROBE_WASM (--profile); the seed policy from
ROLLGATE_BENCH_POLICY (examples/policy.json); wrk and nginx from PATH (or WRK, NGINX).";

/// Command-line settings.
#[derive(Debug, Clone)]
pub struct Args {
    rounds: usize,
    duration: u32,
    warmup: u32,
    connections: u32,
    light_duration: u32,
    light_connections: u32,
    envoy_cpu: String,
    load_cpu: String,
    nice: i32,
    profile: bool,
    only: Option<Vec<String>>,
    host: bool,
    out: PathBuf,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn parse_args(argv: &[String]) -> Result<Option<Args>> {
    let mut a = Args {
        rounds: 5,
        duration: 5,
        warmup: 2,
        connections: 32,
        light_duration: 3,
        light_connections: 1,
        envoy_cpu: "0".into(),
        load_cpu: "1".into(),
        nice: -20,
        profile: false,
        only: None,
        host: true,
        out: workspace_root().join("target/bench"),
    };
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{flag} needs a value\n\n{USAGE}"))
        };
        match flag.as_str() {
            "--rounds" => a.rounds = value()?.parse()?,
            "--duration" => a.duration = value()?.parse()?,
            "--warmup" => a.warmup = value()?.parse()?,
            "--connections" => a.connections = value()?.parse()?,
            "--light-duration" => a.light_duration = value()?.parse()?,
            "--light-connections" => a.light_connections = value()?.parse()?,
            "--envoy-cpu" => a.envoy_cpu = value()?,
            "--load-cpu" => a.load_cpu = value()?,
            "--nice" => a.nice = value()?.parse()?,
            "--profile" => a.profile = true,
            "--cases" => a.only = Some(value()?.split(',').map(str::to_string).collect()),
            "--no-host" => a.host = false,
            // Absolute: nginx resolves a relative configuration path against its prefix.
            "--out" => a.out = std::path::absolute(value()?)?,
            "-h" | "--help" => return Ok(None),
            other => bail!("unknown option {other}\n\n{USAGE}"),
        }
    }
    if a.rounds == 0 || a.duration == 0 || a.connections == 0 || a.light_connections == 0 {
        bail!("rounds, duration and connections must be at least 1");
    }
    Ok(Some(a))
}

/// A path from the environment, else `default`; it must exist.
fn input(var: &str, default: PathBuf, what: &str) -> Result<PathBuf> {
    let p = std::env::var_os(var).map_or(default, PathBuf::from);
    if !p.exists() {
        bail!(
            "{what} not found at {} (set {var}, or run `make bench`)",
            p.display()
        );
    }
    Ok(p)
}

/// A program from the environment or PATH.
fn program(var: &str, name: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Ok(PathBuf::from(p));
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/sbin".into(), "/sbin".into()])
    {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{name} not found on PATH (Debian: apt-get install {name}; `make bench` does it)")
}

/// One case's measurements in one round.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Round number (from 1).
    pub round: usize,
    /// The loaded run.
    pub load: WrkRun,
    /// The light-load run, unless skipped.
    pub light: Option<WrkRun>,
    /// Envoy's CPU time during the loaded run, ns.
    pub envoy_cpu_ns: u64,
    /// Wall time of the loaded run, ns.
    pub wall_ns: u64,
    /// Busy share of each CPU during the loaded run.
    pub cpu_busy: Vec<f64>,
    /// Canary's share of the loaded run's upstream requests.
    pub canary_share: f64,
}

impl Sample {
    /// Envoy CPU µs per request of the loaded run.
    pub fn cpu_us_per_request(&self) -> f64 {
        self.envoy_cpu_ns as f64 / 1e3 / self.load.requests.max(1) as f64
    }

    /// Envoy's CPU use during the loaded run, as a share of one CPU.
    pub fn envoy_busy(&self) -> f64 {
        self.envoy_cpu_ns as f64 / self.wall_ns.max(1) as f64
    }
}

/// Everything the report needs.
pub struct Results {
    /// The settings.
    pub args: Args,
    /// Cases in report order, with their samples.
    pub cases: Vec<(Case, Vec<Sample>)>,
    /// Routing samples of each case.
    pub routing: Vec<(Case, checks::RoutingSample)>,
    /// The after-rounds checks of each case.
    pub armed: Vec<(Case, checks::Armed)>,
    /// (e)'s calls to the rate-limit service over all its runs.
    pub global: Option<rls::Calls>,
    /// `--profile`: Envoy's CPU by code region, for (a), (b), (d).
    pub perf: Vec<(Case, perf::Split)>,
    /// Byte sizes: rollgate, pass-through.
    pub wasm_sizes: (u64, u64),
    /// The wasmtime part (or why it is missing).
    pub host: std::result::Result<host_cost::HostCost, String>,
    /// The machine.
    pub machine: sys::Machine,
    /// Tool versions: Envoy, nginx, wrk, rustc.
    pub versions: Vec<(&'static str, String)>,
    /// Pinning of Envoy and of the load.
    pub pins: (Pin, Pin),
    /// Busy share of each CPU over 2 s with none of the bench's processes running, before
    /// and after the rounds: the other work on the machine.
    pub background: (Vec<f64>, Vec<f64>),
    /// When the run started (UTC, from `date`).
    pub started: String,
    /// Total wall time.
    pub elapsed: Duration,
}

/// How busy each CPU is over 2 s (other people's work: nothing of ours runs then).
fn background_load() -> Result<Vec<f64>> {
    let before = sys::cpu_jiffies()?;
    std::thread::sleep(Duration::from_secs(2));
    Ok(sys::cpu_busy(&before, &sys::cpu_jiffies()?))
}

fn check_run(case: Case, what: &str, r: &WrkRun) -> Result<()> {
    if r.requests == 0 || r.non_2xx > 0 || r.socket_errors > 0 {
        bail!(
            "case ({}) {what}: {} requests, {} non-2xx, {} socket errors: the case is not \
             serving the mix cleanly (throttled or failing)",
            case.label(),
            r.requests,
            r.non_2xx,
            r.socket_errors
        );
    }
    Ok(())
}

fn run(args: Args) -> Result<Results> {
    let started = Instant::now();
    let root = workspace_root();
    let envoy_bin = input("ROLLGATE_ENVOY", root.join(".venv/bin/envoy"), "envoy")?;
    let rollgate_wasm = input(
        "ROLLGATE_WASM",
        root.join("target/wasm32-wasip1/release/rollgate_plugin.wasm"),
        "rollgate's .wasm",
    )?;
    let passthrough_wasm = input(
        "ROLLGATE_PASSTHROUGH_WASM",
        root.join("target/wasm32-wasip1/release/rollgate_bench_passthrough.wasm"),
        "the pass-through .wasm",
    )?;
    let seed_path = input(
        "ROLLGATE_BENCH_POLICY",
        root.join("examples/policy.json"),
        "the seed policy",
    )?;
    let wrk_bin = program("WRK", "wrk")?;
    let nginx_bin = program("NGINX", "nginx")?;
    let seed_policy = fs::read_to_string(&seed_path)?;

    let cpus = sys::nproc();
    let (envoy_pin, load_pin) = if cpus >= 2 {
        (
            Pin {
                cpus: Some(args.envoy_cpu.clone()),
                nice: args.nice,
            },
            Pin {
                cpus: Some(args.load_cpu.clone()),
                nice: args.nice,
            },
        )
    } else {
        eprintln!("bench: one CPU only; running unpinned (figures will be poor)");
        let p = Pin {
            cpus: None,
            nice: args.nice,
        };
        (p.clone(), p)
    };

    let mut cases: Vec<Case> = Case::MAIN.to_vec();
    let probe_wasm = if args.profile {
        cases.extend(Case::ABLATION);
        cases.extend((0..envoy::PROBES.len()).map(Case::Probe));
        Some(input(
            "ROLLGATE_PROBE_WASM",
            root.join("target/wasm32-wasip1/release/rollgate_bench_probe.wasm"),
            "the probe .wasm",
        )?)
    } else {
        None
    };

    if let Some(only) = &args.only {
        cases.retain(|c| only.contains(&c.label()));
        if cases.is_empty() {
            bail!("--cases {} selects no case", only.join(","));
        }
    }

    // Files: configs for inspection under `out`, process state in a temp dir.
    let configs = args.out.join("configs");
    let _ = fs::remove_dir_all(&configs);
    fs::create_dir_all(&configs)?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let work = std::env::temp_dir().join(format!("rollgate-bench-{}", std::process::id()));
    fs::create_dir_all(&work)?;
    eprintln!(
        "bench: configs in {}, logs in {} (removed after a clean run)",
        configs.display(),
        work.display()
    );

    let ports = sys::free_ports(3 + 2 * cases.len())?;
    let upstream_ports = [ports[0], ports[1], ports[2]];
    // (e)'s rate-limit service reads (e)'s policy file, so that file comes first; the
    // service runs on the load's CPUs, taking none from Envoy.
    let rls = if cases.contains(&Case::Global) {
        let path = configs.join(format!("policy-{}.json", Case::Global.label()));
        fs::write(&path, envoy::policy(&seed_policy, Case::Global)?)?;
        let s = rls::Service::start(&path, load_pin.cpus.as_deref())?;
        eprintln!("bench: (e) rate-limit service on 127.0.0.1:{}", s.port);
        Some(s)
    } else {
        None
    };
    let inputs = Inputs {
        upstream_ports,
        rollgate_wasm: &rollgate_wasm,
        probe_wasm: probe_wasm.as_deref(),
        passthrough_wasm: &passthrough_wasm,
        seed_policy: &seed_policy,
        rls_port: rls.as_ref().map(|s| s.port),
    };

    // Configs, each checked before anything runs.
    let mut planned = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let p = Ports {
            listener: ports[3 + 2 * i],
            admin: ports[4 + 2 * i],
        };
        if case.rollgate() {
            let policy = envoy::policy(&seed_policy, *case)?;
            let compiled = rollgate_policy::policy::Policy::from_json(policy.as_bytes())
                .map_err(|e| anyhow::anyhow!("bench policy of ({}): {e}", case.label()))?;
            if compiled.rate_limits.len() != case.limit_count()
                || compiled.breakers.len() != usize::from(case.breaks())
            {
                bail!(
                    "bench policy of ({}) compiled to the wrong parts",
                    case.label()
                );
            }
            fs::write(
                configs.join(format!("policy-{}.json", case.label())),
                &policy,
            )?;
        }
        let path = configs.join(format!("envoy-{}.yaml", case.label()));
        fs::write(&path, envoy::render(*case, p, &inputs)?)?;
        envoy::validate(&envoy_bin, &path)?;
        eprintln!(
            "bench: ({}) {} — config valid",
            case.label(),
            case.describe()
        );
        planned.push((*case, p, path));
    }
    let script = configs.join("mix.lua");
    fs::write(&script, load::MIX_LUA)?;
    let nginx_conf = configs.join("nginx.conf");
    fs::write(&nginx_conf, upstream::nginx_conf(&work, upstream_ports))?;

    let background_before = background_load()?;

    // Processes: dropped (stopped) in reverse order on every exit path.
    let _nginx = upstream::start(&nginx_bin, &nginx_conf, &work, upstream_ports, &load_pin)?;
    let mut envoys: Vec<Envoy> = Vec::new();
    for (case, p, path) in &planned {
        envoys.push(envoy::start(
            &envoy_bin, *case, path, *p, &work, &envoy_pin,
        )?);
    }
    if let Some(e) = envoys.iter().find(|e| e.case == Case::Rollgate) {
        let log = e.log_tail(200);
        if !log.contains("policy 'flask' loaded") {
            bail!("rollgate did not log its policy as loaded:\n{log}");
        }
    }

    let mut routing = Vec::new();
    for e in &envoys {
        let s = checks::routing(e)?;
        eprintln!(
            "bench: ({}) routes: {} requests; split stable/canary {}/{}; A/B to canary {}/{}; sticky {}/{}",
            e.case.label(),
            s.requests,
            s.split.0,
            s.split.1,
            s.ab.1,
            s.ab.0,
            s.sticky.0,
            s.sticky.1
        );
        routing.push((e.case, s));
    }

    let wrk = Wrk {
        bin: &wrk_bin,
        script: &script,
        pin: &load_pin,
    };
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); envoys.len()];
    let mut seed = stamp as u32;
    for round in 1..=args.rounds {
        for k in 0..envoys.len() {
            // Rotate the order every round so drift and warm caches favour no case.
            let i = (k + round - 1) % envoys.len();
            let e = &mut envoys[i];
            seed = seed.wrapping_add(1);
            if args.warmup > 0 {
                let w = wrk.run(e.ports.listener, args.connections, args.warmup, seed)?;
                check_run(e.case, "warm-up", &w)?;
            }
            let before = e.upstream_requests()?;
            let cpu0 = sys::process_cpu_ns(e.proc.pid())?;
            let jiffies0 = sys::cpu_jiffies()?;
            let t0 = Instant::now();
            let load = wrk.run(e.ports.listener, args.connections, args.duration, seed)?;
            let wall_ns = t0.elapsed().as_nanos() as u64;
            let cpu1 = sys::process_cpu_ns(e.proc.pid())?;
            let jiffies1 = sys::cpu_jiffies()?;
            check_run(e.case, "loaded run", &load)?;
            let after = e.upstream_requests()?;
            let canary_share = checks::run_split(e.case, before, after)?;
            let light = if args.light_duration > 0 {
                let l = wrk.run(
                    e.ports.listener,
                    args.light_connections,
                    args.light_duration,
                    seed,
                )?;
                check_run(e.case, "light-load run", &l)?;
                Some(l)
            } else {
                None
            };
            e.proc.check_alive()?;
            let s = Sample {
                round,
                load,
                light,
                envoy_cpu_ns: cpu1.saturating_sub(cpu0),
                wall_ns,
                cpu_busy: sys::cpu_busy(&jiffies0, &jiffies1),
                canary_share,
            };
            let light = s.light.map_or(String::new(), |l| {
                format!("  light p50 {:.0} µs p99 {:.0} µs", l.p50_us, l.p99_us)
            });
            eprintln!(
                "bench: round {round}/{} ({:>2}) {:>8.0} req/s  p50 {:>7.0} µs  p99 {:>7.0} µs  \
                 Envoy {:>5.1} µs CPU/req ({:.0} % busy){light}",
                args.rounds,
                e.case.label(),
                s.load.rps,
                s.load.p50_us,
                s.load.p99_us,
                s.cpu_us_per_request(),
                s.envoy_busy() * 100.0,
            );
            samples[i].push(s);
        }
    }

    // (e)'s calls to the service, from its Envoy's own counters, before the armed checks
    // add their floods.
    let global = match envoys.iter().find(|e| e.case == Case::Global) {
        Some(e) => Some(rls::calls(e)?),
        None => None,
    };
    if let Some(e) = envoys.iter().find(|e| e.case == Case::Global) {
        // The service's cluster as Envoy saw it: resets, overflows and timeouts explain a
        // call without an answer.
        let cluster: Vec<_> = e
            .stats(&format!("cluster.{}.upstream_", envoy::RLS_CLUSTER))?
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        eprintln!(
            "bench: (e) Envoy's {} cluster: {cluster:?}",
            envoy::RLS_CLUSTER
        );
    }
    if let Some(g) = &global {
        eprintln!(
            "bench: (e) {} service calls for {} requests ({} failed or timed out): {:?}",
            g.calls, g.requests, g.failed, g.outcomes
        );
    }

    let mut perf_splits = Vec::new();
    if args.profile {
        if perf::available() {
            for e in envoys
                .iter()
                .filter(|e| matches!(e.case, Case::NoFilter | Case::Passthrough | Case::Rollgate))
            {
                let split = perf::sample(e, &wrk, args.connections, 4, &work)?;
                eprintln!("bench: ({}) perf: {split:?}", e.case.label());
                perf_splits.push((e.case, split));
            }
        } else {
            eprintln!("bench: perf record does not work here; no CPU split by region");
        }
    }

    let mut armed = Vec::new();
    for e in &envoys {
        let a = checks::armed(e)?;
        if let Some((n, refused)) = a.flood {
            eprintln!(
                "bench: ({}) limit armed: {refused} of {n} flood requests refused",
                e.case.label()
            );
        }
        armed.push((e.case, a));
    }
    drop(envoys);
    drop(_nginx);
    if let Some(s) = rls {
        s.stop()?;
    }
    let _ = fs::remove_dir_all(&work);
    let background_after = background_load()?;

    let host = if args.host {
        eprintln!("bench: host part (wasmtime)…");
        host_cost::measure(
            &rollgate_wasm,
            &passthrough_wasm,
            &envoy::policy(&seed_policy, Case::Rollgate)?,
        )
        .map_err(|e| format!("{e:#}"))
    } else {
        Err("skipped (--no-host)".to_string())
    };

    let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let versions = vec![
        (
            "Envoy",
            sys::command_line(&envoy_bin.to_string_lossy(), &["--version"]),
        ),
        (
            "nginx",
            sys::command_line(&nginx_bin.to_string_lossy(), &["-v"]),
        ),
        (
            "wrk",
            sys::command_line(&wrk_bin.to_string_lossy(), &["-v"]),
        ),
        ("rustc", sys::command_line("rustc", &["--version"])),
    ];
    Ok(Results {
        args,
        cases: planned.iter().map(|(c, _, _)| *c).zip(samples).collect(),
        routing,
        armed,
        global,
        perf: perf_splits,
        wasm_sizes: (size(&rollgate_wasm), size(&passthrough_wasm)),
        host,
        machine: sys::machine(),
        versions,
        pins: (envoy_pin, load_pin),
        background: (background_before, background_after),
        started: sys::command_line(
            "date",
            &["-u", "-d", &format!("@{stamp}"), "+%Y-%m-%d %H:%M UTC"],
        ),
        elapsed: started.elapsed(),
    })
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("rollgate-bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    let out = args.out.clone();
    let result = run(args).and_then(|r| {
        let md = report::markdown(&r);
        fs::write(out.join("report.md"), &md)?;
        fs::write(out.join("results.tsv"), report::tsv(&r))?;
        println!("{md}");
        eprintln!(
            "bench: wrote {} and {}",
            out.join("report.md").display(),
            out.join("results.tsv").display()
        );
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rollgate-bench: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}
