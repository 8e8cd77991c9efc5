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
use serde_json::{Value, json};

use super::{
    ApiError, ApiResult, Monitor, Who, field_i32, field_str, field_u64, object_body, path_param,
};
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
    let o = object_body(
        &state,
        body,
        &["holder", "priority", "amount", "wait_ms", "max_hold_ms"],
    )
    .await?;
    let amount = field_u64(&o, "amount")?.unwrap_or(1);
    let holder = optional_str(&o, "holder")?.unwrap_or_default();
    let request = AcquireRequest {
        holder: state.claim(&caller, "holder", &holder)?,
        pool,
        priority: field_i32(&o, "priority")?,
        amount: u32::try_from(amount).map_err(|_| ApiError::invalid("amount", "is too large"))?,
        wait_timeout: Duration::from_millis(field_u64(&o, "wait_ms")?.unwrap_or(0)),
        max_hold: field_u64(&o, "max_hold_ms")?.map(Duration::from_millis),
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
) -> ApiResult<axum::Json<Value>> {
    let id = lease_id(&path_param(id)?)?;
    state.may_touch_lease(&caller, id, "release")?;
    state.coordinator.release(id)?;
    Ok(axum::Json(json!({ "released": true })))
}

/// `POST /api/v1/quotas/{quota}/permits` `{"component", "priority"?, "wait_ms"?}`: a call,
/// or 429 with `Retry-After`.
pub(super) async fn acquire_permit(
    Who(caller): Who,
    Extract(state): Extract<Arc<State>>,
    quota: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<axum::Json<Value>> {
    let quota = path_param(quota)?;
    state.may(&caller, Action::Permit(&quota))?;
    let o = object_body(&state, body, &["component", "priority", "wait_ms"]).await?;
    let component = optional_str(&o, "component")?.unwrap_or_default();
    let component = state.claim(&caller, "component", &component)?;
    // Every field is checked, whether or not this request uses it.
    let priority = field_i32(&o, "priority")?;
    let permit = match field_u64(&o, "wait_ms")? {
        None | Some(0) => state.coordinator.try_permit(&quota, &component)?,
        Some(ms) => {
            let wait = Duration::from_millis(ms);
            (state.coordinator.permit(quota, component, priority, wait)).await?
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

/// Bytes given in a body as JSON under `name`, or as base64 under `name_base64`.
fn bytes_field(o: &serde_json::Map<String, Value>, name: &str) -> ApiResult<Option<bytes::Bytes>> {
    use base64::Engine as _;
    let b64 = format!("{name}_base64");
    match (o.get(name), o.get(&b64)) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            b64,
            format!("give {name} or {name}_base64, not both"),
        )),
        (Some(json), None) => Ok(Some(
            serde_json::to_vec(json)
                .map_err(|e| ApiError::invalid(name, e.to_string()))?
                .into(),
        )),
        (None, Some(Value::String(text))) => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(|b| Some(b.into()))
            .map_err(|e| ApiError::invalid(b64, format!("is not base64: {e}"))),
        (None, Some(_)) => Err(ApiError::invalid(b64, "must be a string")),
        (None, None) => Ok(None),
    }
}

/// Bytes as the API shows them: inline JSON under `name` when they are JSON, else
/// base64 under `name_base64`.
fn bytes_json(out: &mut serde_json::Map<String, Value>, name: &str, bytes: &[u8]) {
    use base64::Engine as _;
    match serde_json::from_slice::<Value>(bytes) {
        Ok(json) => {
            out.insert(name.to_owned(), json);
        }
        Err(_) => {
            out.insert(
                format!("{name}_base64"),
                json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
            );
        }
    }
}

/// An optional string field (absent or null: `None`).
fn optional_str(o: &serde_json::Map<String, Value>, field: &str) -> ApiResult<Option<String>> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => field_str(o, field).map(Some),
    }
}

