//! rollgate's filter: the proxy-wasm glue between Envoy and [`rollgate_policy`], a thin layer.
//!
//! Data flow: Envoy hands the plugin configuration to `on_configure`, where
//! [`rollgate_policy::config::accept_config`] parses, validates and compiles it once into an
//! immutable [`Runtime`] shared with every request of this worker (fetched policies go through
//! [`rollgate_policy::fetch`] and the same acceptance). Each request ([`http::Filter`]) reads
//! the header map once, hands it to [`rollgate_policy::pipeline::Exchange`] over this worker's
//! [`host`] (shared data, clock, metrics) and carries out the plan it returns: strip
//! client-sent internal headers, write the cluster and variant headers the route
//! configuration reads, answer a local reply. The root context's tick runs the breakers'
//! periodic checks and the policy long-poll. Only this crate knows proxy-wasm; it builds for
//! `wasm32` alone (natively it is empty).

#![cfg(target_arch = "wasm32")]

mod host;
mod http;
mod shadow;
mod tcp;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::{ContextType, LogLevel, MetricType};

use host::{define, increment, log, now_ns, record, EnvoyStore};
use rollgate_policy::breaker::Phase;
use rollgate_policy::config::accept_config;
use rollgate_policy::fetch::{Fetcher, Outcome, Reaction};
use rollgate_policy::pipeline::{BreakerIds, LimitIds, VariantIds, Worker};
use rollgate_policy::policy::Policy;
use rollgate_policy::ratelimit::global::GlobalCache;
use rollgate_policy::ratelimit::Leases;
use rollgate_policy::shadow::ShadowIds;
use rollgate_policy::stats::StatNames;
use rollgate_policy::tcp::InFlight;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    // A panic aborts the VM; at least say why in Envoy's log.
    std::panic::set_hook(Box::new(|info| {
        log(LogLevel::Critical, &format!("panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// This worker's state for each item of `new`: taken from the previous runtime's `held`
/// states where that runtime had the `same` item, `fresh` otherwise.
fn carry_over<T, S>(
    new: &[T],
    previous: Option<(&[T], &RefCell<Vec<S>>)>,
    same: fn(&T, &T) -> bool,
    fresh: fn(&T) -> S,
) -> Vec<S> {
    let (old, mut held): (&[T], Vec<Option<S>>) = match previous {
        Some((old, cell)) => {
            let states = cell
                .try_borrow_mut()
                .map(|mut s| std::mem::take(&mut *s))
                .unwrap_or_default();
            (old, states.into_iter().map(Some).collect())
        }
        None => (&[], Vec::new()),
    };
    new.iter()
        .map(|n| {
            old.iter()
                .position(|o| same(o, n))
                .and_then(|i| held.get_mut(i))
                .and_then(Option::take)
                .unwrap_or_else(|| fresh(n))
        })
        .collect()
}

/// Metric ids of the connection limits (0 when the policy has none).
#[derive(Default)]
pub(crate) struct TcpIds {
    active: u32,
    refused_in_flight: u32,
    refused_allow: u32,
    refused_rate: u32,
}

/// Everything a configuration compiles to, for one worker.
pub(crate) struct Runtime {
    /// Connection limits' stats.
    tcp_ids: TcpIds,
    /// What each request reads (and its breaker views and leases).
    worker: Worker,
    /// When each breaker was last checked: the tick may be faster than its `check_period`.
    last_check: RefCell<Vec<u64>>,
    /// Per variant: its shadow traffic's stats (0s for variants no route mirrors to).
    shadow_ids: Vec<ShadowIds>,
}

impl Runtime {
    /// Compiles `policy` for this worker; breakers that `previous` also had, unchanged, keep
    /// this worker's view of them (the shared state carries over by itself).
    fn new(policy: Policy, previous: Option<&Runtime>) -> Runtime {
        let names = StatNames::new(&policy);
        let shadow_ids = names
            .variants
            .iter()
            .map(|v| {
                v.shadow
                    .as_ref()
                    .map_or_else(ShadowIds::default, |s| ShadowIds {
                        requests: define(MetricType::Counter, &s.requests),
                        classes: s.classes.each_ref().map(|c| define(MetricType::Counter, c)),
                        mismatch: define(MetricType::Counter, &s.mismatch),
                        latency_ms: define(MetricType::Histogram, &s.latency_ms),
                        skipped: define(MetricType::Counter, &s.skipped),
                        dropped: define(MetricType::Counter, &s.dropped),
                        failed: define(MetricType::Counter, &s.failed),
                        body_compared: define(MetricType::Counter, &s.body_compared),
                        body_mismatch: define(MetricType::Counter, &s.body_mismatch),
                    })
            })
            .collect();
        let variants = names
            .variants
            .iter()
            .map(|v| VariantIds {
                requests: define(MetricType::Counter, &v.requests),
                classes: v.classes.each_ref().map(|c| define(MetricType::Counter, c)),
                network_errors: define(MetricType::Counter, &v.network_errors),
                latency_ms: define(MetricType::Histogram, &v.latency_ms),
            })
            .collect();
        let rate_limited = names
            .rate_limited
            .iter()
            .map(|n| define(MetricType::Counter, n))
            .collect();
        let counter =
            |n: &Option<String>| n.as_deref().map_or(0, |n| define(MetricType::Counter, n));
        let limit_ids = names
            .limits
            .iter()
            .map(|l| {
                let [ok, over, unavailable, timeout, invalid] = match &l.rls {
                    Some(names) => names.each_ref().map(|n| define(MetricType::Counter, n)),
                    None => [0; 5],
                };
                LimitIds {
                    shadow_limited: counter(&l.shadow_limited),
                    rls_ok: ok,
                    rls_over_limit: over,
                    rls_unavailable: unavailable,
                    rls_timeout: timeout,
                    rls_invalid: invalid,
                }
            })
            .collect();
        let breaker_ids = names
            .breakers
            .iter()
            .map(|b| BreakerIds {
                state: define(MetricType::Gauge, &b.state),
                trips: define(MetricType::Counter, &b.trips),
                fallback: define(MetricType::Counter, &b.fallback),
            })
            .collect();
        // An unchanged breaker keeps this worker's view, an unchanged limit its leases (their
        // tokens came out of the same bucket).
        let locals = carry_over(
            &policy.breakers,
            previous.map(|p| (&p.worker.policy.breakers[..], &p.worker.breakers)),
            |o, n| o.name == n.name && o.config == n.config,
            |b| b.local(),
        );
        let leases = carry_over(
            &policy.rate_limits,
            previous.map(|p| (&p.worker.policy.rate_limits[..], &p.worker.leases)),
            |o, n| o.name == n.name && o.config == n.config,
            |_| Leases::default(),
        );
        let globals = carry_over(
            &policy.rate_limits,
            previous.map(|p| (&p.worker.policy.rate_limits[..], &p.worker.globals)),
            |o, n| o.name == n.name && o.global == n.global,
            |_| GlobalCache::default(),
        );
        let tcp_ids = names.tcp.map_or_else(TcpIds::default, |t| TcpIds {
            active: define(MetricType::Gauge, &t.active),
            refused_in_flight: define(MetricType::Counter, &t.refused_in_flight),
            refused_allow: define(MetricType::Counter, &t.refused_allow),
            refused_rate: define(MetricType::Counter, &t.refused_rate),
        });
        let n = policy.breakers.len();
        Runtime {
            tcp_ids,
            worker: Worker {
                leases: RefCell::new(leases),
                globals: RefCell::new(globals),
                policy,
                variants,
                rate_limited,
                limit_ids,
                breaker_ids,
                breakers: RefCell::new(locals),
            },
            last_check: RefCell::new(vec![0; n]),
            shadow_ids,
        }
    }

    /// The breakers' periodic work: share counts, follow the clock, evaluate, report.
    fn tick(&self) {
        let now = now_ns();
        let w = &self.worker;
        let mut locals = w.breakers.borrow_mut();
        let mut last = self.last_check.borrow_mut();
        let breakers = w
            .policy
            .breakers
            .iter()
            .zip(locals.iter_mut())
            .zip(&w.breaker_ids);
        for (((b, l), ids), last) in breakers.zip(last.iter_mut()) {
            // Ticks jitter: a check due within 10 ms counts as due.
            if now.saturating_add(10_000_000) < last.saturating_add(b.check_period_ns) {
                continue;
            }
            *last = now;
            if let Some(t) = b.tick(l, &EnvoyStore, now) {
                let scope = b
                    .variant
                    .and_then(|i| w.policy.variants.get(i))
                    .map_or("all traffic", |v| v.name.as_str());
                log(
                    LogLevel::Info,
                    &format!(
                        "circuit breaker '{}' ({scope}): {} -> {}; {}",
                        b.name,
                        t.from.name(),
                        t.to.name(),
                        t.figures
                    ),
                );
                if t.to == Phase::Open {
                    increment(ids.trips, 1);
                }
            }
            record(ids.state, b.phase_at(&l.state, now).0.gauge());
        }
    }
}

/// Metric ids of the policy fetch.
struct FetchIds {
    version: u32,
    updates: u32,
    refused: u32,
    errors: u32,
}

#[derive(Default)]
struct Root {
    runtime: Option<Rc<Runtime>>,
    /// Fetches policies from the sidecar, when the configuration names a `source`.
    fetcher: Option<Fetcher>,
    fetch_ids: Option<FetchIds>,
    /// This worker's open connections, across policy switches (each connection gives back
    /// what the policy that admitted it took).
    in_flight: Option<Rc<RefCell<InFlight>>>,
    /// A network filter: the configuration's policy is a connection-limit one (`tcp`, no
    /// variants). Set once, at the first configuration, with the fetcher's matching check.
    network: bool,
    /// Shadow traffic: the copies of this worker's requests, sent from here.
    shadow: Rc<shadow::Shadow>,
    /// The policy long-poll in flight: every other call this root makes is a copy's.
    poll_token: Option<u32>,
}

/// How often the root ticks when it fetches policies: the longest a worker runs an older
/// policy than the one another worker fetched.
const ADOPT_PERIOD: Duration = Duration::from_millis(100);

impl Root {
    /// Runs `policy` from now on (new requests); in-flight ones finish on the old one.
    fn switch(&mut self, policy: Policy) {
        // Test builds only (`make wasm-test-trap`): a policy that kills the VM applying it.
        #[cfg(feature = "test-trap")]
        if policy.spec.name == "test-trap-on-apply" {
            core::arch::wasm32::unreachable();
        }
        let mut period = policy
            .breakers
            .iter()
            .map(|b| Duration::from_nanos(b.check_period_ns))
            .min();
        if self.fetcher.is_some() {
            period = Some(period.map_or(ADOPT_PERIOD, |p| p.min(ADOPT_PERIOD)));
        }
        if policy.tcp.as_ref().is_some_and(|t| t.counts()) {
            let refresh = Duration::from_nanos(rollgate_policy::tcp::REFRESH_NS);
            period = Some(period.map_or(refresh, |p| p.min(refresh)));
        }
        self.set_tick_period(period.unwrap_or(Duration::ZERO));
        if policy.mirrors().next().is_some() {
            self.shadow.register();
        }
        if self.in_flight.is_none() && policy.tcp.is_some() {
            let id = rollgate_policy::fetch::worker_id(&EnvoyStore, "rollgate.vm_seq", now_ns());
            self.in_flight = Some(Rc::new(RefCell::new(InFlight::new(id))));
        }
        self.runtime = Some(Rc::new(Runtime::new(policy, self.runtime.as_deref())));
    }

    fn fetch_stat(&self, pick: fn(&FetchIds) -> u32) -> u32 {
        self.fetch_ids.as_ref().map_or(0, pick)
    }

    /// Adopts a policy another worker published, and starts a poll if it is this worker's turn.
    fn fetch_tick(&mut self, now: u64) {
        let Some(f) = self.fetcher.as_mut() else {
            return;
        };
        f.renew(&EnvoyStore, now);
        if let Some((version, body)) = f.published(&EnvoyStore) {
            f.adopted(version);
            f.applying(&EnvoyStore, version);
            match rollgate_policy::policy::accept_policy(&body) {
                Ok(p) => {
                    self.switch(p);
                    record(self.fetch_stat(|i| i.version), version);
                    if let Some(f) = &self.fetcher {
                        f.applied(&EnvoyStore, version);
                    }
                }
                Err(e) => log(
                    LogLevel::Error,
                    &format!("published policy version {version} unusable: {e}"),
                ),
            }
        }
        self.start_poll(now);
    }

    fn start_poll(&mut self, now: u64) {
        let Some(f) = self.fetcher.as_mut() else {
            return;
        };
        let Some(path) = f.poll_now(&EnvoyStore, now) else {
            return;
        };
        let (authority, cluster) = (f.source.authority.clone(), f.source.cluster.clone());
        let timeout = Duration::from_nanos(f.timeout_ns());
        let headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", authority.as_str()),
        ];
        match self.dispatch_http_call(&cluster, headers, None, vec![], timeout) {
            Ok(token) => self.poll_token = Some(token),
            Err(status) => {
                let why = format!(
                    "cannot call cluster '{cluster}' ({status:?}): is it in Envoy's configuration?"
                );
                self.poll_finished(now, Outcome::Failed(why));
            }
        }
    }

    fn poll_finished(&mut self, now: u64, outcome: Outcome) {
        let Some(f) = self.fetcher.as_mut() else {
            return;
        };
        let from = format!("cluster '{}' {}", f.source.cluster, f.source.path);
        let running = f.version;
        match f.finished(&EnvoyStore, now, outcome) {
            Reaction::Adopt(version, p) => {
                log(
                    LogLevel::Info,
                    &format!(
                        "policy '{}' version {version} applied (from {from})",
                        p.spec.name
                    ),
                );
                self.switch(*p);
                if let Some(f) = &self.fetcher {
                    f.applied(&EnvoyStore, version);
                }
                increment(self.fetch_stat(|i| i.updates), 1);
                record(self.fetch_stat(|i| i.version), version);
                // Long-poll again at once: the sidecar holds the request until the next change.
                self.start_poll(now);
            }
            Reaction::Refused(version, why) => {
                log(LogLevel::Error, &format!("policy version {version} from {from} refused: {why}; version {running} keeps serving"));
                increment(self.fetch_stat(|i| i.refused), 1);
                self.start_poll(now);
            }
            Reaction::Unchanged => self.start_poll(now),
            Reaction::Failed(why, backoff) => {
                // Tenths of a second in integers: `{:.1}` on an f64 links ~20 KB of float formatting.
                let tenths = (backoff + 50_000_000) / 100_000_000;
                log(LogLevel::Warn, &format!("policy fetch from {from} failed: {why}; the current policy keeps serving, retry in {}.{}s", tenths / 10, tenths % 10));
                increment(self.fetch_stat(|i| i.errors), 1);
            }
        }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if self.poll_token != Some(token) {
            // A copy's answer (or one the book already gave up on).
            self.shadow.answer(token, body_size);
            return;
        }
        self.poll_token = None;
        let now = now_ns();
        let header = |name: &str| {
            self.get_http_call_response_header_bytes(name)
                .and_then(|v| String::from_utf8(v).ok())
        };
        let status = header(":status").and_then(|s| s.parse::<u16>().ok());
        let version = header("x-rollgate-version").and_then(|s| s.trim().parse::<u64>().ok());
        let outcome = match (status, version) {
            // Refused before the body is copied into the VM: the size alone decides.
            (Some(200), Some(version)) if body_size > rollgate_policy::limits::MAX_POLICY_BYTES => {
                Outcome::Oversized {
                    version,
                    size: body_size,
                }
            }
            (Some(200), Some(version)) => Outcome::Policy {
                version,
                body: self
                    .get_http_call_response_body(0, body_size)
                    .unwrap_or_default(),
            },
            (Some(200), None) => Outcome::Failed("answer without x-rollgate-version".into()),
            (Some(304), _) => Outcome::NotModified,
            (Some(s), _) => Outcome::Failed(format!("status {s}")),
            (None, _) => Outcome::Failed("no answer (connection failed or reset)".into()),
        };
        self.poll_finished(now, outcome);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let Some(config) = self.get_plugin_configuration() else {
            log(
                LogLevel::Error,
                "invalid policy: no plugin configuration given",
            );
            return false;
        };
        let config = match accept_config(&config) {
            Ok(c) => c,
            Err(e) => {
                // Envoy rejects the configuration; a policy we already run keeps serving.
                log(LogLevel::Error, &format!("invalid policy: {e}"));
                return false;
            }
        };
        // A VM's kind is its first configuration's: Envoy already creates its streams.
        if self.runtime.is_none() && self.fetcher.is_none() {
            self.network = config.policy.as_ref().is_some_and(|p| p.network_only());
        }
        let network = self.network;
        self.fetcher = config.source.map(|source| {
            let name = format!("rollgate.{}.policy", source.stat_name);
            self.fetch_ids = Some(FetchIds {
                version: define(MetricType::Gauge, &format!("{name}.version")),
                updates: define(MetricType::Counter, &format!("{name}.updates")),
                refused: define(MetricType::Counter, &format!("{name}.refused")),
                errors: define(MetricType::Counter, &format!("{name}.fetch_errors")),
            });
            log(
                LogLevel::Info,
                &format!(
                    "fetching policies from cluster '{}' {}",
                    source.cluster, source.path
                ),
            );
            let worker =
                rollgate_policy::fetch::worker_id(&EnvoyStore, "rollgate.vm_seq", now_ns());
            let mut f = Fetcher::new(source, worker);
            f.network = network;
            f
        });
        // A fresh VM may replace one that died applying a fetched policy (FAIL_RELOAD).
        if let Some((version, deaths)) = self.fetcher.as_mut().and_then(|f| f.recover(&EnvoyStore))
        {
            if deaths >= rollgate_policy::fetch::MAX_DEATHS {
                log(LogLevel::Critical, &format!("policy version {version} killed {deaths} VMs applying it: refused, it is never applied again"));
                increment(self.fetch_stat(|i| i.refused), 1);
            } else {
                log(LogLevel::Error, &format!("policy version {version} killed a VM applying it ({deaths} of {} before it is refused)", rollgate_policy::fetch::MAX_DEATHS));
            }
        }
        match config.policy {
            Some(p) => {
                // The controller's number for a policy written into the configuration (a
                // fetched one's comes from its source): what tells it this gateway serves it.
                if let (None, Some(v)) = (&self.fetcher, p.spec.version) {
                    let name = rollgate_policy::stats::sanitize(&p.spec.name);
                    record(
                        define(
                            MetricType::Gauge,
                            &format!("rollgate.{name}.policy.version"),
                        ),
                        v,
                    );
                }
                log(
                    LogLevel::Info,
                    &format!(
                        "policy '{}' loaded: {} variants, {} routes, {} rate limits, {} circuit breakers",
                        p.spec.name,
                        p.variants.len(),
                        p.spec.routes.len(),
                        p.rate_limits.len(),
                        p.breakers.len()
                    ),
                );
                self.switch(p);
            }
            None => {
                // No policy until the first fetch: requests pass untouched.
                self.set_tick_period(ADOPT_PERIOD);
            }
        }
        true
    }

    fn on_queue_ready(&mut self, queue: u32) {
        self.shadow.drain(queue);
        self.shadow.send_ready();
    }

    fn on_tick(&mut self) {
        self.fetch_tick(now_ns());
        if let Some(rt) = &self.runtime {
            rt.tick();
            if let (Some(tcp), Some(w)) = (&rt.worker.policy.tcp, &self.in_flight) {
                if let Ok(w) = w.try_borrow() {
                    tcp.sweep(&w, &EnvoyStore, now_ns());
                }
            }
        }
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        let w = self.in_flight.clone()?;
        Some(Box::new(tcp::Conn::new(self.runtime.clone(), w)))
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(http::Filter::new(
            context_id,
            self.runtime.clone(),
            self.shadow.clone(),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        // Fixed by the configuration, never by a fetched policy: the SDK makes every stream
        // of this kind, and a stream of the other kind traps the VM on its first callback.
        if self.network {
            Some(ContextType::StreamContext)
        } else {
            Some(ContextType::HttpContext)
        }
    }
}
