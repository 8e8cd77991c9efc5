//! The JSON HTTP API. Handlers parse, call the bus, and answer; every error is
//! `{"error": {"code", "message", "field"?}}` with its status (400, 404, 413, 429, 503).
//!
//! | route | does |
//! |---|---|
//! | `GET /api/v1/health` | 200 `{"status":"ok","components":{…}}`; 503 while appends or grants are refused (a failed log, a full disk) or the server stops |
//! | `POST /api/v1/events` | one event `{"topic","payload",…}` → `{"seq","id","duplicate"}`; `{"events":[…]}` → `{"acks":[…]}` |
//! | `GET /api/v1/events?pattern=&from_seq=&since=&limit=` | replay |
//! | `GET /api/v1/stream?pattern=` | live events as Server-Sent Events |
//! | `GET /api/v1/topics` | topics with counts |
//! | `POST /api/v1/topics/purge` | `{"pattern"}`: expire the matching topics' events |
//! | `POST /api/v1/topics/delete` | `{"pattern"}`: purge and forget the matching topics |
//! | `GET /api/v1/subscriptions` | every subscription, connected or not |
//! | `GET /api/v1/metrics` | JSON summary |
//! | `GET /metrics` | Prometheus text |
//!
//! Payloads: a JSON `payload` is published as `application/json`; `payload_base64` with
//! a `content_type` carries anything else. Responses inline JSON payloads and give other
//! payloads as `payload_base64`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::extract::{Query, State as Extract};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures_util::Stream;
use ganglion_core::bus::{
    AckMode, ErrorCode, EventBus, REPLAY_PAGE_BYTES, StartPosition, StorageClass, SubscribeOptions,
};
use ganglion_core::{BusError, Event, Pattern, Topic, parse_since};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::State;
use crate::grpc::replay_limit;
use ganglion_coordinator::CoordinatorError;
use ganglion_coordinator::lease::AcquireRequest;

/// The HTTP API over `state`.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/events", get(replay).post(publish))
        .route("/api/v1/stream", get(stream))
        .route("/api/v1/topics", get(topics))
        .route("/api/v1/topics/purge", post(purge_topics))
        .route("/api/v1/topics/delete", post(delete_topics))
        .route("/api/v1/subscriptions", get(subscriptions))
        .route("/api/v1/metrics", get(metrics_json))
        .route("/api/v1/resources", get(resources))
        .route("/api/v1/resources/{pool}/acquire", post(acquire_lease))
        .route("/api/v1/leases/{id}/renew", post(renew_lease))
        .route("/api/v1/leases/{id}/release", post(release_lease))
        .route("/api/v1/quotas/{quota}/permits", post(acquire_permit))
        .route("/metrics", get(metrics_prometheus))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// The routes a connection let in over the caps (from the reserve) is served: health
/// and the Prometheus scrape, and a 429 for the rest.
fn health_only_router(state: Arc<State>) -> Router {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/metrics", get(metrics_prometheus))
        .fallback(too_many_connections)
        .with_state(state)
}

async fn too_many_connections() -> ApiError {
    ApiError::from(BusError::ResourceExhausted {
        what: "every connection is busy; this one serves health checks and /metrics only"
            .to_owned(),
        retry_after: Duration::from_secs(1),
    })
}

/// Serves the HTTP API on `listener` until the state says stop, then waits for open
/// connections to finish (streams end at shutdown). Connections are let in, timed out
/// and closed by [`Connections`](crate::conn::Connections).
pub(crate) async fn serve(
    state: Arc<State>,
    listener: tokio::net::TcpListener,
    connections: Arc<crate::conn::Connections>,
) -> std::io::Result<()> {
    use crate::conn::{Admission, Transport};
    let (all, health_only) = (router(state.clone()), health_only_router(state.clone()));
    // Each connection task holds a sender; all gone: all served.
    let (open, mut drained) = tokio::sync::mpsc::channel::<()>(1);
    let mut stopped = std::pin::pin!(state.stopped());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stopped => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting an HTTP connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (guard, service) = match connections.admit(peer, Transport::Http) {
            Admission::Served(guard) => (guard, all.clone()),
            Admission::HealthOnly(guard) => (guard, health_only.clone()),
            Admission::Refused => {
                tokio::spawn(crate::conn::refuse_http(stream));
                continue;
            }
        };
        let (open, stopped) = (open.clone(), state.stopped());
        tokio::spawn(async move {
            crate::conn::serve_http1(stream, service, guard, stopped).await;
            drop(open);
        });
    }
    drop(listener);
    drop(open);
    let _ = drained.recv().await;
    Ok(())
}

