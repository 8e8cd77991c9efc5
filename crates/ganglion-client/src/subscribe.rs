//! Remote subscriptions: one task per subscription reads delivery frames, hands them to
//! the [`Subscription`], sends settlements back, and reopens the stream after a break.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ganglion_core::BusError;
use ganglion_core::Pattern;
use ganglion_core::bus::{
    Chunk, Delivery, SubscribeOptions, Subscription, SubscriptionControl, SubscriptionId,
};
use ganglion_proto::convert::{
    TopicCache, delivered_from_wire, duration_ms, error_from_status, key_count_from_wire,
    options_to_wire,
};
use ganglion_proto::v1::{self, subscribe_request, subscribe_response};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;

use crate::{ClientOptions, Reconnect, lock};

/// Delivery chunks buffered between the stream and the subscriber.
const CHUNKS: usize = 4;

/// Settlements go to whichever stream is current (it changes on reconnect).
#[derive(Debug)]
struct Control {
    requests: Mutex<mpsc::UnboundedSender<v1::SubscribeRequest>>,
    closed: Mutex<Option<String>>,
}

impl Control {
    fn send(&self, request: subscribe_request::Request) {
        // A settlement for a broken stream is lost with it; the server redelivers what
        // was not acked, so at-least-once holds.
        let _ = lock(&self.requests).send(v1::SubscribeRequest {
            request: Some(request),
        });
    }
}

impl SubscriptionControl for Control {
    fn ack(&self, seqs: &[u64]) {
        if !seqs.is_empty() {
            self.send(subscribe_request::Request::Ack(v1::Ack {
                seqs: seqs.to_vec(),
            }));
        }
    }

    fn nack(&self, seqs: &[u64], delay: Option<Duration>, error: &str) {
        if !seqs.is_empty() {
            self.send(subscribe_request::Request::Nack(v1::Nack {
                seqs: seqs.to_vec(),
                delay_ms: delay.map(duration_ms),
                error: error.to_owned(),
            }));
        }
    }

    fn term(&self, seqs: &[u64], reason: &str) {
        if !seqs.is_empty() {
            self.send(subscribe_request::Request::Term(v1::Term {
                seqs: seqs.to_vec(),
                reason: reason.to_owned(),
            }));
        }
    }

    fn closed_reason(&self) -> Option<String> {
        lock(&self.closed).clone()
    }
}

struct Opened {
    requests: mpsc::UnboundedSender<v1::SubscribeRequest>,
    responses: Streaming<v1::SubscribeResponse>,
    name: String,
}

async fn open_stream(
    rpc: &mut crate::Rpc,
    open: &v1::OpenSubscription,
) -> Result<Opened, BusError> {
    let (requests, rx) = mpsc::unbounded_channel();
    let _ = requests.send(v1::SubscribeRequest {
        request: Some(subscribe_request::Request::Open(open.clone())),
    });
    let mut responses = rpc
        .subscribe(UnboundedReceiverStream::new(rx))
        .await
        .map_err(|s| error_from_status(&s))?
        .into_inner();
    match responses
        .message()
        .await
        .map_err(|s| error_from_status(&s))?
    {
        Some(v1::SubscribeResponse {
            response: Some(subscribe_response::Response::Subscribed(subscribed)),
        }) => Ok(Opened {
            requests,
            responses,
            name: subscribed.name,
        }),
        Some(v1::SubscribeResponse {
            response: Some(subscribe_response::Response::Closed(closed)),
        }) => Err(BusError::Unavailable(closed.reason)),
        _ => Err(BusError::Internal(
            "the server did not confirm the subscription".into(),
        )),
    }
}

