//! How a bus is opened: where it keeps its data and its bounds.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::{RetentionRule, route};
use ganglion_core::bus::StorageClass;
use ganglion_core::{Clock, Pattern, SystemClock, Topic};
use ganglion_log::LogOptions;

/// Longest id, type, source, content type or header name, in bytes.
pub const MAX_FIELD_BYTES: usize = 256;
/// Most headers on one event.
pub const MAX_HEADERS: usize = 64;

/// Options of an embedded bus.
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// Where the log and the durable consumers' state live.
    pub data_dir: PathBuf,
    pub log: LogOptions,
    /// Largest event (payload, strings and headers). Default 1 MiB.
    pub max_event_bytes: usize,
    /// How long an idempotency key is remembered. Default 2 min.
    pub dedupe_window: Duration,
    /// Storage class per topic pattern; the first match wins, and a topic no pattern
    /// matches is durable.
    pub storage_classes: Vec<(Pattern, StorageClass)>,
    /// Ephemeral events a consumer may hold (and no more than `subscriber_buffer_bytes`
    /// of them). When it is full, publishers wait for room (flow control) for up to
    /// `slow_consumer_grace`. Default 65,536.
    pub ephemeral_buffer: usize,
    /// Bytes of events ([`Event::size`]) that may wait for one subscriber in each of the
    /// places events wait: read ahead from the log, queued ephemeral events, and handed
    /// to each member and not yet taken. Unacked events out with subscribers are bounded
    /// by [`SubscribeOptions::max_in_flight_bytes`]. Default 8 MiB.
    pub subscriber_buffer_bytes: usize,
    /// Most sequences of logged events routed to one consumer and not read by it yet,
    /// in each of two places (8 bytes each); past that the consumer reads the log
    /// itself until it has caught up. Default 65,536 (512 KiB).
    pub routed_queue: usize,
    /// How long publishers wait for a consumer with a full ephemeral buffer before its
    /// subscribers are closed as too slow. Default 1 s.
    pub slow_consumer_grace: Duration,
    /// Where time comes from (timestamps, deadlines, backoff, windows, dedupe).
    pub clock: Arc<dyn Clock>,
    /// Keep the log and the consumers' state in memory instead of `data_dir` (for
    /// tests: see `testing::TestBus`, with the `testing` feature). Nothing survives the bus.
    pub in_memory: bool,
    /// The window of batch subscriptions that do not give one. Default 100 ms; change it
    /// live with [`Bus::set_batch_window`].
    pub batch_window: Duration,
    /// How long the log keeps events, by topic pattern (first match wins; a topic no
    /// rule matches keeps its events). Change it live with [`Bus::set_retention`]. See
    /// the `retention` module for what expiry means. Default: none.
    pub retention: Vec<RetentionRule>,
}

impl BusOptions {
    /// Defaults, with data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        BusOptions {
            data_dir: data_dir.into(),
            log: LogOptions::default(),
            max_event_bytes: 1024 * 1024,
            dedupe_window: Duration::from_secs(120),
            storage_classes: Vec::new(),
            in_memory: false,
            ephemeral_buffer: 65_536,
            subscriber_buffer_bytes: 8 * 1024 * 1024,
            routed_queue: route::MAX_PENDING,
            slow_consumer_grace: Duration::from_secs(1),
            clock: Arc::new(SystemClock),
            batch_window: Duration::from_millis(100),
            retention: Vec::new(),
        }
    }

    pub(crate) fn storage_class(&self, topic: &Topic) -> StorageClass {
        self.storage_classes
            .iter()
            .find(|(p, _)| p.matches(topic))
            .map_or(StorageClass::Durable, |(_, class)| *class)
    }
}
