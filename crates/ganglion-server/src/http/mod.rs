//! The JSON HTTP API. Handlers parse, call the bus, and answer; every error is
//! `{"error": {"code", "message", "field"?}}` with its status (400, 401, 403, 404, 413,
//! 429, 503). Every route but health needs credentials when identities are configured
//! (see [`crate::auth`]).
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
//! | `GET /api/v1/resources` | pools, quotas, queues, breakers |
//! | `POST /api/v1/resources/{pool}/acquire`, `/api/v1/leases/{id}/renew` and `/release` | leases |
//! | `POST /api/v1/quotas/{quota}/permits` | a call, or 429 with `Retry-After` |
//! | `POST /api/v1/queues/{queue}/requests`, `GET …/requests/{id}`, `POST …/take`, `POST …/requests/{id}/complete` | the request queue |
//! | `GET /api/v1/metrics` | JSON summary |
//! | `GET /metrics` | Prometheus text |
//!
//! Payloads: a JSON `payload` is published as `application/json`; `payload_base64` with
//! a `content_type` carries anything else. Responses inline JSON payloads and give other
//! payloads as `payload_base64`.

pub(crate) mod coordinator;
mod events;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::extract::State as Extract;
use axum::extract::rejection::PathRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ganglion_core::bus::ErrorCode;
use ganglion_core::{BusError, Pattern};
use serde_json::{Value, json};

use crate::State;
use coordinator::*;
use events::*;
use ganglion_coordinator::CoordinatorError;

pub(crate) use events::SubscriptionJson;
pub use events::{event_to_json, events_from_json};

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
        .route("/api/v1/queues/{queue}/requests", post(submit_request))
        .route(
            "/api/v1/queues/{queue}/requests/{id}",
            get(request_response),
        )
        .route(
            "/api/v1/queues/{queue}/requests/{id}/complete",
            post(complete_request),
        )
        .route("/api/v1/queues/{queue}/take", post(take_request))
        .route("/metrics", get(metrics_prometheus))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::authenticate,
        ))
        .with_state(state)
}

/// The routes a connection let in over the caps (from the reserve) is served: health
/// and the Prometheus scrape, and a 429 for the rest.
fn health_only_router(state: Arc<State>) -> Router {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/metrics", get(metrics_prometheus))
        .fallback(too_many_connections)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::authenticate,
        ))
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
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<()> {
    use crate::conn::{Admission, Transport};
    let (all, health_only) = (router(state.clone()), health_only_router(state.clone()));
    // Each connection task holds a sender; all gone: all served.
    let (open, mut drained) = tokio::sync::mpsc::channel::<()>(1);
    let mut stopped = std::pin::pin!(state.stopped());
    while let Some((stream, peer)) =
        crate::conn::accept(&listener, stopped.as_mut(), Transport::Http).await
    {
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
        let (tls, connections) = (tls.clone(), connections.clone());
        tokio::spawn(async move {
            if let Some((io, peer)) = crate::conn::secure(stream, tls.as_ref(), &connections).await
            {
                crate::conn::serve_http1(io, peer, service, guard, stopped).await;
            }
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
pub(crate) struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    /// What the body's `code` says: the code's name, or `TOO_LARGE` for a 413.
    label: &'static str,
    message: String,
    field: Option<String>,
    retry_after: Option<Duration>,
}

/// The one mapping of a stable error code to an HTTP status.
fn http_status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorCode::Stale => StatusCode::CONFLICT,
        // A wait for a lease, a permit or a request ran out: try again later.
        ErrorCode::DeadlineExceeded => StatusCode::TOO_MANY_REQUESTS,
    }
}

impl ApiError {
    fn new(
        code: ErrorCode,
        message: String,
        field: Option<String>,
        retry_after: Option<Duration>,
    ) -> ApiError {
        ApiError {
            status: http_status(code),
            code,
            label: code.as_str(),
            message,
            field,
            retry_after,
        }
    }

    /// 413: counted as a bad argument, labelled `TOO_LARGE`.
    fn too_large(message: String, field: Option<String>) -> ApiError {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            label: "TOO_LARGE",
            ..ApiError::new(ErrorCode::InvalidArgument, message, field, None)
        }
    }

    /// The stable code a refusal is counted under (a 413 is a bad argument).
    pub(crate) fn error_code(&self) -> ErrorCode {
        self.code
    }

    pub(crate) fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::from(BusError::invalid(field.into(), message.into()))
    }
}

