//! The event routes: publish, replay, the live stream, topics and subscriptions.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Query, State as Extract};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures_util::Stream;
use ganglion_core::bus::{
    AckMode, REPLAY_PAGE_BYTES, StartPosition, StorageClass, SubscribeOptions,
};
use ganglion_core::{BusError, Event, Topic, parse_since};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, Monitor, Who, json_body, pattern_param, typed_body};
use crate::State;
use crate::auth::Action;
use crate::grpc::replay_limit;
pub use ganglion_proto::json::event_to_json;

pub(super) async fn publish(
    Who(caller): Who,
    Extract(state): Extract<Arc<State>>,
    body: Body,
) -> Response {
    match publish_inner(&state, &caller, body).await {
        Ok(body) => (StatusCode::OK, axum::Json(body)).into_response(),
        Err(e) => {
            state.metrics.refused_code(e.error_code());
            e.into_response()
        }
    }
}

/// A publication's acknowledgement, as `POST /api/v1/events` answers.
#[derive(Debug, serde::Serialize)]
struct AckJson {
    seq: u64,
    id: String,
    duplicate: bool,
}

/// One ack for a body with one event, `{"acks": [...]}` for a batch.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
enum Published {
    One(AckJson),
    Batch { acks: Vec<AckJson> },
}

async fn publish_inner(
    state: &State,
    caller: &crate::auth::Caller,
    body: Body,
) -> ApiResult<Published> {
    let body = json_body(state, body).await?;
    let (events, batch) = events_from_body(body)?;
    state.may_publish(caller, &events)?;
    let count = events.len() as u64;
    let started = std::time::Instant::now();
    let acks = state.bus.publish_batch(events).await.map_err(|e| {
        // The bus names fields `events[i].x`; a single-event body has no `events`.
        let e = if batch { e } else { strip_batch_prefix(e) };
        ApiError::from(e)
    })?;
    state.metrics.published(count, started.elapsed());
    let acks: Vec<AckJson> = acks
        .into_iter()
        .map(|a| AckJson {
            seq: a.seq,
            id: a.id.to_string(),
            duplicate: a.duplicate,
        })
        .collect();
    Ok(match <[AckJson; 1]>::try_from(acks) {
        Ok([ack]) if !batch => Published::One(ack),
        Ok(one) => Published::Batch { acks: one.into() },
        Err(acks) => Published::Batch { acks },
    })
}

/// The events of a publish body: one event object, or `{"events": [...]}` (then `true`).
fn events_from_body(body: Value) -> ApiResult<(Vec<Event>, bool)> {
    let Value::Object(mut object) = body else {
        return Err(ApiError::invalid(
            "body",
            "must be an event object or {\"events\": [...]}",
        ));
    };
    let batch = object.contains_key("events");
    let events = if batch {
        if object.len() != 1 {
            let other = object.keys().find(|k| *k != "events").cloned();
            return Err(ApiError::invalid(
                other.unwrap_or_default(),
                "a batch body has only `events`",
            ));
        }
        let Some(Value::Array(items)) = object.remove("events") else {
            return Err(ApiError::invalid("events", "must be an array of events"));
        };
        if items.is_empty() {
            return Err(ApiError::invalid("events", "must hold at least one event"));
        }
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| event_from_json(item, &format!("events[{i}]")))
            .collect::<ApiResult<Vec<_>>>()?
    } else {
        vec![event_from_json(Value::Object(object), "")?]
    };
    Ok((events, batch))
}

/// Parses a publish request body as `POST /api/v1/events` does, for the fuzzer and
/// tests: the events, or the error (with its field) the API would answer.
pub fn events_from_json(body: &[u8]) -> Result<Vec<Event>, BusError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| BusError::invalid("body", format!("is not valid JSON: {e}")))?;
    events_from_body(value)
        .map(|(events, _)| events)
        .map_err(|e| BusError::invalid(e.field().unwrap_or("body"), e.message().to_owned()))
}

fn strip_batch_prefix(error: BusError) -> BusError {
    let strip = |field: String| {
        field
            .strip_prefix("events[0].")
            .map(str::to_owned)
            .unwrap_or(field)
    };
    match error {
        BusError::InvalidArgument { field, message } => BusError::InvalidArgument {
            field: strip(field),
            message,
        },
        BusError::TooLarge { field, size, limit } => BusError::TooLarge {
            field: strip(field),
            size,
            limit,
        },
        other => other,
    }
}

/// An event as a publish body gives it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventJson {
    topic: String,
    #[serde(default)]
    payload: Option<Value>,
    #[serde(default)]
    payload_base64: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default, rename = "type")]
    event_type: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    /// Absent: given at publication, one clock read per batch.
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    timestamp_ms: Option<u64>,
}

