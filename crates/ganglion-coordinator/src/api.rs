//! What a server needs of a coordinator: [`ResourceCoordinator`], the leases, permits and
//! queued requests its callers ask for by name, and the status operators read. The
//! server holds an `Arc<dyn ResourceCoordinator>`; [`Coordinator`] (state in the
//! [`Stores`](crate::Stores) it is given) is the one implementation so far.

use std::time::Duration;

use bytes::Bytes;
use ganglion_core::BoxFuture;
use ganglion_core::stats::HistogramSnapshot;
use tokio::sync::watch;

use crate::lease::{AcquireRequest, EventHook, Lease, LeaseStage, PoolStatus};
use crate::queue::{Outcome, Submission, Taken};
use crate::quota::{Permit, QuotaStatus};
use crate::{Coordinator, CoordinatorConfig, CoordinatorError, FencingToken, LeaseId, RequestId};

/// Pools, quotas, queues and breakers at a glance: what `Status` (gRPC),
/// `/api/v1/resources` (HTTP), `ganglion resources` (CLI) and `/metrics` all show.
#[derive(Debug, Clone, PartialEq)]
pub struct CoordinatorStatus {
    pub pools: Vec<PoolStatus>,
    pub quotas: Vec<QuotaStatus>,
    pub queues: Vec<QueueStatus>,
    pub breakers: Vec<BreakerStatus>,
}

/// A request queue: its name, the quota pacing it and how many requests wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStatus {
    pub name: String,
    pub quota: String,
    pub depth: usize,
}

/// A circuit breaker and the state it is in (`closed`, `open`, `half_open`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerStatus {
    pub name: String,
    pub state: &'static str,
}

/// The coordinator contract a server serves. Errors are [`CoordinatorError`]s, each
/// with its shared code; names (pools, quotas, queues) not configured are `NotFound`.
pub trait ResourceCoordinator: Send + Sync + std::fmt::Debug {
    /// Waits in the pool's line (fair, by priority and age) for a lease.
    fn acquire(&self, request: AcquireRequest) -> BoxFuture<'_, Result<Lease, CoordinatorError>>;

    /// A lease's stage as it changes (held, warned, revoked, released).
    fn watch_lease(&self, lease: LeaseId) -> watch::Receiver<LeaseStage>;

    /// Extends a lease by its time to live.
    fn renew(&self, lease: LeaseId) -> Result<Lease, CoordinatorError>;

    fn release(&self, lease: LeaseId) -> Result<(), CoordinatorError>;

    /// Who holds a lease, while it is held.
    fn lease_holder(&self, lease: LeaseId) -> Option<String>;

    /// `Ok` while `token` is the newest fencing token of `pool`'s live leases; `Stale`
    /// (with why) once a newer one exists or its lease ended.
    fn check_fence(&self, pool: &str, token: FencingToken) -> Result<(), CoordinatorError>;

    /// Called with every lease event (`None` stops the calls).
    fn on_lease_event(&self, hook: Option<EventHook>);

    /// A permit of `quota` now, or `ResourceExhausted` with when to retry.
    fn try_permit(&self, quota: &str, component: &str) -> Result<Permit, CoordinatorError>;

