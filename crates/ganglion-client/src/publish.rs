//! The coalescing publisher: one task owns a pipelined `PublishStream`, gathers what
//! callers submit into frames, and routes each response's acks back to their callers.

use std::collections::VecDeque;

use ganglion_core::bus::PublishAck;
use ganglion_core::{BusError, Event};
use ganglion_proto::convert::{ack_from_wire, error_from_status, error_from_wire, event_to_wire};
use ganglion_proto::v1;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::{ClientOptions, Reconnect};

type Reply = oneshot::Sender<Result<Vec<PublishAck>, BusError>>;

/// One caller's batch, converted to the wire in the caller's task.
#[derive(Debug)]
pub(crate) struct Job {
    events: Vec<v1::Event>,
    bytes: usize,
    reply: Reply,
}

/// Hands `events` to the publisher task and waits for their acks.
pub(crate) async fn submit(
    publisher: &mpsc::Sender<Job>,
    events: Vec<Event>,
) -> Result<Vec<PublishAck>, BusError> {
    let bytes = events.iter().map(|e| e.payload.len()).sum();
    let events = events.into_iter().map(event_to_wire).collect();
    let (reply, response) = oneshot::channel();
    publisher
        .send(Job {
            events,
            bytes,
            reply,
        })
        .await
        .map_err(|_| BusError::Closed)?;
    response.await.map_err(|_| BusError::Closed)?
}

pub(crate) fn spawn(rpc: crate::Rpc, options: ClientOptions) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel(options.pipeline.max(1) * 64);
    tokio::spawn(run(rpc, options, rx));
    tx
}

/// A frame sent and waiting for its response: whose events it carries, in order.
#[derive(Debug)]
struct InFlight {
    request_id: u64,
    jobs: Vec<(usize, Reply)>,
    /// Kept only for frames of several jobs, to resend them one by one if the frame is
    /// refused for a bad event.
    events: Option<Vec<Vec<v1::Event>>>,
}

struct Stream {
    requests: mpsc::Sender<v1::PublishRequest>,
    responses: Streaming<v1::PublishResponse>,
}

async fn open(rpc: &mut crate::Rpc, pipeline: usize) -> Result<Stream, BusError> {
    let (requests, rx) = mpsc::channel(pipeline.max(1));
    let responses = rpc
        .publish_stream(ReceiverStream::new(rx))
        .await
        .map_err(|s| error_from_status(&s))?
        .into_inner();
    Ok(Stream {
        requests,
        responses,
    })
}

