//! The typed configuration. Every field has a default in code and a doc comment, which
//! becomes its description in the JSON Schema (`ganglion config schema`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Secret;

/// Ganglion's whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// What stores and delivers events. Changes need a restart.
    pub engine: EngineKind,
    /// Where the server listens and keeps its data. Changes need a restart.
    pub server: ServerConfig,
    /// Limits on what one client may ask of the server. Changes need a restart.
    pub limits: LimitsConfig,
    /// The event bus.
    pub bus: BusConfig,
    /// Resource pools, leases, quotas, request queues and circuit breakers.
    pub coordinator: CoordinatorConfig,
    /// Who may connect and what each caller may do. Live: tokens can be rotated and
    /// permissions changed without a restart.
    pub auth: AuthConfig,
    /// Logs, metrics and traces.
    pub telemetry: TelemetryConfig,
    /// Feature flags. An enabled flag's `set` is applied over the layers below it. Flags
    /// apply live to code that reads them; their `set` follows the rules of its keys.
    pub features: BTreeMap<String, Feature>,
}

impl Config {
    /// Whether the feature flag `name` is on.
    pub fn feature(&self, name: &str) -> bool {
        self.features.get(name).is_some_and(|f| f.enabled)
    }
}

/// `engine:`, what stores and delivers events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// In this process: an event log on local disk (`server.data_dir`), one machine.
    #[default]
    Embedded,
}

/// `server:`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Where the event log, durable subscriptions and coordinator state live.
    pub data_dir: PathBuf,
    /// gRPC listen address (`host:port`).
    pub grpc_addr: String,
    /// HTTP listen address (`host:port`).
    pub http_addr: String,
    /// How long shutdown waits for open calls and streams before cutting them.
    #[schemars(range(min = 1))]
    pub drain_timeout_ms: u64,
    /// Threads serving gRPC connections; each connection stays on one. 0: one per core.
    #[schemars(range(max = 1024))]
    pub grpc_threads: usize,
    /// An HTTP request head (also between keep-alive requests), and a gRPC connection's
    /// first call, must arrive within this, or the connection is closed.
    #[schemars(range(min = 100, max = 3600000))]
    pub header_read_timeout_ms: u64,
    /// A connection with no request in progress is closed after this.
    #[schemars(range(min = 1000))]
    pub idle_timeout_ms: u64,
    /// A gRPC connection silent this long is pinged (HTTP/2 PING).
    #[schemars(range(min = 100))]
    pub grpc_keepalive_interval_ms: u64,
    /// A ping not answered within this closes the connection, ending its calls: an
    /// `Acquire` stream's lease is released. With the interval, at most
    /// `coordinator.leases.ttl_ms`, so that a holder that stops answering (a paused
    /// process) loses its lease within the TTL.
    #[schemars(range(min = 100))]
    pub grpc_keepalive_timeout_ms: u64,
    /// With no `auth.identities`, every caller may do everything, so the server refuses
    /// to listen beyond loopback unless this is `true`. With identities, `true` also
    /// lets callers without credentials in, with `auth.anonymous` permissions.
    pub allow_anonymous: bool,
    /// TLS on both listeners (certificate and key re-read when the files change).
    /// Without it both listen in plain text. Enabling or disabling needs a restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// `server.tls:`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain, PEM.
    pub cert_file: PathBuf,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to. Needed when either
    /// listener asks for client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// Client certificates on the gRPC listener: `none`, `optional` or `required`.
    #[serde(default)]
    pub grpc_client_certs: ClientCerts,
    /// Client certificates on the HTTP listener: `none`, `optional` or `required`.
    #[serde(default)]
    pub http_client_certs: ClientCerts,
}

/// Whether a listener asks for client certificates (mTLS).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientCerts {
    /// Not asked for; callers authenticate with tokens.
    #[default]
    None,
    /// Asked for and verified when sent; callers without one may use a token.
    Optional,
    /// A handshake without a valid client certificate fails.
    Required,
}

