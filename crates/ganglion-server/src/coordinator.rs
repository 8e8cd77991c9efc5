//! `ganglion.v1.Coordinator` over gRPC, and the bus events of leases.

use crate::auth::{Action, Caller, grpc_caller};
use ganglion_core::BusError;
use ganglion_proto::convert::status_from_error;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use ganglion_coordinator::lease::{AcquireRequest, Lease, LeaseEvent, LeaseStage};
use ganglion_coordinator::queue::Submission;
use ganglion_coordinator::{Coordinator, CoordinatorError};
use ganglion_core::Engine;
use ganglion_core::{Event, Topic};
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
        id: lease.id,
        pool: lease.pool.clone(),
        holder: lease.holder.clone(),
        units: lease.units.clone(),
        cuda_visible_devices: lease.cuda_visible_devices.clone().unwrap_or_default(),
        fencing_token: lease.fencing_token,
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
    fn coordinator(&self) -> &Arc<Coordinator> {
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
    pools: Arc<ganglion_coordinator::lease::Pools>,
    id: u64,
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
                    let _ = self.pools.renew(id);
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
        if !self.released && self.pools.release(self.id).is_ok() {
            tracing::info!(lease = self.id, "lease released: its stream ended");
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

/// Who may use the coordinator's names (see [`crate::auth`]): each check runs before the
/// name is looked up, so a refusal never tells whether a pool, quota or queue exists.
impl State {
    /// The name a caller acts under once `action` is allowed: see [`State::claim`].
    pub(crate) fn acting_as(
        &self,
        caller: &Caller,
        action: Action<'_>,
        field: &str,
        name: &str,
    ) -> Result<String, BusError> {
        self.may(caller, action)?;
        self.claim(caller, field, name)
    }

    /// `field` (a lease's `holder`, a quota's or a submission's `component`, a queue's
    /// `worker`) as given, if the caller owns it, or the caller's own name if it is
    /// empty.
    pub(crate) fn claim(
        &self,
        caller: &Caller,
        field: &str,
        name: &str,
    ) -> Result<String, BusError> {
        Ok(caller.claim(&self.audit, field, name)?)
    }

    /// Allows renewing or releasing lease `id`: its holder, or an admin. A lease not
    /// held is the coordinator's to report to an admin; to anyone else it is refused
    /// like another's, so ids cannot be probed.
    pub(crate) fn may_touch_lease(
        &self,
        caller: &Caller,
        id: u64,
        verb: &str,
    ) -> Result<(), BusError> {
        match self.coordinator.pools().holder(id) {
            None if caller.is_admin() => Ok(()),
            holder => Ok(caller.may_act_for(
                &self.audit,
                verb,
                &format!("lease {id}"),
                &holder.unwrap_or_default(),
            )?),
        }
    }

    /// Allows reading the response to request `id` of `queue`: the component that
    /// submitted it, or an admin.
    pub(crate) fn may_read_response(
        &self,
        caller: &Caller,
        queue: &str,
        id: u64,
    ) -> Result<(), BusError> {
        self.may(caller, Action::Submit(queue))?;
        let submitter = self
            .coordinator
            .queue(queue)
            .ok()
            .and_then(|q| q.submitter(id));
        match submitter {
            // Unknown: never submitted, or journalled before submitters were recorded.
            None => Ok(()),
            Some(submitter) => Ok(caller.may_act_for(
                &self.audit,
                "read the response to",
                &format!("request {id} of queue {queue}"),
                &submitter,
            )?),
        }
    }

    /// Allows answering request `id` of `queue`: the worker that took it, or an admin.
    pub(crate) fn may_complete(
        &self,
        caller: &Caller,
        queue: &str,
        id: u64,
    ) -> Result<(), BusError> {
        self.may(caller, Action::Work(queue))?;
        let taker = self
            .coordinator
            .queue(queue)
            .ok()
            .and_then(|q| q.taken_by(id))
            .unwrap_or_default();
        Ok(caller.may_act_for(
            &self.audit,
            "answer",
            &format!("request {id} of queue {queue}"),
            &taker,
        )?)
    }
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
        let pools = self.coordinator().pools().clone();
        let lease = pools
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
        let stage = pools.watch(lease.id);
        Ok(Response::new(Box::pin(held_lease_stream(HeldLease {
            pools,
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
        let id = request.into_inner().lease_id;
        self.state
            .may_touch_lease(&caller, id, "renew")
            .map_err(refused)?;
        let lease = self.coordinator().pools().renew(id).map_err(status)?;
        Ok(Response::new(lease_to_wire(&lease)))
    }

    async fn release(
        &self,
        request: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        let caller = grpc_caller(&request)?;
        let id = request.into_inner().lease_id;
        self.state
            .may_touch_lease(&caller, id, "release")
            .map_err(refused)?;
        self.coordinator().pools().release(id).map_err(status)?;
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
            .pools()
            .check_fence(&r.pool, r.fencing_token)
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
        let quota = self.coordinator().quota(&r.quota).map_err(status)?;
        let permit = quota.try_acquire(&component).map_err(status)?;
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
        let quota = self.coordinator().quota(&r.quota).map_err(status)?.clone();
        let permit = quota
            .acquire(&component, r.priority, Duration::from_millis(r.wait_ms))
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
        let queue = self.coordinator().queue(&r.queue).map_err(status)?;
        let id = queue
            .submit(Submission {
                request: r.request,
                priority: r.priority,
                component,
                idempotency_key: (!r.idempotency_key.is_empty()).then_some(r.idempotency_key),
                fallback: r.fallback,
            })
            .map_err(status)?;
        Ok(Response::new(v1::SubmitResponse { request_id: id }))
    }

    async fn get_response(
        &self,
        request: Request<v1::GetResponseRequest>,
    ) -> Result<Response<v1::GetResponseResponse>, Status> {
        let caller = grpc_caller(&request)?;
        let r = request.into_inner();
        self.state
            .may_read_response(&caller, &r.queue, r.request_id)
            .map_err(refused)?;
        let queue = self.coordinator().queue(&r.queue).map_err(status)?.clone();
        let outcome = queue
            .get_response(r.request_id, Duration::from_millis(r.wait_ms))
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
        let queue = self.coordinator().queue(&r.queue).map_err(status)?.clone();
        let taken = queue
            .take(&worker, Duration::from_millis(r.wait_ms))
            .await
            .map_err(status)?;
        Ok(Response::new(match taken {
            None => v1::TakeResponse::default(),
            Some(t) => v1::TakeResponse {
                taken: true,
                request_id: t.id,
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
            .may_complete(&caller, &r.queue, r.request_id)
            .map_err(refused)?;
        let queue = self.coordinator().queue(&r.queue).map_err(status)?;
        let result = match r.result {
            Some(v1::complete_request::Result::Response(body)) => Ok(body),
            Some(v1::complete_request::Result::Error(error)) => Err(error),
            None => Ok(Bytes::new()),
        };
        queue.complete(r.request_id, result).map_err(status)?;
        Ok(Response::new(v1::CompleteResponse {}))
    }

    async fn status(
        &self,
        request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        let caller = grpc_caller(&request)?;
        self.state.may(&caller, Action::Monitor).map_err(refused)?;
        Ok(Response::new(status_of(self.coordinator())))
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

/// Pools, quotas, queues and breakers at a glance (gRPC `Status`, HTTP resources).
pub(crate) fn status_of(c: &Coordinator) -> v1::StatusResponse {
    v1::StatusResponse {
        pools: c
            .pools()
            .status()
            .into_iter()
            .map(|p| v1::PoolStatus {
                name: p.name,
                capacity: p.capacity as u32,
                free: p.free as u32,
                holders: p.holders.iter().map(lease_to_wire).collect(),
                waiters: p.waiters as u32,
            })
            .collect(),
        quotas: c
            .quotas()
            .map(|q| {
                let s = q.status();
                v1::QuotaStatus {
                    name: s.name,
                    limit: s.limit,
                    window_ms: duration_ms(s.window),
                    used: s.used,
                    remaining: s.remaining,
                    near_limit: s.near_limit,
                    suspended_for_ms: duration_ms(s.suspended_for),
                    waiters: s.waiters as u32,
                    by_component: s.by_component.into_iter().collect(),
                }
            })
            .collect(),
        queues: c
            .queues()
            .map(|(name, quota, queue)| v1::QueueStatus {
                name: name.to_owned(),
                quota: quota.to_owned(),
                depth: queue.depth() as u32,
            })
            .collect(),
        breakers: c
            .breakers()
            .map(|(name, b)| v1::BreakerStatus {
                name: name.to_owned(),
                state: b.state().as_str().to_owned(),
            })
            .collect(),
    }
}

/// Publishes every lease event on the bus as `coordinator.lease.<kind>` (JSON), in the
/// order the coordinator made them.
///
/// The coordinator hands each event over under its lock. The first of a run starts a
/// drain task on the runtime of the thread that made it (a gRPC thread, for a grant or a
/// release) rather than waking a publisher elsewhere: that wake-up cost a grant or a
/// release more than the rest of its work. One drain runs at a time, which keeps the
/// order. Events made as the server stops may go unpublished, as with any notification
/// (`coordinator.>` is ephemeral by default).
#[derive(Debug)]
pub(crate) struct LeaseEventPublisher {
    bus: Arc<dyn Engine>,
    pending: std::sync::Mutex<Vec<LeaseEvent>>,
    /// A drain is running, or about to: it will see what is pending.
    draining: AtomicBool,
    /// Where a drain runs when the event was made off any runtime.
    runtime: tokio::runtime::Handle,
}

impl LeaseEventPublisher {
    /// Hands `coordinator`'s lease events to a new publisher on `bus` (in place of any
    /// before it); `stop` hands them to no one.
    pub(crate) fn start(bus: Arc<dyn Engine>, coordinator: &Coordinator) {
        let publisher = Arc::new(LeaseEventPublisher {
            bus,
            pending: std::sync::Mutex::new(Vec::new()),
            draining: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
        });
        coordinator
            .pools()
            .on_event(Some(Box::new(move |event| publisher.push(event))));
    }

    pub(crate) fn stop(coordinator: &Coordinator) {
        coordinator.pools().on_event(None);
    }

    fn push(self: &Arc<Self>, event: LeaseEvent) {
        self.pending_events().push(event);
        if !self.draining.swap(true, Ordering::AcqRel) {
            self.spawn_drain();
        }
    }

    fn pending_events(&self) -> std::sync::MutexGuard<'_, Vec<LeaseEvent>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn_drain(self: &Arc<Self>) {
        let runtime =
            tokio::runtime::Handle::try_current().unwrap_or_else(|_| self.runtime.clone());
        runtime.spawn(
            Drain {
                publisher: self.clone(),
                finished: false,
            }
            .run(),
        );
    }
}

/// The one drain running; if it is dropped unfinished (its runtime stopped), the next
/// event starts another.
struct Drain {
    publisher: Arc<LeaseEventPublisher>,
    finished: bool,
}

impl Drain {
    async fn run(mut self) {
        let publisher = self.publisher.clone();
        // Let the call that made the event send its reply first.
        tokio::task::yield_now().await;
        loop {
            let events = std::mem::take(&mut *publisher.pending_events());
            if events.is_empty() {
                self.finished = true;
                publisher.draining.store(false, Ordering::Release);
                // An event pushed after the take but before the store saw a drain
                // running and left it to us; one pushed after the store started its own.
                if publisher.pending_events().is_empty()
                    || publisher.draining.swap(true, Ordering::AcqRel)
                {
                    return;
                }
                self.finished = false;
                continue;
            }
            let events = events.iter().filter_map(lease_event_to_bus).collect();
            if let Err(error) = publisher.bus.publish_batch(events).await {
                tracing::warn!(%error, "cannot publish lease events");
            }
        }
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        if !self.finished {
            self.publisher.draining.store(false, Ordering::Release);
        }
    }
}

/// `coordinator.lease.<kind>`, with the lease as JSON.
fn lease_event_to_bus(event: &LeaseEvent) -> Option<Event> {
    let (kind, body) = match event {
        LeaseEvent::Granted(l) => (
            "granted",
            serde_json::json!({"lease": l.id, "pool": l.pool, "holder": l.holder, "units": l.units, "fencing_token": l.fencing_token}),
        ),
        LeaseEvent::Warning {
            lease,
            pool,
            holder,
            revoked_in,
        } => (
            "warning",
            serde_json::json!({"lease": lease, "pool": pool, "holder": holder, "revoked_in_ms": duration_ms(*revoked_in)}),
        ),
        LeaseEvent::Revoked {
            lease,
            pool,
            holder,
            release_in,
        } => (
            "revoked",
            serde_json::json!({"lease": lease, "pool": pool, "holder": holder, "release_in_ms": duration_ms(*release_in)}),
        ),
        LeaseEvent::Released {
            lease,
            pool,
            holder,
            reason,
        } => (
            "released",
            serde_json::json!({"lease": lease, "pool": pool, "holder": holder, "reason": reason}),
        ),
    };
    let topic = Topic::new(&format!("coordinator.lease.{kind}")).ok()?;
    Some(
        Event::new(topic, body.to_string())
            .with_type(format!("Lease{}", kind[..1].to_uppercase() + &kind[1..]))
            .with_source("ganglion-coordinator")
            .with_content_type("application/json"),
    )
}

/// A lease as the HTTP API shows it.
pub(crate) fn lease_json(lease: &Lease) -> serde_json::Value {
    serde_json::json!({
        "id": lease.id,
        "pool": lease.pool,
        "holder": lease.holder,
        "units": lease.units,
        "cuda_visible_devices": lease.cuda_visible_devices,
        "fencing_token": lease.fencing_token,
        "granted_at_ms": ms(lease.granted_at_micros),
        "expires_at_ms": ms(lease.expires_at_micros),
        "max_hold_until_ms": ms(lease.max_hold_until_micros),
    })
}

/// `GET /api/v1/resources`, from the same status the gRPC `Status` returns.
pub(crate) fn status_json(c: &Coordinator) -> serde_json::Value {
    let s = status_of(c);
    let lease = |l: &v1::Lease| {
        serde_json::json!({
            "id": l.id, "holder": l.holder, "units": l.units, "fencing_token": l.fencing_token,
            "expires_at_ms": l.expires_at_ms, "max_hold_until_ms": l.max_hold_until_ms,
        })
    };
    serde_json::json!({
        "pools": s.pools.iter().map(|p| serde_json::json!({
            "name": p.name, "capacity": p.capacity, "free": p.free, "waiters": p.waiters,
            "holders": p.holders.iter().map(lease).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "quotas": s.quotas.iter().map(|q| serde_json::json!({
            "name": q.name, "limit": q.limit, "window_ms": q.window_ms, "used": q.used,
            "remaining": q.remaining, "near_limit": q.near_limit,
            "suspended_for_ms": q.suspended_for_ms, "waiters": q.waiters, "by_component": q.by_component,
        })).collect::<Vec<_>>(),
        "queues": s.queues.iter().map(|q| serde_json::json!({"name": q.name, "quota": q.quota, "depth": q.depth})).collect::<Vec<_>>(),
        "breakers": s.breakers.iter().map(|b| serde_json::json!({"name": b.name, "state": b.state})).collect::<Vec<_>>(),
    })
}
