//! Ganglion's network surface as a library: the gRPC service `ganglion.v1.EventBus`
//! (with `grpc.health.v1.Health` and server reflection) and the JSON HTTP API, both thin
//! adapters over one [`Bus`].
//!
//! [`serve`] takes listeners that are already bound and a shutdown future, so tests run
//! on `127.0.0.1:0`; [`router`] is the HTTP API alone, testable without a socket.
//!
//! # Shutdown
//!
//! When the shutdown future completes: both servers stop accepting connections; live
//! streams (subscriptions, SSE, publish streams) finish what is in flight and end, a
//! gRPC subscription once its client has settled what it was sent (or after 2 s) and
//! with a `closed` frame saying why; unary calls complete; then the bus
//! stops its consumers (durable cursors are saved) and syncs the log. Whatever is still
//! open after [`ServerOptions::drain_timeout`] is cut.
//!
//! # Threads
//!
//! gRPC connections are served by [`ServerOptions::grpc_threads`] front threads, each a
//! current-thread runtime; the acceptor hands each new connection to the next front in
//! turn, and it stays there. A call's HTTP/2 frames, its handler and its reply run on
//! one thread with no wake-ups between runtime workers, which is most of a small call's
//! cost on a virtual machine; connections still spread over every core. HTTP, the bus's
//! own tasks and the coordinator's timers run on the caller's runtime.
//!
//! # Connections
//!
//! Both listeners let connections in through one table with a global and a per-peer
//! cap, time out idle ones and half-sent request heads, ping gRPC peers, and keep a
//! reserve that answers health checks when every slot is busy: see [`ConnectionLimits`].

pub mod auth;
mod conn;
mod grpc;
mod http;
mod lease_events;
mod metrics;
mod tls;
mod unsettled;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ganglion_coordinator::{Coordinator, CoordinatorConfig, ResourceCoordinator};
use ganglion_core::BusError;
use ganglion_core::Engine;
use ganglion_core::engine::EngineHealth;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use conn::{ConnectionLimits, RESERVED_FDS, raise_fd_limit};
pub use http::{event_to_json, events_from_json, router};
pub use metrics::Metrics;
pub use tls::{ClientCerts, TlsError, TlsOptions};

/// Limits on what one client may ask of the server. Every one is refused with a clear
/// error, never by dropping data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest gRPC message the server decodes (a publish batch). Default 16 MiB.
    pub max_grpc_message_bytes: usize,
    /// Largest HTTP request body. Default 8 MiB.
    pub max_http_body_bytes: usize,
    /// Concurrent HTTP/2 streams per gRPC connection. Default 256.
    pub max_concurrent_streams: u32,
    /// Open subscriptions per gRPC connection. Default 64.
    pub max_subscriptions_per_connection: usize,
    /// Most events one replay request returns. Default 100,000.
    pub max_replay_events: usize,
    /// Server-Sent Events streams open at once (`GET /api/v1/stream`). Default 256.
    pub max_sse_clients: usize,
}

impl Limits {
    /// Bytes of events in one replay response: 1 MiB, or half the largest gRPC message
    /// if that is smaller (a page always holds at least one event, and events are
    /// smaller than a message).
    pub(crate) fn replay_message_bytes(&self) -> usize {
        (1024 * 1024).min(self.max_grpc_message_bytes / 2).max(1)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_grpc_message_bytes: 16 * 1024 * 1024,
            max_http_body_bytes: 8 * 1024 * 1024,
            max_concurrent_streams: 256,
            max_subscriptions_per_connection: 64,
            max_replay_events: 100_000,
            max_sse_clients: 256,
        }
    }
}

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub limits: Limits,
    /// Caps, timeouts and keepalive of connections (see the `conn` module docs).
    pub connections: ConnectionLimits,
    /// How long shutdown waits for open calls and streams before cutting them.
    pub drain_timeout: Duration,
    /// Threads serving gRPC connections (see the module docs); 0: one per core.
    pub grpc_threads: usize,
    /// Who may call, and what each caller may do (see [`auth`]); the caller keeps the
    /// handle to swap the policy on a config reload. Default: open.
    pub auth: Arc<auth::AuthHandle>,
    /// TLS on both listeners; `None`: plain text.
    pub tls: Option<TlsOptions>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            limits: Limits::default(),
            connections: ConnectionLimits::default(),
            drain_timeout: Duration::from_secs(10),
            grpc_threads: 0,
            auth: Arc::default(),
            tls: None,
        }
    }
}

