//! The RLS v3 server over Limitador with Redis counters.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use limitador::limit::Limit;
use limitador::storage::redis::AsyncRedisStorage;
use limitador::AsyncRateLimiter;
use tokio::sync::{Mutex, RwLock};
use tonic::{Request, Response, Status};

use crate::pb::rate_limit_response::rate_limit::Unit;
use crate::pb::rate_limit_response::{Code, DescriptorStatus, RateLimit as CurrentLimit};
use crate::pb::rate_limit_service_server::{RateLimitService, RateLimitServiceServer};
use crate::pb::{Duration as PbDuration, RateLimitRequest, RateLimitResponse};
use crate::policies::{LimitDef, PolicySource};

/// Descriptors one request may carry (the filter sends one; Envoy one per matching action).
const MAX_DESCRIPTORS: usize = 16;
/// Bytes of one request message: descriptors are a few short strings.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Hits one descriptor may count at once.
const MAX_HITS: u64 = 1 << 20;

/// What can stop the service.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("redis {url}: {message}")]
    Redis { url: String, message: String },
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serve: {0}")]
    Serve(String),
}

/// The limits in force and the counters behind them.
pub struct RateLimiter {
    limiter: AsyncRateLimiter,
    /// (domain, name) → limit.
    limits: RwLock<HashMap<(String, String), LimitDef>>,
    /// Limitador's Redis check-then-increment is two round trips, not one atomic step: two
    /// concurrent checks of one counter could both pass at its edge. One check at a time
    /// per service keeps a window exact across every gateway this service answers (replicas
    /// of the service still race, as Limitador's own server does).
    one_at_a_time: Mutex<()>,
}

impl RateLimiter {
    /// Counters in the Redis at `url` (`redis://host:port`).
    pub async fn redis(url: &str) -> Result<RateLimiter, ServeError> {
        let fail = |e: redis::RedisError| ServeError::Redis {
            url: url.to_string(),
            message: e.to_string(),
        };
        // Short reconnect attempts (20 ms, then 40 ms, then give up): the default backoff
        // grows to 6.4 s, so a Redis back after a few seconds down would wait that long.
        let manager = redis::aio::ConnectionManager::new_with_backoff(
            redis::Client::open(url).map_err(fail)?,
            2,
            10,
            2,
        )
        .await
        .map_err(fail)?;
        // The connection manager reconnects only after a command failed on the old
        // connection, so the first requests after Redis comes back would fail. A ping every
        // 200 ms makes that failure ours, not a gateway's, and starts the next attempt.
        let mut probe = manager.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _: Result<String, _> = redis::cmd("PING").query_async(&mut probe).await;
            }
        });
        let storage = AsyncRedisStorage::new_with_conn_manager(manager);
        Ok(RateLimiter {
            limiter: AsyncRateLimiter::new_with_storage(Box::new(storage)),
            limits: RwLock::new(HashMap::new()),
            one_at_a_time: Mutex::new(()),
        })
    }

    /// Puts `defs` in force: new limits start counting, removed ones stop, and an unchanged
    /// limit keeps its counters.
    pub async fn configure(&self, defs: &BTreeSet<LimitDef>) -> Result<(), String> {
        let limits = defs.iter().map(|d| {
            Limit::new(
                d.namespace(),
                i64::try_from(d.max).unwrap_or(i64::MAX),
                d.window_secs,
                Vec::<String>::new(),
                ["key"],
            )
        });
        self.limiter
            .configure_with(limits)
            .await
            .map_err(|e| e.to_string())?;
        *self.limits.write().await = defs
            .iter()
            .map(|d| ((d.domain.clone(), d.name.clone()), d.clone()))
            .collect();
        Ok(())
    }

    /// Counts `hits` for `key` under limit (`domain`, `name`). `None` when no such limit
    /// exists (the RLS answer is then OK, as envoyproxy/ratelimit's).
    async fn check(
        &self,
        domain: &str,
        name: &str,
        key: &str,
        hits: u64,
    ) -> Result<Option<DescriptorStatus>, Status> {
        let Some(def) = self
            .limits
            .read()
            .await
            .get(&(domain.to_string(), name.to_string()))
            .cloned()
        else {
            return Ok(None);
        };
        let values = HashMap::from([("key".to_string(), key.to_string())]);
        let result = {
            let _one = self.one_at_a_time.lock().await;
            self.limiter
                .check_rate_limited_and_update(
                    &def.namespace().into(),
                    &values,
                    i64::try_from(hits).unwrap_or(1),
                    true,
                )
                .await
        }
        .map_err(|e| Status::unavailable(format!("counter storage: {e}")))?;
        let counter = result.counters.first();
        let remaining = counter
            .and_then(|c| c.remaining())
            .map_or(0, |r| u32::try_from(r.max(0)).unwrap_or(u32::MAX));
        let reset = counter
            .and_then(|c| c.expires_in())
            .unwrap_or(Duration::from_secs(def.window_secs));
        Ok(Some(DescriptorStatus {
            code: if result.limited {
                Code::OverLimit
            } else {
                Code::Ok
            } as i32,
            current_limit: Some(CurrentLimit {
                name: def.name.clone(),
                requests_per_unit: u32::try_from(def.max).unwrap_or(u32::MAX),
                unit: unit_of(def.window_secs) as i32,
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(PbDuration {
                seconds: i64::try_from(reset.as_secs()).unwrap_or(i64::MAX),
                nanos: reset.subsec_nanos() as i32,
            }),
        }))
    }
}

/// RLS units name only whole seconds, minutes, hours and days; other windows are UNKNOWN
/// (Envoy uses the unit only for its `X-RateLimit-*` headers).
fn unit_of(window_secs: u64) -> Unit {
    match window_secs {
        1 => Unit::Second,
        60 => Unit::Minute,
        3600 => Unit::Hour,
        86_400 => Unit::Day,
        _ => Unit::Unknown,
    }
}

struct Rls(Arc<RateLimiter>);

#[tonic::async_trait]
impl RateLimitService for Rls {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let req = request.into_inner();
        if req.descriptors.len() > MAX_DESCRIPTORS {
            return Err(Status::invalid_argument(format!(
                "descriptors: at most {MAX_DESCRIPTORS}, got {}",
                req.descriptors.len()
            )));
        }
        let mut statuses = Vec::with_capacity(req.descriptors.len());
        let mut over = false;
        for (i, d) in req.descriptors.iter().enumerate() {
            let entry = |k: &str| {
                d.entries
                    .iter()
                    .find(|e| e.key == k)
                    .map(|e| e.value.as_str())
            };
            let hits = d
                .hits_addend
                .as_ref()
                .map(|h| h.value)
                .unwrap_or(u64::from(req.hits_addend))
                .max(1);
            if hits > MAX_HITS {
                return Err(Status::invalid_argument(format!(
                    "descriptors[{i}].hits_addend: at most {MAX_HITS}"
                )));
            }
            let status = match entry("limit") {
                Some(name) => {
                    let key = entry("key").unwrap_or("");
                    self.0.check(&req.domain, name, key, hits).await?
                }
                None => None,
            };
            let status = status.unwrap_or(DescriptorStatus {
                code: Code::Ok as i32,
                ..DescriptorStatus::default()
            });
            over |= status.code == Code::OverLimit as i32;
            statuses.push(status);
        }
        Ok(Response::new(RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
        }))
    }
}

