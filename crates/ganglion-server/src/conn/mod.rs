//! Connections, for both listeners: who is let in, how long a connection may sit idle,
//! and how one is served over hyper.
//!
//! - **Caps.** At most [`ConnectionLimits::max_connections`] connections in all and
//!   [`ConnectionLimits::max_connections_per_peer`] from one IP address. The global
//!   cap is also kept [`RESERVED_FDS`] below the process's file descriptor limit, so
//!   the log, state files and health checks always have descriptors.
//! - **Idle connections make room.** A connection at a cap evicts the connection of
//!   the same scope (the peer, or all) that has been idle longest: one with no request
//!   in progress (an HTTP/1 connection waiting for a request head, a gRPC connection
//!   with no call open). Idle sockets therefore never keep a new client out.
//! - **The reserve answers health.** When every connection is busy, a new one is still
//!   accepted into a small overflow (half the reserve) that serves health checks and the
//!   scrape alone (`GET /api/v1/health`, `GET /metrics`, `grpc.health.v1`) and refuses
//!   the rest with 429 or UNAVAILABLE. Past that, connections are closed at once (HTTP
//!   gets a 503 first).
//! - **Timeouts.** HTTP/1 must send a request head within
//!   [`ConnectionLimits::header_read_timeout`] (also between keep-alive requests); a
//!   gRPC connection must open its first call within it; a connection with no request
//!   in progress is closed after [`ConnectionLimits::idle_timeout`].
//! - **HTTP/2 keepalive.** gRPC connections are pinged after
//!   [`ConnectionLimits::keepalive_interval`] without a frame from the peer, and closed
//!   if the ping is not answered within [`ConnectionLimits::keepalive_timeout`]: a peer
//!   that stopped (a paused process, a cable pulled) loses its calls, and the leases its
//!   `Acquire` streams held, within interval + timeout.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

mod serve;

pub(crate) use serve::{accept, refuse_http, secure, serve_http1, serve_http2};

/// File descriptors kept free of connections.
pub const RESERVED_FDS: usize = 64;

/// Limits on connections; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once, HTTP and gRPC together. Default 10,000 (and at most
    /// the file descriptor limit less [`RESERVED_FDS`]).
    pub max_connections: usize,
    /// Connections open at once from one IP address. Default 1,000.
    pub max_connections_per_peer: usize,
    /// An HTTP/1 request head, and a gRPC connection's first call, must arrive within
    /// this. Default 10 s.
    pub header_read_timeout: Duration,
    /// A connection with no request in progress is closed after this. Default 5 min.
    pub idle_timeout: Duration,
    /// A gRPC connection silent for this long is pinged. Default 10 s.
    pub keepalive_interval: Duration,
    /// A ping not answered within this closes the connection. Default 10 s.
    pub keepalive_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 10_000,
            max_connections_per_peer: 1_000,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Transport {
    Http,
    Grpc,
}

impl Transport {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Grpc => "grpc",
        }
    }
}

/// What was decided about a new connection.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Served in full.
    Served(ConnGuard),
    /// Every connection is busy: served for health checks only.
    HealthOnly(ConnGuard),
    /// No room even in the overflow.
    Refused,
}

/// One open connection, as the table and its own task see it.
#[derive(Debug)]
pub(crate) struct Conn {
    id: u64,
    peer: IpAddr,
    transport: Transport,
    connected_ms: u64,
    /// Requests (HTTP requests, gRPC calls) in progress.
    active: AtomicUsize,
    /// A request was ever made on this connection.
    used: AtomicBool,
    /// When the last request ended (ms since the table started).
    idle_since_ms: AtomicU64,
    /// Ask the connection's task to drop it (it was idle; another needed its slot).
    evicted: Notify,
    /// A request began or ended.
    changed: Notify,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Arc<Conn>>,
    per_peer: HashMap<IpAddr, usize>,
    health_only: usize,
}

/// Counts for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct ConnCounters {
    pub(crate) evicted: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) health_only: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub(crate) tls_failed: AtomicU64,
}

/// Every open connection of the server.
#[derive(Debug)]
pub(crate) struct Connections {
    limits: ConnectionLimits,
    /// The global cap in force (the configured one, or less for file descriptors).
    max_connections: usize,
    table: Mutex<Table>,
    started: Instant,
    pub(crate) counters: ConnCounters,
}

/// Keeps a connection in the table; dropping it (the connection closed) frees its slot.
#[derive(Debug)]
pub(crate) struct ConnGuard {
    connections: Arc<Connections>,
    conn: Arc<Conn>,
    health_only: bool,
}

impl ConnGuard {
    pub(crate) fn connections(&self) -> &Arc<Connections> {
        &self.connections
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut table = self.connections.lock();
        if self.health_only {
            table.health_only -= 1;
        } else if table.open.remove(&self.conn.id).is_some() {
            Table::forget_peer(&mut table.per_peer, self.conn.peer);
        }
    }
}