/// How often retention rules are applied (ages move on; counts and bytes grow).
const UPKEEP_EVERY: Duration = Duration::from_secs(10);

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),
    #[error("shutting the bus down: {0}")]
    Bus(#[from] BusError),
    #[error("starting the coordinator: {0}")]
    Coordinator(#[from] ganglion_coordinator::CoordinatorError),
    #[error("a gRPC thread: {0}")]
    GrpcThread(std::io::Error),
    #[error("a server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
}

/// What the gRPC and HTTP handlers share.
#[derive(Debug)]
pub struct State {
    /// The engine: the bus as components use it, and its health and statistics.
    bus: Arc<dyn Engine>,
    coordinator: Arc<dyn ResourceCoordinator>,
    limits: Limits,
    metrics: Metrics,
    started: Instant,
    /// Flips to `true` when shutdown begins; streams watch it and end.
    stopping: watch::Receiver<bool>,
    /// Open subscriptions per gRPC peer (one peer address is one connection).
    subscriptions: Mutex<HashMap<SocketAddr, usize>>,
    /// The connections being served, once serving (for `/metrics`).
    connections: Mutex<Option<Arc<conn::Connections>>>,
    /// The access policy in force.
    auth: Arc<auth::AuthHandle>,
    /// Refusals and admin actions, counted (and logged as they happen).
    audit: auth::Audit,
}

impl State {
    /// State over `bus`; `stopping` turns `true` when the server shuts down.
    pub fn new(
        bus: Arc<dyn Engine>,
        coordinator: Arc<dyn ResourceCoordinator>,
        limits: Limits,
        auth: Arc<auth::AuthHandle>,
        stopping: watch::Receiver<bool>,
    ) -> Arc<State> {
        Arc::new(State {
            bus,
            coordinator,
            limits,
            metrics: Metrics::default(),
            started: Instant::now(),
            stopping,
            subscriptions: Mutex::new(HashMap::new()),
            connections: Mutex::new(None),
            auth,
            audit: auth::Audit::default(),
        })
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.bus
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether the server takes writes now, and the state of each part: the event log
    /// (failed, or refusing appends for a full disk), the coordinator (state it cannot
    /// write), the server itself (stopping). What HTTP health, gRPC health and the
    /// `ganglion_log_healthy` gauge report.
    pub(crate) fn health(&self) -> (bool, serde_json::Value) {
        use serde_json::json;
        let (log_ok, log_json) = match self.bus.health() {
            EngineHealth::Ok => (
                true,
                json!({ "status": "ok", "next_seq": self.bus.storage().next_seq }),
            ),
            EngineHealth::NoSpace { detail } => (
                false,
                json!({
                    "status": "no_space",
                    "reason": format!("the device is full: appends are refused until space returns ({detail})"),
                }),
            ),
            EngineHealth::Failed { reason } => {
                (false, json!({ "status": "failed", "reason": reason }))
            }
        };
        let coordinator_error = self.coordinator.write_error();
        let coordinator = match &coordinator_error {
            None => json!({ "status": "ok" }),
            Some(reason) => json!({
                "status": "cannot_write",
                "reason": format!("grants are refused until the state can be written: {reason}"),
            }),
        };
        let stopping = *self.stopping.borrow();
        let ok = log_ok && coordinator_error.is_none() && !stopping;
        let body = json!({
            "status": if ok { "ok" } else { "unavailable" },
            "uptime_seconds": self.started.elapsed().as_secs(),
            "engine": self.bus.kind(),
            "components": {
                "log": log_json,
                "coordinator": coordinator,
                "server": json!({ "status": if stopping { "stopping" } else { "ok" } }),
            },
        });
        (ok, body)
    }

    /// Allows `action` for `caller`, or refuses it (audited).
    pub(crate) fn may(
        &self,
        caller: &auth::Caller,
        action: auth::Action<'_>,
    ) -> Result<(), BusError> {
        caller.may(&self.audit, action).map_err(BusError::from)
    }

    /// Allows publishing every event of a batch, or refuses the batch.
    pub(crate) fn may_publish(
        &self,
        caller: &auth::Caller,
        events: &[ganglion_core::Event],
    ) -> Result<(), BusError> {
        events
            .iter()
            .try_for_each(|e| self.may(caller, auth::Action::Publish(&e.topic)))
    }

    /// Allows a subscription: its pattern, the durable name and queue group it joins,
    /// and a dead-letter topic it names (the server writes there on its behalf).
    pub(crate) fn may_subscribe(
        &self,
        caller: &auth::Caller,
        pattern: &ganglion_core::Pattern,
        options: &ganglion_core::bus::SubscribeOptions,
    ) -> Result<(), BusError> {
        self.may(caller, auth::Action::Subscribe(pattern))?;
        for name in [&options.durable, &options.queue_group]
            .into_iter()
            .flatten()
        {
            self.may(caller, auth::Action::Join(name))?;
        }
        match &options.dead_letter_topic {
            Some(topic) if !auth::is_reserved(topic.as_str()) => {
                self.may(caller, auth::Action::Publish(topic))
            }
            _ => Ok(()),
        }
    }

    /// Resolves once shutdown has begun.
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.clone();
        async move {
            let _ = stopping.wait_for(|s| *s).await;
        }
    }

    /// Takes one of `peer`'s subscription slots, or says why not.
    fn subscription_slot(self: &Arc<Self>, peer: Option<SocketAddr>) -> Result<Slot, BusError> {
        let Some(peer) = peer else {
            return Ok(Slot {
                state: None,
                peer: None,
            });
        };
        let mut open = self.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(peer).or_default();
        if *count >= self.limits.max_subscriptions_per_connection {
            return Err(BusError::ResourceExhausted {
                what: format!(
                    "this connection has {} subscriptions open, the most allowed",
                    self.limits.max_subscriptions_per_connection
                ),
                retry_after: Duration::from_secs(1),
            });
        }
        *count += 1;
        Ok(Slot {
            state: Some(self.clone()),
            peer: Some(peer),
        })
    }
}

/// A subscription slot on a connection; dropping it frees the slot.
struct Slot {
    state: Option<Arc<State>>,
    peer: Option<SocketAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let (Some(state), Some(peer)) = (&self.state, self.peer) {
            let mut open = state
                .subscriptions
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(count) = open.get_mut(&peer) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&peer);
                }
            }
        }
    }
}

