//! `ganglion.v1.EventBus` over gRPC: each method converts, calls the bus, converts back.

use crate::auth::{Action, Caller, grpc_caller};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use ganglion_core::BusError;
use ganglion_core::Engine;
use ganglion_core::bus::{Delivery, Subscription, SubscriptionControl};
use ganglion_proto::convert::{
    self, delivered_to_wire, events_from_wire, key_count_to_wire, status_from_error,
};
use ganglion_proto::v1::event_bus_server::{EventBus as EventBusService, EventBusServer};
use ganglion_proto::v1::{self, subscribe_request, subscribe_response};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::conn::{self, Admission, ConnGuard, Connections, Transport};
use crate::unsettled::{SETTLE_GRACE, Unsettled};
use crate::{ServerError, State};

/// Publish requests one publish stream may have in flight (acks still come back in
/// order).
const PUBLISH_PIPELINE: usize = 64;
/// A delivery frame holds at most this many events or about this many payload bytes.
const FRAME_EVENTS: usize = 1024;
const FRAME_BYTES: usize = 1024 * 1024;
/// Frames a subscription may have queued for its connection; beyond it the subscription
/// waits (and, through `max_in_flight`, so does its consumer).
const FRAME_QUEUE: usize = 4;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The gRPC services a connection is served: all of them, or health alone (for
/// connections let in over the caps, from the reserve).
#[derive(Clone)]
struct Services {
    all: tonic::service::Routes,
    health_only: tonic::service::Routes,
}

/// Every call but health on a connection let in over the caps.
async fn too_many_connections() -> axum::response::Response {
    let status = Status::unavailable(
        "every connection is busy: this one serves grpc.health.v1 only; try again",
    );
    axum::response::IntoResponse::into_response(status.into_http::<axum::body::Body>())
}

/// A connection the acceptor let in, for a front to serve.
struct Accepted {
    stream: std::net::TcpStream,
    guard: ConnGuard,
    health_only: bool,
}

/// Serves the bus, the coordinator, health and reflection on `listener` until the
/// state says stop.
pub(crate) async fn serve(
    state: Arc<State>,
    listener: TcpListener,
    threads: usize,
    connections: Arc<Connections>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<(), ServerError> {
    let limits = state.limits.clone();
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<EventBusServer<GrpcBus>>()
        .await;
    tokio::spawn(watch_health(state.clone(), health_reporter.clone()));

    // Both reflection protocols: v1, and v1alpha for grpcio-reflection and older
    // grpcurl.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ganglion_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .expect("the committed descriptor set decodes");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the committed descriptor set decodes");

    let bus = EventBusServer::new(GrpcBus {
        state: state.clone(),
    })
    .max_decoding_message_size(limits.max_grpc_message_bytes)
    .max_encoding_message_size(limits.max_grpc_message_bytes);
    let coordinator = ganglion_proto::v1::coordinator_server::CoordinatorServer::new(
        crate::coordinator::GrpcCoordinator {
            state: state.clone(),
        },
    )
    .max_decoding_message_size(limits.max_grpc_message_bytes)
    .max_encoding_message_size(limits.max_grpc_message_bytes);
    health_reporter
        .set_serving::<ganglion_proto::v1::coordinator_server::CoordinatorServer<
            crate::coordinator::GrpcCoordinator,
        >>()
        .await;
    let authenticate =
        axum::middleware::from_fn_with_state(state.clone(), crate::auth::authenticate);
    let services = Services {
        all: tonic::service::Routes::from(
            tonic::service::Routes::new(health_service.clone())
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_service(bus)
                .add_service(coordinator)
                .into_axum_router()
                .layer(authenticate.clone()),
        )
        .prepare(),
        health_only: tonic::service::Routes::from(
            tonic::service::Routes::new(health_service)
                .into_axum_router()
                .fallback(too_many_connections)
                .layer(authenticate),
        )
        .prepare(),
    };

    // Dropping this future (the drain timeout aborts it) drops `_cut`, which cuts every
    // front's connections at once.
    let (_cut, cut) = watch::channel(());
    let fronts = (0..threads.max(1))
        .map(|index| {
            Front::start(
                index,
                services.clone(),
                limits.max_concurrent_streams,
                state.clone(),
                cut.clone(),
                tls.clone(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut next = 0;
    let mut stopped = std::pin::pin!(state.stopped());
    while let Some((stream, peer)) =
        crate::conn::accept(&listener, stopped.as_mut(), Transport::Grpc).await
    {
        let (guard, health_only) = match connections.admit(peer, Transport::Grpc) {
            Admission::Served(guard) => (guard, false),
            Admission::HealthOnly(guard) => (guard, true),
            Admission::Refused => continue,
        };
        // Nagle would hold small frames (one event at a time to a subscriber that sends
        // nothing back) until the peer's delayed ACK, about 2 ms here.
        let stream = match stream.set_nodelay(true).and_then(|()| stream.into_std()) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, "a gRPC connection failed as it was accepted");
                continue;
            }
        };
        let accepted = Accepted {
            stream,
            guard,
            health_only,
        };
        if fronts[next].connections.send(accepted).await.is_err() {
            // Its thread ended with an error (returned below); serving on without it
            // would drop every connection handed to it.
            tracing::error!(
                thread = next,
                "a gRPC thread stopped: no longer accepting gRPC connections"
            );
            break;
        }
        next = (next + 1) % fronts.len();
    }
    drop(listener);
    let mut result = Ok(());
    for front in fronts {
        drop(front.connections);
        let ended = front.done.await.unwrap_or_else(|_| {
            Err(ServerError::GrpcThread(std::io::Error::other(
                "it panicked",
            )))
        });
        result = result.and(ended);
    }
    result
}

/// One gRPC front: a thread with a current-thread runtime that serves the connections
/// handed to it. A connection's HTTP/2 framing, its calls and their replies all run on
/// one thread, so a call costs no wake-ups between worker threads, and fronts share
/// nothing but the bus and the coordinator behind them.
struct Front {
    connections: mpsc::Sender<Accepted>,
    done: tokio::sync::oneshot::Receiver<Result<(), ServerError>>,
}

impl Front {
    fn start(
        index: usize,
        services: Services,
        max_streams: u32,
        state: Arc<State>,
        mut cut: watch::Receiver<()>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Result<Front, ServerError> {
        let (connections, mut accepted) = mpsc::channel::<Accepted>(64);
        let (finished, done) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServerError::GrpcThread)?;
        std::thread::Builder::new()
            .name(format!("ganglion-grpc-{index}"))
            .spawn(move || {
                let served = runtime.block_on(async move {
                    // Each connection task holds a sender; all gone: all served.
                    let (open, mut drained) = mpsc::channel::<()>(1);
                    loop {
                        let next = tokio::select! {
                            next = accepted.recv() => next,
                            _ = cut.changed() => return Ok(()),
                        };
                        let Some(Accepted {
                            stream,
                            guard,
                            health_only,
                        }) = next
                        else {
                            break;
                        };
                        let stream = tokio::net::TcpStream::from_std(stream)
                            .map_err(ServerError::GrpcThread)?;
                        let service = if health_only {
                            services.health_only.clone()
                        } else {
                            services.all.clone()
                        };
                        let (open, stopped) = (open.clone(), state.stopped());
                        let tls = tls.clone();
                        tokio::spawn(async move {
                            let connections = guard.connections().clone();
                            if let Some((io, peer)) =
                                conn::secure(stream, tls.as_ref(), &connections).await
                            {
                                conn::serve_http2(io, peer, service, max_streams, guard, stopped)
                                    .await;
                            }
                            drop(open);
                        });
                    }
                    drop(open);
                    tokio::select! {
                        _ = drained.recv() => {}
                        _ = cut.changed() => {}
                    }
                    Ok(())
                });
                // Dropping the runtime ends every call still open on this front.
                drop(runtime);
                let _ = finished.send(served);
            })
            .map_err(ServerError::GrpcThread)?;
        Ok(Front { connections, done })
    }
}

/// Reports NOT_SERVING while HTTP health says 503 (the log refuses appends, the
/// coordinator cannot write its state), SERVING otherwise.
async fn watch_health(state: Arc<State>, reporter: tonic_health::server::HealthReporter) {
    let mut serving = true;
    let mut stopped = std::pin::pin!(state.stopped());
    loop {
        let (healthy, _) = state.health();
        if healthy != serving {
            serving = healthy;
            if healthy {
                reporter.set_serving::<EventBusServer<GrpcBus>>().await;
            } else {
                reporter.set_not_serving::<EventBusServer<GrpcBus>>().await;
            }
        }
        tokio::select! {
            _ = &mut stopped => {
                reporter.set_not_serving::<EventBusServer<GrpcBus>>().await;
                return;
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[derive(Debug)]
struct GrpcBus {
    state: Arc<State>,
}

/// The one way a bus error leaves over gRPC: internal details are logged in full here
/// and sent as "internal error" (as HTTP does).
fn status(error: BusError) -> Status {
    log_internal(&error);
    status_from_error(&error)
}

fn log_internal(error: &BusError) {
    if let BusError::Internal(detail) = error {
        tracing::error!(%detail, "internal error answering a gRPC call");
    }
}

async fn publish(
    bus: &dyn Engine,
    state: &State,
    caller: &Caller,
    events: Vec<v1::Event>,
) -> Result<Vec<v1::PublishAck>, BusError> {
    let events = events_from_wire(events)?;
    state.may_publish(caller, &events)?;
    let count = events.len() as u64;
    let started = std::time::Instant::now();
    let acks = bus.publish_batch(events).await?;
    state.metrics.published(count, started.elapsed());
    Ok(acks.into_iter().map(convert::ack_to_wire).collect())
}

impl GrpcBus {
    /// Allows a read-only view (`monitor`), or refuses it.
    fn monitor<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let caller = grpc_caller(request)?;
        self.state.may(&caller, Action::Monitor).map_err(status)
    }
}

#[tonic::async_trait]
impl EventBusService for GrpcBus {
    async fn publish(
        &self,
        request: Request<v1::PublishRequest>,
    ) -> Result<Response<v1::PublishResponse>, Status> {
        let caller = grpc_caller(&request)?;
        let request = request.into_inner();
        let acks = publish(
            self.state.bus.as_ref(),
            &self.state,
            &caller,
            request.events,
        )
        .await
        .map_err(|e| self.state.metrics.refused(e))
        .map_err(status)?;
        Ok(Response::new(v1::PublishResponse {
            acks,
            request_id: request.request_id,
            error: None,
        }))
    }

    type PublishStreamStream = BoxStream<v1::PublishResponse>;

    async fn publish_stream(
        &self,
        request: Request<Streaming<v1::PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let state = self.state.clone();
        let caller = grpc_caller(&request)?;
        // Stop taking requests at shutdown; those in flight still get their responses.
        let responses = request
            .into_inner()
            .take_until(self.state.stopped())
            .map(move |request| {
                let (state, caller) = (state.clone(), caller.clone());
                async move {
                    let request = request?;
                    let response =
                        match publish(state.bus.as_ref(), &state, &caller, request.events).await {
                            Ok(acks) => v1::PublishResponse {
                                acks,
                                request_id: request.request_id,
                                error: None,
                            },
                            Err(e) => {
                                log_internal(&e);
                                v1::PublishResponse {
                                    acks: Vec::new(),
                                    request_id: request.request_id,
                                    error: Some(convert::error_to_wire(&state.metrics.refused(e))),
                                }
                            }
                        };
                    Ok(response)
                }
            })
            .buffered(PUBLISH_PIPELINE);
        Ok(Response::new(Box::pin(responses)))
    }

    type SubscribeStream = BoxStream<v1::SubscribeResponse>;

    async fn subscribe(
        &self,
        request: Request<Streaming<v1::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = request.remote_addr();
        let caller = grpc_caller(&request)?;
        let mut inbound = request.into_inner();
        let open = match inbound.message().await? {
            Some(v1::SubscribeRequest {
                request: Some(subscribe_request::Request::Open(open)),
            }) => open,
            Some(_) => {
                return Err(status(BusError::invalid(
                    "request",
                    "the first request on a subscribe stream must be `open`",
                )));
            }
            None => {
                return Err(status(BusError::invalid(
                    "request",
                    "the stream ended before its `open` request",
                )));
            }
        };
        let pattern = convert::pattern_from_wire(&open.pattern, "open.pattern").map_err(status)?;
        let options = convert::options_from_wire(open.options).map_err(|e| match e {
            BusError::InvalidArgument { field, message } => status(BusError::InvalidArgument {
                field: format!("open.{field}"),
                message,
            }),
            other => status(other),
        })?;
        // A batch is one delivery, and a delivery travels in one message.
        let most = self.state.limits.max_grpc_message_bytes / 2;
        if let Some(batch) = options.batch.as_ref().filter(|b| b.max_bytes > most) {
            return Err(status(BusError::invalid(
                "open.options.batch.max_bytes",
                format!(
                    "is {}; at most {most} (half the server's largest gRPC message) is allowed",
                    batch.max_bytes
                ),
            )));
        }
        self.state
            .may_subscribe(&caller, &pattern, &options)
            .map_err(status)?;
        let slot = self.state.subscription_slot(peer).map_err(status)?;
        let subscription = self
            .state
            .bus
            .subscribe(pattern, options)
            .await
            .map_err(status)?;
        tracing::debug!(subscription = %subscription.id(), name = subscription.name(), ?peer, "gRPC subscription opened");

        let (tx, rx) = mpsc::channel(FRAME_QUEUE);
        let subscribed = v1::SubscribeResponse {
            response: Some(subscribe_response::Response::Subscribed(v1::Subscribed {
                subscription_id: subscription.id().0,
                name: subscription.name().to_owned(),
            })),
        };
        tx.send(Ok(subscribed))
            .await
            .map_err(|_| Status::cancelled("the client went away"))?;

        // Each loop ends the other: deliveries stop when the client stops settling (its
        // side of the stream closed), and settling stops when deliveries end (at
        // shutdown, say), so the stream is released either way.
        let (inbound_done_tx, inbound_done) = tokio::sync::oneshot::channel::<()>();
        let (delivery_done_tx, delivery_done) = tokio::sync::oneshot::channel::<()>();
        // The settle loop holds the response stream only weakly: it must not keep the
        // stream open once deliveries end (at shutdown, say).
        let unsettled = Arc::new(Unsettled::default());
        tokio::spawn(settle_loop(
            inbound,
            subscription.control(),
            unsettled.clone(),
            tx.downgrade(),
            inbound_done_tx,
            delivery_done,
        ));
        self.state.metrics.subscription_opened();
        tokio::spawn(deliver_loop(
            self.state.clone(),
            subscription,
            tx,
            unsettled,
            inbound_done,
            delivery_done_tx,
            slot,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ReplayStream = BoxStream<v1::ReplayResponse>;

    async fn replay(
        &self,
        request: Request<v1::ReplayRequest>,
    ) -> Result<Response<Self::ReplayStream>, Status> {
        let caller = grpc_caller(&request)?;
        let request = request.into_inner();
        let pattern = convert::pattern_from_wire(&request.pattern, "pattern").map_err(status)?;
        self.state
            .may(&caller, Action::Replay(&pattern))
            .map_err(status)?;
        let start = convert::replay_start(request.from_seq, request.since_ms).map_err(status)?;
        let limit = replay_limit(request.limit as usize, self.state.limits.max_replay_events)
            .map_err(status)?;
        let page_bytes = self.state.limits.replay_message_bytes();
        let pages = self
            .state
            .bus
            .replay_pages(pattern, start, limit, page_bytes)
            .await
            .map_err(status)?;
        // One page in memory at a time: the next is read as the client takes this one.
        let responses = futures_util::stream::unfold(Some(pages), |pages| async move {
            let mut pages = pages?;
            match pages.next_page().await {
                Ok(Some(events)) => {
                    let events = events.into_iter().map(convert::event_to_wire).collect();
                    Some((Ok(v1::ReplayResponse { events }), Some(pages)))
                }
                Ok(None) => None,
                Err(error) => Some((Err(status(error)), None)),
            }
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn list_topics(
        &self,
        request: Request<v1::ListTopicsRequest>,
    ) -> Result<Response<v1::ListTopicsResponse>, Status> {
        self.monitor(&request)?;
        let topics = self.state.bus.topics().await.map_err(status)?;
        Ok(Response::new(v1::ListTopicsResponse {
            topics: topics.into_iter().map(convert::topic_to_wire).collect(),
        }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<v1::ListDeadLettersRequest>,
    ) -> Result<Response<v1::ListDeadLettersResponse>, Status> {
        let caller = grpc_caller(&request)?;
        let request = request.into_inner();
        self.state
            .may(&caller, Action::DeadLetters(&request.subscription))
            .map_err(status)?;
        let limit = if request.limit == 0 {
            100
        } else {
            request.limit as usize
        };
        let letters = self
            .state
            .bus
            .dead_letters(request.subscription, limit)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::ListDeadLettersResponse {
            dead_letters: letters
                .into_iter()
                .map(convert::dead_letter_to_wire)
                .collect(),
        }))
    }

    async fn purge_topics(
        &self,
        request: Request<v1::PurgeTopicsRequest>,
    ) -> Result<Response<v1::PurgeTopicsResponse>, Status> {
        let caller = grpc_caller(&request)?;
        let pattern =
            convert::pattern_from_wire(&request.into_inner().pattern, "pattern").map_err(status)?;
        self.state
            .may(&caller, Action::Admin(&format!("purge topics {pattern}")))
            .map_err(status)?;
        let (_, topics, events) = purge_topics(self.state.bus.as_ref(), pattern, false)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::PurgeTopicsResponse { topics, events }))
    }

    async fn delete_topics(
        &self,
        request: Request<v1::DeleteTopicsRequest>,
    ) -> Result<Response<v1::DeleteTopicsResponse>, Status> {
        let caller = grpc_caller(&request)?;
        let pattern =
            convert::pattern_from_wire(&request.into_inner().pattern, "pattern").map_err(status)?;
        self.state
            .may(&caller, Action::Admin(&format!("delete topics {pattern}")))
            .map_err(status)?;
        let (topics, _, events) = purge_topics(self.state.bus.as_ref(), pattern, true)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::DeleteTopicsResponse { topics, events }))
    }

    async fn list_subscriptions(
        &self,
        request: Request<v1::ListSubscriptionsRequest>,
    ) -> Result<Response<v1::ListSubscriptionsResponse>, Status> {
        self.monitor(&request)?;
        let subscriptions = self
            .state
            .bus
            .subscriptions()
            .into_iter()
            .map(subscription_to_wire)
            .collect();
        Ok(Response::new(v1::ListSubscriptionsResponse {
            subscriptions,
        }))
    }

    async fn redrive_dead_letters(
        &self,
        request: Request<v1::RedriveDeadLettersRequest>,
    ) -> Result<Response<v1::RedriveDeadLettersResponse>, Status> {
        let caller = grpc_caller(&request)?;
        let request = request.into_inner();
        self.state
            .may(&caller, Action::DeadLetters(&request.subscription))
            .map_err(status)?;
        self.state.audit.admin(
            caller.name(),
            &format!("redrive dead letters of {}", request.subscription),
        );
        let redriven = self
            .state
            .bus
            .redrive(request.subscription, request.seqs)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::RedriveDeadLettersResponse { redriven }))
    }
}

/// A subscription as `ListSubscriptions` reports it.
fn subscription_to_wire(s: ganglion_core::engine::SubscriptionStats) -> v1::SubscriptionInfo {
    v1::SubscriptionInfo {
        name: s.name,
        pattern: s.pattern,
        queue_group: s.queue_group.unwrap_or_default(),
        durable: s.durable,
        members: u32::try_from(s.members).unwrap_or(u32::MAX),
        lag: s.lag,
        in_flight: s.in_flight,
        ready: s.ready,
        dead_letter_topic: s.dead_letter_topic,
        dead_letters: s.dead_letters,
        delivered: s.delivered,
        redelivered: s.redelivered,
        acked: s.acked,
        nacked: s.nacked,
        expired: s.expired,
    }
}

/// Purges (or, with `delete`, deletes) the topics `pattern` matches, off the async
/// threads (a purge is written to disk before it answers).
pub(crate) async fn purge_topics(
    bus: &dyn Engine,
    pattern: ganglion_core::Pattern,
    delete: bool,
) -> Result<(Vec<String>, u64, u64), BusError> {
    if delete {
        let (topics, events) = bus.delete_topics(pattern).await?;
        let n = topics.len() as u64;
        Ok((topics.iter().map(|t| t.to_string()).collect(), n, events))
    } else {
        let (topics, events) = bus.purge(pattern).await?;
        Ok((Vec::new(), topics, events))
    }
}

/// A replay limit: 0 means 1000; more than `max` is refused.
pub(crate) fn replay_limit(limit: usize, max: usize) -> Result<usize, BusError> {
    match limit {
        0 => Ok(1000.min(max)),
        n if n > max => Err(BusError::invalid(
            "limit",
            format!("is {n}; at most {max} events per replay"),
        )),
        n => Ok(n),
    }
}

/// Applies the client's acks, nacks and terms until its side of the stream ends.
async fn settle_loop(
    mut inbound: Streaming<v1::SubscribeRequest>,
    control: Arc<dyn SubscriptionControl>,
    unsettled: Arc<Unsettled>,
    errors: mpsc::WeakSender<Result<v1::SubscribeResponse, Status>>,
    _done: tokio::sync::oneshot::Sender<()>,
    mut delivery_done: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        let request = tokio::select! {
            request = inbound.message() => match request {
                Ok(Some(request)) => request,
                Ok(None) | Err(_) => return,
            },
            _ = &mut delivery_done => return,
        };
        match request.request {
            Some(subscribe_request::Request::Ack(ack)) => {
                control.ack(&ack.seqs);
                unsettled.settled_by_client(&ack.seqs);
            }
            Some(subscribe_request::Request::Nack(nack)) => {
                control.nack(
                    &nack.seqs,
                    nack.delay_ms.map(Duration::from_millis),
                    &nack.error,
                );
                unsettled.settled_by_client(&nack.seqs);
            }
            Some(subscribe_request::Request::Term(term)) => {
                control.term(&term.seqs, &term.reason);
                unsettled.settled_by_client(&term.seqs);
            }
            Some(subscribe_request::Request::Open(_)) | None => {
                if let Some(errors) = errors.upgrade() {
                    let _ = errors
                        .send(Err(status(BusError::invalid(
                            "request",
                            "a subscribe stream is opened once; later requests are ack, nack or term",
                        ))))
                        .await;
                }
                return;
            }
        }
    }
}

/// Sends the subscription's deliveries as frames until it closes, the client goes away
/// or the server stops; at a stop, it first waits (up to [`SETTLE_GRACE`]) for the
/// client to settle what it was sent, so acks already on their way are not lost.
async fn deliver_loop(
    state: Arc<State>,
    mut subscription: Subscription,
    tx: mpsc::Sender<Result<v1::SubscribeResponse, Status>>,
    unsettled: Arc<Unsettled>,
    mut inbound_done: tokio::sync::oneshot::Receiver<()>,
    _done: tokio::sync::oneshot::Sender<()>,
    _slot: crate::Slot,
) {
    let mut stopped = std::pin::pin!(state.stopped());
    let reason = loop {
        let first = tokio::select! {
            delivery = subscription.next() => delivery,
            _ = &mut stopped => {
                tokio::select! {
                    _ = unsettled.settled() => {}
                    _ = &mut inbound_done => {}
                    _ = tokio::time::sleep(SETTLE_GRACE) => {}
                }
                break Some("the server is shutting down".to_owned());
            }
            _ = &mut inbound_done => break None,
        };
        let Some(first) = first else {
            break Some(
                subscription
                    .closed_reason()
                    .unwrap_or_else(|| "the subscription was closed".to_owned()),
            );
        };
        let frame = frame(first, &mut subscription);
        let events = frame
            .deliveries
            .iter()
            .map(|d| d.events.len() as u64)
            .sum::<u64>();
        unsettled.delivered(frame.deliveries.iter().flat_map(|d| d.seqs.iter().copied()));
        let response = v1::SubscribeResponse {
            response: Some(subscribe_response::Response::Deliveries(frame)),
        };
        if tx.send(Ok(response)).await.is_err() {
            break None;
        }
        state.metrics.delivered(events);
    };
    if let Some(reason) = reason {
        let closed = v1::SubscribeResponse {
            response: Some(subscribe_response::Response::Closed(v1::Closed { reason })),
        };
        let _ = tx.send(Ok(closed)).await;
    }
    state.metrics.subscription_closed();
    tracing::debug!(subscription = %subscription.id(), "gRPC subscription closed");
}

/// One delivery frame: `first` and whatever else is ready, up to the frame limits.
fn frame(first: Delivery, subscription: &mut Subscription) -> v1::DeliveryFrame {
    let mut deliveries = Vec::with_capacity(16);
    let mut events = 0;
    let mut bytes = 0;
    let mut next = Some(first);
    while let Some(delivery) = next.take() {
        let traceparent = delivery.deliver_traceparent().map(str::to_owned);
        let (delivered, counts, seqs) = delivery.into_parts();
        events += delivered.len();
        bytes += delivered
            .iter()
            .map(|e| e.event.payload.len())
            .sum::<usize>();
        let mut wire: Vec<v1::DeliveredEvent> =
            delivered.into_iter().map(delivered_to_wire).collect();
        // Traced: the subscriber's handling nests in this server's deliver span.
        if let (Some(traceparent), [one]) = (traceparent, wire.as_mut_slice())
            && let Some(event) = &mut one.event
        {
            event
                .headers
                .insert(ganglion_core::headers::TRACEPARENT.to_owned(), traceparent);
        }
        deliveries.push(v1::Delivery {
            events: wire,
            counts: counts.iter().map(key_count_to_wire).collect(),
            seqs,
        });
        if events < FRAME_EVENTS && bytes < FRAME_BYTES {
            next = subscription.try_next();
        }
    }
    v1::DeliveryFrame { deliveries }
}
