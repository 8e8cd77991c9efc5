//! Where a caller's identity comes from on each transport: the bearer token or the
//! client certificate of an HTTP request or a gRPC call.

use std::sync::Arc;

use ganglion_core::BusError;

use super::{Caller, Identity, Permissions, Refusal};

/// The bearer token in `headers`, if any.
pub(crate) fn bearer(headers: &http::HeaderMap) -> Result<Option<&str>, Refusal> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| Some(t.trim()))
        .ok_or_else(|| {
            Refusal::Unauthenticated(
                "the authorization header must be \"Bearer <token>\"".to_owned(),
            )
        })
}

/// The names in the client certificate a connection's TLS handshake verified (a
/// request extension, set per connection).
#[derive(Debug, Clone)]
pub(crate) struct PeerCertificate(pub(crate) Arc<[String]>);

/// The caller of a public request: no permissions at all.
pub(super) fn public_caller() -> Caller {
    static NOBODY: std::sync::OnceLock<Arc<Identity>> = std::sync::OnceLock::new();
    Caller(
        NOBODY
            .get_or_init(|| {
                Arc::new(Identity {
                    name: "anonymous".to_owned(),
                    permissions: Permissions::default(),
                    open: false,
                })
            })
            .clone(),
    )
}

/// Requests that need no credentials: health checks and gRPC reflection (the schema is
/// public; the data behind it is not).
pub(super) fn is_public(path: &str) -> bool {
    path == "/api/v1/health"
        || path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.")
}

/// Middleware on both routers: authenticates each request and hands its [`Caller`] to
/// the handler, or answers 401 (UNAUTHENTICATED on gRPC) itself.
pub(crate) async fn authenticate(
    axum::extract::State(state): axum::extract::State<Arc<crate::State>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let policy = state.auth.get();
    // Credentials on a public request are not looked at: a probe with a stale token
    // still learns whether the server is up, and nothing else.
    if is_public(request.uri().path()) {
        request.extensions_mut().insert(public_caller());
        return next.run(request).await;
    }
    let certificate = request.extensions().get::<PeerCertificate>().cloned();
    let caller = bearer(request.headers())
        .and_then(|token| policy.authenticate(token, certificate.as_ref().map(|c| &c.0[..])));
    match caller {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refusal) => {
            let peer = request
                .extensions()
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|i| i.remote_addr())
                .map_or_else(String::new, |a| a.to_string());
            state.audit.unauthenticated(&peer, &refusal.to_string());
            let grpc = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            if grpc {
                tonic::Status::from(refusal)
                    .into_http::<axum::body::Body>()
                    .map(axum::body::Body::new)
            } else {
                axum::response::IntoResponse::into_response(crate::http::ApiError::from(
                    BusError::from(refusal),
                ))
            }
        }
    }
}

/// The caller of a gRPC request (set by [`authenticate`]).
pub(crate) fn grpc_caller<T>(request: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| {
            tonic::Status::unauthenticated("no caller: the request was not authenticated")
        })
}