/// An error as the API answers it.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    retry_after: Option<Duration>,
}

impl ApiError {
    /// The stable code a refusal is counted under (a 413 is a bad argument).
    fn error_code(&self) -> ErrorCode {
        match self.status {
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::InvalidArgument,
            StatusCode::NOT_FOUND => ErrorCode::NotFound,
            StatusCode::TOO_MANY_REQUESTS => ErrorCode::ResourceExhausted,
            StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }

    fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::from(BusError::invalid(field.into(), message.into()))
    }
}

impl From<BusError> for ApiError {
    fn from(error: BusError) -> ApiError {
        let status = match &error {
            BusError::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
            BusError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BusError::NotFound { .. } => StatusCode::NOT_FOUND,
            BusError::ResourceExhausted { .. } => StatusCode::TOO_MANY_REQUESTS,
            BusError::Unavailable(_) | BusError::Closed => StatusCode::SERVICE_UNAVAILABLE,
            BusError::Internal(detail) => {
                tracing::error!(%detail, "internal error answering an HTTP request");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let message = match &error {
            BusError::InvalidArgument { message, .. } => message.clone(),
            BusError::TooLarge { size, limit, .. } => {
                format!("the event is {size} bytes; at most {limit} are allowed")
            }
            BusError::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        };
        ApiError {
            status,
            code: if matches!(error, BusError::TooLarge { .. }) {
                "TOO_LARGE"
            } else {
                error.code().as_str()
            },
            message,
            field: error.field().map(str::to_owned),
            retry_after: match error {
                BusError::ResourceExhausted { retry_after, .. } => Some(retry_after),
                _ => None,
            },
        }
    }
}

impl From<CoordinatorError> for ApiError {
    fn from(error: CoordinatorError) -> ApiError {
        let (status, code) = match &error {
            CoordinatorError::InvalidArgument { .. } => {
                (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT")
            }
            CoordinatorError::NotFound { .. } => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            CoordinatorError::ResourceExhausted { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED")
            }
            CoordinatorError::DeadlineExceeded(_) => {
                (StatusCode::TOO_MANY_REQUESTS, "DEADLINE_EXCEEDED")
            }
            CoordinatorError::Stale(_) => (StatusCode::CONFLICT, "STALE"),
            CoordinatorError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        };
        ApiError {
            status,
            code,
            message: match &error {
                CoordinatorError::InvalidArgument { message, .. } => message.clone(),
                other => other.to_string(),
            },
            field: match &error {
                CoordinatorError::InvalidArgument { field, .. } => Some(field.clone()),
                _ => None,
            },
            retry_after: match error {
                CoordinatorError::ResourceExhausted { retry_after, .. } => Some(retry_after),
                _ => None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(field) = self.field {
            error["field"] = json!(field);
        }
        let mut response = (self.status, axum::Json(json!({ "error": error }))).into_response();
        if let Some(after) = self.retry_after {
            let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "INVALID_ARGUMENT",
        message: "this route does not take that method".to_owned(),
        field: Some("method".to_owned()),
        retry_after: None,
    }
}

async fn not_found() -> ApiError {
    ApiError::from(BusError::NotFound {
        what: "route".to_owned(),
    })
}

async fn health(Extract(state): Extract<Arc<State>>) -> Response {
    let (ok, body) = state.health();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// Reads the body up to the limit (413 beyond it) and parses it as JSON.
async fn json_body(state: &State, body: Body) -> ApiResult<Value> {
    let limit = state.limits.max_http_body_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "TOO_LARGE",
            message: format!("the request body is larger than {limit} bytes"),
            field: None,
            retry_after: None,
        })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid("body", format!("is not valid JSON: {e}")))
}

async fn publish(Extract(state): Extract<Arc<State>>, body: Body) -> Response {
    match publish_inner(&state, body).await {
        Ok(body) => (StatusCode::OK, axum::Json(body)).into_response(),
        Err(e) => {
            state.metrics.refused_code(e.error_code());
            e.into_response()
        }
    }
}

async fn publish_inner(state: &State, body: Body) -> ApiResult<Value> {
    let body = json_body(state, body).await?;
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
    let count = events.len() as u64;
    let started = std::time::Instant::now();
    let acks = state.bus.publish_batch(events).await.map_err(|e| {
        // The bus names fields `events[i].x`; a single-event body has no `events`.
        let e = if batch { e } else { strip_batch_prefix(e) };
        ApiError::from(e)
    })?;
    state.metrics.published(count, started.elapsed());
    let acks: Vec<Value> = acks
        .into_iter()
        .map(|a| json!({ "seq": a.seq, "id": a.id.to_string(), "duplicate": a.duplicate }))
        .collect();
    Ok(if batch {
        json!({ "acks": acks })
    } else {
        acks.into_iter().next().unwrap_or(Value::Null)
    })
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

/// One event from its JSON form; `at` prefixes field names (`events[2]`).
fn event_from_json(value: Value, at: &str) -> ApiResult<Event> {
    let name = |field: &str| {
        if at.is_empty() {
            field.to_owned()
        } else {
            format!("{at}.{field}")
        }
    };
    let Value::Object(object) = value else {
        return Err(ApiError::invalid(
            if at.is_empty() { "body" } else { at },
            "must be an object",
        ));
    };
    let string = |object: &Map<String, Value>, field: &str| -> ApiResult<Option<String>> {
        match object.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::invalid(name(field), "must be a string")),
        }
    };
    for key in object.keys() {
        if !matches!(
            key.as_str(),
            "topic"
                | "payload"
                | "payload_base64"
                | "content_type"
                | "type"
                | "source"
                | "headers"
                | "id"
                | "timestamp_ms"
        ) {
            return Err(ApiError::invalid(
                name(key),
                "is not an event field (expected topic, payload, payload_base64, content_type, type, source, headers, id, timestamp_ms)",
            ));
        }
    }
    let topic =
        string(&object, "topic")?.ok_or_else(|| ApiError::invalid(name("topic"), "is required"))?;
    let topic = Topic::new(&topic).map_err(|e| ApiError::invalid(name("topic"), e.to_string()))?;
    let (payload, content_type) = match (object.get("payload"), object.get("payload_base64")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                name("payload_base64"),
                "give payload or payload_base64, not both",
            ));
        }
        (_, Some(Value::String(b64))) => {
            let bytes = BASE64.decode(b64).map_err(|e| {
                ApiError::invalid(name("payload_base64"), format!("is not base64: {e}"))
            })?;
            let content_type = string(&object, "content_type")?
                .unwrap_or_else(|| "application/octet-stream".to_owned());
            (Bytes::from(bytes), content_type)
        }
        (_, Some(_)) => {
            return Err(ApiError::invalid(
                name("payload_base64"),
                "must be a string",
            ));
        }
        (payload, None) => {
            if let Some(ct) = string(&object, "content_type")?
                && ct != "application/json"
            {
                return Err(ApiError::invalid(
                    name("content_type"),
                    "a JSON payload is application/json; use payload_base64 for other content",
                ));
            }
            let payload = payload.cloned().unwrap_or(Value::Null);
            let bytes = serde_json::to_vec(&payload)
                .map_err(|e| ApiError::invalid(name("payload"), e.to_string()))?;
            (Bytes::from(bytes), "application/json".to_owned())
        }
    };
    let headers = match object.get("headers") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(ApiError::invalid(
                    name(&format!("headers.{k}")),
                    "header values must be strings",
                )),
            })
            .collect::<ApiResult<_>>()?,
        Some(_) => {
            return Err(ApiError::invalid(
                name("headers"),
                "must be an object of strings",
            ));
        }
    };
    let timestamp_ms = match object.get("timestamp_ms") {
        None | Some(Value::Null) => 0,
        Some(v) => v.as_u64().ok_or_else(|| {
            ApiError::invalid(
                name("timestamp_ms"),
                "must be a whole number of milliseconds",
            )
        })?,
    };
    Ok(Event {
        // An absent id is given at publication, one clock read per batch.
        id: string(&object, "id")?.unwrap_or_default().into(),
        topic,
        event_type: string(&object, "type")?.unwrap_or_default(),
        source: string(&object, "source")?.unwrap_or_default(),
        timestamp_ms,
        headers,
        payload,
        content_type,
        seq: 0,
    })
}