/// One event from its JSON form; `at` prefixes field names (`events[2]`).
fn event_from_json(value: Value, at: &str) -> ApiResult<Event> {
    if !value.is_object() {
        return Err(ApiError::invalid(
            if at.is_empty() { "body" } else { at },
            "must be an object",
        ));
    }
    let name = |field: &str| super::field_at(at, field);
    let event: EventJson = super::from_json(value, at)?;
    let topic =
        Topic::new(&event.topic).map_err(|e| ApiError::invalid(name("topic"), e.to_string()))?;
    let (payload, content_type) = match (event.payload, event.payload_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                name("payload_base64"),
                "give payload or payload_base64, not both",
            ));
        }
        (_, Some(b64)) => {
            let bytes = BASE64.decode(b64).map_err(|e| {
                ApiError::invalid(name("payload_base64"), format!("is not base64: {e}"))
            })?;
            let content_type = event
                .content_type
                .unwrap_or_else(|| "application/octet-stream".to_owned());
            (Bytes::from(bytes), content_type)
        }
        (payload, None) => {
            if event
                .content_type
                .is_some_and(|ct| ct != "application/json")
            {
                return Err(ApiError::invalid(
                    name("content_type"),
                    "a JSON payload is application/json; use payload_base64 for other content",
                ));
            }
            let bytes = serde_json::to_vec(&payload.unwrap_or(Value::Null))
                .map_err(|e| ApiError::invalid(name("payload"), e.to_string()))?;
            (Bytes::from(bytes), "application/json".to_owned())
        }
    };
    Ok(Event {
        id: event.id.unwrap_or_default().into(),
        topic,
        event_type: event.event_type.unwrap_or_default(),
        source: event.source.unwrap_or_default(),
        timestamp_ms: event.timestamp_ms.unwrap_or(0),
        headers: event.headers.unwrap_or_default(),
        payload,
        content_type,
        seq: 0,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplayQuery {
    pattern: Option<String>,
    from_seq: Option<u64>,
    since: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn replay(
    Who(caller): Who,
    Extract(state): Extract<Arc<State>>,
    query: Result<Query<ReplayQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(query) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let pattern = pattern_param(query.pattern)?;
    state.may(&caller, Action::Replay(&pattern))?;
    let start = match (query.from_seq, query.since) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "since",
                "give from_seq or since, not both",
            ));
        }
        (Some(seq), None) => StartPosition::Seq(seq),
        (None, Some(since)) => StartPosition::Time(
            parse_since(&since, SystemTime::now()).map_err(|e| BusError::invalid("since", e))?,
        ),
        (None, None) => StartPosition::All,
    };
    let limit = replay_limit(query.limit.unwrap_or(0), state.limits.max_replay_events)?;
    let mut pages = state
        .bus
        .replay_pages(pattern, start, limit, REPLAY_PAGE_BYTES)
        .await?;
    // The first page before the response starts, so a failure still gets its status.
    let first = pages.next_page().await?;
    let body = Body::from_stream(replay_body(pages, first));
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// `{"events": [...], "next_seq": N}`, written a page at a time: one page of events is
/// in memory however long the replay.
fn replay_body(
    pages: Box<dyn ganglion_core::bus::ReplayPages>,
    first: Option<Vec<Event>>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    enum Step {
        Page(
            Box<dyn ganglion_core::bus::ReplayPages>,
            Option<Vec<Event>>,
            Option<u64>,
        ),
        Done,
    }
    let opening = futures_util::stream::once(async {
        Ok::<_, std::io::Error>(Bytes::from_static(b"{\"events\":["))
    });
    let pages = futures_util::stream::unfold(Step::Page(pages, first, None), |step| async move {
        let Step::Page(mut pages, page, last_seq) = step else {
            return None;
        };
        let page = match page {
            Some(page) => page,
            None => match pages.next_page().await {
                Ok(Some(page)) => page,
                Ok(None) => {
                    let next_seq = last_seq.map_or(json!(null), |s| json!(s + 1));
                    let closing = format!("],\"next_seq\":{next_seq}}}");
                    return Some((Ok(Bytes::from(closing)), Step::Done));
                }
                Err(error) => {
                    // The status is sent already: end the body short, as HTTP allows.
                    tracing::warn!(%error, "replay failed while streaming its response");
                    return Some((Err(std::io::Error::other(error.to_string())), Step::Done));
                }
            },
        };
        let mut text = Vec::new();
        for event in &page {
            if last_seq.is_some() || !text.is_empty() {
                text.push(b',');
            }
            if let Err(error) = serde_json::to_writer(&mut text, &event_to_json(event)) {
                return Some((Err(std::io::Error::other(error)), Step::Done));
            }
        }
        let last = page.last().map(|e| e.seq).or(last_seq);
        Some((Ok(Bytes::from(text)), Step::Page(pages, None, last)))
    });
    futures_util::StreamExt::chain(opening, pages)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamQuery {
    pattern: Option<String>,
}

pub(super) async fn stream(
    Who(caller): Who,
    Extract(state): Extract<Arc<State>>,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let Query(query) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let pattern = pattern_param(query.pattern)?;
    let options = SubscribeOptions {
        ack_mode: AckMode::Auto,
        ..SubscribeOptions::default()
    };
    state.may_subscribe(&caller, &pattern, &options)?;
    let limit = state.limits.max_sse_clients;
    if !state.metrics.try_open_sse(limit) {
        return Err(ApiError::from(BusError::ResourceExhausted {
            what: format!("{limit} event streams are open, the most allowed"),
            retry_after: Duration::from_secs(5),
        }));
    }
    let client = SseClient(state.clone());
    let subscription = state.bus.subscribe(pattern, options).await?;
    Ok(Sse::new(sse_events(client, subscription)).keep_alive(KeepAlive::default()))
}

/// Counts an open SSE client until the stream is dropped.
struct SseClient(Arc<State>);

impl Drop for SseClient {
    fn drop(&mut self) {
        self.0.metrics.sse_closed();
    }
}

/// A subscription's events as Server-Sent Events, taken from the subscription as the
/// client reads them (no queue in between: a client that stops reading stops its
/// subscription at the bus's byte bounds). Ends with a `closed` event and its reason
/// when the subscription ends, and without one when the server stops.
fn sse_events(
    client: SseClient,
    subscription: ganglion_core::bus::Subscription,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
    let stopped: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(client.0.stopped());
    let queued = std::collections::VecDeque::new();
    futures_util::stream::unfold(
        Some((client, subscription, stopped, queued)),
        |step| async move {
            let (client, mut subscription, mut stopped, mut queued) = step?;
            loop {
                if let Some(sse) = queued.pop_front() {
                    client.0.metrics.delivered(1);
                    return Some((Ok(sse), Some((client, subscription, stopped, queued))));
                }
                let delivery = tokio::select! {
                    d = subscription.next() => d,
                    _ = &mut stopped => return None,
                };
                let Some(delivery) = delivery else {
                    let reason = subscription
                        .closed_reason()
                        .unwrap_or_else(|| "the subscription was closed".to_owned());
                    return Some((Ok(SseEvent::default().event("closed").data(reason)), None));
                };
                for delivered in delivery.events() {
                    let mut sse = SseEvent::default()
                        .event("event")
                        .data(event_to_json(&delivered.event).to_string());
                    if delivered.event.seq > 0 {
                        sse = sse.id(delivered.event.seq.to_string());
                    }
                    queued.push_back(sse);
                }
            }
        },
    )
}

/// `GET /api/v1/topics`.
#[derive(Debug, serde::Serialize)]
pub(super) struct TopicsJson {
    topics: Vec<TopicJson>,
}

#[derive(Debug, serde::Serialize)]
struct TopicJson {
    topic: String,
    /// `durable` or `ephemeral`.
    storage: &'static str,
    events: u64,
    last_seq: u64,
}

pub(super) async fn topics(
    _: Monitor,
    Extract(state): Extract<Arc<State>>,
) -> ApiResult<axum::Json<TopicsJson>> {
    let topics = state.bus.topics().await?;
    let topics = topics
        .iter()
        .map(|t| TopicJson {
            topic: t.topic.to_string(),
            storage: match t.storage {
                StorageClass::Durable => "durable",
                StorageClass::Ephemeral => "ephemeral",
            },
            events: t.events,
            last_seq: t.last_seq,
        })
        .collect();
    Ok(axum::Json(TopicsJson { topics }))
}

/// What a purge (`topics`: how many) or a delete (`topics`: their names) answers.
#[derive(Debug, serde::Serialize)]
pub(super) struct PurgedJson<T> {
    topics: T,
    events: u64,
}

/// The body of the topic admin routes.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PatternBody {
    pattern: String,
}

