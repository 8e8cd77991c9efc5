//! The JSON forms the HTTP API answers with and the CLI prints (`--output json`): one
//! rendering of each, so the two never drift apart.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ganglion_core::Event;
use serde_json::{Value, json};

use crate::v1;

/// An event: JSON payloads (`application/json`, `*+json`) inline as `payload`,
/// anything else as `payload_base64`.
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

/// A lease, with its pool, units and fencing token, times in Unix milliseconds.
pub fn lease_to_json(lease: &v1::Lease) -> Value {
    json!({
        "id": lease.id,
        "pool": lease.pool,
        "holder": lease.holder,
        "units": lease.units,
        "cuda_visible_devices": (!lease.cuda_visible_devices.is_empty())
            .then_some(&lease.cuda_visible_devices),
        "fencing_token": lease.fencing_token,
        "granted_at_ms": lease.granted_at_ms,
        "expires_at_ms": lease.expires_at_ms,
        "max_hold_until_ms": lease.max_hold_until_ms,
    })
}

/// The coordinator's status: pools with their holders, quotas, queues, breakers.
pub fn status_to_json(status: &v1::StatusResponse) -> Value {
    json!({
        "pools": status.pools.iter().map(|p| json!({
            "name": p.name, "capacity": p.capacity, "free": p.free, "waiters": p.waiters,
            "holders": p.holders.iter().map(lease_to_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "quotas": status.quotas.iter().map(|q| json!({
            "name": q.name, "limit": q.limit, "window_ms": q.window_ms, "used": q.used,
            "remaining": q.remaining, "near_limit": q.near_limit,
            "suspended_for_ms": q.suspended_for_ms, "waiters": q.waiters,
            "by_component": q.by_component,
        })).collect::<Vec<_>>(),
        "queues": status.queues.iter()
            .map(|q| json!({"name": q.name, "quota": q.quota, "depth": q.depth}))
            .collect::<Vec<_>>(),
        "breakers": status.breakers.iter()
            .map(|b| json!({"name": b.name, "state": b.state}))
            .collect::<Vec<_>>(),
    })
}
