//! The coordinator implementations the suite runs against, each on a virtual clock and
//! with the same configuration ([`config`]): the embedded [`Coordinator`] in memory, the
//! same with its state in files, and the remote gRPC client against a server.
//!
//! [`Coordination`] is the coordinator as a component uses it (leases, fences, permits,
//! queued requests), with errors reduced to what every transport keeps: the code, the
//! field and the retry-after.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ganglion_client::CoordinatorRpc;
use ganglion_coordinator::lease::{AcquireRequest, PoolSpec, PoolsOptions};
use ganglion_coordinator::queue::Submission;
use ganglion_coordinator::quota::QuotaSpec;
use ganglion_coordinator::{
    Coordinator, CoordinatorConfig, CoordinatorError, FencingToken, FileStores, LeaseId, QueueSpec,
    RequestId, ResourceCoordinator,
};
use ganglion_core::{BoxFuture, ErrorCode, ManualClock};
use ganglion_proto::convert::{code_from_status, field_of_status, retry_after_of_status};
use ganglion_proto::v1;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A refusal as every transport reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub field: Option<String>,
    pub retry_after: Option<Duration>,
    pub message: String,
}

impl From<CoordinatorError> for Refusal {
    fn from(e: CoordinatorError) -> Refusal {
        Refusal {
            code: e.code(),
            field: e.field().map(str::to_owned),
            retry_after: e.retry_after(),
            message: e.to_string(),
        }
    }
}

impl From<tonic::Status> for Refusal {
    fn from(s: tonic::Status) -> Refusal {
        Refusal {
            code: code_from_status(&s),
            field: field_of_status(&s).map(str::to_owned),
            retry_after: retry_after_of_status(&s),
            message: s.message().to_owned(),
        }
    }
}

pub type Outcome<T> = Result<T, Refusal>;

/// A request's answer: the response or the worker's error, and whether it was degraded.
pub type Answer = (Result<Bytes, String>, bool);

/// A granted lease, as a holder sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub id: LeaseId,
    pub holder: String,
    pub fencing_token: FencingToken,
    pub units: Vec<String>,
}

/// A coordinator as a component uses it.
pub trait Coordination: Send + Sync {
    /// The coordinator's clock.
    fn clock(&self) -> &ManualClock;

    /// Waits up to `wait` in `pool`'s line for `amount` units.
    fn acquire(
        &self,
        pool: &str,
        holder: &str,
        priority: i32,
        amount: u32,
        wait: Duration,
    ) -> BoxFuture<'_, Outcome<Granted>>;

    fn release(&self, lease: LeaseId) -> BoxFuture<'_, Outcome<()>>;

    /// `Ok(true)` while `token` is current for `pool`, `Ok(false)` once it is stale.
    fn fence_valid(&self, pool: &str, token: FencingToken) -> BoxFuture<'_, Outcome<bool>>;

    /// A permit of `quota` (waiting up to `wait`, or not at all); returns what remains.
    fn permit(&self, quota: &str, component: &str, wait: Duration) -> BoxFuture<'_, Outcome<u32>>;

    fn submit(&self, queue: &str, submission: Submission) -> BoxFuture<'_, Outcome<RequestId>>;

    /// Waits up to `wait` for a request: its id and body.
    fn take(
        &self,
        queue: &str,
        worker: &str,
        wait: Duration,
    ) -> BoxFuture<'_, Outcome<Option<(RequestId, Bytes)>>>;

    fn complete(
        &self,
        queue: &str,
        id: RequestId,
        result: Result<Bytes, String>,
    ) -> BoxFuture<'_, Outcome<()>>;

    /// The answer to request `id` if there is one yet: the response or the worker's
    /// error, and whether it was degraded (a fallback or the cache, the quota used up).
    fn response(&self, queue: &str, id: RequestId) -> BoxFuture<'_, Outcome<Option<Answer>>>;

    /// Requests waiting in `pool`'s line.
    fn pool_waiters(&self, pool: &str) -> BoxFuture<'_, usize>;

    /// Callers waiting for a permit of `quota`.
    fn quota_waiters(&self, quota: &str) -> BoxFuture<'_, usize>;
}

