//! Ganglion's resource coordinator.
//!
//! - [`quota`]: named rate limits that are **exact over every trailing window** (a
//!   sliding log): `100 per 1h` never grants a 101st call within any hour, whatever the
//!   concurrency, and survives restarts.
//! - [`lease`]: resource pools (GPUs, connections) handed out as fenced leases with
//!   priority, aging, TTL reclaim and a maximum hold time.
//! - [`queue`]: a rate-limited request queue with a response cache, single flight and
//!   fallbacks.
//! - [`breaker`]: circuit breakers per dependency (closed, open, half-open).
//!
//! Time comes from an injected [`ganglion_core::Clock`], so an hour of quota behaviour is
//! tested in milliseconds.

mod api;
pub mod breaker;
mod coordinator;
mod ids;
mod journal;
pub mod lease;
pub mod queue;
pub mod quota;

use std::time::Duration;

use ganglion_core::ErrorCode;

pub use api::{BreakerStatus, CoordinatorStatus, QueueStatus, ResourceCoordinator};
pub use coordinator::{Coordinator, CoordinatorConfig, FileStores, QueueSpec, Stores};
pub use ids::{FencingToken, LeaseId, RequestId};

/// Errors of the coordinator, with the bus's stable codes ([`CoordinatorError::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CoordinatorError {
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    /// Not granted now; the earliest a grant could succeed is after `retry_after`.
    #[error("{what}; retry after {} ms", retry_after.as_millis())]
    ResourceExhausted { what: String, retry_after: Duration },
    #[error("{what} not found")]
    NotFound { what: String },
    /// The caller's lease is no longer valid (revoked, expired or released).
    #[error("{0}")]
    Stale(String),
    /// A wait ran out before a grant.
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// The longest a caller may wait for a lease, a permit, a request or a response: a wait
/// holds a place in line and a connection.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

/// Refuses a wait above [`MAX_WAIT`], naming it `wait_ms` as both APIs do.
pub(crate) fn check_wait(wait: Duration) -> Result<(), CoordinatorError> {
    if wait > MAX_WAIT {
        return Err(CoordinatorError::invalid(
            "wait_ms",
            format!(
                "is {} ms; at most {} ms is allowed",
                wait.as_millis(),
                MAX_WAIT.as_millis()
            ),
        ));
    }
    Ok(())
}

impl CoordinatorError {
    /// The stable code every transport maps once.
    pub fn code(&self) -> ErrorCode {
        match self {
            CoordinatorError::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            CoordinatorError::ResourceExhausted { .. } => ErrorCode::ResourceExhausted,
            CoordinatorError::NotFound { .. } => ErrorCode::NotFound,
            CoordinatorError::Stale(_) => ErrorCode::Stale,
            CoordinatorError::DeadlineExceeded(_) => ErrorCode::DeadlineExceeded,
            CoordinatorError::Unavailable(_) => ErrorCode::Unavailable,
        }
    }

    /// The field an invalid-argument error names.
    pub fn field(&self) -> Option<&str> {
        match self {
            CoordinatorError::InvalidArgument { field, .. } => Some(field),
            _ => None,
        }
    }

    /// When to try again, for a refusal that says.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CoordinatorError::ResourceExhausted { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        CoordinatorError::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A new definition of a running `kind` (`quota`, `breaker`) must keep its name.
pub(crate) fn same_name(kind: &str, new: &str, running: &str) -> Result<(), CoordinatorError> {
    if new == running {
        Ok(())
    } else {
        Err(CoordinatorError::invalid(
            "name",
            format!("is {new:?}; this {kind} is {running:?}"),
        ))
    }
}
