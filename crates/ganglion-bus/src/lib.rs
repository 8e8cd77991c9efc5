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

mod codec;
mod consumer;
mod dedupe;
mod dlq;
mod engine;
mod recent;
mod retention;
mod route;
mod state;
mod stats;
#[cfg(feature = "testing")]
pub mod testing;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use ganglion_core::bus::{
    DeadLetter, PublishAck, QueuedBytes, REPLAY_PAGE_BYTES, ReplayPages, StartPosition,
    StorageClass, SubscribeOptions, Subscription, SubscriptionControl, SubscriptionId, TopicInfo,
};
use ganglion_core::{
    BoxFuture, BusError, Clock, Event, EventBus, Pattern, PatternIndex, SystemClock, Topic,
};
use ganglion_log::{Log, LogError, LogOptions};
use tokio::sync::{mpsc, watch};

pub use codec::{DecodeError, decode, encode, peek_topic};
pub use dlq::REDRIVEN_TYPE;
/// The event log under the bus, for its options.
pub use ganglion_log as log;
pub use retention::RetentionRule;
pub use stats::SubscriptionStats;

use consumer::{Consumer, ConsumerShared, ConsumerSpec, Control, Member};
use dedupe::{Check, Dedupe};

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

    fn storage_class(&self, topic: &Topic) -> StorageClass {
        self.storage_classes
            .iter()
            .find(|(p, _)| p.matches(topic))
            .map_or(StorageClass::Durable, |(_, class)| *class)
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct TopicStats {
    storage: StorageClass,
    events: u64,
    first_seq: u64,
    last_seq: u64,
}

/// A consumer known to the bus.
#[derive(Debug)]
struct Entry {
    name: String,
    pattern: Pattern,
    queue_group: Option<String>,
    dlq_topic: Topic,
    control: mpsc::UnboundedSender<Control>,
    ephemeral: mpsc::UnboundedSender<Vec<Arc<Event>>>,
    members: HashSet<SubscriptionId>,
    finished: watch::Receiver<bool>,
    shared: Arc<ConsumerShared>,
    cut_off: bool,
    /// Where logged events matching `pattern` are handed to the consumer.
    route: Arc<route::Route>,
}

/// Hands a committed group of records (`first_seq` on) to the consumers whose pattern
/// matches each, wakes them, and marks the group routed. Runs on the log's writer
/// thread, in sequence order.
fn route_committed(
    registry: &Mutex<Registry>,
    routed_below: &AtomicU64,
    first_seq: u64,
    records: &[Bytes],
) {
    let end = first_seq + records.len() as u64;
    let mut woken: Vec<Arc<route::Route>> = Vec::new();
    {
        let registry = lock(registry);
        if !registry.consumers.is_empty() {
            // Records of one topic usually come in runs: match each run once and hand
            // it over whole.
            let mut run: Option<(&str, u64)> = None;
            let mut matched: Vec<&Arc<route::Route>> = Vec::new();
            for (seq, record) in (first_seq..).zip(records) {
                // An undecodable record goes to no one (a consumer reading it from the
                // log skips it too).
                let topic = codec::peek_topic(record, seq).ok();
                if run.is_some_and(|(t, _)| Some(t) == topic) {
                    continue;
                }
                if let Some((_, start)) = run.take() {
                    matched.iter().for_each(|r| r.push(start..seq));
                }
                matched.clear();
                if let Some(topic) = topic {
                    registry.index.for_each_match_str(topic, |key| {
                        if let Some(entry) = registry.consumers.get(key) {
                            matched.push(&entry.route);
                        }
                    });
                    woken.extend(matched.iter().map(|r| Arc::clone(r)));
                    run = Some((topic, seq));
                }
            }
            if let Some((_, start)) = run {
                matched.iter().for_each(|r| r.push(start..end));
            }
        }
        woken.sort_unstable_by_key(|r| Arc::as_ptr(r) as usize);
        woken.dedup_by(|a, b| Arc::ptr_eq(a, b));
        // Under the registry's lock: a consumer registering now either saw this group
        // routed to it, or reads it from the log itself.
        routed_below.store(end, Ordering::Release);
    }
    for route in woken {
        route.wake();
    }
}

/// A durable subscription with no subscriber now: what it is and what it counted, so
/// listings and metrics keep showing it (and its backlog) while it is away.
#[derive(Debug)]
struct Parked {
    pattern: String,
    dlq_topic: String,
    counters: Arc<stats::ConsumerCounters>,
}

#[derive(Debug, Default)]
struct Registry {
    consumers: HashMap<String, Entry>,
    /// Durables without a subscriber, by name.
    parked: HashMap<String, Parked>,
    members: HashMap<SubscriptionId, String>,
    /// Consumer keys by pattern: which consumers an event goes to (ephemeral events as
    /// they are published, logged ones as the log commits them; see `route`).
    index: PatternIndex<String>,
    /// Durable consumers that were stopped and may still be writing their state.
    retiring: HashMap<String, watch::Receiver<bool>>,
}

/// A consumer's key, its ephemeral queue and permits, and the events of one
/// publication for it.
type EphemeralTarget = (
    String,
    mpsc::UnboundedSender<Vec<Arc<Event>>>,
    Arc<ConsumerShared>,
    Vec<Arc<Event>>,
);

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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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

/// Checks one event to publish and fills in its id and timestamp.
fn prepare(i: usize, event: &mut Event, now_ms: u64, max_bytes: usize) -> Result<(), BusError> {
    let field = |name: &str| format!("events[{i}].{name}");
    for (name, len) in [
        ("id", event.id.len()),
        ("type", event.event_type.len()),
        ("source", event.source.len()),
        ("content_type", event.content_type.len()),
    ] {
        if len > MAX_FIELD_BYTES {
            return Err(BusError::invalid(
                field(name),
                format!("is {len} bytes; at most {MAX_FIELD_BYTES} are allowed"),
            ));
        }
    }
    if event.headers.len() > MAX_HEADERS {
        return Err(BusError::invalid(
            field("headers"),
            format!(
                "has {} headers; at most {MAX_HEADERS} are allowed",
                event.headers.len()
            ),
        ));
    }
    for name in event.headers.keys() {
        if name.is_empty() || name.len() > MAX_FIELD_BYTES {
            return Err(BusError::invalid(
                field("headers"),
                format!(
                    "header names must be 1 to {MAX_FIELD_BYTES} bytes; got {:?}",
                    name
                ),
            ));
        }
    }
    if event.size() > max_bytes {
        return Err(BusError::TooLarge {
            field: field("payload"),
            size: event.size(),
            limit: max_bytes,
        });
    }
    if event.timestamp_ms == 0 {
        event.timestamp_ms = now_ms;
    }
    event.seq = 0;
    Ok(())
}

impl Core {
    /// Publishes prepared events; the bus's own publications (dead letters, redrives)
    /// come through here too.
    pub(crate) async fn publish_internal(
        &self,
        mut events: Vec<Event>,
    ) -> Result<Vec<PublishAck>, BusError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        if events.is_empty() {
            return Err(BusError::invalid(
                "events",
                "at least one event is required",
            ));
        }
        let now_ms = self.clock.now_micros() / 1000;
        // Published while handling another event: carry its correlation and trace on
        // (before the checks: the headers added count against the limits). The publish
        // spans (when traced) end once the events are durable and routed.
        let _spans = ganglion_core::trace::publishing(&mut events);
        for (i, event) in events.iter_mut().enumerate() {
            prepare(i, event, now_ms, self.options.max_event_bytes)?;
        }
        // Events of one topic usually come in runs: classify each run once.
        let mut run: Option<(&Topic, StorageClass)> = None;
        let classes: Vec<StorageClass> = events
            .iter()
            .map(|e| match run {
                Some((topic, class)) if *topic == e.topic => class,
                _ => {
                    let class = self.options.storage_class(&e.topic);
                    run = Some((&e.topic, class));
                    class
                }
            })
            .collect();
        let mut acks: Vec<Option<PublishAck>> = vec![None; events.len()];

        // Idempotency keys: reserve new ones, answer duplicates, wait out keys in flight.
        let mut reserved: HashMap<String, usize> = HashMap::new();
        let mut same_as: Vec<(usize, usize)> = Vec::new();
        loop {
            let mut waits = Vec::new();
            {
                let now = self.clock.now_micros();
                let mut dedupe = lock(&self.dedupe);
                for (i, event) in events.iter().enumerate() {
                    if classes[i] != StorageClass::Durable || acks[i].is_some() {
                        continue;
                    }
                    let Some(key) = event.idempotency_key() else {
                        continue;
                    };
                    if let Some(&first) = reserved.get(key) {
                        if first != i && !same_as.contains(&(i, first)) {
                            same_as.push((i, first));
                        }
                        continue;
                    }
                    match dedupe.check(key, now) {
                        Check::Reserved => {
                            reserved.insert(key.to_owned(), i);
                        }
                        Check::Duplicate(ack) => acks[i] = Some(ack),
                        Check::Wait(settled) => waits.push(settled),
                    }
                }
                if !waits.is_empty() {
                    // Never hold reservations while waiting for someone else's.
                    for key in reserved.keys() {
                        dedupe.settle(key, None);
                    }
                    reserved.clear();
                    same_as.clear();
                }
            }
            if waits.is_empty() {
                break;
            }
            for mut settled in waits {
                let _ = settled.wait_for(|done| *done).await;
            }
        }

        let duplicates: HashSet<usize> = same_as.iter().map(|(i, _)| *i).collect();
        let to_log: Vec<usize> = (0..events.len())
            .filter(|&i| {
                classes[i] == StorageClass::Durable && acks[i].is_none() && !duplicates.contains(&i)
            })
            .collect();
        if !to_log.is_empty() {
            let records: Vec<Bytes> = to_log.iter().map(|&i| codec::encode(&events[i])).collect();
            let lens: Vec<u64> = if self.retention.counts() {
                records.iter().map(|r| r.len() as u64).collect()
            } else {
                Vec::new()
            };
            let result = self.log.append(records).await;
            let mut dedupe = lock(&self.dedupe);
            let ack = match result {
                Ok(ack) => ack,
                Err(e) => {
                    for key in reserved.keys() {
                        dedupe.settle(key, None);
                    }
                    return Err(log_error(e));
                }
            };
            if !lens.is_empty() {
                self.retention
                    .record(to_log.iter().zip(&lens).enumerate().map(|(n, (&i, &len))| {
                        (events[i].topic.as_str(), ack.first_seq + n as u64, len)
                    }));
            }
            let expires = ack.timestamp_micros + self.options.dedupe_window.as_micros() as u64;
            let mut topics = lock(&self.topics);
            for (n, &i) in to_log.iter().enumerate() {
                let seq = ack.first_seq + n as u64;
                let published = PublishAck {
                    seq,
                    id: events[i].id.clone(),
                    duplicate: false,
                };
                if let Some(key) = events[i].idempotency_key() {
                    dedupe.settle(key, Some((published.clone(), expires)));
                }
                acks[i] = Some(published);
                events[i].seq = seq;
                let stats = topics.entry(events[i].topic.clone()).or_default();
                stats.events += 1;
                stats.last_seq = seq;
                if stats.first_seq == 0 {
                    stats.first_seq = seq;
                }
            }
        }
        for (i, first) in same_as {
            acks[i] = acks[first].clone().map(|a| PublishAck {
                duplicate: true,
                ..a
            });
        }
        let mut logged = Vec::with_capacity(to_log.len());
        let mut ephemeral = Vec::new();
        for (i, event) in events.into_iter().enumerate() {
            if classes[i] == StorageClass::Ephemeral {
                acks[i] = Some(PublishAck {
                    seq: 0,
                    id: event.id.clone(),
                    duplicate: false,
                });
                ephemeral.push(Arc::new(event));
            } else if event.seq != 0 {
                logged.push(Arc::new(event));
            }
        }
        if !logged.is_empty() {
            self.count_dead_letters(logged.iter().map(|e| &**e));
            self.recent.add(logged);
        }
        if !ephemeral.is_empty() {
            self.route_ephemeral(ephemeral).await;
        }
        Ok(acks
            .into_iter()
            .map(|a| a.expect("every event was acknowledged"))
            .collect())
    }

    /// Hands ephemeral events to the consumers whose pattern matches. A consumer whose
    /// queue is full slows the publisher down for up to `slow_consumer_grace`; if it
    /// still has no room, its subscribers are closed as too slow.
    async fn route_ephemeral(&self, events: Vec<Arc<Event>>) {
        // Under the locks: count the topics and sort the events per consumer.
        let mut targets: Vec<EphemeralTarget> = Vec::new();
        {
            let mut topics = lock(&self.topics);
            let registry = lock(&self.registry);
            // Events of one topic usually come in runs: match each run once.
            let mut last_topic: Option<Topic> = None;
            let mut stats: Option<&mut TopicStats> = None;
            let mut matched: Vec<usize> = Vec::new();
            for event in events {
                if last_topic.as_ref() != Some(&event.topic) {
                    let s = topics.entry(event.topic.clone()).or_default();
                    s.storage = StorageClass::Ephemeral;
                    stats = Some(s);
                    last_topic = Some(event.topic.clone());
                    matched.clear();
                    registry.index.for_each_match(&event.topic, |key| {
                        if let Some(i) = targets.iter().position(|t| t.0 == *key) {
                            matched.push(i);
                        } else if let Some(entry) =
                            registry.consumers.get(key).filter(|e| !e.cut_off)
                        {
                            let target = (
                                key.clone(),
                                entry.ephemeral.clone(),
                                entry.shared.clone(),
                                Vec::new(),
                            );
                            targets.push(target);
                            matched.push(targets.len() - 1);
                        }
                    });
                }
                if let Some(s) = stats.as_deref_mut() {
                    s.events += 1;
                }
                // The last consumer takes the event itself: a lone subscriber costs no
                // reference count.
                if let Some((&last, others)) = matched.split_last() {
                    for &i in others {
                        targets[i].3.push(event.clone());
                    }
                    targets[last].3.push(event);
                }
            }
        }
        for (key, tx, shared, mut events) in targets {
            while !events.is_empty() {
                // As many events as the consumer's buffer takes at once (at least one).
                let (mut take, mut cost) = (0, 0);
                for event in &events {
                    let c = shared.ephemeral_cost(event);
                    if take > 0 && cost + c > shared.ephemeral_budget {
                        break;
                    }
                    take += 1;
                    cost += c;
                }
                let rest = events.split_off(take);
                let units = u32::try_from(cost).unwrap_or(u32::MAX);
                let permits = &shared.ephemeral_permits;
                let granted = match permits.try_acquire_many(units) {
                    Ok(permit) => Some(permit),
                    Err(tokio::sync::TryAcquireError::Closed) => None,
                    Err(tokio::sync::TryAcquireError::NoPermits) => {
                        let deadline = self.clock.monotonic() + self.options.slow_consumer_grace;
                        tokio::select! {
                            permit = permits.acquire_many(units) => permit.ok(),
                            _ = self.clock.sleep_until(deadline) => {
                                self.cut_off_slow(&key);
                                None
                            }
                        }
                    }
                };
                let Some(permit) = granted else { break };
                // The consumer returns the permits as the events leave it.
                permit.forget();
                if tx.send(events).is_err() {
                    break;
                }
                events = rest;
            }
        }
    }

    fn cut_off_slow(&self, key: &str) {
        let mut registry = lock(&self.registry);
        if let Some(entry) = registry.consumers.get_mut(key)
            && !entry.cut_off
        {
            entry.cut_off = true;
            let reason = format!(
                "slow consumer: its buffer of ephemeral events ({} events or {} bytes) stayed full for more than {} ms",
                self.options.ephemeral_buffer,
                self.options.subscriber_buffer_bytes,
                self.options.slow_consumer_grace.as_millis()
            );
            let _ = entry.control.send(Control::CutOff(reason));
        }
    }

    /// Removes a member; the consumer stops when its last member is gone.
    fn leave(&self, id: SubscriptionId) -> bool {
        let mut registry = lock(&self.registry);
        let Some(key) = registry.members.remove(&id) else {
            return false;
        };
        let Some(entry) = registry.consumers.get_mut(&key) else {
            return true;
        };
        entry.members.remove(&id);
        let _ = entry.control.send(Control::Leave(id));
        if entry.members.is_empty() {
            let entry = registry.consumers.remove(&key).expect("entry exists");
            registry.index.remove(&entry.pattern, &key);
            entry.route.close(self.routed_below.load(Ordering::Acquire));
            let _ = entry.control.send(Control::Stop);
            if entry.shared.durable {
                entry.shared.counters.in_flight.store(0, Ordering::Relaxed);
                entry.shared.counters.ready.store(0, Ordering::Relaxed);
                registry.parked.insert(
                    entry.name.clone(),
                    Parked {
                        pattern: entry.pattern.to_string(),
                        dlq_topic: entry.dlq_topic.to_string(),
                        counters: entry.shared.counters.clone(),
                    },
                );
            }
            registry.retiring.insert(key, entry.finished);
        }
        true
    }

    fn start_seq(&self, start: StartPosition) -> Result<u64, BusError> {
        Ok(match start {
            StartPosition::New => self.log.next_seq(),
            StartPosition::All => self.log.first_seq(),
            StartPosition::Seq(seq) => seq.max(1),
            StartPosition::Time(t) => self
                .log
                .seq_at_time(t)
                .map_err(log_error)?
                .unwrap_or_else(|| self.log.next_seq()),
        })
    }

    /// One page of logged events matching `pattern`, from `from` on, scanning the log
    /// no further than `until` (exclusive): at most `limit` events and `max_bytes` of
    /// them (always at least one). Returns the page and where the next one starts.
    fn scan_page(
        &self,
        pattern: &Pattern,
        from: u64,
        until: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Event>, u64), BusError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut next = from;
        while out.len() < limit && next < until && (out.is_empty() || bytes < max_bytes) {
            let records = self.log.read(next, 1024).map_err(log_error)?;
            let Some(last) = records.last() else { break };
            let end = last.seq + 1;
            for record in records {
                if record.seq >= until
                    || out.len() >= limit
                    || (!out.is_empty() && bytes >= max_bytes)
                {
                    // Stopped before this record: the next page starts with it.
                    return Ok((out, record.seq));
                }
                match codec::decode_matching(&record.payload, record.seq, pattern) {
                    Ok(Some(event)) if !self.retention.expired(event.topic.as_str(), event.seq) => {
                        bytes += event.size();
                        out.push(event);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "skipping undecodable record"),
                }
            }
            next = end;
        }
        Ok((out, next))
    }

    /// The dead-letter topic of the consumer called `name`.
    fn dlq_topic_of(&self, name: &str) -> Result<Topic, BusError> {
        if let Some(entry) = lock(&self.registry)
            .consumers
            .values()
            .find(|e| e.name == name)
        {
            return Ok(entry.dlq_topic.clone());
        }
        if let Ok(Some(state)) = self.states.load(name)
            && let Ok(topic) = Topic::new(&state.dlq_topic)
        {
            return Ok(topic);
        }
        dlq::default_topic(name)
            .ok_or_else(|| BusError::invalid("subscription", "is not a valid subscription name"))
    }

    /// The oldest `limit` dead letters of `name` not yet redriven, read a page at a time
    /// (markers first, then the letters), so memory holds `limit` letters, not the
    /// dead-letter topic's whole history.
    fn dead_letters(&self, name: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        let topic = self.dlq_topic_of(name)?;
        let first = lock(&self.topics).get(&topic).map(|s| s.first_seq);
        let Some(first) = first else {
            return Ok(Vec::new());
        };
        let pattern = Pattern::from(topic);
        let until = self.log.next_seq();
        let pages = |visit: &mut dyn FnMut(Vec<Event>) -> bool| -> Result<(), BusError> {
            let mut next = first;
            while next < until {
                let (page, after) =
                    self.scan_page(&pattern, next, until, 4096, REPLAY_PAGE_BYTES)?;
                if page.is_empty() || !visit(page) {
                    break;
                }
                next = after;
            }
            Ok(())
        };
        let mut redriven = HashSet::new();
        pages(&mut |page| {
            redriven.extend(dlq::redriven(&page));
            true
        })?;
        let mut letters = Vec::new();
        pages(&mut |page| {
            letters.extend(dlq::live(page, &redriven));
            letters.truncate(limit);
            letters.len() < limit
        })?;
        Ok(letters)
    }
}