/// An event as the HTTP API (and the CLI's `--output json`) shows it: JSON payloads
/// inline as `payload`, anything else as `payload_base64`.
pub fn event_to_json(event: &Event) -> Value {
    let mut value = json!({
        "seq": event.seq,
        "id": event.id.to_string(),
        "topic": event.topic.as_str(),
        "type": event.event_type,
        "source": event.source,
        "timestamp_ms": event.timestamp_ms,
        "headers": event.headers,
        "content_type": event.content_type,
    });
    let json_payload = (event.content_type == "application/json"
        || event.content_type.ends_with("+json"))
    .then(|| serde_json::from_slice::<Value>(&event.payload).ok())
    .flatten();
    match json_payload {
        Some(payload) => value["payload"] = payload,
        None => value["payload_base64"] = json!(BASE64.encode(&event.payload)),
    }
    value
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayQuery {
    pattern: Option<String>,
    from_seq: Option<u64>,
    since: Option<String>,
    limit: Option<usize>,
}

fn pattern_param(pattern: Option<String>) -> Result<Pattern, BusError> {
    let pattern = pattern.unwrap_or_else(|| ">".to_owned());
    Pattern::new(&pattern).map_err(|e| BusError::invalid("pattern", e))
}

async fn replay(
    Extract(state): Extract<Arc<State>>,
    query: Result<Query<ReplayQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(query) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let pattern = pattern_param(query.pattern)?;
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
struct StreamQuery {
    pattern: Option<String>,
}

async fn stream(
    Extract(state): Extract<Arc<State>>,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let Query(query) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let pattern = pattern_param(query.pattern)?;
    let options = SubscribeOptions {
        ack_mode: AckMode::Auto,
        ..SubscribeOptions::default()
    };
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

async fn topics(Extract(state): Extract<Arc<State>>) -> ApiResult<axum::Json<Value>> {
    let topics = state.bus.topics().await?;
    Ok(axum::Json(json!({
        "topics": topics.iter().map(|t| json!({
            "topic": t.topic.as_str(),
            "storage": match t.storage { StorageClass::Durable => "durable", StorageClass::Ephemeral => "ephemeral" },
            "events": t.events,
            "last_seq": t.last_seq,
        })).collect::<Vec<_>>(),
    })))
}

/// `POST /api/v1/topics/purge` `{"pattern"}` → `{"topics", "events"}`.
async fn purge_topics(
    Extract(state): Extract<Arc<State>>,
    body: Body,
) -> ApiResult<axum::Json<Value>> {
    let o = object_body(&state, body, &["pattern"]).await?;
    let pattern = pattern_param(Some(field_str(&o, "pattern")?))?;
    let (_, topics, events) = crate::grpc::purge_topics(&state.bus, pattern, false).await?;
    Ok(axum::Json(json!({ "topics": topics, "events": events })))
}

/// `POST /api/v1/topics/delete` `{"pattern"}` → `{"topics": [...], "events"}`.
async fn delete_topics(
    Extract(state): Extract<Arc<State>>,
    body: Body,
) -> ApiResult<axum::Json<Value>> {
    let o = object_body(&state, body, &["pattern"]).await?;
    let pattern = pattern_param(Some(field_str(&o, "pattern")?))?;
    let (topics, _, events) = crate::grpc::purge_topics(&state.bus, pattern, true).await?;
    Ok(axum::Json(json!({ "topics": topics, "events": events })))
}

/// `GET /api/v1/subscriptions`: every subscription, connected or not.
async fn subscriptions(Extract(state): Extract<Arc<State>>) -> axum::Json<Value> {
    let subscriptions: Vec<Value> = state
        .bus
        .subscriptions()
        .iter()
        .map(subscription_json)
        .collect();
    axum::Json(json!({ "subscriptions": subscriptions }))
}

/// A subscription as the HTTP API shows it (here and in `/api/v1/metrics`).
pub(crate) fn subscription_json(s: &ganglion_bus::SubscriptionStats) -> Value {
    json!({
        "name": s.name,
        "pattern": s.pattern,
        "queue_group": s.queue_group,
        "durable": s.durable,
        "members": s.members,
        "lag": s.lag,
        "in_flight": s.in_flight,
        "ready": s.ready,
        "dead_letter_topic": s.dead_letter_topic,
        "dead_letters": s.dead_letters,
        "delivered": s.delivered,
        "redelivered": s.redelivered,
        "acked": s.acked,
        "nacked": s.nacked,
        "ack_timeouts": s.ack_timeouts,
        "dead_lettered": s.dead_lettered,
        "expired": s.expired,
    })
}

async fn metrics_json(Extract(state): Extract<Arc<State>>) -> axum::Json<Value> {
    axum::Json(crate::metrics::summary(&state))
}

async fn metrics_prometheus(Extract(state): Extract<Arc<State>>) -> Response {
    let topics = state.bus.topics().await.unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        crate::metrics::prometheus(&state, &topics),
    )
        .into_response()
}

/// `GET /api/v1/resources`: pools with holders and waiters, quotas used and remaining,
/// queues, breakers.
async fn resources(Extract(state): Extract<Arc<State>>) -> axum::Json<Value> {
    axum::Json(crate::coordinator::status_json(&state.coordinator))
}

/// A JSON request body as an object, refusing keys outside `allowed`.
async fn object_body(state: &State, body: Body, allowed: &[&str]) -> ApiResult<Map<String, Value>> {
    let Value::Object(object) = json_body(state, body).await? else {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    };
    if let Some(key) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            key.clone(),
            format!("is not a field here (expected {})", allowed.join(", ")),
        ));
    }
    Ok(object)
}