/// Opens a subscription; returns it and the task that feeds it.
pub(crate) async fn open(
    mut rpc: crate::Rpc,
    options: &ClientOptions,
    id: SubscriptionId,
    pattern: Pattern,
    subscribe: SubscribeOptions,
) -> Result<(Subscription, tokio::task::AbortHandle), BusError> {
    let open = v1::OpenSubscription {
        pattern: pattern.as_str().to_owned(),
        options: Some(options_to_wire(&subscribe)),
    };
    let opened = open_stream(&mut rpc, &open).await?;
    let control = Arc::new(Control {
        requests: Mutex::new(opened.requests.clone()),
        closed: Mutex::new(None),
    });
    let (tx, rx) = mpsc::channel(CHUNKS);
    let subscription = Subscription::new(id, opened.name.clone(), rx, control.clone());
    let task = tokio::spawn(run(rpc, open, opened, control, tx, Reconnect::new(options)));
    Ok((subscription, task.abort_handle()))
}

/// Ends the request stream when the subscription's task ends (the subscription was
/// dropped, or the stream closed): a delivery still held then settles nothing, and the
/// server sees the subscriber leave rather than an open stream with nobody behind it.
struct EndRequests(Arc<Control>);

impl Drop for EndRequests {
    fn drop(&mut self) {
        let (ended, _) = mpsc::unbounded_channel();
        *lock(&self.0.requests) = ended;
    }
}

async fn run(
    mut rpc: crate::Rpc,
    open: v1::OpenSubscription,
    opened: Opened,
    control: Arc<Control>,
    tx: mpsc::Sender<Chunk>,
    mut reconnect: Reconnect,
) {
    let _end = EndRequests(control.clone());
    let mut responses = opened.responses;
    let mut _requests = opened.requests;
    loop {
        let message = tokio::select! {
            m = responses.message() => m,
            _ = tx.closed() => return,
        };
        match message {
            Ok(Some(v1::SubscribeResponse {
                response: Some(subscribe_response::Response::Deliveries(frame)),
            })) => {
                let chunk = match deliveries(frame, &control) {
                    Ok(chunk) => chunk,
                    Err(error) => {
                        tracing::error!(%error, "undecodable delivery frame; closing the subscription");
                        *lock(&control.closed) = Some(error.to_string());
                        return;
                    }
                };
                if tx.send(chunk.into()).await.is_err() {
                    return;
                }
            }
            Ok(Some(v1::SubscribeResponse {
                response: Some(subscribe_response::Response::Closed(closed)),
            })) => {
                *lock(&control.closed) = Some(closed.reason);
                return;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                // The connection broke: reopen with the same options.
                loop {
                    let wait = reconnect.delay();
                    tracing::warn!(pattern = %open.pattern, wait_ms = wait.as_millis() as u64, "subscription stream broke; reopening");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = tx.closed() => return,
                    }
                    match open_stream(&mut rpc, &open).await {
                        Ok(opened) => {
                            reconnect.reset();
                            *lock(&control.requests) = opened.requests.clone();
                            _requests = opened.requests;
                            responses = opened.responses;
                            break;
                        }
                        Err(BusError::InvalidArgument { field, message }) => {
                            *lock(&control.closed) =
                                Some(format!("the server refused to reopen: {field}: {message}"));
                            return;
                        }
                        Err(_) => continue,
                    }
                }
            }
        }
    }
}

fn deliveries(frame: v1::DeliveryFrame, control: &Arc<Control>) -> Result<Vec<Delivery>, BusError> {
    let control: Arc<dyn SubscriptionControl> = control.clone();
    let mut topics = TopicCache::default();
    frame
        .deliveries
        .into_iter()
        .map(|d| {
            let mut events = d
                .events
                .into_iter()
                .map(|e| delivered_from_wire(e, &mut topics))
                .collect::<Result<Vec<_>, _>>()?;
            let counts: Vec<_> = d.counts.into_iter().map(key_count_from_wire).collect();
            if events.len() == 1 && counts.is_empty() && d.seqs.len() <= 1 {
                let event = events.pop().expect("one event");
                Ok(match d.seqs.first() {
                    Some(&seq) => Delivery::single(event, Some(seq), control.clone()),
                    None => Delivery::ephemeral(event),
                })
            } else {
                Ok(Delivery::batch(events, counts, d.seqs, control.clone()))
            }
        })
        .collect()
}
