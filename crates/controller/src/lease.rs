//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go does it: the holder
//! renews `renewTime` every third of the lease's duration; another replica takes over only
//! once a renewal is overdue. Writes carry the `resourceVersion` read, so of two replicas
//! racing for an expired lease exactly one wins (the other gets 409).
//!
//! A leader that cannot renew stops acting at its renew deadline (two thirds of the lease,
//! client-go's 10 s of 15 s), so it has stopped before any other replica may take over.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff;
use kube::api::PostParams;
use kube::Api;

use super::controller::Error;

/// One replica's handle on the lease.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    holder: String,
    ttl: Duration,
}

impl LeaseLock {
    /// The lease `name` in the namespace of `api`, held as `holder` (the pod name) for `ttl`.
    pub fn new(api: Api<Lease>, name: &str, holder: &str, ttl: Duration) -> LeaseLock {
        LeaseLock {
            api,
            name: name.into(),
            holder: holder.into(),
            ttl,
        }
    }

    /// How often the holder renews.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// How long after its last successful renewal a leader may go on acting: client-go's
    /// `RenewDeadline` (10 s for a 15 s lease, `leaderelection.go` defaults). The third left
    /// over covers clock skew and a write already in flight when the deadline passes.
    pub fn renew_deadline(&self) -> Duration {
        self.ttl * 2 / 3
    }

    /// How soon a failed renewal is tried again: client-go's `RetryPeriod` (2 s of 15 s).
    pub fn retry_every(&self) -> Duration {
        self.ttl * 2 / 15
    }

    /// Takes or renews the lease; `Ok(true)` when this replica holds it now.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, Error> {
        let now = jiff::Timestamp::now();
        let secs = i32::try_from(self.ttl.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.holder.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let mine = spec.holder_identity.as_deref() == Some(self.holder.as_str());
        let held_for = i64::from(spec.lease_duration_seconds.unwrap_or(secs));
        let expired = spec.renew_time.as_ref().is_none_or(|t| {
            t.0.checked_add(jiff::SignedDuration::from_secs(held_for))
                .is_ok_and(|end| end < now)
        });
        if !mine && !expired {
            return Ok(false);
        }
        if !mine {
            spec.holder_identity = Some(self.holder.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(secs);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