/// `POST /api/v1/queues/{queue}/requests` `{"request" | "request_base64", "priority"?,
/// "component"?, "idempotency_key"?, "fallback" | "fallback_base64"?}` → `{"request_id"}`.
pub(super) async fn submit_request(
    Who(caller): Who,
    Extract(state): Extract<Arc<State>>,
    queue: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<axum::Json<Value>> {
    let queue = path_param(queue)?;
    state.may(&caller, Action::Submit(&queue))?;
    let o = object_body(
        &state,
        body,
        &[
            "request",
            "request_base64",
            "priority",
            "component",
            "idempotency_key",
            "fallback",
            "fallback_base64",
        ],
    )
    .await?;
    let request = bytes_field(&o, "request")?
        .ok_or_else(|| ApiError::invalid("request", "is required (or request_base64)"))?;
    let component = optional_str(&o, "component")?.unwrap_or_default();
    let submission = ganglion_coordinator::queue::Submission {
        request,
        priority: field_i32(&o, "priority")?,
        component: state.claim(&caller, "component", &component)?,
        idempotency_key: optional_str(&o, "idempotency_key")?,
        fallback: bytes_field(&o, "fallback")?,
    };
    let id = state.coordinator.submit(&queue, submission)?;
    Ok(axum::Json(json!({ "request_id": id.0 })))
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
) -> ApiResult<axum::Json<Value>> {
    let Path((queue, id)) = path.map_err(|e| ApiError::invalid("path", e.body_text()))?;
    let axum::extract::Query(query) =
        query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let id = RequestId(numeric_id(&id, "request id")?);
    state.may_read_response(&caller, &queue, id)?;
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0));
    let mut out = serde_json::Map::new();
    out.insert("request_id".into(), json!(id.0));
    match state.coordinator.response(queue, id, wait).await? {
        None => {
            out.insert("ready".into(), json!(false));
        }
        Some(outcome) => {
            out.insert("ready".into(), json!(true));
            out.insert("cached".into(), json!(outcome.cached));
            out.insert("degraded".into(), json!(outcome.degraded));
            match &outcome.response {
                Ok(body) => bytes_json(&mut out, "response", body),
                Err(error) => {
                    out.insert("error".into(), json!(error));
                }
            }
        }
    }
    Ok(axum::Json(Value::Object(out)))
}

/// `POST /api/v1/queues/{queue}/take` `{"worker", "wait_ms"?}` → `{"taken": false}` or
/// `{"taken": true, "request_id", "priority", "component", "request" | "request_base64"}`.
pub(super) async fn take_request(
    Who(caller): Who,
    Extract(state): Extract<Arc<State>>,
    queue: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<axum::Json<Value>> {
    let queue = path_param(queue)?;
    state.may(&caller, Action::Work(&queue))?;
    let o = object_body(&state, body, &["worker", "wait_ms"]).await?;
    let worker = optional_str(&o, "worker")?.unwrap_or_default();
    let worker = state.claim(&caller, "worker", &worker)?;
    let wait = Duration::from_millis(field_u64(&o, "wait_ms")?.unwrap_or(0));
    let mut out = serde_json::Map::new();
    match state.coordinator.take(queue, worker, wait).await? {
        None => {
            out.insert("taken".into(), json!(false));
        }
        Some(taken) => {
            out.insert("taken".into(), json!(true));
            out.insert("request_id".into(), json!(taken.id.0));
            out.insert("priority".into(), json!(taken.priority));
            out.insert("component".into(), json!(taken.component));
            bytes_json(&mut out, "request", &taken.request);
        }
    }
    Ok(axum::Json(Value::Object(out)))
}

/// `POST /api/v1/queues/{queue}/requests/{id}/complete` `{"response" |
/// "response_base64" | "error"}` → `{"completed": true}`.
pub(super) async fn complete_request(
    Who(caller): Who,
    Extract(state): Extract<Arc<State>>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> ApiResult<axum::Json<Value>> {
    let Path((name, id)) = path.map_err(|e| ApiError::invalid("path", e.body_text()))?;
    let id = RequestId(numeric_id(&id, "request id")?);
    state.may_complete(&caller, &name, id)?;
    let o = object_body(&state, body, &["response", "response_base64", "error"]).await?;
    let result = match (bytes_field(&o, "response")?, o.get("error")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "error",
                "give a response or an error, not both",
            ));
        }
        (Some(body), None) => Ok(body),
        (None, Some(_)) => Err(field_str(&o, "error")?),
        (None, None) => Ok(bytes::Bytes::new()),
    };
    state.coordinator.complete(&name, id, result)?;
    Ok(axum::Json(json!({ "completed": true })))
}

/// A lease as the HTTP API shows it.
pub(crate) fn lease_json(lease: &Lease) -> serde_json::Value {
    ganglion_proto::json::lease_to_json(&crate::grpc::coordinator::lease_to_wire(lease))
}

/// `GET /api/v1/resources`, from the same status the gRPC `Status` returns.
pub(crate) fn status_json(c: &dyn ResourceCoordinator) -> serde_json::Value {
    ganglion_proto::json::status_to_json(&status_of(&c.status()))
}
