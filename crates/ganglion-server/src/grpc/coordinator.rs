//! `ganglion.v1.Coordinator` over gRPC.

use crate::auth::{Action, grpc_caller};
use ganglion_core::BusError;
use ganglion_proto::convert::status_from_error;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use ganglion_coordinator::lease::{AcquireRequest, Lease, LeaseStage};
use ganglion_coordinator::queue::Submission;
use ganglion_coordinator::{
    CoordinatorError, CoordinatorStatus, FencingToken, LeaseId, RequestId, ResourceCoordinator,
};
use ganglion_proto::convert::duration_ms;
use ganglion_proto::v1::coordinator_server::Coordinator as CoordinatorService;
use ganglion_proto::v1::{self, lease_update};
use tonic::{Request, Response, Status};

use crate::State;

/// Coordinator errors over gRPC: their shared code, mapped where bus errors are.
pub(crate) fn status(error: CoordinatorError) -> Status {
    ganglion_proto::convert::status_for(
        error.code(),
        error.to_string(),
        error.field(),
        error.retry_after(),
    )
}

fn ms(micros: u64) -> u64 {
    micros / 1000
}

pub(crate) fn lease_to_wire(lease: &Lease) -> v1::Lease {
    v1::Lease {
        id: lease.id.0,
        pool: lease.pool.clone(),
        holder: lease.holder.clone(),
        units: lease.units.clone(),
        cuda_visible_devices: lease.cuda_visible_devices.clone().unwrap_or_default(),
        fencing_token: lease.fencing_token.0,
        granted_at_ms: ms(lease.granted_at_micros),
        expires_at_ms: ms(lease.expires_at_micros),
        max_hold_until_ms: ms(lease.max_hold_until_micros),
    }
}

#[derive(Debug)]
pub(crate) struct GrpcCoordinator {
    pub(crate) state: Arc<State>,
}

impl GrpcCoordinator {
    fn coordinator(&self) -> &Arc<dyn ResourceCoordinator> {
        &self.state.coordinator
    }
}

type LeaseStream = Pin<Box<dyn Stream<Item = Result<v1::LeaseUpdate, Status>> + Send + 'static>>;

fn update(update: lease_update::Update) -> Result<v1::LeaseUpdate, Status> {
    Ok(v1::LeaseUpdate {
        update: Some(update),
    })
}

/// A lease held by an `Acquire` stream: granted first, then renewed every second while
/// the stream is open, with the warning, revocation and release sent as they happen. The
/// stream itself does this (no task per lease): the server polls it while the client
/// reads, and drops it when the client goes away, which releases the lease.
struct HeldLease {
    coordinator: Arc<dyn ResourceCoordinator>,
    id: LeaseId,
    /// The grant, sent first.
    granted: Option<Lease>,
    /// The lease ended on the coordinator's side (released, reclaimed, stopped).
    released: bool,
    stage: tokio::sync::watch::Receiver<LeaseStage>,
    renew: tokio::time::Interval,
    stopped: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl HeldLease {
    /// The next update for the holder, or `None` once the lease has ended.
    async fn next(&mut self) -> Option<lease_update::Update> {
        if let Some(lease) = self.granted.take() {
            return Some(lease_update::Update::Granted(lease_to_wire(&lease)));
        }
        if self.released {
            return None;
        }
        let id = self.id;
        let reason = loop {
            tokio::select! {
                // The server is stopping: the stream ends, and with it the lease.
                _ = &mut self.stopped => return None,
                _ = self.renew.tick() => {
                    // Refused only for a lease revoked (kept until its forced release)
                    // or ended: either way the stage says what happened, and why.
                    let _ = self.coordinator.renew(id);
                }
                changed = self.stage.changed() => {
                    if changed.is_err() {
                        // Gone without a word: never held here, or the coordinator stopped.
                        break match &*self.stage.borrow() {
                            LeaseStage::Released { reason } => reason.clone(),
                            _ => "the coordinator stopped".into(),
                        };
                    }
                    let stage = self.stage.borrow_and_update().clone();
                    match stage {
                        LeaseStage::Held => {}
                        LeaseStage::Warned { revoked_in } => {
                            return Some(lease_update::Update::Warning(v1::LeaseWarning { revoked_in_ms: duration_ms(revoked_in) }));
                        }
                        LeaseStage::Revoked { release_in } => {
                            return Some(lease_update::Update::Revoked(v1::LeaseRevoked { release_in_ms: duration_ms(release_in) }));
                        }
                        LeaseStage::Released { reason } => break reason,
                    }
                }
            }
        };
        self.released = true;
        Some(lease_update::Update::Released(v1::LeaseReleased { reason }))
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        // The stream ended before the lease did: its holder went away.
        if !self.released && self.coordinator.release(self.id).is_ok() {
            tracing::info!(lease = %self.id, "lease released: its stream ended");
        }
    }
}

fn held_lease_stream(held: HeldLease) -> impl Stream<Item = Result<v1::LeaseUpdate, Status>> {
    futures_util::stream::unfold(held, |mut held| async move {
        let next = held.next().await?;
        Some((update(next), held))
    })
}

/// The gRPC status of a refusal (or a bad argument) from the checks below.
fn refused(error: BusError) -> Status {
    status_from_error(&error)
}

#[tonic::async_trait]
impl CoordinatorService for GrpcCoordinator {
    type AcquireStream = LeaseStream;

