//! Serving an admitted connection: TLS first when configured, then HTTP/1 or HTTP/2
//! with the header-read timeout, the idle timeout and keepalive, each request counted
//! as in progress (a connection with one is not idle).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;

use super::{Conn, ConnGuard, Connections, Transport};

/// Marks a request in progress on its connection until dropped (with the response
/// body, so a stream counts until it ends).
#[derive(Debug)]
pub(super) struct InProgress {
    conn: Arc<Conn>,
    connections: Arc<Connections>,
}

impl InProgress {
    fn begin(guard: &ConnGuard) -> InProgress {
        let conn = guard.conn.clone();
        conn.used.store(true, Ordering::Release);
        if conn.active.fetch_add(1, Ordering::AcqRel) == 0 {
            conn.changed.notify_one();
        }
        InProgress {
            conn,
            connections: guard.connections.clone(),
        }
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.conn
            .idle_since_ms
            .store(self.connections.now_ms(), Ordering::Release);
        if self.conn.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.conn.changed.notify_one();
        }
    }
}

/// A response body that keeps its request counted as in progress until it is done.
#[derive(Debug)]
pub(crate) struct TrackedBody<B> {
    inner: Pin<Box<B>>,
    _in_progress: InProgress,
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.get_mut().inner.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A service whose requests are counted on their connection, and carry its addresses
/// (as tonic's `TcpConnectInfo`, which `Request::remote_addr` reads).
#[derive(Debug, Clone)]
pub(crate) struct Tracked<S> {
    inner: S,
    guard: Arc<ConnGuard>,
    peer: Peer,
}

/// Who is on the other end of a connection: its addresses, and the names in the client
/// certificate its TLS handshake verified.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) addresses: tonic::transport::server::TcpConnectInfo,
    pub(crate) certificate: Option<crate::auth::PeerCertificate>,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Tracked<S>
where
    S: tower_service::Service<
            http::Request<ReqBody>,
            Response = http::Response<ResBody>,
            Error = Infallible,
        >,
    S::Future: Send + 'static,
{
    type Response = http::Response<TrackedBody<ResBody>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        request.extensions_mut().insert(self.peer.addresses.clone());
        if let Some(certificate) = &self.peer.certificate {
            request.extensions_mut().insert(certificate.clone());
        }
        let in_progress = InProgress::begin(&self.guard);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody {
                inner: Box::pin(body),
                _in_progress: in_progress,
            }))
        })
    }
}

/// The next connection `listener` accepts, or `None` once `stopped` resolves. A failed
/// accept (out of descriptors, a connection reset before it was accepted) leaves the
/// listener fine: it is logged, and the next one tried after a short pause rather than
/// in a spin.
pub(crate) async fn accept(
    listener: &tokio::net::TcpListener,
    mut stopped: Pin<&mut impl Future<Output = ()>>,
    transport: Transport,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stopped => return None,
        };
        match accepted {
            Ok(accepted) => return Some(accepted),
            Err(error) => {
                tracing::warn!(%error, ?transport, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A connection's byte stream: TCP, or TLS over TCP.
pub(crate) trait Io:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static
{
}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

/// An admitted connection's stream, after the TLS handshake when `tls` is given, and
/// who is on the other end; `None` when the handshake failed or took longer than the
/// header read timeout (the connection is then closed).
pub(crate) async fn secure(
    stream: TcpStream,
    tls: Option<&tokio_rustls::TlsAcceptor>,
    connections: &Connections,
) -> Option<(Box<dyn Io>, Peer)> {
    let addresses = addresses(&stream);
    let Some(acceptor) = tls else {
        let peer = Peer {
            addresses,
            certificate: None,
        };
        return Some((Box::new(stream), peer));
    };
    let timeout = connections.limits.header_read_timeout;
    match crate::tls::handshake(acceptor, stream, timeout).await {
        Ok((stream, certificate)) => Some((
            Box::new(stream),
            Peer {
                addresses,
                certificate,
            },
        )),
        Err(error) => {
            connections
                .counters
                .tls_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%error, peer = ?addresses.remote_addr, "TLS handshake failed");
            None
        }
    }
}

/// Serves one admitted HTTP/1.1 connection (the JSON API); see [`drive`].
pub(crate) async fn serve_http1<I, S, B>(
    stream: I,
    peer: Peer,
    service: S,
    guard: ConnGuard,
    stopped: impl Future<Output = ()>,
) where
    S: tower_service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let guard = Arc::new(guard);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(guard.connections.limits.header_read_timeout);
    let service = TowerToHyperService::new(Tracked {
        inner: service,
        guard: guard.clone(),
        peer,
    });
    let connection = pin!(builder.serve_connection(TokioIo::new(stream), service));
    drive(connection, |c| c.graceful_shutdown(), &guard, stopped).await;
}

fn addresses(stream: &TcpStream) -> tonic::transport::server::TcpConnectInfo {
    tonic::transport::server::TcpConnectInfo {
        local_addr: stream.local_addr().ok(),
        remote_addr: stream.peer_addr().ok(),
    }
}

/// Serves one admitted HTTP/2 connection (gRPC), with keepalive pings; see [`drive`].
pub(crate) async fn serve_http2<I, S, B>(
    stream: I,
    peer: Peer,
    service: S,
    max_streams: u32,
    guard: ConnGuard,
    stopped: impl Future<Output = ()>,
) where
    S: tower_service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let guard = Arc::new(guard);
    let limits = &guard.connections.limits;
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout)
        .max_concurrent_streams(max_streams)
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024);
    let service = TowerToHyperService::new(Tracked {
        inner: service,
        guard: guard.clone(),
        peer,
    });
    let connection = pin!(builder.serve_connection(TokioIo::new(stream), service));
    drive(connection, |c| c.graceful_shutdown(), &guard, stopped).await;
}

/// Runs a hyper connection until it ends, is evicted, sits idle too long (then it is
/// dropped: nothing is in progress on it), or, gracefully, until `stopped` completes.
async fn drive<C, E>(
    mut connection: Pin<&mut C>,
    shutdown: impl Fn(Pin<&mut C>),
    guard: &ConnGuard,
    stopped: impl Future<Output = ()>,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let (connections, conn) = (&guard.connections, &guard.conn);
    let mut stopped = pin!(stopped);
    let mut stopping = false;
    loop {
        let changed = conn.changed.notified();
        let idle_at = connections.idle_deadline(conn);
        let idle = async {
            match idle_at {
                Some(at) => {
                    let at = tokio::time::Instant::from_std(connections.started + at);
                    tokio::time::sleep_until(at).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, peer = %conn.peer, "connection ended");
                }
                return;
            }
            () = &mut stopped, if !stopping => {
                stopping = true;
                shutdown(connection.as_mut());
            }
            () = conn.evicted.notified() => {
                tracing::debug!(peer = %conn.peer, "idle connection closed to make room");
                return;
            }
            () = idle => {
                if connections.idle_deadline(conn).is_some_and(|at| connections.started + at <= Instant::now()) {
                    connections.counters.timed_out.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(peer = %conn.peer, "idle connection timed out");
                    return;
                }
            }
            () = changed => {}
        }
    }
}

/// Tells an HTTP client it was not let in, best effort, before closing.
pub(crate) async fn refuse_http(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt as _;
    let body = r#"{"error":{"code":"UNAVAILABLE","message":"too many connections; try again"}}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(
        Duration::from_millis(100),
        stream.write_all(response.as_bytes()),
    )
    .await;
}
