//! What goes wrong, with a stable code per kind.

use std::fmt;
use std::time::Duration;

/// Stable error codes, shared by every crate and mapped once to gRPC and HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    Internal,
    /// No valid credentials.
    Unauthenticated,
    /// Credentials, but not the permission.
    PermissionDenied,
    /// The caller's hold is no longer valid (a lease revoked, expired or released).
    Stale,
    /// A wait ran out before what was waited for came.
    DeadlineExceeded,
}

impl ErrorCode {
    /// Every code, in declaration order (`ALL[code as usize] == code`).
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::InvalidArgument,
        ErrorCode::NotFound,
        ErrorCode::ResourceExhausted,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::Stale,
        ErrorCode::DeadlineExceeded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::Stale => "STALE",
            ErrorCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
        }
    }
}

/// Errors of the bus contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The caller sent something invalid; `field` names it (`events[2].topic`).
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    /// An event is larger than the bus accepts (HTTP 413; INVALID_ARGUMENT over gRPC).
    #[error("{field}: the event is {size} bytes; at most {limit} are allowed")]
    TooLarge {
        field: String,
        size: usize,
        limit: usize,
    },
    #[error("{what} not found")]
    NotFound { what: String },
    /// A limit was reached; try again after `retry_after`.
    #[error("{what}; retry after {} ms", retry_after.as_millis())]
    ResourceExhausted { what: String, retry_after: Duration },
    /// The bus cannot serve this now (the log failed or the disk is full).
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("the bus is closed")]
    Closed,
    #[error("internal error: {0}")]
    Internal(String),
    /// No valid credentials (a bearer token or a client certificate).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller's identity lacks the permission.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
}

impl BusError {
    pub fn code(&self) -> ErrorCode {
        match self {
            BusError::InvalidArgument { .. } | BusError::TooLarge { .. } => {
                ErrorCode::InvalidArgument
            }
            BusError::NotFound { .. } => ErrorCode::NotFound,
            BusError::ResourceExhausted { .. } => ErrorCode::ResourceExhausted,
            BusError::Unavailable(_) | BusError::Closed => ErrorCode::Unavailable,
            BusError::Internal(_) => ErrorCode::Internal,
            BusError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            BusError::PermissionDenied(_) => ErrorCode::PermissionDenied,
        }
    }

    /// The field an invalid-argument error names, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            BusError::InvalidArgument { field, .. } | BusError::TooLarge { field, .. } => {
                Some(field)
            }
            _ => None,
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl fmt::Display) -> BusError {
        BusError::InvalidArgument {
            field: field.into(),
            message: message.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn all_codes_are_listed_at_their_index_with_distinct_names() {
        let mut names = std::collections::HashSet::new();
        for (i, code) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(code as usize, i, "{code:?}");
            assert!(names.insert(code.as_str()), "{code:?}");
        }
    }
}
