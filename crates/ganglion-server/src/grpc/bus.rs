//! `ganglion.v1.EventBus`: each method converts, checks the caller, calls the engine,
//! converts back.

use crate::auth::{Action, Caller, grpc_caller};
use std::sync::Arc;

use futures_util::StreamExt;
use ganglion_core::BusError;
use ganglion_core::Engine;
use ganglion_proto::convert::{self, events_from_wire, status_from_error};
use ganglion_proto::v1::event_bus_server::EventBus as EventBusService;
use ganglion_proto::v1::{self, subscribe_request, subscribe_response};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::State;
use crate::unsettled::Unsettled;

use super::BoxStream;
use super::subscribe::{FRAME_QUEUE, deliver_loop, settle_loop};

/// Publish requests one publish stream may have in flight (acks still come back in
/// order).
const PUBLISH_PIPELINE: usize = 64;

#[derive(Debug)]
pub(super) struct GrpcBus {
    pub(super) state: Arc<State>,
}

/// The one way a bus error leaves over gRPC: internal details are logged in full here
/// and sent as "internal error" (as HTTP does).
pub(super) fn status(error: BusError) -> Status {
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
    /// The pattern and options of a subscribe stream's first request, `open`, checked
    /// (the field named under `open.`).
    async fn opening(
        &self,
        inbound: &mut Streaming<v1::SubscribeRequest>,
    ) -> Result<(ganglion_core::Pattern, ganglion_core::bus::SubscribeOptions), Status> {
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
        Ok((pattern, options))
    }

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
        let (pattern, options) = self.opening(&mut inbound).await?;
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
