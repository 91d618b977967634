//! Case (e)'s rate-limit service: a real Redis (Debian's `redis-server`, on a loopback port
//! with its own temp dir) and `rollgate ratelimit` (the `rollgate-ratelimit` library the
//! binary runs, here on a thread of the driver pinned to the load's CPU, so it takes no CPU
//! from Envoy), reading the limits from (e)'s policy file as it reads a sidecar's.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rollgate_ratelimit::{PolicySource, RateLimiter};

/// Debian's Redis server, which [`rollgate_e2e::Redis`] runs.
const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// Redis and the service; both stopped on drop.
pub struct Service {
    /// The service's port on 127.0.0.1.
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<()>>>,
    _redis: rollgate_e2e::Redis,
}

/// Pins thread or process `pid` (0: the calling thread) to the CPUs of a `taskset -c` list
/// of single CPUs ("1", "1,3"); anything else leaves it unpinned.
fn pin(pid: libc::pid_t, cpus: Option<&str>) {
    let Some(list) = cpus else { return };
    let Ok(ids) = list
        .split(',')
        .map(|c| c.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
    else {
        return;
    };
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes within it for ids below
    // CPU_SETSIZE (checked), and sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for id in ids.into_iter().filter(|&i| i < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(id, &mut set);
        }
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

impl Service {
    /// Starts Redis and the service reading `policy`; returns once the service accepts
    /// connections and has read its limits.
    pub fn start(policy: &Path, cpus: Option<&str>) -> Result<Service> {
        if !Path::new(REDIS_SERVER).exists() {
            bail!("{REDIS_SERVER} missing (Debian: apt-get install redis-server; `make bench` does it)");
        }
        let redis = rollgate_e2e::Redis::start();
        // Redis too runs beside the load, not on Envoy's CPU (its main thread does the work).
        if let Some(pid) = redis.pid().and_then(|p| libc::pid_t::try_from(p).ok()) {
            pin(pid, cpus);
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let source = PolicySource::parse(&policy.to_string_lossy()).map_err(|e| anyhow!(e))?;
        let url = redis.url();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let cpus = cpus.map(str::to_string);
        let thread = thread::spawn(move || -> Result<()> {
            pin(0, cpus.as_deref());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let limiter = RateLimiter::redis(&url).await?;
                let shutdown = async move {
                    let _ = stopped.await;
                };
                rollgate_ratelimit::serve(Arc::new(limiter), vec![source], addr, shutdown).await?;
                anyhow::Ok(())
            })
        });
        let s = Service {
            port,
            stop: Some(stop),
            thread: Some(thread),
            _redis: redis,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if s.thread.as_ref().is_some_and(JoinHandle::is_finished) || Instant::now() > deadline {
                bail!("the rate-limit service did not start on {addr}");
            }
            thread::sleep(Duration::from_millis(50));
        }
        // Its limits are read at start and then every second.
        thread::sleep(Duration::from_millis(500));
        Ok(s)
    }

    /// Stops the service; its error, if it failed.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r.context("rate-limit service"),
            Some(Err(_)) => bail!("rate-limit service thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// (e)'s traffic to the service, from its Envoy's counters over everything it served.
#[derive(Debug, Clone)]
pub struct Calls {
    /// Requests the Envoy sent upstream (every one passed the global limit).
    pub requests: u64,
    /// Answers the filter counted from the service (`rls_ok`, `rls_over_limit`) and calls
    /// that got none (`rls_unavailable`, `rls_timeout`, `rls_invalid`).
    pub calls: u64,
    /// Of those, the calls that got no usable answer.
    pub failed: u64,
    /// Each outcome's count (`ok`, `over_limit`, `timeout`, …), for the log.
    pub outcomes: Vec<(String, u64)>,
}

impl Calls {
    /// Calls per request, as a share.
    pub fn share(&self) -> f64 {
        self.calls as f64 / self.requests.max(1) as f64
    }
}

/// Reads (e)'s counters: every `…rls_<outcome>` the filter keeps, and the upstream requests.
pub fn calls(e: &crate::envoy::Envoy) -> Result<Calls> {
    let mut c = Calls {
        requests: e.upstream_requests()?.iter().sum(),
        calls: 0,
        failed: 0,
        outcomes: Vec::new(),
    };
    let mut seen = false;
    for (name, n) in e.stats("rls_")? {
        let Some((_, outcome)) = name.rsplit_once(".rls_") else {
            continue;
        };
        seen = true;
        c.outcomes.push((outcome.to_string(), n));
        c.calls += n;
        if matches!(outcome, "unavailable" | "timeout" | "invalid") {
            c.failed += n;
        }
    }
    if !seen {
        bail!("(e)'s Envoy keeps no rls_ counters: the global limit is not in its policy");
    }
    Ok(c)
}
