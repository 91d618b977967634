//! The proxy-wasm glue: a thin layer between Envoy and the policy logic.
//!
//! The root context compiles the policy in `on_configure` into an immutable [`Runtime`]
//! shared with every request of this worker, and runs the breakers' periodic checks on its
//! tick. Requests ([`http::Filter`]) only read the runtime, plus this worker's breaker views.

mod host;
mod http;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel, MetricType};

use crate::breaker::{Local, Phase};
use crate::policy::Policy;
use crate::stats::StatNames;
use host::{define, increment, log, now_ns, record, EnvoyStore};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    // A panic aborts the VM; at least say why in Envoy's log.
    std::panic::set_hook(Box::new(|info| {
        log(LogLevel::Critical, &format!("panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Metric ids of one variant.
struct VariantIds {
    requests: u32,
    classes: [u32; 5],
    network_errors: u32,
    latency_ms: u32,
}

/// Metric ids of one breaker.
struct BreakerIds {
    state: u32,
    trips: u32,
    fallback: u32,
}

/// Everything a configuration compiles to, for one worker.
pub(crate) struct Runtime {
    policy: Policy,
    variants: Vec<VariantIds>,
    rate_limited: Vec<u32>,
    breaker_ids: Vec<BreakerIds>,
    /// This worker's view of each breaker (state seen, counts not yet shared).
    breakers: RefCell<Vec<Local>>,
}

impl Runtime {
    fn new(policy: Policy) -> Runtime {
        let names = StatNames::new(&policy);
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
        let breaker_ids = names
            .breakers
            .iter()
            .map(|b| BreakerIds {
                state: define(MetricType::Gauge, &b.state),
                trips: define(MetricType::Counter, &b.trips),
                fallback: define(MetricType::Counter, &b.fallback),
            })
            .collect();
        let locals = policy.breakers.iter().map(|b| b.local()).collect();
        Runtime {
            policy,
            variants,
            rate_limited,
            breaker_ids,
            breakers: RefCell::new(locals),
        }
    }

    /// The breakers' periodic work: share counts, follow the clock, evaluate, report.
    fn tick(&self) {
        let now = now_ns();
        let mut locals = self.breakers.borrow_mut();
        for ((b, l), ids) in self
            .policy
            .breakers
            .iter()
            .zip(locals.iter_mut())
            .zip(&self.breaker_ids)
        {
            if let Some(t) = b.tick(l, &EnvoyStore, now) {
                let scope = b
                    .variant
                    .and_then(|i| self.policy.variants.get(i))
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

#[derive(Default)]
struct Root {
    runtime: Option<Rc<Runtime>>,
    /// Cleared once Envoy says it lacks `clear_route_cache`, so we stop asking.
    no_route_cache_clearing: Rc<Cell<bool>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let Some(config) = self.get_plugin_configuration() else {
            log(
                LogLevel::Error,
                "invalid policy: no plugin configuration given",
            );
            return false;
        };
        match Policy::from_json(&config) {
            Ok(p) => {
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
                let period = p.breakers.iter().map(|b| b.check_period_ns).min();
                self.set_tick_period(period.map_or(Duration::ZERO, Duration::from_nanos));
                self.runtime = Some(Rc::new(Runtime::new(p)));
                true
            }
            Err(e) => {
                // Envoy rejects the configuration; a policy we already run keeps serving.
                log(LogLevel::Error, &format!("invalid policy: {e}"));
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(rt) = &self.runtime {
            rt.tick();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(http::Filter::new(
            context_id,
            self.runtime.clone(),
            self.no_route_cache_clearing.clone(),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
