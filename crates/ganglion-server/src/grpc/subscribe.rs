//! One gRPC subscription stream: deliveries go out in frames, acks, nacks and terms come
//! back, and each loop ends the other.

use std::sync::Arc;
use std::time::Duration;

use ganglion_core::BusError;
use ganglion_core::bus::{Delivery, Subscription, SubscriptionControl};
use ganglion_proto::convert::{delivered_to_wire, key_count_to_wire};
use ganglion_proto::v1::{self, subscribe_request, subscribe_response};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::State;
use crate::unsettled::{SETTLE_GRACE, Unsettled};

use super::bus::status;

/// A delivery frame holds at most this many events or about this many payload bytes.
const FRAME_EVENTS: usize = 1024;
const FRAME_BYTES: usize = 1024 * 1024;
/// Frames a subscription may have queued for its connection; beyond it the subscription
/// waits (and, through `max_in_flight`, so does its consumer).
pub(super) const FRAME_QUEUE: usize = 4;

/// Applies the client's acks, nacks and terms until its side of the stream ends.
pub(super) async fn settle_loop(
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
pub(super) async fn deliver_loop(
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
