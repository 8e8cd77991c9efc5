//! The coordinator routes: resources, leases, permits and request queues.

use crate::grpc::coordinator::status_of;
use ganglion_coordinator::lease::Lease;
use ganglion_coordinator::{LeaseId, RequestId, ResourceCoordinator};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State as Extract};
use ganglion_coordinator::lease::AcquireRequest;
use serde_json::Value;

use super::{ApiError, ApiResult, Monitor, Who, path_param, typed_body};
use crate::State;
use crate::auth::Action;

/// `GET /api/v1/resources`: pools with holders and waiters, quotas used and remaining,
/// queues, breakers.
pub(super) async fn resources(
    _: Monitor,
    Extract(state): Extract<Arc<State>>,
) -> axum::Json<Value> {
    axum::Json(status_json(state.coordinator.as_ref()))
}

/// `POST /api/v1/resources/{pool}/acquire`: absent and `null` fields take their
/// defaults.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AcquireBody {
    holder: Option<String>,
    priority: Option<i32>,
    amount: Option<u32>,
    wait_ms: Option<u64>,
    max_hold_ms: Option<u64>,
}

/// `POST /api/v1/resources/{pool}/acquire` `{"holder", "priority"?, "amount"?, "wait_ms"?,
/// "max_hold_ms"?}`: a lease to renew within its TTL and release.
pub(super) async fn acquire_lease(
    Who(caller): Who,
    Extract(state): Extract<Arc<State>>,
    pool: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<axum::Json<Value>> {
    let pool = path_param(pool)?;
    state.may(&caller, Action::Lease(&pool))?;
    let b: AcquireBody = typed_body(&state, body).await?;
    let request = AcquireRequest {
        holder: state.claim(&caller, "holder", &b.holder.unwrap_or_default())?,
        pool,
        priority: b.priority.unwrap_or(0),
        amount: b.amount.unwrap_or(1),
        wait_timeout: Duration::from_millis(b.wait_ms.unwrap_or(0)),
        max_hold: b.max_hold_ms.map(Duration::from_millis),
    };
    let lease = state.coordinator.acquire(request).await?;
    Ok(axum::Json(lease_json(&lease)))
}

fn lease_id(id: &str) -> ApiResult<LeaseId> {
    numeric_id(id, "lease id").map(LeaseId)
}

/// An id in a path: digits only (`+1` parses as a number, and is not an id).
fn numeric_id(id: &str, what: &str) -> ApiResult<u64> {
    Some(id)
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| {
            ApiError::invalid(
                "id",
                format!("{} is not a {what}", ganglion_core::excerpt(id)),
            )
        })
}

