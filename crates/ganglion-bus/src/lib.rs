//! Ganglion's embedded event bus: the [`EventBus`] contract on one machine, over the
//! durable event log.
//!
//! # How an event flows
//!
//! `publish_batch` checks every event (the error names the field), drops duplicates by
//! idempotency key, and appends the durable ones to the event log in one append: when it
//! returns, they are durable under the log's policy (fsync before ack by default).
//! Ephemeral events (per [`BusOptions::storage_classes`]) skip the log and go straight to the
//! consumers connected now.
//!
//! Each subscription is served by a *consumer* (shared by the members of a queue group,
//! and kept across restarts for a durable name) that reads its pattern's events from the
//! log at its own cursor. See the `consumer` module for delivery, acks, redelivery and
//! dead letters, and [`ganglion_core::bus`] for the guarantees.
//!
//! # Bounded memory
//!
//! Every place an event waits is bounded in events and in bytes. The log's append queue
//! is bounded (publishers wait). Each consumer reads ahead at most `max_in_flight` + 256
//! events and [`BusOptions::subscriber_buffer_bytes`] of them, and has at most
//! `max_in_flight` events and `max_in_flight_bytes` out with subscribers unacked; the
//! rest stay in the log. Each consumer's ephemeral queue holds at most
//! [`BusOptions::ephemeral_buffer`] events and `subscriber_buffer_bytes` of them, and a
//! subscriber that lets it fill is closed with a reason (at-most-once events cannot wait
//! in a log). Deliveries wait for each subscriber in chunks of up to 256 (of 1,024
//! ephemeral events for a lone subscriber) and 1 MiB, at most 256 chunks and
//! `subscriber_buffer_bytes` of them ([`QueuedBytes`](ganglion_core::bus::QueuedBytes)).
//! A batch window closes at `batch.max_bytes`.
//!
//! # On disk
//!
//! `<data_dir>/log/` is the event log; `<data_dir>/consumers/<name>.state` holds each
//! durable consumer's floor, acked sequences above it and attempt counts. On open the
//! bus scans the log once to rebuild its topic list and the idempotency keys still
//! inside the dedupe window.

mod admin;
mod codec;
mod consumer;
mod dedupe;
mod dlq;
mod engine;
mod options;
mod publish;
mod recent;
mod recovery;
mod registry;
mod replay;
mod retention;
mod route;
mod state;
mod stats;
mod subscribe;
#[cfg(feature = "testing")]
pub mod testing;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ganglion_core::bus::{
    DeadLetter, PublishAck, ReplayPages, StartPosition, StorageClass, SubscribeOptions,
    Subscription, SubscriptionId, TopicInfo,
};
use ganglion_core::{BoxFuture, BusError, Clock, Event, EventBus, Pattern, Topic};
use ganglion_log::{Log, LogError};

pub use codec::{DecodeError, decode, encode, peek_topic};
pub use ganglion_core::bus::dead_letter::REDRIVEN_TYPE;
/// The event log under the bus, for its options.
pub use ganglion_log as log;
pub use options::{BusOptions, MAX_FIELD_BYTES, MAX_HEADERS};
pub use retention::RetentionRule;
pub use stats::SubscriptionStats;

use registry::{EphemeralTarget, Registry};
use replay::BusPages;
use subscribe::Attempt;

use dedupe::Dedupe;

#[derive(Debug, Clone, Copy, Default)]
struct TopicStats {
    storage: StorageClass,
    events: u64,
    first_seq: u64,
    last_seq: u64,
}