/// `auth:`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Each component that may connect, by name (letters, digits, `-`, `_`). Empty:
    /// authentication is off and every caller may do everything (loopback only, unless
    /// `server.allow_anonymous`).
    pub identities: BTreeMap<String, IdentityConfig>,
    /// What callers without credentials may do when identities exist and
    /// `server.allow_anonymous` is `true`. Nothing by default.
    pub anonymous: PermissionsConfig,
}

/// `auth.identities.<name>:`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Hashes of the bearer tokens that authenticate as this identity, `sha256:<hex>`,
    /// as `ganglion auth token NAME` prints them. Two during a rotation.
    pub tokens: Vec<String>,
    /// Names in a client certificate (its subject CN, a DNS or URI SAN) that
    /// authenticate as this identity. Empty: the identity's own name.
    pub certificates: Vec<String>,
    /// What this identity may do; everything not allowed is refused.
    pub permissions: PermissionsConfig,
}

/// Allow and deny lists, NATS-style: a name is allowed if an `allow` entry matches it
/// and no `deny` entry does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Rule {
    /// What is allowed (nothing unless listed).
    pub allow: Vec<String>,
    /// Exceptions to `allow`.
    pub deny: Vec<String>,
}

/// What one caller may do. Topic rules take topic patterns (`game.>`, `*.state`); name
/// rules take names with `*` globs (`trainer-*`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PermissionsConfig {
    /// Topics it may publish to. `coordinator.>` and `dlq.>` are the server's alone.
    pub publish: Rule,
    /// Patterns it may subscribe to (a pattern must lie inside an allowed one and
    /// overlap no denied one), also as a custom dead-letter topic it names.
    pub subscribe: Rule,
    /// Durable subscription names and queue groups it may create or join (names).
    pub durables: Rule,
    /// Patterns it may replay from the log.
    pub replay: Rule,
    /// Subscriptions whose dead letters it may list and redrive (names).
    pub dlq: Rule,
    /// The coordinator's pools, quotas and queues it may use.
    pub resources: ResourcePermissions,
    /// Read-only views: topics, subscriptions, resources, metrics.
    pub monitor: bool,
    /// Purge and delete topics, release or renew another's lease, answer a request
    /// another worker took. Every admin action is audited.
    pub admin: bool,
}

/// `permissions.resources:` (all names).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ResourcePermissions {
    /// Pools it may lease from (and check fencing tokens of).
    pub pools: Rule,
    /// Quotas it may draw permits on.
    pub quotas: Rule,
    /// Request queues it may submit to and read responses from.
    pub submit: Rule,
    /// Request queues it may take requests from and answer, as a worker.
    pub work: Rule,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("ganglion-data"),
            grpc_addr: "127.0.0.1:50051".to_owned(),
            http_addr: "127.0.0.1:8080".to_owned(),
            drain_timeout_ms: 10_000,
            grpc_threads: 0,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 300_000,
            grpc_keepalive_interval_ms: 10_000,
            grpc_keepalive_timeout_ms: 10_000,
            allow_anonymous: false,
            tls: None,
        }
    }
}

/// `limits:` — every one is refused with a clear error, never by dropping data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest gRPC message the server decodes (a publish batch).
    #[schemars(range(min = 1))]
    pub max_grpc_message_bytes: u64,
    /// Largest HTTP request body.
    #[schemars(range(min = 1))]
    pub max_http_body_bytes: u64,
    /// Concurrent HTTP/2 streams per gRPC connection.
    #[schemars(range(min = 1))]
    pub max_concurrent_streams: u32,
    /// Open subscriptions per gRPC connection.
    #[schemars(range(min = 1))]
    pub max_subscriptions_per_connection: u64,
    /// Most events one replay request returns.
    #[schemars(range(min = 1))]
    pub max_replay_events: u64,
    /// Server-Sent Events streams open at once.
    #[schemars(range(min = 1))]
    pub max_sse_clients: u64,
    /// Connections open at once, HTTP and gRPC together (and at most the file
    /// descriptor limit less a reserve). At the cap, the connection idle longest makes
    /// room; when none is idle, new connections serve health checks only.
    #[schemars(range(min = 1))]
    pub max_connections: u64,
    /// Connections open at once from one IP address, with the same rule at the cap.
    #[schemars(range(min = 1))]
    pub max_connections_per_peer: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_grpc_message_bytes: 16 * 1024 * 1024,
            max_http_body_bytes: 8 * 1024 * 1024,
            max_concurrent_streams: 256,
            max_subscriptions_per_connection: 64,
            max_replay_events: 100_000,
            max_sse_clients: 256,
            max_connections: 10_000,
            max_connections_per_peer: 1_000,
        }
    }
}

