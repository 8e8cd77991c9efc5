//! What callers hand a request queue and get back.

use std::time::Duration;

use bytes::Bytes;

use crate::RequestId;

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The response, or the worker's error message.
    pub response: Result<Bytes, String>,
    /// Answered from the cache.
    pub cached: bool,
    /// Answered from the cache or the fallback because the quota was used up.
    pub degraded: bool,
}

/// A request a worker took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub id: RequestId,
    pub request: Bytes,
    pub priority: i32,
    /// The component that submitted it.
    pub component: String,
}

/// A request to submit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Submission {
    pub request: Bytes,
    /// Higher is taken first.
    pub priority: i32,
    /// Who asks: its share (and reservation) of the quota pays for the call. Empty:
    /// `anonymous`.
    pub component: String,
    /// A second submit with the same key gets the first one's id.
    pub idempotency_key: Option<String>,
    /// Answered with this, marked degraded, when the quota is used up.
    pub fallback: Option<Bytes>,
}

impl Submission {
    pub fn new(request: impl Into<Bytes>) -> Submission {
        Submission {
            request: request.into(),
            ..Submission::default()
        }
    }

    pub fn priority(mut self, priority: i32) -> Submission {
        self.priority = priority;
        self
    }

    pub fn component(mut self, component: impl Into<String>) -> Submission {
        self.component = component.into();
        self
    }

    pub fn idempotency_key(mut self, key: impl Into<String>) -> Submission {
        self.idempotency_key = Some(key.into());
        self
    }

    pub fn fallback(mut self, fallback: impl Into<Bytes>) -> Submission {
        self.fallback = Some(fallback.into());
        self
    }
}

/// The component of a submission that names none.
pub const ANONYMOUS: &str = "anonymous";

/// How long a worker has to complete what it took, unless the queue says otherwise.
pub const DEFAULT_TAKE_TIMEOUT: Duration = Duration::from_secs(300);
/// Requests waiting or in progress, unless the queue says otherwise.
pub const DEFAULT_MAX_PENDING: usize = 10_000;
/// Bytes of requests waiting or in progress, unless the queue says otherwise.
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;