pub(super) async fn renew_lease(
    Who(caller): Who,
    Extract(state): Extract<Arc<State>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<axum::Json<Value>> {
    let id = lease_id(&path_param(id)?)?;
    state.may_touch_lease(&caller, id, "renew")?;
    let lease = state.coordinator.renew(id)?;
    Ok(axum::Json(lease_json(&lease)))
}

pub(super) async fn release_lease(
    Who(caller): Who,
    Extract(state): Extract<Arc<State>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<axum::Json<Done>> {
    let id = lease_id(&path_param(id)?)?;
    state.may_touch_lease(&caller, id, "release")?;
    state.coordinator.release(id)?;
    Ok(axum::Json(Done::Released { released: true }))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PermitBody {
    component: Option<String>,
    priority: Option<i32>,
    wait_ms: Option<u64>,
}

/// `POST /api/v1/quotas/{quota}/permits` `{"component", "priority"?, "wait_ms"?}`: a call,
/// or 429 with `Retry-After`.
pub(super) async fn acquire_permit(
    Who(caller): Who,
    Extract(state): Extract<Arc<State>>,
    quota: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<axum::Json<PermitJson>> {
    let quota = path_param(quota)?;
    state.may(&caller, Action::Permit(&quota))?;
    // Every field is checked, whether or not this request uses it.
    let b: PermitBody = typed_body(&state, body).await?;
    let component = state.claim(&caller, "component", &b.component.unwrap_or_default())?;
    let priority = b.priority.unwrap_or(0);
    let permit = match b.wait_ms {
        None | Some(0) => state.coordinator.try_permit(&quota, &component)?,
        Some(ms) => {
            let wait = Duration::from_millis(ms);
            (state.coordinator.permit(quota, component, priority, wait)).await?
        }
    };
    Ok(axum::Json(PermitJson {
        quota: permit.quota,
        component: permit.component,
        granted_at_ms: permit.granted_at_micros / 1000,
        used: permit.used,
        remaining: permit.remaining,
    }))
}

/// A permit, as `POST /api/v1/quotas/{quota}/permits` answers.
#[derive(Debug, serde::Serialize)]
pub(super) struct PermitJson {
    quota: String,
    component: String,
    granted_at_ms: u64,
    used: u32,
    remaining: u32,
}

/// Bytes given in a body as JSON under `name` (`json`), or as base64 under
/// `name_base64` (`b64`).
fn bytes_field(
    name: &str,
    json: Option<Value>,
    b64: Option<String>,
) -> ApiResult<Option<bytes::Bytes>> {
    use base64::Engine as _;
    let b64_name = format!("{name}_base64");
    match (json, b64) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            b64_name,
            format!("give {name} or {name}_base64, not both"),
        )),
        (Some(json), None) => Ok(Some(
            serde_json::to_vec(&json)
                .map_err(|e| ApiError::invalid(name, e.to_string()))?
                .into(),
        )),
        (None, Some(text)) => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(|b| Some(b.into()))
            .map_err(|e| ApiError::invalid(b64_name, format!("is not base64: {e}"))),
        (None, None) => Ok(None),
    }
}

/// What `POST /api/v1/queues/{queue}/requests` answers.
#[derive(Debug, serde::Serialize)]
pub(super) struct SubmittedJson {
    request_id: u64,
}

/// What a release or a completion answers: `{"released": true}`, `{"completed": true}`.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub(super) enum Done {
    Released { released: bool },
    Completed { completed: bool },
}