/// `bus:`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// Largest event (payload and headers) the bus accepts. Needs a restart.
    #[schemars(range(min = 1))]
    pub max_event_bytes: u64,
    /// How long a publisher's idempotency key is remembered. Needs a restart.
    pub dedupe_window_ms: u64,
    /// The batch window of subscriptions that ask for batches without giving one.
    /// Applies live: the next window opened uses the new value.
    #[schemars(range(min = 1, max = 3_600_000))]
    pub batch_window_ms: u64,
    /// Topic patterns kept in memory only, delivered at most once to the subscribers
    /// connected now. Needs a restart.
    pub ephemeral: Vec<String>,
    /// Bytes of events that may wait for one subscriber in each place events wait (read
    /// ahead from the log, queued ephemeral events, handed over and not yet taken); a
    /// subscription's unacked events are bounded by its own `max_in_flight_bytes`. Needs
    /// a restart.
    #[schemars(range(min = 65536, max = 1073741824))]
    pub subscriber_buffer_bytes: u64,
    /// How long the log keeps events, by topic pattern: the first rule whose pattern
    /// matches a topic applies to it, and a topic no rule matches keeps its events. An
    /// event older than `max_age`, or past the newest `max_events` or `max_bytes` of its
    /// rule's topics, expires: replays and subscribers (durable ones too) no longer see
    /// it, and a segment's disk space comes back once every record in it has expired.
    /// Applies live.
    pub retention: Vec<RetentionConfig>,
}

/// One retention rule under `bus.retention`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// A topic pattern (`game.>`, `metrics.*.raw`, `>` for every topic).
    pub pattern: String,
    /// Events older than this expire: `90s`, `15m`, `2h`, `7d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    /// Past the newest this many bytes of records of the rule's topics, events expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_bytes: Option<u64>,
    /// Past the newest this many events of the rule's topics, events expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_events: Option<u64>,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            max_event_bytes: 1024 * 1024,
            dedupe_window_ms: 120_000,
            batch_window_ms: 100,
            ephemeral: vec!["bench.events.>".to_owned(), "coordinator.>".to_owned()],
            subscriber_buffer_bytes: 8 * 1024 * 1024,
            retention: Vec::new(),
        }
    }
}

/// `coordinator:`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Resource pools by name: `{ capacity: N }` or `{ gpus: ["0", "1"] }`. `gpu` is
    /// discovered through NVML when not configured; `bench` (capacity 1) always exists.
    /// Needs a restart.
    pub pools: BTreeMap<String, PoolConfig>,
    /// Lease timings. Live: leases granted or renewed after a change get the new TTL and
    /// maximum hold; the grace and aging apply at once.
    pub leases: LeaseConfig,
    /// Rate limits by name. A changed rule or shares apply live (grants already made
    /// count against the new rule); adding or removing a quota needs a restart.
    pub quotas: BTreeMap<String, QuotaConfig>,
    /// Rate-limited request queues by name. Needs a restart.
    pub queues: BTreeMap<String, QueueConfig>,
    /// Circuit breakers by dependency name. Changed thresholds apply live; adding or
    /// removing a breaker needs a restart.
    pub breakers: BTreeMap<String, BreakerConfig>,
}

/// A resource pool: a count of interchangeable units, or named GPU devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// How many units the pool holds (give this or `gpus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub capacity: Option<u64>,
    /// GPU device ids, as `CUDA_VISIBLE_DEVICES` names them (give this or `capacity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Vec<String>>,
}