async fn run(mut rpc: crate::Rpc, options: ClientOptions, mut jobs: mpsc::Receiver<Job>) {
    let mut reconnect = Reconnect::new(&options);
    let mut stream: Option<Stream> = None;
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    // Jobs to send alone (the frame they were coalesced into was refused).
    let mut solo: VecDeque<Job> = VecDeque::new();
    let mut next_request_id = 1u64;
    let mut carry: Option<Job> = None;

    loop {
        // Gather a frame: a job to resend alone, or as many queued jobs as fit.
        let can_send = in_flight.len() < options.pipeline;
        let responses_open = stream.is_some() && !in_flight.is_empty();
        let frame = tokio::select! {
            biased;
            response = next_response(&mut stream), if responses_open => {
                match response {
                    Ok(response) => settle(response, &mut in_flight, &mut solo),
                    Err(error) => {
                        tracing::warn!(%error, "publish stream broke; reconnecting");
                        stream = None;
                        fail_all(&mut in_flight, &error);
                    }
                }
                continue;
            }
            job = next_job(&mut solo, &mut carry, &mut jobs), if can_send => match job {
                Some(job) => job,
                None => return,
            },
        };
        let id = next_request_id;
        next_request_id += 1;
        let (request, flight) = match frame {
            Gathered::Solo(job) => alone(job, id),
            Gathered::First(job) => gather(job, &mut jobs, &mut carry, &options, id),
        };
        if stream.is_none() {
            match open(&mut rpc, options.pipeline).await {
                Ok(s) => {
                    reconnect.reset();
                    stream = Some(s);
                }
                Err(error) => {
                    let wait = reconnect.delay();
                    tracing::warn!(%error, wait_ms = wait.as_millis() as u64, "cannot open a publish stream");
                    fail(flight, &error);
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
        }
        let sent = match &stream {
            Some(s) => s.requests.send(request).await.is_ok(),
            None => false,
        };
        if sent {
            in_flight.push_back(flight);
        } else {
            let error = BusError::Unavailable("the publish stream closed".into());
            stream = None;
            fail(flight, &error);
            fail_all(&mut in_flight, &error);
        }
    }
}

/// A frame of one job (resent alone: the frame it was coalesced into was refused).
fn alone(job: Job, request_id: u64) -> (v1::PublishRequest, InFlight) {
    let count = job.events.len();
    let request = v1::PublishRequest {
        events: job.events,
        request_id,
    };
    let flight = InFlight {
        request_id,
        jobs: vec![(count, job.reply)],
        events: None,
    };
    (request, flight)
}

enum Gathered {
    Solo(Job),
    First(Job),
}

async fn next_job(
    solo: &mut VecDeque<Job>,
    carry: &mut Option<Job>,
    jobs: &mut mpsc::Receiver<Job>,
) -> Option<Gathered> {
    if let Some(job) = solo.pop_front() {
        return Some(Gathered::Solo(job));
    }
    if let Some(job) = carry.take() {
        return Some(Gathered::First(job));
    }
    jobs.recv().await.map(Gathered::First)
}

/// `first` and whatever else is queued now, up to the frame limits.
fn gather(
    first: Job,
    jobs: &mut mpsc::Receiver<Job>,
    carry: &mut Option<Job>,
    options: &ClientOptions,
    request_id: u64,
) -> (v1::PublishRequest, InFlight) {
    let mut events = first.events;
    let mut bytes = first.bytes;
    let mut counts = vec![(events.len(), first.reply)];
    let mut parts: Vec<usize> = vec![events.len()];
    while events.len() < options.max_frame_events && bytes < options.max_frame_bytes {
        let Ok(job) = jobs.try_recv() else { break };
        if events.len() + job.events.len() > options.max_frame_events
            || bytes + job.bytes > options.max_frame_bytes
        {
            *carry = Some(job);
            break;
        }
        bytes += job.bytes;
        parts.push(job.events.len());
        counts.push((job.events.len(), job.reply));
        events.extend(job.events);
    }
    let kept = (counts.len() > 1).then(|| {
        let mut split = Vec::with_capacity(parts.len());
        let mut at = 0;
        for n in &parts {
            split.push(events[at..at + n].to_vec());
            at += n;
        }
        split
    });
    (
        v1::PublishRequest { events, request_id },
        InFlight {
            request_id,
            jobs: counts,
            events: kept,
        },
    )
}

async fn next_response(stream: &mut Option<Stream>) -> Result<v1::PublishResponse, BusError> {
    let Some(s) = stream.as_mut() else {
        return Err(BusError::Unavailable("not connected".into()));
    };
    match s.responses.message().await {
        Ok(Some(response)) => Ok(response),
        Ok(None) => Err(BusError::Unavailable(
            "the server ended the publish stream; in-flight events may or may not have been published".into(),
        )),
        Err(status) => Err(error_from_status(&status)),
    }
}

/// Routes one response to the callers of the oldest frame in flight.
fn settle(
    response: v1::PublishResponse,
    in_flight: &mut VecDeque<InFlight>,
    solo: &mut VecDeque<Job>,
) {
    let Some(flight) = in_flight.pop_front() else {
        tracing::warn!(
            request_id = response.request_id,
            "a publish response nobody waits for"
        );
        return;
    };
    if flight.request_id != response.request_id {
        let error = BusError::Internal(format!(
            "publish response {} arrived for request {}",
            response.request_id, flight.request_id
        ));
        fail(flight, &error);
        return;
    }
    if let Some(error) = response.error {
        let error = error_from_wire(error);
        // A frame of several callers' batches refused for one bad event: nothing was
        // appended, so send each batch alone and let only the bad one fail.
        let per_event = matches!(
            error,
            BusError::InvalidArgument { .. } | BusError::TooLarge { .. }
        );
        match flight.events {
            Some(parts) if per_event => {
                for ((_, reply), events) in flight.jobs.into_iter().zip(parts) {
                    solo.push_back(Job {
                        bytes: 0,
                        events,
                        reply,
                    });
                }
            }
            _ => {
                for (_, reply) in flight.jobs {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
        return;
    }
    let mut acks = response.acks.into_iter().map(ack_from_wire);
    for (count, reply) in flight.jobs {
        let mine: Vec<PublishAck> = acks.by_ref().take(count).collect();
        let result = if mine.len() == count {
            Ok(mine)
        } else {
            Err(BusError::Internal("the server sent too few acks".into()))
        };
        let _ = reply.send(result);
    }
}

fn fail(flight: InFlight, error: &BusError) {
    for (_, reply) in flight.jobs {
        let _ = reply.send(Err(error.clone()));
    }
}

fn fail_all(in_flight: &mut VecDeque<InFlight>, error: &BusError) {
    for flight in in_flight.drain(..) {
        fail(flight, error);
    }
}