/// `POST /api/v1/topics/purge` `{"pattern"}` → `{"topics", "events"}`.
pub(super) async fn purge_topics(
    Who(caller): Who,
    Extract(state): Extract<Arc<State>>,
    body: Body,
) -> ApiResult<axum::Json<PurgedJson<u64>>> {
    let PatternBody { pattern } = typed_body(&state, body).await?;
    let pattern = pattern_param(Some(pattern))?;
    state.may(&caller, Action::Admin(&format!("purge topics {pattern}")))?;
    let (_, topics, events) = crate::grpc::purge_topics(state.bus.as_ref(), pattern, false).await?;
    Ok(axum::Json(PurgedJson { topics, events }))
}

/// `POST /api/v1/topics/delete` `{"pattern"}` → `{"topics": [...], "events"}`.
pub(super) async fn delete_topics(
    Who(caller): Who,
    Extract(state): Extract<Arc<State>>,
    body: Body,
) -> ApiResult<axum::Json<PurgedJson<Vec<String>>>> {
    let PatternBody { pattern } = typed_body(&state, body).await?;
    let pattern = pattern_param(Some(pattern))?;
    state.may(&caller, Action::Admin(&format!("delete topics {pattern}")))?;
    let (topics, _, events) = crate::grpc::purge_topics(state.bus.as_ref(), pattern, true).await?;
    Ok(axum::Json(PurgedJson { topics, events }))
}