/// Serves RLS v3 on `addr` until `shutdown` completes, re-reading `sources` every second
/// (a source that fails keeps its last limits; the failure is logged, once per change).
pub async fn serve(
    limiter: Arc<RateLimiter>,
    sources: Vec<PolicySource>,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen { addr, source })?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "rate-limit service listening");
    let reload = tokio::spawn(reload_forever(limiter.clone(), sources));
    let svc =
        RateLimitServiceServer::new(Rls(limiter)).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    // A check is two Redis round trips; five seconds means Redis is gone, and the gateway's
    // own timeout (20 ms by default) gave up long before.
    let result = tonic::transport::Server::builder()
        .timeout(Duration::from_secs(5))
        .concurrency_limit_per_connection(1024)
        .serve_with_incoming_shutdown(svc, incoming, shutdown)
        .await
        .map_err(|e| ServeError::Serve(e.to_string()));
    reload.abort();
    result
}

async fn reload_forever(limiter: Arc<RateLimiter>, sources: Vec<PolicySource>) {
    let mut current: Option<BTreeSet<LimitDef>> = None;
    let mut last_errors: Vec<String> = Vec::new();
    loop {
        let mut defs = BTreeSet::new();
        let mut errors = Vec::new();
        for s in &sources {
            match s.limits().await {
                Ok(l) => defs.extend(l),
                Err(e) => errors.push(e),
            }
        }
        if errors != last_errors {
            for e in &errors {
                tracing::warn!(error = %e, "policy not read; its last limits stay in force");
            }
            last_errors = errors.clone();
        }
        // A failed source keeps what it had: only a full read replaces the limits.
        if errors.is_empty() && current.as_ref() != Some(&defs) {
            match limiter.configure(&defs).await {
                Ok(()) => {
                    tracing::info!(limits = defs.len(), "global limits in force");
                    current = Some(defs);
                }
                Err(e) => tracing::warn!(error = %e, "limits not applied"),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