/// `coordinator.leases:`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LeaseConfig {
    /// A lease not renewed for this long is reclaimed.
    #[schemars(range(min = 1))]
    pub ttl_ms: u64,
    /// Longest a lease may be held: a warning at 90%, revocation at the limit.
    #[schemars(range(min = 1))]
    pub max_hold_ms: u64,
    /// After revocation, how long the holder has to release before it is forced.
    pub grace_ms: u64,
    /// A waiter this old goes before all younger ones, whatever its priority.
    #[schemars(range(min = 1))]
    pub aging_ms: u64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            ttl_ms: 30_000,
            max_hold_ms: 300_000,
            grace_ms: 30_000,
            aging_ms: 600_000,
        }
    }
}

/// A named rate limit, exact over every trailing window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// `<count> per <duration>`, like `100 per 1h` (units ms, s, m, h, d).
    pub rule: String,
    /// Weights of components sharing the quota when it is saturated; others weigh 1.
    /// Shares divide what is granted while several components want more than they get;
    /// they keep nothing for a component that was not asking.
    #[serde(default)]
    pub shares: BTreeMap<String, u32>,
    /// Grants kept for a component in every window whoever draws first (`advisor: 40`):
    /// the others are refused while a grant would leave less than the unused
    /// reservations. At most the limit in all.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reserve: BTreeMap<String, u32>,
    /// A waiter this old goes before every younger one, whatever its priority.
    #[serde(default = "default_quota_aging_ms")]
    #[schemars(range(min = 1))]
    pub aging_ms: u64,
}

fn default_quota_aging_ms() -> u64 {
    600_000
}

/// A request queue paced by a quota.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// The quota that paces the queue's upstream calls.
    pub quota: String,
    /// How long a response is cached, keyed by the request's content.
    #[serde(default = "default_cache_ttl_s")]
    pub cache_ttl_s: u64,
    /// How long a worker has to complete a request it took; then the request goes back
    /// in line for another worker.
    #[serde(default = "default_take_timeout_s")]
    #[schemars(range(min = 1))]
    pub take_timeout_s: u64,
    /// Requests waiting or in progress at most; a submit beyond is refused.
    #[serde(default = "default_queue_max_pending")]
    #[schemars(range(min = 1))]
    pub max_pending: u64,
    /// Bytes of requests waiting or in progress at most.
    #[serde(default = "default_queue_max_bytes")]
    #[schemars(range(min = 1))]
    pub max_bytes: u64,
}

fn default_queue_max_pending() -> u64 {
    10_000
}

fn default_queue_max_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_take_timeout_s() -> u64 {
    300
}

fn default_cache_ttl_s() -> u64 {
    3600
}

/// A circuit breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed breaker.
    #[schemars(range(min = 1))]
    pub failure_threshold: u32,
    /// How long an open breaker refuses calls before letting probes through.
    #[schemars(range(min = 1))]
    pub recovery_timeout_ms: u64,
    /// Concurrent trial calls when half-open, and the successes that close it.
    #[schemars(range(min = 1))]
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            recovery_timeout_ms: 30_000,
            half_open_probes: 1,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Pretty on a terminal, JSON lines otherwise.
    #[default]
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable, coloured on a terminal.
    Pretty,
}

/// `telemetry:`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The log filter, as `RUST_LOG` (`info`, `ganglion_bus=debug,info`). Live.
    pub log_level: String,
    /// `auto`, `json` or `pretty`. Needs a restart.
    pub log_format: LogFormat,
    /// An OTLP/gRPC collector (`http://127.0.0.1:4317`); traces are off without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// A bearer token sent to the collector. A secret: only from the environment
    /// (`GANGLION__TELEMETRY__OTLP_TOKEN`) or `otlp_token_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_token: Option<Secret>,
    /// A file holding `otlp_token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_token_file: Option<PathBuf>,
    /// `service.name` on exported spans.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_level: "info".to_owned(),
            log_format: LogFormat::Auto,
            otlp_endpoint: None,
            otlp_token: None,
            otlp_token_file: None,
            service_name: "ganglion".to_owned(),
        }
    }
}

/// A feature flag.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Feature {
    /// Whether the flag is on.
    pub enabled: bool,
    /// What the flag is for.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Settings applied when the flag is on, over the environment and component layers
    /// (and under environment variables and flags). Same shape as the whole config.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub set: Option<serde_json::Value>,
}