/// `GET /api/v1/subscriptions`: every subscription, connected or not.
pub(super) async fn subscriptions(
    _: Monitor,
    Extract(state): Extract<Arc<State>>,
) -> axum::Json<SubscriptionsJson> {
    let subscriptions = state
        .bus
        .subscriptions()
        .into_iter()
        .map(SubscriptionJson::from);
    axum::Json(SubscriptionsJson {
        subscriptions: subscriptions.collect(),
    })
}

#[derive(Debug, serde::Serialize)]
pub(super) struct SubscriptionsJson {
    subscriptions: Vec<SubscriptionJson>,
}

/// A subscription as the HTTP API shows it (here and in `/api/v1/metrics`).
#[derive(Debug, serde::Serialize)]
pub(crate) struct SubscriptionJson {
    name: String,
    pattern: String,
    queue_group: Option<String>,
    durable: bool,
    members: usize,
    lag: u64,
    in_flight: u64,
    ready: u64,
    dead_letter_topic: String,
    dead_letters: u64,
    delivered: u64,
    redelivered: u64,
    acked: u64,
    nacked: u64,
    ack_timeouts: u64,
    dead_lettered: u64,
    expired: u64,
}

impl From<ganglion_core::engine::SubscriptionStats> for SubscriptionJson {
    fn from(s: ganglion_core::engine::SubscriptionStats) -> SubscriptionJson {
        SubscriptionJson {
            name: s.name,
            pattern: s.pattern,
            queue_group: s.queue_group,
            durable: s.durable,
            members: s.members,
            lag: s.lag,
            in_flight: s.in_flight,
            ready: s.ready,
            dead_letter_topic: s.dead_letter_topic,
            dead_letters: s.dead_letters,
            delivered: s.delivered,
            redelivered: s.redelivered,
            acked: s.acked,
            nacked: s.nacked,
            ack_timeouts: s.ack_timeouts,
            dead_lettered: s.dead_lettered,
            expired: s.expired,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_events_name_the_broken_field() {
        let err =
            event_from_json(json!({"topic": "a.b", "headers": {"x": 1}}), "events[3]").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("events[3].headers.x"));
        let err = event_from_json(json!({"topic": "a..b"}), "").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("topic"));
        let err = event_from_json(json!({"topic": "a.b", "colour": "red"}), "").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("colour"));
        let err = event_from_json(json!({"payload": 1}), "").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("topic"));
        assert_eq!(err.message(), "is required");
        let err =
            event_from_json(json!({"topic": "a.b", "colour": "red"}), "events[1]").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("events[1].colour"));
        assert!(
            err.message().contains("expected one of `topic`"),
            "{}",
            err.message()
        );
        let err = event_from_json(json!({"topic": "a.b", "timestamp_ms": "now"}), "").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("timestamp_ms"));
        assert!(err.message().contains("expected u64"), "{}", err.message());
    }

    #[test]
    fn json_payloads_round_trip_inline_and_binary_as_base64() {
        let event = event_from_json(json!({"topic": "a.b", "payload": {"x": [1, 2]}}), "").unwrap();
        assert_eq!(event.content_type, "application/json");
        assert_eq!(event_to_json(&event)["payload"], json!({"x": [1, 2]}));

        let event = event_from_json(
            json!({"topic": "a.b", "payload_base64": "AAEC", "content_type": "application/x-protobuf"}),
            "",
        )
        .unwrap();
        assert_eq!(&event.payload[..], &[0, 1, 2]);
        assert_eq!(event_to_json(&event)["payload_base64"], json!("AAEC"));
    }
}