/// Serves the bus alone (a coordinator with nothing configured); see [`serve_with`].
pub async fn serve(
    bus: Arc<dyn Engine>,
    grpc: TcpListener,
    http: TcpListener,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let coordinator = Coordinator::open(
        CoordinatorConfig::default(),
        Arc::new(ganglion_core::SystemClock),
        None,
    )
    .map_err(ServerError::Coordinator)?;
    serve_with(bus, Arc::new(coordinator), grpc, http, options, shutdown).await
}

/// Serves gRPC on `grpc` and HTTP on `http` until `shutdown` completes, then drains and
/// shuts the bus down (see the module docs).
pub async fn serve_with(
    bus: Arc<dyn Engine>,
    coordinator: Arc<dyn ResourceCoordinator>,
    grpc: TcpListener,
    http: TcpListener,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let acceptors = options.tls.as_ref().map(tls::Acceptors::new).transpose()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = State::new(
        bus.clone(),
        coordinator.clone(),
        options.limits.clone(),
        options.auth.clone(),
        stop_rx,
    );
    let timers = tokio::spawn(coordinator.upkeep());
    let upkeep = tokio::spawn(bus.upkeep(UPKEEP_EVERY));
    lease_events::LeaseEventPublisher::start(bus.clone(), coordinator.as_ref());

    let fd_limit = raise_fd_limit();
    let connections = conn::Connections::new(options.connections.clone(), fd_limit);
    *state.connections.lock().unwrap_or_else(|e| e.into_inner()) = Some(connections.clone());
    let grpc_server = grpc::serve(
        state.clone(),
        grpc,
        match options.grpc_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        },
        connections.clone(),
        acceptors.as_ref().map(|a| a.grpc.clone()),
    );
    let http_server = http::serve(state.clone(), http, connections, acceptors.map(|a| a.http));
    let mut grpc_task = tokio::spawn(grpc_server);
    let mut http_task = tokio::spawn(http_server);

    shutdown.await;
    tracing::info!("shutting down: no new connections; draining open calls and streams");
    let _ = stop_tx.send(true);

    let drained = tokio::time::timeout(options.drain_timeout, async {
        let grpc = (&mut grpc_task).await;
        let http = (&mut http_task).await;
        (grpc, http)
    })
    .await;
    let result = match drained {
        Ok((grpc, http)) => {
            let (grpc, http) = (grpc?, http?);
            grpc.and(http.map_err(ServerError::from))
        }
        Err(_) => {
            tracing::warn!(
                timeout_ms = options.drain_timeout.as_millis() as u64,
                "connections still open after the drain timeout; cutting them"
            );
            grpc_task.abort();
            http_task.abort();
            Ok(())
        }
    };
    timers.abort();
    upkeep.abort();
    lease_events::LeaseEventPublisher::stop(coordinator.as_ref());
    if let Err(error) = coordinator.flush() {
        tracing::error!(%error, "cannot write the lease state at shutdown");
    }
    bus.shutdown().await?;
    tracing::info!("bus stopped: log synced, durable cursors saved");
    result
}