/// Bytes as the API shows them: inline JSON when they are JSON (the first), else base64
/// (the second, under `<name>_base64`).
fn inline(bytes: &[u8]) -> (Option<Value>, Option<String>) {
    use base64::Engine as _;
    match serde_json::from_slice::<Value>(bytes) {
        Ok(json) => (Some(json), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

/// The answer to `GET /api/v1/queues/{queue}/requests/{id}`.
#[derive(Debug, Default, serde::Serialize)]
pub(super) struct AnswerJson {
    request_id: u64,
    ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cached: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    degraded: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The answer to `POST /api/v1/queues/{queue}/take`.
#[derive(Debug, Default, serde::Serialize)]
pub(super) struct TakenJson {
    taken: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    component: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_base64: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    /// Any JSON; `null` counts as given (a request of `null`).
    #[serde(default, deserialize_with = "present")]
    request: Option<Value>,
    request_base64: Option<String>,
    priority: Option<i32>,
    component: Option<String>,
    idempotency_key: Option<String>,
    #[serde(default, deserialize_with = "present")]
    fallback: Option<Value>,
    fallback_base64: Option<String>,
}

/// A field that, once present, is `Some` even when it is `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    serde::Deserialize::deserialize(d).map(Some)
}

/// `POST /api/v1/queues/{queue}/requests` `{"request" | "request_base64", "priority"?,
/// "component"?, "idempotency_key"?, "fallback" | "fallback_base64"?}` → `{"request_id"}`.
pub(super) async fn submit_request(
    Who(caller): Who,
    Extract(state): Extract<Arc<State>>,
    queue: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<axum::Json<SubmittedJson>> {
    let queue = path_param(queue)?;
    state.may(&caller, Action::Submit(&queue))?;
    let b: SubmitBody = typed_body(&state, body).await?;
    let request = bytes_field("request", b.request, b.request_base64)?
        .ok_or_else(|| ApiError::invalid("request", "is required (or request_base64)"))?;
    let submission = ganglion_coordinator::queue::Submission {
        request,
        priority: b.priority.unwrap_or(0),
        component: state.claim(&caller, "component", &b.component.unwrap_or_default())?,
        idempotency_key: b.idempotency_key,
        fallback: bytes_field("fallback", b.fallback, b.fallback_base64)?,
    };
    let id = state.coordinator.submit(&queue, submission)?;
    Ok(axum::Json(SubmittedJson { request_id: id.0 }))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WaitQuery {
    wait_ms: Option<u64>,
}

/// `GET /api/v1/queues/{queue}/requests/{id}?wait_ms=` → `{"request_id", "ready",
/// "response" | "response_base64" | "error", "cached", "degraded"}`.
pub(super) async fn request_response(
    Who(caller): Who,
    Extract(state): Extract<Arc<State>>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<axum::extract::Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<AnswerJson>> {
    let Path((queue, id)) = path.map_err(|e| ApiError::invalid("path", e.body_text()))?;
    let axum::extract::Query(query) =
        query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let id = RequestId(numeric_id(&id, "request id")?);
    state.may_read_response(&caller, &queue, id)?;
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0));
    let answer = match state.coordinator.response(queue, id, wait).await? {
        None => AnswerJson::default(),
        Some(outcome) => {
            let ((response, response_base64), error) = match outcome.response {
                Ok(body) => (inline(&body), None),
                Err(error) => ((None, None), Some(error)),
            };
            AnswerJson {
                ready: true,
                cached: Some(outcome.cached),
                degraded: Some(outcome.degraded),
                response,
                response_base64,
                error,
                ..AnswerJson::default()
            }
        }
    };
    Ok(axum::Json(AnswerJson {
        request_id: id.0,
        ..answer
    }))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TakeBody {
    worker: Option<String>,
    wait_ms: Option<u64>,
}

/// `POST /api/v1/queues/{queue}/take` `{"worker", "wait_ms"?}` → `{"taken": false}` or
/// `{"taken": true, "request_id", "priority", "component", "request" | "request_base64"}`.
pub(super) async fn take_request(
    Who(caller): Who,
    Extract(state): Extract<Arc<State>>,
    queue: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<axum::Json<TakenJson>> {
    let queue = path_param(queue)?;
    state.may(&caller, Action::Work(&queue))?;
    let b: TakeBody = typed_body(&state, body).await?;
    let worker = state.claim(&caller, "worker", &b.worker.unwrap_or_default())?;
    let wait = Duration::from_millis(b.wait_ms.unwrap_or(0));
    let taken = match state.coordinator.take(queue, worker, wait).await? {
        None => TakenJson::default(),
        Some(taken) => {
            let (request, request_base64) = inline(&taken.request);
            TakenJson {
                taken: true,
                request_id: Some(taken.id.0),
                priority: Some(taken.priority),
                component: Some(taken.component),
                request,
                request_base64,
            }
        }
    };
    Ok(axum::Json(taken))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteBody {
    #[serde(default, deserialize_with = "present")]
    response: Option<Value>,
    response_base64: Option<String>,
    error: Option<String>,
}

/// `POST /api/v1/queues/{queue}/requests/{id}/complete` `{"response" |
/// "response_base64" | "error"}` → `{"completed": true}`.
pub(super) async fn complete_request(
    Who(caller): Who,
    Extract(state): Extract<Arc<State>>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> ApiResult<axum::Json<Done>> {
    let Path((name, id)) = path.map_err(|e| ApiError::invalid("path", e.body_text()))?;
    let id = RequestId(numeric_id(&id, "request id")?);
    state.may_complete(&caller, &name, id)?;
    let b: CompleteBody = typed_body(&state, body).await?;
    let result = match (
        bytes_field("response", b.response, b.response_base64)?,
        b.error,
    ) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "error",
                "give a response or an error, not both",
            ));
        }
        (Some(body), None) => Ok(body),
        (None, Some(error)) => Err(error),
        (None, None) => Ok(bytes::Bytes::new()),
    };
    state.coordinator.complete(&name, id, result)?;
    Ok(axum::Json(Done::Completed { completed: true }))
}

/// A lease as the HTTP API shows it.
pub(crate) fn lease_json(lease: &Lease) -> serde_json::Value {
    ganglion_proto::json::lease_to_json(&crate::grpc::coordinator::lease_to_wire(lease))
}

/// `GET /api/v1/resources`, from the same status the gRPC `Status` returns.
pub(crate) fn status_json(c: &dyn ResourceCoordinator) -> serde_json::Value {
    ganglion_proto::json::status_to_json(&status_of(&c.status()))
}