fn field_u64(object: &Map<String, Value>, field: &str) -> ApiResult<Option<u64>> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(field, "must be a whole number")),
    }
}

fn field_i32(object: &Map<String, Value>, field: &str) -> ApiResult<i32> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| ApiError::invalid(field, "must be a whole number")),
    }
}

fn field_str(object: &Map<String, Value>, field: &str) -> ApiResult<String> {
    match object.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Err(ApiError::invalid(field, "is required")),
        Some(_) => Err(ApiError::invalid(field, "must be a string")),
    }
}

/// `POST /api/v1/resources/{pool}/acquire` `{"holder", "priority"?, "amount"?, "wait_ms"?,
/// "max_hold_ms"?}`: a lease to renew within its TTL and release.
async fn acquire_lease(
    Extract(state): Extract<Arc<State>>,
    pool: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<axum::Json<Value>> {
    let pool = path_param(pool)?;
    let o = object_body(
        &state,
        body,
        &["holder", "priority", "amount", "wait_ms", "max_hold_ms"],
    )
    .await?;
    let amount = field_u64(&o, "amount")?.unwrap_or(1);
    let request = AcquireRequest {
        pool,
        holder: field_str(&o, "holder")?,
        priority: field_i32(&o, "priority")?,
        amount: u32::try_from(amount).map_err(|_| ApiError::invalid("amount", "is too large"))?,
        wait_timeout: Duration::from_millis(field_u64(&o, "wait_ms")?.unwrap_or(0)),
        max_hold: field_u64(&o, "max_hold_ms")?.map(Duration::from_millis),
    };
    let lease = state.coordinator.pools().acquire(request).await?;
    Ok(axum::Json(crate::coordinator::lease_json(&lease)))
}

/// A path parameter, or a JSON error naming the path when it is not one.
fn path_param(param: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    param
        .map(|Path(value)| value)
        .map_err(|e| ApiError::invalid("path", e.body_text()))
}

fn lease_id(id: &str) -> ApiResult<u64> {
    // Digits only (`+1` parses as a number, and is not a lease id).
    Some(id)
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| {
            ApiError::invalid(
                "id",
                format!("{} is not a lease id", ganglion_core::excerpt(id)),
            )
        })
}