/// State shared by every handle of one bus and its consumer tasks.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) log: Log,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) states: state::StateStore,
    options: BusOptions,
    dedupe: Mutex<Dedupe>,
    topics: Mutex<BTreeMap<Topic, TopicStats>>,
    registry: Arc<Mutex<Registry>>,
    pub(crate) recent: recent::Recent,
    /// Every logged sequence below this has been routed to the consumers that match it
    /// (see `route`).
    pub(crate) routed_below: Arc<AtomicU64>,
    next_id: AtomicU64,
    closed: AtomicBool,
    /// The window of batch subscriptions that give none, in microseconds; live.
    batch_window_micros: AtomicU64,
    /// Age of events at their first delivery, sampled per delivery round.
    pub(crate) delivery_latency: ganglion_core::stats::Histogram,
    pub(crate) retention: retention::Retention,
    /// Dead letters published and redriven, by subscription (custom dead-letter topics
    /// included), for the gauge and the listing.
    dead_letter_counts: Mutex<HashMap<String, dlq::Counts>>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl Core {
    pub(crate) fn batch_window(&self) -> Duration {
        Duration::from_micros(self.batch_window_micros.load(Ordering::Relaxed))
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn log_error(e: LogError) -> BusError {
    match e {
        LogError::NoSpace { .. } | LogError::Failed { .. } => BusError::Unavailable(e.to_string()),
        LogError::Closed => BusError::Closed,
        LogError::RecordTooLarge { .. } => BusError::invalid("events", e),
        other => BusError::Internal(other.to_string()),
    }
}

impl Core {}

/// The embedded event bus. Cheap to clone; every clone is the same bus. When the last
/// clone is dropped the consumers stop (durable ones save their state) and the log
/// closes once they have; [`Bus::shutdown`] does the same and waits for it.
#[derive(Debug, Clone)]
pub struct Bus {
    core: Arc<Core>,
    _handle: Arc<Handle>,
}

/// Stops the consumers when the last [`Bus`] clone goes (they hold the core, so the
/// core alone would keep them, and the log, alive).
#[derive(Debug)]
struct Handle(Arc<Core>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.stop_consumers();
    }
}

impl Bus {
    /// Opens the bus in `options.data_dir`, recovering its log, topics, idempotency keys
    /// and (as their subscribers return) its durable consumers.
    pub fn open(options: BusOptions) -> Result<Bus, BusError> {
        Bus::open_inner(options, None)
    }

    /// Opens the bus with its log on `storage` (a `MemStorage` with faults injected, say)
    /// and its consumers' state in memory: for tests of what clients see when the disk
    /// fails.
    pub fn open_on_storage(
        options: BusOptions,
        storage: Arc<dyn ganglion_log::storage::Storage>,
    ) -> Result<Bus, BusError> {
        Bus::open_inner(options, Some(storage))
    }
}

impl Core {}

impl EventBus for Bus {
    fn publish_batch(
        &self,
        events: Vec<Event>,
    ) -> BoxFuture<'_, Result<Vec<PublishAck>, BusError>> {
        Box::pin(self.core.publish_internal(events))
    }

    fn subscribe(
        &self,
        pattern: Pattern,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Subscription, BusError>> {
        Box::pin(async move {
            if self.core.closed.load(Ordering::Acquire) {
                return Err(BusError::Closed);
            }
            options.validate()?;
            loop {
                match self.subscribe_now(pattern.clone(), options.clone())? {
                    Attempt::Subscribed(subscription) => return Ok(subscription),
                    Attempt::Retiring(mut finished) => {
                        let _ = finished.wait_for(|done| *done).await;
                    }
                }
            }
        })
    }

    fn unsubscribe(&self, id: SubscriptionId) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            if self.core.leave(id) {
                Ok(())
            } else {
                Err(BusError::NotFound {
                    what: format!("subscription {id}"),
                })
            }
        })
    }

    fn replay_pages(
        &self,
        pattern: Pattern,
        from: StartPosition,
        limit: usize,
        page_bytes: usize,
    ) -> BoxFuture<'_, Result<Box<dyn ReplayPages>, BusError>> {
        Box::pin(async move {
            let from = from.for_replay()?;
            let core = self.core.clone();
            let start = tokio::task::spawn_blocking(move || core.start_seq(from))
                .await
                .map_err(|e| BusError::Internal(e.to_string()))??;
            let pages: Box<dyn ReplayPages> = Box::new(BusPages {
                core: self.core.clone(),
                pattern,
                next: start,
                until: self.core.log.next_seq(),
                left: limit,
                page_bytes: page_bytes.max(1),
            });
            Ok(pages)
        })
    }

    fn dead_letters(
        &self,
        subscription: String,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<DeadLetter>, BusError>> {
        Box::pin(async move { self.letters(&subscription, limit).await })
    }

    fn redrive(
        &self,
        subscription: String,
        seqs: Vec<u64>,
    ) -> BoxFuture<'_, Result<u64, BusError>> {
        Box::pin(self.redrive_now(subscription, seqs))
    }

    fn topics(&self) -> BoxFuture<'_, Result<Vec<TopicInfo>, BusError>> {
        Box::pin(async move {
            let topics = lock(&self.core.topics);
            Ok(topics
                .iter()
                .map(|(topic, stats)| TopicInfo {
                    topic: topic.clone(),
                    storage: stats.storage,
                    events: stats.events,
                    last_seq: stats.last_seq,
                })
                .collect())
        })
    }
}
