//! The machine: child processes (pinned, reaped), free ports, CPU accounting from `/proc`,
//! and the description the report carries.

use std::fs::{self, File};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Where and how a process runs: a CPU list for `taskset`, and a priority.
///
/// NB: on kernels with autogroup scheduling (`/proc/sys/kernel/sched_autogroup_enabled`), CPU
/// time is shared between *sessions* first, so `nice` alone does not make a process win
/// against another session's compiler. Each bench process therefore starts in a session of
/// its own (`setsid`), whose autogroup gets the nice value too (`/proc/PID/autogroup`).
#[derive(Debug, Clone)]
pub struct Pin {
    /// `taskset -c` CPU list; `None` runs unpinned.
    pub cpus: Option<String>,
    /// Nice value (and autogroup nice); 0 leaves priorities alone.
    pub nice: i32,
}

impl Pin {
    /// A command running `program` under this pinning, in its own session, sent SIGTERM if the
    /// driver dies (so an interrupted bench leaves nothing running).
    pub fn command(&self, program: &Path) -> Command {
        let mut prefix: Vec<String> = Vec::new();
        if let Some(cpus) = &self.cpus {
            prefix.extend(["taskset".into(), "-c".into(), cpus.clone()]);
        }
        if self.nice != 0 {
            prefix.extend(["nice".into(), "-n".into(), self.nice.to_string()]);
        }
        let mut c = match prefix.split_first() {
            None => Command::new(program),
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
        };
        // SAFETY: between fork and exec we only make two async-signal-safe system calls and
        // touch no memory of the parent.
        unsafe {
            c.pre_exec(|| {
                libc::setsid();
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        c
    }

    /// Gives the session of `pid` (started by [`Pin::command`]) this priority. Returns whether
    /// the kernel took it (no autogroups, or no privilege: false, and only `nice` applies).
    pub fn apply(&self, pid: u32) -> bool {
        self.nice != 0 && fs::write(format!("/proc/{pid}/autogroup"), self.nice.to_string()).is_ok()
    }

    /// For the report: `CPU 0, nice -20`.
    pub fn describe(&self) -> String {
        let cpus = self
            .cpus
            .as_deref()
            .map_or("any CPU".to_string(), |c| format!("CPU {c}"));
        if self.nice == 0 {
            cpus
        } else {
            format!("{cpus}, nice {} (own session and autogroup)", self.nice)
        }
    }
}

/// A child process that is stopped (SIGTERM, then SIGKILL after 5 s) and reaped on drop.
/// `taskset`, `nice` and Envoy's Python launcher all `exec`, so the pid is the program's own.
pub struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    /// Spawns `cmd` (from [`Pin::command`]) with stdin closed and stdout and stderr into the
    /// file `output`, and applies `pin`'s priority to it.
    pub fn spawn(name: &str, mut cmd: Command, output: &Path, pin: &Pin) -> Result<Proc> {
        let out = File::create(output).with_context(|| format!("creating {}", output.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        pin.apply(child.id());
        Ok(Proc {
            name: name.to_string(),
            child,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if it has exited.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.exited()? {
            bail!("{} exited unexpectedly ({status})", self.name);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` distinct free TCP ports on 127.0.0.1 (held together while chosen, then released).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("finding free ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// CPU time a process has used so far, all threads, in nanoseconds (`/proc/PID/task/*/
/// schedstat`, the scheduler's own accounting: exact, unlike the 10 ms ticks of `stat`).
pub fn process_cpu_ns(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread may end between the listing and the read.
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        total += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// Per-CPU (busy, total) jiffies from `/proc/stat`, indexed by CPU number.
pub fn cpu_jiffies() -> Result<Vec<(u64, u64)>> {
    let text = fs::read_to_string("/proc/stat")?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let Some(name) = parts.next() else { continue };
        if !name.starts_with("cpu") || name == "cpu" {
            continue;
        }
        let v: Vec<u64> = parts.filter_map(|p| p.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        out.push((total - idle, total));
    }
    Ok(out)
}

/// Busy share of each CPU between two [`cpu_jiffies`] readings.
pub fn cpu_busy(before: &[(u64, u64)], after: &[(u64, u64)]) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|((b0, t0), (b1, t1))| {
            let t = t1.saturating_sub(*t0);
            if t == 0 {
                0.0
            } else {
                b1.saturating_sub(*b0) as f64 / t as f64
            }
        })
        .collect()
}

/// Number of online CPUs.
pub fn nproc() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// First line of a command's output, or `unknown`.
pub fn command_line(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(o) => {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("unknown")
                .trim()
                .to_string()
        }
        Err(_) => "unknown".to_string(),
    }
}

/// The machine, for the report.
pub struct Machine {
    /// CPU model (`/proc/cpuinfo`).
    pub cpu_model: String,
    /// Online CPUs.
    pub nproc: usize,
    /// Memory in GiB.
    pub mem_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// Hypervisor, if `/proc/cpuinfo` flags one.
    pub virtualized: bool,
    /// OS (`/etc/os-release` PRETTY_NAME).
    pub os: String,
}

/// Reads the machine's description.
pub fn machine() -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let cpu_model = field("model name").unwrap_or_else(|| "unknown".into());
    let virtualized = field("flags").is_some_and(|f| f.split(' ').any(|x| x == "hypervisor"));
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let os = fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cpu_model,
        nproc: nproc(),
        mem_gib,
        kernel: command_line("uname", &["-r"]),
        virtualized,
        os,
    }
}