async fn renew_lease(
    Extract(state): Extract<Arc<State>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<axum::Json<Value>> {
    let id = path_param(id)?;
    let lease = state.coordinator.pools().renew(lease_id(&id)?)?;
    Ok(axum::Json(crate::coordinator::lease_json(&lease)))
}

async fn release_lease(
    Extract(state): Extract<Arc<State>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<axum::Json<Value>> {
    let id = path_param(id)?;
    state.coordinator.pools().release(lease_id(&id)?)?;
    Ok(axum::Json(json!({ "released": true })))
}

/// `POST /api/v1/quotas/{quota}/permits` `{"component", "priority"?, "wait_ms"?}`: a call,
/// or 429 with `Retry-After`.
async fn acquire_permit(
    Extract(state): Extract<Arc<State>>,
    quota: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<axum::Json<Value>> {
    let quota = path_param(quota)?;
    let o = object_body(&state, body, &["component", "priority", "wait_ms"]).await?;
    let quota = state.coordinator.quota(&quota)?.clone();
    let component = field_str(&o, "component")?;
    // Every field is checked, whether or not this request uses it.
    let priority = field_i32(&o, "priority")?;
    let permit = match field_u64(&o, "wait_ms")? {
        None | Some(0) => quota.try_acquire(&component)?,
        Some(ms) => {
            quota
                .acquire(&component, priority, Duration::from_millis(ms))
                .await?
        }
    };
    Ok(axum::Json(json!({
        "quota": permit.quota,
        "component": permit.component,
        "granted_at_ms": permit.granted_at_micros / 1000,
        "used": permit.used,
        "remaining": permit.remaining,
    })))
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