impl From<BusError> for ApiError {
    fn from(error: BusError) -> ApiError {
        let message = match &error {
            BusError::InvalidArgument { message, .. } => message.clone(),
            BusError::TooLarge { size, limit, .. } => {
                format!("the event is {size} bytes; at most {limit} are allowed")
            }
            BusError::Internal(detail) => {
                tracing::error!(%detail, "internal error answering an HTTP request");
                "internal error".to_owned()
            }
            BusError::Unauthenticated(m) | BusError::PermissionDenied(m) => m.clone(),
            other => other.to_string(),
        };
        let retry_after = match error {
            BusError::ResourceExhausted { retry_after, .. } => Some(retry_after),
            _ => None,
        };
        let field = error.field().map(str::to_owned);
        if matches!(error, BusError::TooLarge { .. }) {
            return ApiError::too_large(message, field);
        }
        ApiError::new(error.code(), message, field, retry_after)
    }
}

impl From<CoordinatorError> for ApiError {
    fn from(error: CoordinatorError) -> ApiError {
        let message = match &error {
            CoordinatorError::InvalidArgument { message, .. } => message.clone(),
            other => other.to_string(),
        };
        ApiError::new(
            error.code(),
            message,
            error.field().map(str::to_owned),
            error.retry_after(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.label, "message": self.message });
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

pub(crate) type ApiResult<T> = Result<T, ApiError>;

async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        ..ApiError::invalid("method", "this route does not take that method")
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

/// The caller of a request, as the authentication middleware found it.
pub(crate) struct Who(pub(crate) crate::auth::Caller);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Who {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Who, ApiError> {
        parts
            .extensions
            .get::<crate::auth::Caller>()
            .cloned()
            .map(Who)
            .ok_or_else(|| {
                ApiError::from(BusError::Unauthenticated(
                    "the request was not authenticated".to_owned(),
                ))
            })
    }
}

/// A caller allowed the read-only views (`monitor`); refuses the rest with 403.
pub(crate) struct Monitor;

impl axum::extract::FromRequestParts<Arc<State>> for Monitor {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Arc<State>,
    ) -> Result<Monitor, ApiError> {
        let Who(caller) = Who::from_request_parts(parts, state).await?;
        state.may(&caller, crate::auth::Action::Monitor)?;
        Ok(Monitor)
    }
}

/// `field` under `at` (`events[2].topic`), or `field` alone at the top.
pub(crate) fn field_at(at: &str, field: &str) -> String {
    match (at.is_empty(), field.is_empty()) {
        (true, _) => field.to_owned(),
        (false, true) => at.to_owned(),
        (false, false) => format!("{at}.{field}"),
    }
}

/// `value` as a request type (serde-derived), or an error naming the field (under
/// `at`) and saying what was expected: a missing field "is required", an unknown one
/// lists those there are, a wrong type says which it should be.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(value: Value, at: &str) -> ApiResult<T> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let message = error.into_inner().to_string();
        let named = |prefix: &str| {
            let rest = message.strip_prefix(prefix)?;
            let (field, after) = rest.split_once('`')?;
            Some((field.to_owned(), after.trim_start_matches(", ").to_owned()))
        };
        let parent = field_at(at, &path);
        if let Some((field, _)) = named("missing field `") {
            ApiError::invalid(field_at(&parent, &field), "is required")
        } else if let Some((field, expected)) = named("unknown field `") {
            let path = path
                .strip_suffix(&field)
                .unwrap_or(&path)
                .trim_end_matches('.');
            ApiError::invalid(
                field_at(&field_at(at, path), &field),
                format!("is not a field here ({expected})"),
            )
        } else {
            ApiError::invalid(parent, message)
        }
    })
}

/// Reads the body up to the limit (413 beyond it) and parses it as JSON.
pub(crate) async fn json_body(state: &State, body: Body) -> ApiResult<Value> {
    let limit = state.limits.max_http_body_bytes;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::too_large(
            format!("the request body is larger than {limit} bytes"),
            None,
        )
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid("body", format!("is not valid JSON: {e}")))
}

async fn metrics_json(_: Monitor, Extract(state): Extract<Arc<State>>) -> axum::Json<Value> {
    axum::Json(crate::metrics::summary(&state))
}

async fn metrics_prometheus(_: Monitor, Extract(state): Extract<Arc<State>>) -> Response {
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

/// A JSON request body as `T` (a serde type that denies unknown fields): an error names
/// the field that is missing, unknown or of the wrong type.
pub(crate) async fn typed_body<T: serde::de::DeserializeOwned>(
    state: &State,
    body: Body,
) -> ApiResult<T> {
    let value = json_body(state, body).await?;
    if !value.is_object() {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    }
    from_json(value, "")
}

/// A path parameter, or a JSON error naming the path when it is not one.
pub(crate) fn path_param(param: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    param
        .map(|Path(value)| value)
        .map_err(|e| ApiError::invalid("path", e.body_text()))
}

pub(crate) fn pattern_param(pattern: Option<String>) -> Result<Pattern, BusError> {
    let pattern = pattern.unwrap_or_else(|| ">".to_owned());
    Pattern::new(&pattern).map_err(|e| BusError::invalid("pattern", e))
}
