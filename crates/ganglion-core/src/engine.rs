//! What a server needs of the engine under it: the [`EventBus`] contract that
//! components use, plus health, statistics, topic administration, retention and
//! shutdown. The embedded engine (`ganglion-bus`, a log on local disk) is one; the server
//! holds an `Arc<dyn Engine>` and knows nothing of how events are stored.

use std::time::Duration;

use crate::bus::{BusError, EventBus};
use crate::stats::HistogramSnapshot;
use crate::{BoxFuture, Pattern, Topic};

/// An engine under a server. Every method but the [`EventBus`] ones is for operators:
/// health checks, `/metrics`, the admin routes and configuration reloads.
pub trait Engine: EventBus + std::fmt::Debug {
    /// The engine's name, as `/api/v1/health` reports it (`embedded`).
    fn kind(&self) -> &'static str;

    /// Whether the engine takes writes now, and why not.
    fn health(&self) -> EngineHealth;

    /// Where events are stored, counted.
    fn storage(&self) -> StorageStats;

    /// Every subscription the engine knows: connected ones, and durable ones that are
    /// not connected now.
    fn subscriptions(&self) -> Vec<SubscriptionStats>;

    /// Publish → delivery latency of first deliveries, sampled.
    fn delivery_latency(&self) -> HistogramSnapshot;

    /// Dead letters not yet redriven, per subscription.
    fn dead_letter_counts(&self) -> Vec<(String, u64)>;

    /// Expires every event so far of the topics `pattern` matches; returns how many
    /// topics it matched and how many events they had been given.
    fn purge(&self, pattern: Pattern) -> BoxFuture<'_, Result<(u64, u64), BusError>>;

    /// Purges the topics `pattern` matches and forgets them; returns them and how many
    /// events they had been given.
    fn delete_topics(&self, pattern: Pattern)
    -> BoxFuture<'_, Result<(Vec<Topic>, u64), BusError>>;

    /// Replaces the retention rules (a configuration reload).
    fn set_retention(&self, rules: Vec<RetentionRule>) -> BoxFuture<'_, Result<(), BusError>>;

    /// The batch window a subscription gets when it names none (a configuration reload).
    fn set_batch_window(&self, window: Duration) -> Result<(), BusError>;

    /// The engine's periodic upkeep (retention sweeps every `every`), run by the server
    /// while it serves and dropped when it stops.
    fn upkeep(&self, every: Duration) -> BoxFuture<'static, ()>;

    /// Stops delivering and makes everything acknowledged durable.
    fn shutdown(&self) -> BoxFuture<'_, Result<(), BusError>>;
}

/// Whether an engine takes writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineHealth {
    /// Writes are accepted.
    Ok,
    /// The storage is full: writes are refused until space returns. Reads work.
    NoSpace { detail: String },
    /// The storage failed: writes are refused until the engine is reopened. Reads work.
    Failed { reason: String },
}

impl EngineHealth {
    pub fn is_ok(&self) -> bool {
        *self == EngineHealth::Ok
    }
}

/// Where an engine keeps its events, counted (for the embedded engine: its log).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Oldest retained sequence (== `next_seq` when nothing is kept).
    pub first_seq: u64,
    /// The sequence the next stored event gets.
    pub next_seq: u64,
    /// Files (or streams) the events are in.
    pub segments: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// Events stored since start.
    pub appends: u64,
    /// Flushes to stable storage since start, and their total duration.
    pub fsyncs: u64,
    pub fsync_micros_total: u64,
}

/// How long the engine keeps the events of the topics `pattern` matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRule {
    pub pattern: Pattern,
    /// Events older than this expire.
    pub max_age: Option<Duration>,
    /// Past the newest this many bytes of records, events expire.
    pub max_bytes: Option<u64>,
    /// Past the newest this many events, events expire.
    pub max_events: Option<u64>,
}

impl RetentionRule {
    /// Whether the rule limits by count or bytes (so its events must be counted).
    pub fn counts(&self) -> bool {
        self.max_bytes.is_some() || self.max_events.is_some()
    }
}

/// One consumer (a subscription, a queue group, or a durable name) as counted since it
/// started in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionStats {
    /// The durable name, the queue group, or the generated `sub-N`.
    pub name: String,
    pub pattern: String,
    pub queue_group: Option<String>,
    pub durable: bool,
    /// Subscribers attached now.
    pub members: usize,
    /// Events handed to subscribers (each event of a batch window counts), redeliveries
    /// included.
    pub delivered: u64,
    /// Deliveries after the first attempt.
    pub redelivered: u64,
    /// Stored events acknowledged (by the subscriber, or at delivery under auto ack).
    pub acked: u64,
    pub nacked: u64,
    /// In-flight events whose ack deadline passed (each becomes a failed attempt).
    pub ack_timeouts: u64,
    /// Events published to the dead-letter topic (out of attempts, or termed).
    pub dead_lettered: u64,
    /// Events that expired under retention (or a purge) before this subscription read
    /// them.
    pub expired: u64,
    /// Events in memory waiting for a subscriber (the rest wait in storage).
    pub ready: u64,
    /// Stored events out with subscribers, not yet acked.
    pub in_flight: u64,
    /// Its own events not read by it yet; for a durable with no subscriber now, the
    /// stored events (every topic's) from where it will resume (its first unacked
    /// event).
    pub lag: u64,
    /// Where its dead letters go.
    pub dead_letter_topic: String,
    /// Dead letters published for it and not redriven.
    pub dead_letters: u64,
}