/// What every harness is configured with: a one-unit pool `solo`, a three-unit pool
/// `gpu` (as GPUs 0–2), a quota `llm` of 3 per minute, a request queue `advice` paced by
/// it; leases live 30 s unrenewed, at most 300 s (then 30 s of grace).
pub fn config() -> CoordinatorConfig {
    CoordinatorConfig {
        pools: vec![
            PoolSpec::counted("solo", 1),
            PoolSpec::gpus("gpu", &["0", "1", "2"]),
        ],
        leases: PoolsOptions::default(),
        quotas: vec![QuotaSpec::new("llm", 3, Duration::from_secs(60))],
        queues: vec![QueueSpec::new("advice", "llm")],
        breakers: vec![],
    }
}

/// The embedded coordinator, called directly.
#[derive(Debug)]
pub struct Local {
    coordinator: Coordinator,
    clock: ManualClock,
    _dir: Option<tempfile::TempDir>,
}

/// The embedded coordinator with its state in memory.
pub async fn in_memory() -> Local {
    let clock = ManualClock::at_fixed_instant();
    let coordinator =
        Coordinator::open(config(), Arc::new(clock.clone()), None).expect("the coordinator starts");
    Local {
        coordinator,
        clock,
        _dir: None,
    }
}

/// The embedded coordinator with its state in files (`FileStores`).
pub async fn on_disk() -> Local {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let clock = ManualClock::at_fixed_instant();
    let stores = FileStores::new(dir.path()).expect("the stores open");
    let coordinator = Coordinator::with_stores(config(), Arc::new(clock.clone()), Some(&stores))
        .expect("the coordinator starts");
    Local {
        coordinator,
        clock,
        _dir: Some(dir),
    }
}

impl Coordination for Local {
    fn clock(&self) -> &ManualClock {
        &self.clock
    }

    fn acquire(
        &self,
        pool: &str,
        holder: &str,
        priority: i32,
        amount: u32,
        wait: Duration,
    ) -> BoxFuture<'_, Outcome<Granted>> {
        let request = AcquireRequest {
            priority,
            amount,
            wait_timeout: wait,
            ..AcquireRequest::new(pool, holder)
        };
        Box::pin(async move {
            let lease = ResourceCoordinator::acquire(&self.coordinator, request).await?;
            Ok(Granted {
                id: lease.id,
                holder: lease.holder,
                fencing_token: lease.fencing_token,
                units: lease.units,
            })
        })
    }

    fn release(&self, lease: LeaseId) -> BoxFuture<'_, Outcome<()>> {
        Box::pin(async move { Ok(ResourceCoordinator::release(&self.coordinator, lease)?) })
    }

    fn fence_valid(&self, pool: &str, token: FencingToken) -> BoxFuture<'_, Outcome<bool>> {
        let checked = self.coordinator.check_fence(pool, token);
        Box::pin(async move {
            match checked {
                Ok(()) => Ok(true),
                Err(CoordinatorError::Stale(_)) => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn permit(&self, quota: &str, component: &str, wait: Duration) -> BoxFuture<'_, Outcome<u32>> {
        let (quota, component) = (quota.to_owned(), component.to_owned());
        Box::pin(async move {
            let permit = if wait.is_zero() {
                self.coordinator.try_permit(&quota, &component)?
            } else {
                self.coordinator.permit(quota, component, 0, wait).await?
            };
            Ok(permit.remaining)
        })
    }

    fn submit(&self, queue: &str, submission: Submission) -> BoxFuture<'_, Outcome<RequestId>> {
        let submitted = ResourceCoordinator::submit(&self.coordinator, queue, submission);
        Box::pin(async move { Ok(submitted?) })
    }

    fn take(
        &self,
        queue: &str,
        worker: &str,
        wait: Duration,
    ) -> BoxFuture<'_, Outcome<Option<(RequestId, Bytes)>>> {
        let (queue, worker) = (queue.to_owned(), worker.to_owned());
        Box::pin(async move {
            let taken = ResourceCoordinator::take(&self.coordinator, queue, worker, wait).await?;
            Ok(taken.map(|t| (t.id, t.request)))
        })
    }

    fn complete(
        &self,
        queue: &str,
        id: RequestId,
        result: Result<Bytes, String>,
    ) -> BoxFuture<'_, Outcome<()>> {
        let completed = ResourceCoordinator::complete(&self.coordinator, queue, id, result);
        Box::pin(async move { Ok(completed?) })
    }

    fn response(&self, queue: &str, id: RequestId) -> BoxFuture<'_, Outcome<Option<Answer>>> {
        let queue = queue.to_owned();
        Box::pin(async move {
            let outcome = self.coordinator.response(queue, id, Duration::ZERO).await?;
            Ok(outcome.map(|o| (o.response, o.degraded)))
        })
    }

    fn pool_waiters(&self, pool: &str) -> BoxFuture<'_, usize> {
        let status = self.coordinator.status();
        let n = status
            .pools
            .iter()
            .find(|p| p.name == pool)
            .map_or(0, |p| p.waiters);
        Box::pin(async move { n })
    }

    fn quota_waiters(&self, quota: &str) -> BoxFuture<'_, usize> {
        let status = self.coordinator.status();
        let n = status
            .quotas
            .iter()
            .find(|q| q.name == quota)
            .map_or(0, |q| q.waiters);
        Box::pin(async move { n })
    }
}