impl Table {
    fn forget_peer(per_peer: &mut HashMap<IpAddr, usize>, peer: IpAddr) {
        if let Some(n) = per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                per_peer.remove(&peer);
            }
        }
    }
}

/// The file descriptors this process may open (its soft limit), raised to the hard
/// limit first if it is lower. `None` where it cannot be read.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return limit.maximum;
        }
    }
    limit.current
}

impl Connections {
    /// A table enforcing `limits`, with the global cap kept [`RESERVED_FDS`] under
    /// `fd_limit`.
    pub(crate) fn new(limits: ConnectionLimits, fd_limit: Option<u64>) -> Arc<Connections> {
        let by_fds = fd_limit
            .and_then(|n| usize::try_from(n).ok())
            .map_or(usize::MAX, |n| n.saturating_sub(RESERVED_FDS * 2).max(16));
        let max_connections = limits.max_connections.min(by_fds).max(1);
        if max_connections < limits.max_connections {
            tracing::warn!(
                configured = limits.max_connections,
                in_force = max_connections,
                fd_limit,
                "fewer connections than configured: the file descriptor limit is lower"
            );
        }
        Arc::new(Connections {
            limits,
            max_connections,
            table: Mutex::new(Table::default()),
            started: Instant::now(),
            counters: ConnCounters::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Open connections per transport (health-only ones not counted).
    pub(crate) fn open(&self) -> [(Transport, usize); 2] {
        let table = self.lock();
        let grpc = table
            .open
            .values()
            .filter(|c| c.transport == Transport::Grpc)
            .count();
        [
            (Transport::Http, table.open.len() - grpc),
            (Transport::Grpc, grpc),
        ]
    }

    /// Decides about a connection from `peer`; see the module docs.
    pub(crate) fn admit(self: &Arc<Self>, peer: SocketAddr, transport: Transport) -> Admission {
        let ip = peer.ip();
        let now = self.now_ms();
        let mut table = self.lock();
        let from_peer = table.per_peer.get(&ip).copied().unwrap_or(0);
        let peer_full = from_peer >= self.limits.max_connections_per_peer;
        let all_full = table.open.len() >= self.max_connections;
        if peer_full || all_full {
            // Make room by closing the connection idle longest in the full scope.
            let victim = table
                .open
                .values()
                .filter(|c| !peer_full || c.peer == ip)
                .filter(|c| c.active.load(Ordering::Acquire) == 0)
                .min_by_key(|c| c.idle_since_ms.load(Ordering::Acquire))
                .map(|c| c.id);
            match victim {
                Some(id) => {
                    let victim = table.open.remove(&id).expect("found above");
                    Table::forget_peer(&mut table.per_peer, victim.peer);
                    victim.evicted.notify_one();
                    self.counters.evicted.fetch_add(1, Ordering::Relaxed);
                }
                None if table.health_only < RESERVED_FDS / 2 => {
                    table.health_only += 1;
                    self.counters.health_only.fetch_add(1, Ordering::Relaxed);
                    let conn = self.conn(&mut table, ip, transport, now);
                    return Admission::HealthOnly(ConnGuard {
                        connections: self.clone(),
                        conn,
                        health_only: true,
                    });
                }
                None => {
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    return Admission::Refused;
                }
            }
        }
        let conn = self.conn(&mut table, ip, transport, now);
        table.open.insert(conn.id, conn.clone());
        *table.per_peer.entry(ip).or_default() += 1;
        Admission::Served(ConnGuard {
            connections: self.clone(),
            conn,
            health_only: false,
        })
    }

    fn conn(&self, table: &mut Table, peer: IpAddr, transport: Transport, now: u64) -> Arc<Conn> {
        table.next_id += 1;
        Arc::new(Conn {
            id: table.next_id,
            peer,
            transport,
            connected_ms: now,
            active: AtomicUsize::new(0),
            used: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(now),
            evicted: Notify::new(),
            changed: Notify::new(),
        })
    }

    /// When the connection should be closed for sitting idle, if it is idle now.
    fn idle_deadline(&self, conn: &Conn) -> Option<Duration> {
        if conn.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let (since, allowed) = if conn.used.load(Ordering::Acquire) {
            (
                conn.idle_since_ms.load(Ordering::Acquire),
                self.limits.idle_timeout,
            )
        } else {
            // Nothing asked yet: the first request is due within the header timeout
            // (hyper enforces it itself for HTTP/1).
            (conn.connected_ms, self.limits.header_read_timeout)
        };
        let at = since.saturating_add(u64::try_from(allowed.as_millis()).unwrap_or(u64::MAX));
        Some(Duration::from_millis(at))
    }
}