    async fn acquire(
        &self,
        request: Request<v1::AcquireRequest>,
    ) -> Result<Response<Self::AcquireStream>, Status> {
        let caller = grpc_caller(&request)?;
        let r = request.into_inner();
        let holder = self
            .state
            .acting_as(&caller, Action::Lease(&r.pool), "holder", &r.holder)
            .map_err(refused)?;
        let coordinator = self.coordinator().clone();
        let lease = coordinator
            .acquire(AcquireRequest {
                pool: r.pool,
                holder,
                priority: r.priority,
                amount: r.amount.max(1),
                wait_timeout: Duration::from_millis(r.wait_ms),
                max_hold: (r.max_hold_ms > 0).then(|| Duration::from_millis(r.max_hold_ms)),
            })
            .await
            .map_err(status)?;
        let stage = coordinator.watch_lease(lease.id);
        Ok(Response::new(Box::pin(held_lease_stream(HeldLease {
            coordinator,
            id: lease.id,
            stage,
            granted: Some(lease),
            released: false,
            renew: tokio::time::interval_at(
                tokio::time::Instant::now() + Duration::from_secs(1),
                Duration::from_secs(1),
            ),
            stopped: Box::pin(self.state.stopped()),
        }))))
    }

    async fn renew(
        &self,
        request: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::Lease>, Status> {
        let caller = grpc_caller(&request)?;
        let id = LeaseId(request.into_inner().lease_id);
        self.state
            .may_touch_lease(&caller, id, "renew")
            .map_err(refused)?;
        let lease = self.coordinator().renew(id).map_err(status)?;
        Ok(Response::new(lease_to_wire(&lease)))
    }

    async fn release(
        &self,
        request: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        let caller = grpc_caller(&request)?;
        let id = LeaseId(request.into_inner().lease_id);
        self.state
            .may_touch_lease(&caller, id, "release")
            .map_err(refused)?;
        self.coordinator().release(id).map_err(status)?;
        Ok(Response::new(v1::ReleaseResponse {}))
    }

    async fn check_fence(
        &self,
        request: Request<v1::CheckFenceRequest>,
    ) -> Result<Response<v1::CheckFenceResponse>, Status> {
        let caller = grpc_caller(&request)?;
        let r = request.into_inner();
        self.state
            .may(&caller, Action::Lease(&r.pool))
            .map_err(refused)?;
        let response = match self
            .coordinator()
            .check_fence(&r.pool, FencingToken(r.fencing_token))
        {
            Ok(()) => v1::CheckFenceResponse {
                valid: true,
                reason: String::new(),
            },
            Err(CoordinatorError::Stale(reason)) => v1::CheckFenceResponse {
                valid: false,
                reason,
            },
            Err(e) => return Err(status(e)),
        };
        Ok(Response::new(response))
    }

    async fn try_acquire_permit(
        &self,
        request: Request<v1::PermitRequest>,
    ) -> Result<Response<v1::Permit>, Status> {
        let caller = grpc_caller(&request)?;
        let r = request.into_inner();
        let component = self
            .state
            .acting_as(&caller, Action::Permit(&r.quota), "component", &r.component)
            .map_err(refused)?;
        let permit = self
            .coordinator()
            .try_permit(&r.quota, &component)
            .map_err(status)?;
        Ok(Response::new(permit_to_wire(permit)))
    }

    async fn acquire_permit(
        &self,
        request: Request<v1::PermitRequest>,
    ) -> Result<Response<v1::Permit>, Status> {
        let caller = grpc_caller(&request)?;
        let r = request.into_inner();
        let component = self
            .state
            .acting_as(&caller, Action::Permit(&r.quota), "component", &r.component)
            .map_err(refused)?;
        let wait = Duration::from_millis(r.wait_ms);
        let permit = self
            .coordinator()
            .permit(r.quota, component, r.priority, wait)
            .await
            .map_err(status)?;
        Ok(Response::new(permit_to_wire(permit)))
    }

    async fn submit(
        &self,
        request: Request<v1::SubmitRequest>,
    ) -> Result<Response<v1::SubmitResponse>, Status> {
        let caller = grpc_caller(&request)?;
        let r = request.into_inner();
        let component = self
            .state
            .acting_as(&caller, Action::Submit(&r.queue), "component", &r.component)
            .map_err(refused)?;
        let submission = Submission {
            request: r.request,
            priority: r.priority,
            component,
            idempotency_key: (!r.idempotency_key.is_empty()).then_some(r.idempotency_key),
            fallback: r.fallback,
        };
        let id = self
            .coordinator()
            .submit(&r.queue, submission)
            .map_err(status)?;
        Ok(Response::new(v1::SubmitResponse { request_id: id.0 }))
    }

    async fn get_response(
        &self,
        request: Request<v1::GetResponseRequest>,
    ) -> Result<Response<v1::GetResponseResponse>, Status> {
        let caller = grpc_caller(&request)?;
        let r = request.into_inner();
        self.state
            .may_read_response(&caller, &r.queue, RequestId(r.request_id))
            .map_err(refused)?;
        let wait = Duration::from_millis(r.wait_ms);
        let outcome = self
            .coordinator()
            .response(r.queue, RequestId(r.request_id), wait)
            .await
            .map_err(status)?;
        let response = match outcome {
            None => v1::GetResponseResponse::default(),
            Some(o) => v1::GetResponseResponse {
                ready: true,
                result: Some(match o.response {
                    Ok(body) => v1::get_response_response::Result::Response(body),
                    Err(error) => v1::get_response_response::Result::Error(error),
                }),
                cached: o.cached,
                degraded: o.degraded,
            },
        };
        Ok(Response::new(response))
    }

    async fn take(
        &self,
        request: Request<v1::TakeRequest>,
    ) -> Result<Response<v1::TakeResponse>, Status> {
        let caller = grpc_caller(&request)?;
        let r = request.into_inner();
        let worker = self
            .state
            .acting_as(&caller, Action::Work(&r.queue), "worker", &r.worker)
            .map_err(refused)?;
        let wait = Duration::from_millis(r.wait_ms);
        let taken = self
            .coordinator()
            .take(r.queue, worker, wait)
            .await
            .map_err(status)?;
        Ok(Response::new(match taken {
            None => v1::TakeResponse::default(),
            Some(t) => v1::TakeResponse {
                taken: true,
                request_id: t.id.0,
                request: t.request,
                priority: t.priority,
                component: t.component,
            },
        }))
    }

    async fn complete(
        &self,
        request: Request<v1::CompleteRequest>,
    ) -> Result<Response<v1::CompleteResponse>, Status> {
        let caller = grpc_caller(&request)?;
        let r = request.into_inner();
        self.state
            .may_complete(&caller, &r.queue, RequestId(r.request_id))
            .map_err(refused)?;
        let result = match r.result {
            Some(v1::complete_request::Result::Response(body)) => Ok(body),
            Some(v1::complete_request::Result::Error(error)) => Err(error),
            None => Ok(Bytes::new()),
        };
        self.coordinator()
            .complete(&r.queue, RequestId(r.request_id), result)
            .map_err(status)?;
        Ok(Response::new(v1::CompleteResponse {}))
    }

    async fn status(
        &self,
        request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        let caller = grpc_caller(&request)?;
        self.state.may(&caller, Action::Monitor).map_err(refused)?;
        Ok(Response::new(status_of(&self.coordinator().status())))
    }
}

fn permit_to_wire(p: ganglion_coordinator::quota::Permit) -> v1::Permit {
    v1::Permit {
        quota: p.quota,
        component: p.component,
        granted_at_ms: ms(p.granted_at_micros),
        used: p.used,
        remaining: p.remaining,
    }
}

/// Pools, quotas, queues and breakers at a glance, as the wire carries them (gRPC
/// `Status`; HTTP resources and the CLI show its JSON).
pub(crate) fn status_of(c: &CoordinatorStatus) -> v1::StatusResponse {
    v1::StatusResponse {
        pools: c
            .pools
            .iter()
            .map(|p| v1::PoolStatus {
                name: p.name.clone(),
                capacity: p.capacity as u32,
                free: p.free as u32,
                holders: p.holders.iter().map(lease_to_wire).collect(),
                waiters: p.waiters as u32,
            })
            .collect(),
        quotas: c
            .quotas
            .iter()
            .map(|s| v1::QuotaStatus {
                name: s.name.clone(),
                limit: s.limit,
                window_ms: duration_ms(s.window),
                used: s.used,
                remaining: s.remaining,
                near_limit: s.near_limit,
                suspended_for_ms: duration_ms(s.suspended_for),
                waiters: s.waiters as u32,
                by_component: s.by_component.clone().into_iter().collect(),
            })
            .collect(),
        queues: c
            .queues
            .iter()
            .map(|q| v1::QueueStatus {
                name: q.name.clone(),
                quota: q.quota.clone(),
                depth: q.depth as u32,
            })
            .collect(),
        breakers: c
            .breakers
            .iter()
            .map(|b| v1::BreakerStatus {
                name: b.name.clone(),
                state: b.state.to_owned(),
            })
            .collect(),
    }
}