/// The generated gRPC client against a real server whose coordinator runs on the
/// harness's clock. A lease lives as long as its `Acquire` stream, so the harness keeps
/// each stream until the lease is released.
#[derive(Debug)]
pub struct Remote {
    rpc: CoordinatorRpc,
    clock: ManualClock,
    streams: Mutex<HashMap<LeaseId, tonic::Streaming<v1::LeaseUpdate>>>,
    stop: Option<oneshot::Sender<()>>,
}

pub async fn remote() -> Remote {
    let clock = ManualClock::at_fixed_instant();
    let coordinator =
        Coordinator::open(config(), Arc::new(clock.clone()), None).expect("the coordinator starts");
    let engine = ganglion_bus::testing::TestBus::new();
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let http = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let url = format!("http://{}", grpc.local_addr().expect("an address"));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(ganglion_server::serve_with(
        Arc::new(engine),
        Arc::new(coordinator),
        grpc,
        http,
        ganglion_server::ServerOptions::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let client = ganglion_client::Client::connect(url)
        .await
        .expect("the client connects");
    Remote {
        rpc: client.coordinator(),
        clock,
        streams: Mutex::new(HashMap::new()),
        stop: Some(stop),
    }
}

impl Remote {
    async fn status(&self) -> v1::StatusResponse {
        let status = self.rpc.clone().status(v1::StatusRequest {}).await;
        status.expect("the server answers Status").into_inner()
    }

    fn streams(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<LeaseId, tonic::Streaming<v1::LeaseUpdate>>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Coordination for Remote {
    fn clock(&self) -> &ManualClock {
        &self.clock
    }

    fn acquire(
        &self,
        pool: &str,
        holder: &str,
        priority: i32,
        amount: u32,
        wait: Duration,
    ) -> BoxFuture<'_, Outcome<Granted>> {
        let request = v1::AcquireRequest {
            pool: pool.to_owned(),
            holder: holder.to_owned(),
            priority,
            amount,
            wait_ms: ms(wait),
            max_hold_ms: 0,
        };
        Box::pin(async move {
            let mut stream = self.rpc.clone().acquire(request).await?.into_inner();
            let lease = match stream.message().await?.and_then(|u| u.update) {
                Some(v1::lease_update::Update::Granted(lease)) => lease,
                other => panic!("an Acquire stream opened with {other:?}, not a grant"),
            };
            self.streams().insert(LeaseId(lease.id), stream);
            Ok(Granted {
                id: LeaseId(lease.id),
                holder: lease.holder,
                fencing_token: FencingToken(lease.fencing_token),
                units: lease.units,
            })
        })
    }

    fn release(&self, lease: LeaseId) -> BoxFuture<'_, Outcome<()>> {
        Box::pin(async move {
            let released = self
                .rpc
                .clone()
                .release(v1::ReleaseRequest { lease_id: lease.0 })
                .await;
            self.streams().remove(&lease);
            released?;
            Ok(())
        })
    }

    fn fence_valid(&self, pool: &str, token: FencingToken) -> BoxFuture<'_, Outcome<bool>> {
        let request = v1::CheckFenceRequest {
            pool: pool.to_owned(),
            fencing_token: token.0,
        };
        Box::pin(async move {
            let r = self.rpc.clone().check_fence(request).await?.into_inner();
            Ok(r.valid)
        })
    }

    fn permit(&self, quota: &str, component: &str, wait: Duration) -> BoxFuture<'_, Outcome<u32>> {
        let request = v1::PermitRequest {
            quota: quota.to_owned(),
            component: component.to_owned(),
            priority: 0,
            wait_ms: ms(wait),
        };
        Box::pin(async move {
            let mut rpc = self.rpc.clone();
            let permit = if wait.is_zero() {
                rpc.try_acquire_permit(request).await?
            } else {
                rpc.acquire_permit(request).await?
            };
            Ok(permit.into_inner().remaining)
        })
    }

    fn submit(&self, queue: &str, submission: Submission) -> BoxFuture<'_, Outcome<RequestId>> {
        let request = v1::SubmitRequest {
            queue: queue.to_owned(),
            request: submission.request,
            priority: submission.priority,
            component: submission.component,
            idempotency_key: submission.idempotency_key.unwrap_or_default(),
            fallback: submission.fallback,
        };
        Box::pin(async move {
            let r = self.rpc.clone().submit(request).await?.into_inner();
            Ok(RequestId(r.request_id))
        })
    }

    fn take(
        &self,
        queue: &str,
        worker: &str,
        wait: Duration,
    ) -> BoxFuture<'_, Outcome<Option<(RequestId, Bytes)>>> {
        let request = v1::TakeRequest {
            queue: queue.to_owned(),
            worker: worker.to_owned(),
            wait_ms: ms(wait),
        };
        Box::pin(async move {
            let r = self.rpc.clone().take(request).await?.into_inner();
            Ok(r.taken.then_some((RequestId(r.request_id), r.request)))
        })
    }

    fn complete(
        &self,
        queue: &str,
        id: RequestId,
        result: Result<Bytes, String>,
    ) -> BoxFuture<'_, Outcome<()>> {
        use v1::complete_request::Result as Answer;
        let request = v1::CompleteRequest {
            queue: queue.to_owned(),
            request_id: id.0,
            result: Some(match result {
                Ok(body) => Answer::Response(body),
                Err(error) => Answer::Error(error),
            }),
        };
        Box::pin(async move {
            self.rpc.clone().complete(request).await?;
            Ok(())
        })
    }

    fn response(&self, queue: &str, id: RequestId) -> BoxFuture<'_, Outcome<Option<Answer>>> {
        use v1::get_response_response::Result as Answer;
        let request = v1::GetResponseRequest {
            queue: queue.to_owned(),
            request_id: id.0,
            wait_ms: 0,
        };
        Box::pin(async move {
            let r = self.rpc.clone().get_response(request).await?.into_inner();
            Ok(r.ready.then(|| {
                let answer = match r.result {
                    Some(Answer::Response(body)) => Ok(body),
                    Some(Answer::Error(error)) => Err(error),
                    None => Ok(Bytes::new()),
                };
                (answer, r.degraded)
            }))
        })
    }

    fn pool_waiters(&self, pool: &str) -> BoxFuture<'_, usize> {
        let pool = pool.to_owned();
        Box::pin(async move {
            let status = self.status().await;
            let found = status.pools.iter().find(|p| p.name == pool);
            found.map_or(0, |p| p.waiters as usize)
        })
    }

    fn quota_waiters(&self, quota: &str) -> BoxFuture<'_, usize> {
        let quota = quota.to_owned();
        Box::pin(async move {
            let status = self.status().await;
            let found = status.quotas.iter().find(|q| q.name == quota);
            found.map_or(0, |q| q.waiters as usize)
        })
    }
}