    /// Waits up to `wait` for a permit of `quota`.
    fn permit(
        &self,
        quota: String,
        component: String,
        priority: i32,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Permit, CoordinatorError>>;

    /// Queues a request; returns its id (the earlier one's, for a repeated idempotency key).
    fn submit(&self, queue: &str, submission: Submission) -> Result<RequestId, CoordinatorError>;

    /// Waits up to `wait` for a request's response (`None`: not ready yet).
    fn response(
        &self,
        queue: String,
        id: RequestId,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Option<Outcome>, CoordinatorError>>;

    /// Waits up to `wait` for a request to work on, when the queue's quota allows one.
    fn take(
        &self,
        queue: String,
        worker: String,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Option<Taken>, CoordinatorError>>;

    /// A worker's answer to a taken request: its response, or an error.
    fn complete(
        &self,
        queue: &str,
        id: RequestId,
        result: Result<Bytes, String>,
    ) -> Result<(), CoordinatorError>;

    /// Who submitted a queued request, while it is known.
    fn submitter(&self, queue: &str, id: RequestId) -> Result<Option<String>, CoordinatorError>;

    /// Which worker holds a taken request, while it is taken.
    fn taken_by(&self, queue: &str, id: RequestId) -> Result<Option<String>, CoordinatorError>;

    fn status(&self) -> CoordinatorStatus;

    /// How long granted lease requests waited, per pool.
    fn lease_wait_times(&self) -> Vec<(String, HistogramSnapshot)>;

    /// Why some state cannot be written now (a full disk), if it cannot.
    fn write_error(&self) -> Option<String>;

    /// Applies a reloaded config; returns what takes a restart, by config path.
    fn reconfigure(&self, config: &CoordinatorConfig) -> Result<Vec<String>, CoordinatorError>;

    /// Lease deadlines and state writes, run by the server while it serves.
    fn upkeep(&self) -> BoxFuture<'static, ()>;

    /// Writes what is not written yet (on shutdown).
    fn flush(&self) -> Result<(), CoordinatorError>;
}

impl ResourceCoordinator for Coordinator {
    fn acquire(&self, request: AcquireRequest) -> BoxFuture<'_, Result<Lease, CoordinatorError>> {
        Box::pin(self.pools().acquire(request))
    }

    fn watch_lease(&self, lease: LeaseId) -> watch::Receiver<LeaseStage> {
        self.pools().watch(lease)
    }

    fn renew(&self, lease: LeaseId) -> Result<Lease, CoordinatorError> {
        self.pools().renew(lease)
    }

    fn release(&self, lease: LeaseId) -> Result<(), CoordinatorError> {
        self.pools().release(lease)
    }

    fn lease_holder(&self, lease: LeaseId) -> Option<String> {
        self.pools().holder(lease)
    }

    fn check_fence(&self, pool: &str, token: FencingToken) -> Result<(), CoordinatorError> {
        self.pools().check_fence(pool, token)
    }

    fn on_lease_event(&self, hook: Option<EventHook>) {
        self.pools().on_event(hook);
    }

    fn try_permit(&self, quota: &str, component: &str) -> Result<Permit, CoordinatorError> {
        self.quota(quota)?.try_acquire(component)
    }

    fn permit(
        &self,
        quota: String,
        component: String,
        priority: i32,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Permit, CoordinatorError>> {
        Box::pin(async move {
            self.quota(&quota)?
                .acquire(&component, priority, wait)
                .await
        })
    }

    fn submit(&self, queue: &str, submission: Submission) -> Result<RequestId, CoordinatorError> {
        self.queue(queue)?.submit(submission)
    }

    fn response(
        &self,
        queue: String,
        id: RequestId,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Option<Outcome>, CoordinatorError>> {
        Box::pin(async move { self.queue(&queue)?.get_response(id, wait).await })
    }

    fn take(
        &self,
        queue: String,
        worker: String,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Option<Taken>, CoordinatorError>> {
        Box::pin(async move { self.queue(&queue)?.take(&worker, wait).await })
    }

    fn complete(
        &self,
        queue: &str,
        id: RequestId,
        result: Result<Bytes, String>,
    ) -> Result<(), CoordinatorError> {
        self.queue(queue)?.complete(id, result)
    }

    fn submitter(&self, queue: &str, id: RequestId) -> Result<Option<String>, CoordinatorError> {
        Ok(self.queue(queue)?.submitter(id))
    }

    fn taken_by(&self, queue: &str, id: RequestId) -> Result<Option<String>, CoordinatorError> {
        Ok(self.queue(queue)?.taken_by(id))
    }

    fn status(&self) -> CoordinatorStatus {
        CoordinatorStatus {
            pools: self.pools().status(),
            quotas: self.quotas().map(|q| q.status()).collect(),
            queues: self
                .queues()
                .map(|(name, quota, queue)| QueueStatus {
                    name: name.to_owned(),
                    quota: quota.to_owned(),
                    depth: queue.depth(),
                })
                .collect(),
            breakers: self
                .breakers()
                .map(|(name, b)| BreakerStatus {
                    name: name.to_owned(),
                    state: b.state().as_str(),
                })
                .collect(),
        }
    }

    fn lease_wait_times(&self) -> Vec<(String, HistogramSnapshot)> {
        self.pools().wait_times()
    }

    fn write_error(&self) -> Option<String> {
        Coordinator::write_error(self)
    }

    fn reconfigure(&self, config: &CoordinatorConfig) -> Result<Vec<String>, CoordinatorError> {
        Coordinator::reconfigure(self, config)
    }

    fn upkeep(&self) -> BoxFuture<'static, ()> {
        Box::pin(self.pools().clone().run_timers())
    }

    fn flush(&self) -> Result<(), CoordinatorError> {
        self.pools().flush()
    }
}