/// A replay of the embedded bus, a page at a time.
#[derive(Debug)]
struct BusPages {
    core: Arc<Core>,
    pattern: Pattern,
    next: u64,
    until: u64,
    left: usize,
    page_bytes: usize,
}

impl ReplayPages for BusPages {
    fn next_page(&mut self) -> BoxFuture<'_, Result<Option<Vec<Event>>, BusError>> {
        Box::pin(async move {
            if self.left == 0 || self.next >= self.until {
                return Ok(None);
            }
            let core = self.core.clone();
            let (pattern, next, until, left, bytes) = (
                self.pattern.clone(),
                self.next,
                self.until,
                self.left,
                self.page_bytes,
            );
            let (page, after) = tokio::task::spawn_blocking(move || {
                core.scan_page(&pattern, next, until, left, bytes)
            })
            .await
            .map_err(|e| BusError::Internal(e.to_string()))??;
            self.next = after;
            self.left -= page.len();
            Ok((!page.is_empty()).then_some(page))
        })
    }
}

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

    fn open_inner(
        options: BusOptions,
        storage: Option<Arc<dyn ganglion_log::storage::Storage>>,
    ) -> Result<Bus, BusError> {
        let log_options = LogOptions {
            clock: options.clock.clone(),
            ..options.log.clone()
        };
        let unavailable = |e: LogError| BusError::Unavailable(e.to_string());
        let on_disk = !options.in_memory && storage.is_none();
        let (log, states) = if options.in_memory || storage.is_some() {
            let storage =
                storage.unwrap_or_else(|| Arc::new(ganglion_log::storage::MemStorage::new()));
            let log = Log::open_with_storage(storage, "/ganglion/log", log_options)
                .map_err(unavailable)?;
            (log, state::StateStore::Memory(Mutex::default()))
        } else {
            let consumers_dir = options.data_dir.join("consumers");
            std::fs::create_dir_all(&consumers_dir).map_err(|e| {
                BusError::Unavailable(format!("creating {}: {e}", consumers_dir.display()))
            })?;
            ganglion_core::fs::remove_stale_temporaries(&consumers_dir);
            let log = Log::open(options.data_dir.join("log"), log_options).map_err(unavailable)?;
            (log, state::StateStore::Dir(consumers_dir))
        };
        let batch_window_micros = AtomicU64::new(micros(options.batch_window));
        let purges = on_disk.then(|| options.data_dir.join("purges"));
        let retention = retention::Retention::new(options.retention.clone(), purges)?;
        let core = Core {
            retention,
            dead_letter_counts: Mutex::default(),
            log,
            batch_window_micros,
            delivery_latency: Default::default(),
            clock: options.clock.clone(),
            states,
            options,
            dedupe: Mutex::new(Dedupe::default()),
            topics: Mutex::new(BTreeMap::new()),
            registry: Arc::default(),
            recent: recent::Recent::default(),
            routed_below: Arc::default(),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        };
        core.rebuild()?;
        core.park_saved_durables();
        core.routed_below
            .store(core.log.next_seq(), Ordering::Release);
        // (Before the hook is set: nothing is appended while the bus opens.)
        let core = Arc::new(core);
        // The hook holds the registry and the mark, not the core: the last handle to the
        // core must never be dropped on the log's own writer thread.
        let (registry, routed_below) = (core.registry.clone(), core.routed_below.clone());
        core.log.on_commit(Box::new(move |first_seq, records| {
            route_committed(&registry, &routed_below, first_seq, records);
        }));
        Ok(Bus {
            _handle: Arc::new(Handle(core.clone())),
            core,
        })
    }

    /// Sets the window of batch subscriptions that do not give one; windows opened from
    /// now on use it (one already open closes on its old schedule). A zero window is
    /// refused.
    pub fn set_batch_window(&self, window: Duration) -> Result<(), BusError> {
        if window.is_zero() {
            return Err(BusError::invalid(
                "batch_window",
                "must be longer than zero",
            ));
        }
        self.core
            .batch_window_micros
            .store(micros(window), Ordering::Relaxed);
        tracing::info!(
            window_ms = window.as_millis() as u64,
            "default batch window set"
        );
        Ok(())
    }

    /// The window of batch subscriptions that do not give one.
    pub fn batch_window(&self) -> Duration {
        self.core.batch_window()
    }

    /// Every subscription: the consumers running now (a subscription, a queue group or
    /// a durable name, as one), and the durables with no subscriber now, with what each
    /// counted since this process started, its lag and its dead letters.
    pub fn subscriptions(&self) -> Vec<SubscriptionStats> {
        let next_seq = self.core.log.next_seq();
        let dead = lock(&self.core.dead_letter_counts).clone();
        let dead_letters = |name: &str| dead.get(name).map_or(0, |c| c.live());
        let registry = lock(&self.core.registry);
        let running = registry.consumers.values().map(|e| {
            let mut stats = e.shared.counters.report(
                &e.name,
                e.pattern.to_string(),
                e.queue_group.clone(),
                e.shared.durable,
                e.members.len(),
                next_seq,
            );
            stats.dead_letter_topic = e.dlq_topic.to_string();
            stats.dead_letters = dead_letters(&e.name);
            // Running, it is behind by its own unread events only.
            stats.lag = e.shared.counters.behind.load(Ordering::Relaxed) + e.route.len() as u64;
            stats
        });
        let parked = registry.parked.iter().map(|(name, p)| {
            let mut stats = p
                .counters
                .report(name, p.pattern.clone(), None, true, 0, next_seq);
            stats.dead_letter_topic = p.dlq_topic.clone();
            stats.dead_letters = dead_letters(name);
            stats
        });
        let mut stats: Vec<SubscriptionStats> = running.chain(parked).collect();
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        stats
    }

    /// Dead letters not redriven, by subscription (custom dead-letter topics included).
    pub fn dead_letter_counts(&self) -> Vec<(String, u64)> {
        let mut counts: Vec<(String, u64)> = lock(&self.core.dead_letter_counts)
            .iter()
            .map(|(name, c)| (name.clone(), c.live()))
            .collect();
        counts.sort();
        counts
    }

    /// How old events are at their first delivery (from their timestamp, in whole
    /// milliseconds), sampled once per delivery round of each consumer.
    pub fn delivery_latency(&self) -> ganglion_core::stats::HistogramSnapshot {
        self.core.delivery_latency.snapshot()
    }

    /// The event log under the bus.
    pub fn log(&self) -> &Log {
        &self.core.log
    }

    /// The retention rules in force.
    pub fn retention(&self) -> Vec<RetentionRule> {
        self.core.retention.rules().to_vec()
    }

    /// Replaces the retention rules (a reloaded config): what expires changes at the next
    /// pass ([`apply_retention`](Self::apply_retention)); reads the log through once
    /// to count the rules' events.
    pub async fn set_retention(&self, rules: Vec<RetentionRule>) -> Result<(), BusError> {
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || core.retention.set_rules(rules, &core.log))
            .await
            .map_err(|e| BusError::Internal(e.to_string()))??;
        tracing::info!("retention rules changed");
        self.apply_retention().await.map(drop)
    }

    /// One retention pass now: works out what has expired (by age on the bus's clock,
    /// by count, by bytes, by purge) and deletes the oldest segments whose every record
    /// has; returns the records deleted. [`run_retention`](Self::run_retention) does
    /// this every `every`.
    pub async fn apply_retention(&self) -> Result<u64, BusError> {
        let core = self.core.clone();
        let below = tokio::task::spawn_blocking(move || {
            let now = core.clock.now_micros();
            core.retention.pass(&core.log, now)
        })
        .await
        .map_err(|e| BusError::Internal(e.to_string()))??;
        let Some(below) = below else {
            return Ok(0);
        };
        let report = self
            .core
            .log
            .delete_before(below)
            .await
            .map_err(log_error)?;
        if report.segments_deleted > 0 {
            tracing::info!(
                segments = report.segments_deleted,
                records = report.records_deleted,
                bytes = report.bytes_deleted,
                "retention deleted segments whose every event had expired"
            );
        }
        Ok(report.records_deleted)
    }

    /// Applies retention every `every` until the bus closes.
    pub fn run_retention(
        &self,
        every: Duration,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let bus = Arc::downgrade(&self.core);
        let handle = Arc::downgrade(&self._handle);
        async move {
            loop {
                tokio::time::sleep(every).await;
                let (Some(core), Some(handle)) = (bus.upgrade(), handle.upgrade()) else {
                    return;
                };
                if core.closed.load(Ordering::Acquire) {
                    return;
                }
                let bus = Bus {
                    core,
                    _handle: handle,
                };
                if let Err(error) = bus.apply_retention().await {
                    tracing::warn!(%error, "retention pass failed; will retry");
                }
            }
        }
    }

    /// Purges the topics `pattern` matches: every event published to them so far
    /// expires at once (replays and subscribers no longer see them; the disk space comes
    /// back as retention deletes segments). Returns how many topics matched and how
    /// many events they had been given since the log began (or their last purge).
    pub fn purge(&self, pattern: &Pattern) -> Result<(u64, u64), BusError> {
        let below = self.core.log.next_seq();
        self.core.retention.purge(pattern.clone(), below)?;
        let mut topics = lock(&self.core.topics);
        let (mut matched, mut events) = (0, 0);
        for (topic, stats) in topics.iter_mut() {
            if pattern.matches(topic) && stats.storage == StorageClass::Durable {
                matched += 1;
                events += stats.events;
                stats.events = 0;
                stats.first_seq = 0;
            }
        }
        tracing::info!(%pattern, topics = matched, events, "topics purged");
        Ok((matched, events))
    }

    /// Purges the topics `pattern` matches and forgets them (they are listed again once
    /// something is published to them). Returns the topics deleted and their events.
    pub fn delete_topics(&self, pattern: &Pattern) -> Result<(Vec<Topic>, u64), BusError> {
        let (_, events) = self.purge(pattern)?;
        let mut topics = lock(&self.core.topics);
        let deleted: Vec<Topic> = topics
            .keys()
            .filter(|t| pattern.matches(t))
            .cloned()
            .collect();
        for topic in &deleted {
            topics.remove(topic);
        }
        tracing::info!(%pattern, topics = deleted.len(), "topics deleted");
        Ok((deleted, events))
    }

    /// Stops every consumer (durable ones save their state), refuses further calls, and
    /// syncs the log. Subscribers see their subscriptions end.
    pub async fn shutdown(&self) -> Result<(), BusError> {
        for mut f in self.core.stop_consumers() {
            let _ = f.wait_for(|done| *done).await;
        }
        self.core.log.sync().await.map_err(log_error)
    }

    fn subscribe_now(
        &self,
        pattern: Pattern,
        options: SubscribeOptions,
    ) -> Result<Attempt, BusError> {
        let core = &self.core;
        let id = SubscriptionId(core.next_id.fetch_add(1, Ordering::Relaxed));
        let (key, name) = match (&options.durable, &options.queue_group) {
            (Some(durable), _) => (format!("d:{durable}"), durable.clone()),
            (None, Some(group)) => (format!("q:{group}:{pattern}"), group.clone()),
            (None, None) => (format!("s:{id}"), id.to_string()),
        };
        let mut registry = lock(&core.registry);
        // A durable consumer stopped a moment ago may still be saving its state: wait for
        // it before loading that state.
        if let Some(finished) = registry.retiring.get(&key) {
            if !*finished.borrow() {
                return Ok(Attempt::Retiring(finished.clone()));
            }
            registry.retiring.remove(&key);
        }
        let (tx, rx) = mpsc::channel(consumer::member_channel(options.max_in_flight).1);
        let queued = QueuedBytes::new(core.options.subscriber_buffer_bytes);
        if let Some(entry) = registry.consumers.get_mut(&key) {
            if entry.pattern != pattern {
                return Err(durable_pattern_mismatch(&name));
            }
            if entry.queue_group.is_none() || entry.queue_group != options.queue_group {
                return Err(BusError::invalid(
                    "durable",
                    format!(
                        "{name:?} already has a subscriber; give every subscriber the same queue_group to share it"
                    ),
                ));
            }
            if entry.cut_off {
                return Err(BusError::Unavailable(format!(
                    "{name:?} was closed as a slow consumer"
                )));
            }
            let control: Arc<dyn SubscriptionControl> = Arc::new(MemberControl {
                control: entry.control.clone(),
                shared: entry.shared.clone(),
            });
            let _ = entry.control.send(Control::Join(Member {
                id,
                tx,
                control: control.clone(),
                queued: queued.clone(),
            }));
            entry.members.insert(id);
            registry.members.insert(id, key);
            drop(registry);
            return Ok(Attempt::Subscribed(
                self.subscription(id, name, rx, control, queued),
            ));
        }

        // A new consumer. A durable one resumes from its saved state.
        let saved = if options.durable.is_some() {
            core.states.load(&name).map_err(BusError::Internal)?
        } else {
            None
        };
        if let Some(saved) = &saved
            && saved.pattern != pattern.as_str()
        {
            return Err(durable_pattern_mismatch(&name));
        }
        let dlq_topic = match (&options.dead_letter_topic, &saved) {
            (Some(topic), _) => topic.clone(),
            (None, Some(saved)) => Topic::new(&saved.dlq_topic)
                .map_err(|e| BusError::Internal(format!("saved dead-letter topic {e}")))?,
            (None, None) => dlq::default_topic(&name).ok_or_else(|| {
                BusError::invalid("subscription", "name does not make a valid topic")
            })?,
        };
        let resumed = saved.is_some();
        let (cursor, done, attempts) = match saved {
            Some(saved) => (saved.floor, saved.done, saved.attempts),
            None => {
                let cursor = core.start_seq(options.start)?;
                if options.durable.is_some() {
                    // A durable exists from the moment it is subscribed: a restart
                    // before its first ack resumes from its start, not from "new".
                    let state = state::DurableState {
                        pattern: pattern.to_string(),
                        dlq_topic: dlq_topic.to_string(),
                        floor: cursor,
                        done: Default::default(),
                        attempts: Default::default(),
                    };
                    core.states.save(&name, &state).map_err(|e| {
                        BusError::Unavailable(format!("saving durable {name:?}: {e}"))
                    })?;
                }
                (cursor, Default::default(), Default::default())
            }
        };
        // A durable that was away picks its counters up again.
        let counters = options
            .durable
            .as_ref()
            .and_then(|name| registry.parked.remove(name))
            .map(|parked| parked.counters)
            .unwrap_or_default();
        let consumer_shared = Arc::new(ConsumerShared::new(
            core.options.ephemeral_buffer,
            core.options.subscriber_buffer_bytes,
            options.durable.is_some(),
            counters,
        ));
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (ephemeral_tx, ephemeral_rx) = mpsc::unbounded_channel();
        let control: Arc<dyn SubscriptionControl> = Arc::new(MemberControl {
            control: control_tx.clone(),
            shared: consumer_shared.clone(),
        });
        // Registered under the registry's lock, as routing runs: what was routed before
        // now (below `routed_below`) the consumer reads from the log; the rest comes to
        // it through its route.
        let route = Arc::new(route::Route::new(core.options.routed_queue));
        let spec = ConsumerSpec {
            name: name.clone(),
            pattern: pattern.clone(),
            options: options.clone(),
            dlq_topic: dlq_topic.clone(),
            durable: options.durable.is_some(),
            route: route.clone(),
            routed_below: core.routed_below.load(Ordering::Acquire),
            cursor,
            resumed,
            done,
            attempts,
            first_member: Member {
                id,
                tx,
                control: control.clone(),
                queued: queued.clone(),
            },
        };
        let (finished_tx, finished) = watch::channel(false);
        let consumer = Consumer::new(core.clone(), spec, consumer_shared.clone());
        tokio::spawn(async move {
            consumer.run(control_rx, ephemeral_rx).await;
            finished_tx.send_replace(true);
        });
        registry.index.insert(&pattern, key.clone());
        registry.consumers.insert(
            key.clone(),
            Entry {
                name: name.clone(),
                pattern,
                queue_group: options.queue_group.clone(),
                dlq_topic,
                control: control_tx,
                ephemeral: ephemeral_tx,
                members: HashSet::from([id]),
                finished,
                shared: consumer_shared,
                cut_off: false,
                route,
            },
        );
        registry.members.insert(id, key);
        drop(registry);
        Ok(Attempt::Subscribed(
            self.subscription(id, name, rx, control, queued),
        ))
    }

    fn subscription(
        &self,
        id: SubscriptionId,
        name: String,
        rx: mpsc::Receiver<ganglion_core::bus::Chunk>,
        control: Arc<dyn SubscriptionControl>,
        queued: Arc<QueuedBytes>,
    ) -> Subscription {
        let guard = LeaveOnDrop {
            core: Arc::downgrade(&self.core),
            id,
        };
        Subscription::new(id, name, rx, control)
            .with_queued_bytes(queued)
            .with_guard(guard)
    }

    async fn redrive_now(&self, name: String, seqs: Vec<u64>) -> Result<u64, BusError> {
        if !seqs.is_empty() {
            let letters = self.letters(&name, usize::MAX).await?;
            let chosen = seqs
                .iter()
                .map(|seq| {
                    letters
                        .iter()
                        .find(|l| l.event.seq == *seq)
                        .cloned()
                        .ok_or_else(|| BusError::NotFound {
                            what: format!("dead letter {seq} of {name:?}"),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            return self.redrive_letters(&name, chosen).await;
        }
        // All of them, a batch at a time (each batch's markers take it off the list),
        // up to the letters there are now.
        let until = self.core.log.next_seq();
        let mut total = 0;
        loop {
            let batch: Vec<DeadLetter> = self
                .letters(&name, REDRIVE_BATCH)
                .await?
                .into_iter()
                .filter(|l| l.event.seq < until)
                .collect();
            if batch.is_empty() {
                return Ok(total);
            }
            total += self.redrive_letters(&name, batch).await?;
        }
    }

    async fn letters(&self, name: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        let core = self.core.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || core.dead_letters(&name, limit))
            .await
            .map_err(|e| BusError::Internal(e.to_string()))?
    }

    async fn redrive_letters(&self, name: &str, chosen: Vec<DeadLetter>) -> Result<u64, BusError> {
        if chosen.is_empty() {
            return Ok(0);
        }
        let events: Vec<Event> = chosen
            .iter()
            .map(|l| {
                dlq::redrive_event(l).ok_or_else(|| {
                    BusError::Internal(format!(
                        "dead letter {} has an invalid origin topic",
                        l.event.seq
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        self.core.publish_internal(events).await?;
        let markers = chosen.iter().map(dlq::redrive_marker).collect();
        self.core.publish_internal(markers).await?;
        tracing::info!(subscription = %name, count = chosen.len(), "dead letters redriven");
        Ok(chosen.len() as u64)
    }
}

/// Dead letters redriven per publication when all of a subscription's are.
const REDRIVE_BATCH: usize = 1000;

/// What one try at subscribing came to.
enum Attempt {
    Subscribed(Subscription),
    /// The consumer of this name is still stopping: wait for it, then try again.
    Retiring(watch::Receiver<bool>),
}

/// Unsubscribes when the subscription is dropped.
#[derive(Debug)]
struct LeaveOnDrop {
    core: std::sync::Weak<Core>,
    id: SubscriptionId,
}

impl Drop for LeaveOnDrop {
    fn drop(&mut self) {
        if let Some(core) = self.core.upgrade() {
            core.leave(self.id);
        }
    }
}

/// The handle a subscriber's acks go through.
#[derive(Debug)]
struct MemberControl {
    control: mpsc::UnboundedSender<Control>,
    shared: Arc<ConsumerShared>,
}

impl SubscriptionControl for MemberControl {
    fn ack(&self, seqs: &[u64]) {
        if !seqs.is_empty() {
            let _ = self.control.send(Control::Ack(seqs.to_vec()));
        }
    }

    fn nack(&self, seqs: &[u64], delay: Option<Duration>, error: &str) {
        if !seqs.is_empty() {
            let _ = self.control.send(Control::Nack {
                seqs: seqs.to_vec(),
                delay,
                error: error.to_owned(),
            });
        }
    }

    fn term(&self, seqs: &[u64], reason: &str) {
        if !seqs.is_empty() {
            let _ = self.control.send(Control::Term {
                seqs: seqs.to_vec(),
                reason: reason.to_owned(),
            });
        }
    }

    fn closed_reason(&self) -> Option<String> {
        lock(&self.shared.closed_reason).clone()
    }
}

impl Core {
    /// Refuses further calls and tells every consumer to stop; returns their
    /// completion signals.
    fn stop_consumers(&self) -> Vec<watch::Receiver<bool>> {
        self.closed.store(true, Ordering::Release);
        let mut registry = lock(&self.registry);
        let mut finished: Vec<_> = registry.retiring.drain().map(|(_, f)| f).collect();
        let routed_below = self.routed_below.load(Ordering::Acquire);
        for (_, entry) in registry.consumers.drain() {
            entry.route.close(routed_below);
            let _ = entry.control.send(Control::Stop);
            finished.push(entry.finished);
        }
        registry.members.clear();
        finished
    }

    /// Lists every durable saved on disk as parked, until a subscriber returns.
    fn park_saved_durables(&self) {
        let mut registry = lock(&self.registry);
        for name in self.states.names() {
            match self.states.load(&name) {
                Ok(Some(state)) => {
                    let counters = Arc::new(stats::ConsumerCounters::default());
                    counters.floor.store(state.floor, Ordering::Relaxed);
                    registry.parked.insert(
                        name,
                        Parked {
                            pattern: state.pattern,
                            dlq_topic: state.dlq_topic,
                            counters,
                        },
                    );
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "cannot read a durable's saved state"),
            }
        }
    }

    /// Counts the dead letters and redrive markers among `events` (being logged).
    fn count_dead_letters<'a>(&self, events: impl IntoIterator<Item = &'a Event>) {
        let mut counts = None;
        for event in events {
            if let Some((subscription, letter)) = dlq::classify(event) {
                counts
                    .get_or_insert_with(|| lock(&self.dead_letter_counts))
                    .entry(subscription.to_owned())
                    .or_default()
                    .count(letter);
            }
        }
    }

    /// Rebuilds the topic list and the idempotency keys still in the window from the log.
    fn rebuild(&self) -> Result<(), BusError> {
        let window = self.options.dedupe_window.as_micros() as u64;
        let window_start = self.clock.now_micros().saturating_sub(window);
        let mut topics = lock(&self.topics);
        let mut dedupe = lock(&self.dedupe);
        let counting = self.retention.counts();
        let mut next = self.log.first_seq();
        loop {
            let records = self.log.read(next, 4096).map_err(log_error)?;
            let Some(last) = records.last() else { break };
            next = last.seq + 1;
            for record in records {
                let Ok(topic) = codec::peek_topic(&record.payload, record.seq) else {
                    tracing::warn!(seq = record.seq, "skipping undecodable record");
                    continue;
                };
                if counting {
                    self.retention
                        .record([(topic, record.seq, record.payload.len() as u64)]);
                }
                if let Some((event_type, subscription)) =
                    codec::peek_type_and_header(&record.payload, dlq::SUBSCRIPTION)
                    && let Some((subscription, letter)) =
                        dlq::classify_parts(event_type, subscription)
                {
                    lock(&self.dead_letter_counts)
                        .entry(subscription.to_owned())
                        .or_default()
                        .count(letter);
                }
                let Ok(topic) = Topic::new(topic) else {
                    continue;
                };
                let stats = topics.entry(topic).or_default();
                stats.events += 1;
                stats.last_seq = record.seq;
                if stats.first_seq == 0 {
                    stats.first_seq = record.seq;
                }
                if record.timestamp_micros >= window_start
                    && let Ok(event) = codec::decode(&record.payload, record.seq)
                    && let Some(key) = event.idempotency_key()
                {
                    let ack = PublishAck {
                        seq: record.seq,
                        id: event.id.clone(),
                        duplicate: false,
                    };
                    dedupe.remember(key.to_owned(), ack, record.timestamp_micros + window);
                }
            }
        }
        tracing::info!(
            topics = topics.len(),
            next_seq = next,
            "event bus recovered"
        );
        Ok(())
    }
}

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

/// A durable joined with a pattern other than its own. The error does not say which
/// pattern it has: that is for those who may list subscriptions.
fn durable_pattern_mismatch(name: &str) -> BusError {
    BusError::invalid(
        "pattern",
        format!(
            "durable {name:?} exists with another pattern; subscribe with the pattern it was created with"
        ),
    )
}
