//! The event bus contract: what publishers and subscribers can rely on, whichever engine
//! or transport (in-process, gRPC) is behind it.
//!
//! # Delivery semantics
//!
//! - **Durable topics** (the default storage class): an event is in the event log before
//!   `publish` returns (fsynced, under the log's default policy), and is delivered **at
//!   least once** to every matching subscription (to one member of a queue group).
//! - **What an ack means**: the subscriber is done with the event; it will not be
//!   delivered to this subscription again. A nack, or no ack within the ack deadline,
//!   redelivers it after an exponential backoff (a timer, never a sleeping handler), so a
//!   failing event does not hold back the events behind it. After `max_deliveries`
//!   attempts, or on `term`, it goes to the subscription's dead-letter topic with its
//!   origin, attempts and last error. Every delivery carries its attempt number.
//! - **Ephemeral topics**: memory only, **at most once**, to the subscriptions connected
//!   when it is published; no acks, no replay.
//! - **Order**: a subscription receives a topic's events in publication order, except
//!   that a redelivered event arrives after the events that overtook it, the members of
//!   a queue group each see a subset, and a `prioritized` subscription lets
//!   higher-priority events overtake lower ones.
//! - **Backpressure, not dropping**: a subscription never has more than `max_in_flight`
//!   unacked events, nor `max_in_flight_bytes` of them, outstanding; what waits for a
//!   subscriber is bounded in bytes as well as in events (so a subscriber that stops
//!   reading holds a bounded amount of memory whatever the events' size); the rest wait
//!   in the log, not in memory, and publishers are slowed by the log's bounded queue
//!   rather than refused. Two cases drop a subscriber, with a reason it can read
//!   ([`Subscription::closed_reason`]): an ephemeral subscriber that lets its bounded
//!   buffer fill, and a non-durable subscriber that the log's retention overtakes (its
//!   events are gone). Every option has a ceiling ([`ceilings`]).
//! - **What survives a restart**: every acknowledged publication; a durable
//!   subscription's position (what was acked, and how often unacked events were
//!   delivered) — it resumes where acks stopped, and events delivered but not acked are
//!   delivered again; a durable exists from the moment its subscribe returns, so one
//!   that never acked resumes from its start position, not from "new" again; dead
//!   letters and what was redriven; idempotency keys within the dedupe window.
//!   Non-durable subscriptions and ephemeral events do not survive.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use crate::BoxFuture;
use crate::event::Event;
use crate::topic::{Pattern, Topic};

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
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
        }
    }
}

/// Errors of the bus contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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

/// What a publisher gets back for each event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishAck {
    /// Sequence number in the event log (0 for ephemeral events).
    pub seq: u64,
    pub id: crate::EventId,
    /// `true` if the idempotency key was seen within the dedupe window: nothing was
    /// appended, and `seq` and `id` are the first publication's.
    pub duplicate: bool,
}

/// Whether a topic's events are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorageClass {
    /// Logged, replayable, delivered at least once.
    #[default]
    Durable,
    /// Memory only, delivered at most once to the subscribers connected now.
    Ephemeral,
}

/// Where a subscription (or a replay) starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPosition {
    /// Only events published after subscribing.
    #[default]
    New,
    /// Everything the log still holds.
    All,
    /// From this sequence number.
    Seq(u64),
    /// From the first event logged at or after this time.
    Time(SystemTime),
}

impl StartPosition {
    /// Where a replay starts; `New` has no events to replay and is refused.
    pub fn for_replay(self) -> Result<StartPosition, BusError> {
        if self == StartPosition::New {
            return Err(BusError::invalid(
                "from",
                "replay needs a position: all, a sequence number or a time",
            ));
        }
        Ok(self)
    }
}

/// Who acknowledges deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckMode {
    /// The subscriber acks, nacks or terms each delivery.
    #[default]
    Manual,
    /// A delivery counts as acked once handed over (at most once per subscription).
    Auto,
}

/// Redelivery delays: `initial × multiplier^(attempt-1)`, at most `max`, then ±`jitter`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub multiplier: f64,
    pub max: Duration,
    /// Fraction of the delay added or removed at random (0.2 = ±20%).
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max: Duration::from_secs(60),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay after failed attempt `attempt` (1-based); `unit` in [0, 1) picks the
    /// jitter.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let base = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        let base = base.min(self.max.as_secs_f64());
        let jittered = base * (1.0 + self.jitter * (2.0 * unit - 1.0));
        Duration::from_secs_f64(jittered.max(0.0))
    }

    pub(crate) fn validate(&self, field: &str) -> Result<(), BusError> {
        if self.initial.is_zero() {
            return Err(BusError::invalid(
                format!("{field}.initial"),
                "must be longer than zero",
            ));
        }
        if !(self.multiplier >= 1.0 && self.multiplier.is_finite()) {
            return Err(BusError::invalid(
                format!("{field}.multiplier"),
                "must be at least 1",
            ));
        }
        if self.max < self.initial {
            return Err(BusError::invalid(
                format!("{field}.max"),
                "must be at least initial",
            ));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(BusError::invalid(
                format!("{field}.jitter"),
                "must be in [0, 1)",
            ));
        }
        Ok(())
    }
}

/// Content-based routing: only events that pass are delivered (the rest are skipped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// If not empty, the event's type must be one of these.
    pub types: Vec<String>,
    /// Every one of these headers must be present with exactly this value.
    pub headers: BTreeMap<String, String>,
}

impl Filter {
    pub fn accepts(&self, event: &Event) -> bool {
        (self.types.is_empty() || self.types.contains(&event.event_type))
            && self
                .headers
                .iter()
                .all(|(k, v)| event.headers.get(k) == Some(v))
    }
}

/// How a batch window coalesces events that share a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Aggregation {
    /// Every event, in order.
    #[default]
    None,
    /// Only the newest event per key; the older ones count in its `coalesced`.
    KeepLast,
    /// No events, only how many each key had in the window.
    Count,
}

/// What groups events in a batch window.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GroupKey {
    /// The event's topic.
    #[default]
    Topic,
    /// The value of this header (events without it share the empty key).
    Header(String),
}

impl GroupKey {
    pub fn of(&self, event: &Event) -> String {
        match self {
            GroupKey::Topic => event.topic.as_str().to_owned(),
            GroupKey::Header(h) => event.header(h).unwrap_or_default().to_owned(),
        }
    }
}

/// Delivery in batches: everything that arrives within `window` (or until `max_events`
/// or `max_bytes`) is delivered together, coalesced per `aggregation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOptions {
    /// How long a window stays open. `None`: the bus's configured batch window
    /// (`bus.batch_window_ms`, 100 ms by default), read as each window opens, so a
    /// configuration reload changes it without resubscribing.
    pub window: Option<Duration>,
    /// A window closes early once it holds this many events. Default 1000.
    pub max_events: usize,
    /// A window closes early once its events hold this many bytes (a window always
    /// takes at least one event). Default 1 MiB.
    pub max_bytes: usize,
    pub key: GroupKey,
    pub aggregation: Aggregation,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            window: None,
            max_events: 1000,
            max_bytes: 1024 * 1024,
            key: GroupKey::Topic,
            aggregation: Aggregation::None,
        }
    }
}

/// How a subscription behaves. `SubscribeOptions::default()` is a manual-ack,
/// new-events-only, non-durable subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeOptions {
    /// A durable subscription's cursor and pending set survive restarts; subscribing
    /// again with the same name resumes where acks stopped.
    pub durable: Option<String>,
    /// Members of one queue group share the work: each event goes to one of them.
    pub queue_group: Option<String>,
    pub start: StartPosition,
    pub ack_mode: AckMode,
    /// A delivery not acked within this is redelivered. Default 30 s.
    pub ack_deadline: Duration,
    /// Most unacked events outstanding. Default 1000.
    pub max_in_flight: usize,
    /// Most bytes of unacked events outstanding (at least one event is always let
    /// out). Default 16 MiB.
    pub max_in_flight_bytes: usize,
    /// Attempts before an event goes to the dead-letter topic. Default 5.
    pub max_deliveries: u32,
    pub backoff: Backoff,
    /// Where dead letters go. Default `dlq.<subscription name>`.
    pub dead_letter_topic: Option<Topic>,
    pub filter: Filter,
    /// Deliver higher `priority` headers first among the events waiting.
    pub prioritized: bool,
    pub batch: Option<BatchOptions>,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            durable: None,
            queue_group: None,
            start: StartPosition::New,
            ack_mode: AckMode::Manual,
            ack_deadline: Duration::from_secs(30),
            max_in_flight: 1000,
            max_in_flight_bytes: 16 * 1024 * 1024,
            max_deliveries: 5,
            backoff: Backoff::default(),
            dead_letter_topic: None,
            filter: Filter::default(),
            prioritized: false,
            batch: None,
        }
    }
}

/// Whether `name` can name a subscription, a quota or a component: 1 to 64 letters,
/// digits, `-` and `_` (so it also fits in one topic token, as in `dlq.<name>`).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn check_name(field: &str, name: &str) -> Result<(), BusError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(BusError::invalid(
            field,
            "must be 1 to 64 letters, digits, '-' or '_'",
        ))
    }
}

/// The most a client may ask of a subscription: every option has a ceiling, so no
/// request can make the engine hold more than these allow.
pub mod ceilings {
    use std::time::Duration;

    pub const MAX_IN_FLIGHT: usize = 100_000;
    pub const MAX_IN_FLIGHT_BYTES: usize = 256 * 1024 * 1024;
    pub const MAX_DELIVERIES: u32 = 10_000;
    /// Ack deadlines, backoff delays and batch windows.
    pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
    pub const MAX_BATCH_EVENTS: usize = 100_000;
    pub const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;
    /// Types, and headers, in a filter.
    pub const MAX_FILTER_ENTRIES: usize = 64;
    /// A filter's type, header name or value, a batch's key header.
    pub const MAX_STRING_BYTES: usize = 256;
}

fn at_most<T: PartialOrd + fmt::Debug>(field: &str, value: T, max: T) -> Result<(), BusError> {
    if value > max {
        return Err(BusError::invalid(
            field,
            format!("is {value:?}; at most {max:?} is allowed"),
        ));
    }
    Ok(())
}

fn short_string(field: String, value: &str) -> Result<(), BusError> {
    if value.len() > ceilings::MAX_STRING_BYTES {
        return Err(BusError::invalid(
            field,
            format!(
                "is {} bytes; at most {} are allowed",
                value.len(),
                ceilings::MAX_STRING_BYTES
            ),
        ));
    }
    Ok(())
}

impl SubscribeOptions {
    /// Checks every option against its range and its ceiling ([`ceilings`]); the error
    /// names the field.
    pub fn validate(&self) -> Result<(), BusError> {
        use ceilings::*;
        if let Some(name) = &self.durable {
            check_name("durable", name)?;
        }
        if let Some(group) = &self.queue_group {
            check_name("queue_group", group)?;
        }
        if self.ack_deadline.is_zero() {
            return Err(BusError::invalid(
                "ack_deadline",
                "must be longer than zero",
            ));
        }
        at_most("ack_deadline", self.ack_deadline, MAX_DURATION)?;
        if self.max_in_flight == 0 {
            return Err(BusError::invalid("max_in_flight", "must be at least 1"));
        }
        at_most("max_in_flight", self.max_in_flight, MAX_IN_FLIGHT)?;
        if self.max_in_flight_bytes == 0 {
            return Err(BusError::invalid(
                "max_in_flight_bytes",
                "must be at least 1",
            ));
        }
        at_most(
            "max_in_flight_bytes",
            self.max_in_flight_bytes,
            MAX_IN_FLIGHT_BYTES,
        )?;
        if self.max_deliveries == 0 {
            return Err(BusError::invalid("max_deliveries", "must be at least 1"));
        }
        at_most("max_deliveries", self.max_deliveries, MAX_DELIVERIES)?;
        self.backoff.validate("backoff")?;
        at_most("backoff.max", self.backoff.max, MAX_DURATION)?;
        at_most("filter.types", self.filter.types.len(), MAX_FILTER_ENTRIES)?;
        at_most(
            "filter.headers",
            self.filter.headers.len(),
            MAX_FILTER_ENTRIES,
        )?;
        for (i, t) in self.filter.types.iter().enumerate() {
            short_string(format!("filter.types[{i}]"), t)?;
        }
        for (i, (k, v)) in self.filter.headers.iter().enumerate() {
            short_string(format!("filter.headers[{i}].name"), k)?;
            short_string(format!("filter.headers[{i}].value"), v)?;
        }
        if let Some(batch) = &self.batch {
            if batch.window.is_some_and(|w| w.is_zero()) {
                return Err(BusError::invalid(
                    "batch.window",
                    "must be longer than zero",
                ));
            }
            if let Some(window) = batch.window {
                at_most("batch.window", window, MAX_DURATION)?;
            }
            if batch.max_events == 0 {
                return Err(BusError::invalid("batch.max_events", "must be at least 1"));
            }
            at_most("batch.max_events", batch.max_events, MAX_BATCH_EVENTS)?;
            if batch.max_bytes == 0 {
                return Err(BusError::invalid("batch.max_bytes", "must be at least 1"));
            }
            at_most("batch.max_bytes", batch.max_bytes, MAX_BATCH_BYTES)?;
            if let GroupKey::Header(name) = &batch.key {
                short_string("batch.key_header".to_owned(), name)?;
            }
        }
        Ok(())
    }
}

/// Identifies a subscription within one bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(pub u64);

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sub-{}", self.0)
    }
}

/// The engine side of a subscription: what acks, nacks and terms reach.
pub trait SubscriptionControl: Send + Sync + fmt::Debug {
    fn ack(&self, seqs: &[u64]);
    /// Redeliver after `delay`, or after the backoff when `None`.
    fn nack(&self, seqs: &[u64], delay: Option<Duration>, error: &str);
    /// Send straight to the dead-letter topic.
    fn term(&self, seqs: &[u64], reason: &str);
    /// Why the engine closed the subscription, if it did.
    fn closed_reason(&self) -> Option<String>;
}

/// One event as delivered.
#[derive(Debug, Clone)]
pub struct DeliveredEvent {
    pub event: Arc<Event>,
    /// 1 on first delivery, then 2, 3, …
    pub attempt: u32,
    /// How many events this one stands for (more than 1 under `KeepLast`).
    pub coalesced: u64,
}

/// How many events one key had in a `Count` window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCount {
    pub key: String,
    pub count: u64,
}

/// What a subscriber receives: one event, or one batch window. Acking it acks every
/// event it covers.
#[derive(Debug)]
pub struct Delivery {
    body: Body,
    /// `None` for an ephemeral event: there is nothing to settle.
    control: Option<Arc<dyn SubscriptionControl>>,
    /// The deliver span, when a tracer is installed; boxed to keep untraced deliveries
    /// small.
    trace: Option<Box<crate::trace::Traced>>,
}

/// A single event needs no allocation beyond the event itself; a batch window's parts
/// are boxed, so single deliveries (moved by the million) stay small.
#[derive(Debug)]
enum Body {
    One {
        event: DeliveredEvent,
        /// `None` for an ephemeral event.
        seq: Option<u64>,
    },
    Batch(Box<BatchBody>),
}

#[derive(Debug)]
struct BatchBody {
    events: Vec<DeliveredEvent>,
    counts: Vec<KeyCount>,
    seqs: Vec<u64>,
}

impl Delivery {
    /// One event (with its log sequence, or `None` for an ephemeral event).
    pub fn single(
        event: DeliveredEvent,
        seq: Option<u64>,
        control: Arc<dyn SubscriptionControl>,
    ) -> Self {
        Delivery {
            body: Body::One { event, seq },
            control: Some(control),
            trace: None,
        }
    }

    /// One ephemeral event (at most once: ack, nack and term do nothing), without a
    /// handle on the subscription, so a delivery costs no shared reference count.
    pub fn ephemeral(event: DeliveredEvent) -> Self {
        Delivery {
            body: Body::One { event, seq: None },
            control: None,
            trace: None,
        }
    }

    /// A batch window: its events, per-key counts, and every log sequence it covers.
    pub fn batch(
        events: Vec<DeliveredEvent>,
        counts: Vec<KeyCount>,
        seqs: Vec<u64>,
        control: Arc<dyn SubscriptionControl>,
    ) -> Self {
        Delivery {
            body: Body::Batch(Box::new(BatchBody {
                events,
                counts,
                seqs,
            })),
            control: Some(control),
            trace: None,
        }
    }

    /// The events delivered (one, unless this is a batch window).
    pub fn events(&self) -> &[DeliveredEvent] {
        match &self.body {
            Body::One { event, .. } => std::slice::from_ref(event),
            Body::Batch(batch) => &batch.events,
        }
    }

    /// Per-key counts, for `Aggregation::Count`.
    pub fn counts(&self) -> &[KeyCount] {
        match &self.body {
            Body::One { .. } => &[],
            Body::Batch(batch) => &batch.counts,
        }
    }

    /// Every log sequence this delivery covers (coalesced and counted ones included);
    /// empty for ephemeral events.
    pub fn seqs(&self) -> &[u64] {
        match &self.body {
            Body::One { seq: Some(seq), .. } => std::slice::from_ref(seq),
            Body::One { seq: None, .. } => &[],
            Body::Batch(batch) => &batch.seqs,
        }
    }

    /// The parts of a delivery (its events, per-key counts and log sequences), for an
    /// edge that converts it to a wire frame.
    pub fn into_parts(self) -> (Vec<DeliveredEvent>, Vec<KeyCount>, Vec<u64>) {
        match self.body {
            Body::One { event, seq } => (vec![event], Vec::new(), seq.into_iter().collect()),
            Body::Batch(batch) => (batch.events, batch.counts, batch.seqs),
        }
    }

    /// The first (for an unbatched subscription, the only) event.
    pub fn event(&self) -> Option<&Event> {
        self.events().first().map(|e| &*e.event)
    }

    /// The context to handle this delivery in (its first event's correlation id and
    /// trace parent): run the handler in [`crate::EventContext::scope`] and what it logs
    /// and publishes carries them. When traced, the trace parent is the deliver span.
    pub fn context(&self) -> Option<crate::EventContext> {
        let mut context = crate::EventContext::of(self.event()?);
        if let Some(trace) = &self.trace {
            context.traceparent = trace.traceparent.clone().or(context.traceparent);
            context.parent_span = Some(trace.span.clone());
        }
        Some(context)
    }

    /// The deliver span's W3C `traceparent`, when traced (see [`crate::trace`]): what a
    /// transport puts in the event's headers so the remote handler's spans nest in it.
    pub fn deliver_traceparent(&self) -> Option<&str> {
        self.trace.as_ref()?.traceparent.as_deref()
    }

    /// The attempt number of the first event.
    pub fn attempt(&self) -> u32 {
        self.events().first().map_or(1, |e| e.attempt)
    }

    pub fn ack(&self) {
        if let Some(control) = &self.control {
            control.ack(self.seqs());
        }
    }

    pub fn nack(&self, delay: Option<Duration>, error: &str) {
        if let Some(control) = &self.control {
            control.nack(self.seqs(), delay, error);
        }
    }

    pub fn term(&self, reason: &str) {
        if let Some(control) = &self.control {
            control.term(self.seqs(), reason);
        }
    }
}

/// What an engine hands a subscription in one channel operation, with the bytes of its
/// events (what [`QueuedBytes`] counts).
#[derive(Debug)]
pub enum Chunk {
    /// Deliveries, yielded in order.
    Deliveries {
        deliveries: Vec<Delivery>,
        bytes: usize,
    },
    /// Ephemeral events on their first (and only) delivery, with nothing to settle: the
    /// subscription makes each one's [`Delivery::ephemeral`] as it is taken, so an
    /// engine hands over pointers rather than deliveries.
    Ephemeral {
        events: Vec<Arc<Event>>,
        bytes: usize,
    },
}

impl Chunk {
    /// The bytes of the chunk's events ([`Event::size`]).
    pub fn bytes(&self) -> usize {
        match self {
            Chunk::Deliveries { bytes, .. } | Chunk::Ephemeral { bytes, .. } => *bytes,
        }
    }
}

impl From<Vec<Delivery>> for Chunk {
    fn from(deliveries: Vec<Delivery>) -> Self {
        let bytes = deliveries
            .iter()
            .flat_map(|d| d.events())
            .map(|e| e.event.size())
            .sum();
        Chunk::Deliveries { deliveries, bytes }
    }
}

/// The bytes waiting for one subscriber: an engine counts a chunk in as it hands it
/// over, and the subscription counts it out once it has taken the chunk's last
/// delivery. An engine hands over nothing more while the count is at the limit (a
/// chunk always goes when nothing waits), so what a subscriber that stops reading can
/// hold is bounded in bytes, not only in events.
#[derive(Debug)]
pub struct QueuedBytes {
    bytes: std::sync::atomic::AtomicUsize,
    limit: usize,
    room: tokio::sync::Notify,
}

impl QueuedBytes {
    pub fn new(limit: usize) -> Arc<QueuedBytes> {
        Arc::new(QueuedBytes {
            bytes: std::sync::atomic::AtomicUsize::new(0),
            limit: limit.max(1),
            room: tokio::sync::Notify::new(),
        })
    }

    /// Bytes handed over and not yet taken.
    pub fn queued(&self) -> usize {
        self.bytes.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether another chunk may be handed over now.
    pub fn has_room(&self) -> bool {
        self.queued() < self.limit
    }

    pub fn add(&self, bytes: usize) {
        self.bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::AcqRel);
    }

    pub fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let before = self
            .bytes
            .fetch_sub(bytes, std::sync::atomic::Ordering::AcqRel);
        if before >= self.limit && before - bytes < self.limit {
            self.room.notify_waiters();
        }
    }

    /// Completes once another chunk may be handed over.
    pub async fn room(&self) {
        loop {
            let notified = self.room.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.has_room() {
                return;
            }
            notified.await;
        }
    }
}

/// The rest of the chunk last received, taken in place (no copy into a queue).
#[derive(Debug)]
enum Buffered {
    Deliveries(std::vec::IntoIter<Delivery>),
    Ephemeral(std::vec::IntoIter<Arc<Event>>),
}

impl Buffered {
    fn next(&mut self) -> Option<Delivery> {
        match self {
            Buffered::Deliveries(rest) => rest.next(),
            Buffered::Ephemeral(rest) => rest.next().map(|event| {
                Delivery::ephemeral(DeliveredEvent {
                    event,
                    attempt: 1,
                    coalesced: 1,
                })
            }),
        }
    }
}

impl From<Chunk> for Buffered {
    fn from(chunk: Chunk) -> Self {
        match chunk {
            Chunk::Deliveries { deliveries, .. } => Buffered::Deliveries(deliveries.into_iter()),
            Chunk::Ephemeral { events, .. } => Buffered::Ephemeral(events.into_iter()),
        }
    }
}

/// A live subscription: a stream of deliveries. Dropping it unsubscribes.
///
/// Engines hand deliveries over in [`Chunk`]s (one channel operation for many
/// deliveries); the subscription yields them one at a time.
#[derive(Debug)]
pub struct Subscription {
    id: SubscriptionId,
    name: String,
    deliveries: mpsc::Receiver<Chunk>,
    buffered: Buffered,
    /// Where the bytes of taken chunks are counted out, when the engine counts them.
    queued: Option<Arc<QueuedBytes>>,
    /// Bytes of the chunk being taken (counted out when the next one is received).
    taking: usize,
    control: Arc<dyn SubscriptionControl>,
    _guard: Option<DropGuard>,
}

/// Something an engine wants dropped with the subscription (to unsubscribe, say).
struct DropGuard(#[allow(dead_code)] Box<dyn std::any::Any + Send + Sync>);

impl fmt::Debug for DropGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DropGuard")
    }
}

impl Subscription {
    pub fn new(
        id: SubscriptionId,
        name: String,
        deliveries: mpsc::Receiver<Chunk>,
        control: Arc<dyn SubscriptionControl>,
    ) -> Self {
        Subscription {
            id,
            name,
            deliveries,
            buffered: Buffered::Deliveries(Vec::new().into_iter()),
            queued: None,
            taking: 0,
            control,
            _guard: None,
        }
    }

    /// Counts the bytes of each chunk out of `queued` once its last delivery is taken.
    pub fn with_queued_bytes(mut self, queued: Arc<QueuedBytes>) -> Self {
        self.queued = Some(queued);
        self
    }

    /// Takes `chunk` as the one being read.
    fn take(&mut self, chunk: Chunk) {
        self.taking = chunk.bytes();
        self.buffered = chunk.into();
    }

    /// Counts out the chunk whose last delivery was taken.
    fn taken(&mut self) {
        if let Some(queued) = &self.queued {
            queued.release(std::mem::take(&mut self.taking));
        }
    }

    /// Keeps `guard` until the subscription is dropped; engines use its `Drop` to
    /// unsubscribe.
    pub fn with_guard(mut self, guard: impl Send + Sync + 'static) -> Self {
        self._guard = Some(DropGuard(Box::new(guard)));
        self
    }

    pub fn id(&self) -> SubscriptionId {
        self.id
    }

    /// The durable name, or the generated one (`sub-7`); dead letters go to
    /// `dlq.<name>` by default.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next delivery; `None` once the subscription is closed (by `unsubscribe`, by
    /// the bus shutting down, or by the engine: see [`closed_reason`](Self::closed_reason)).
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            if let Some(delivery) = self.buffered.next() {
                return Some(self.traced(delivery));
            }
            self.taken();
            let chunk = self.deliveries.recv().await?;
            self.take(chunk);
        }
    }

    /// Opens the deliver span when a tracer is installed (see [`crate::trace`]).
    fn traced(&self, mut delivery: Delivery) -> Delivery {
        if let Some(tracer) = crate::trace::tracer()
            && let Some(first) = delivery.events().first()
        {
            let traced = tracer.deliver(&first.event, &self.name, first.attempt);
            delivery.trace = Some(Box::new(traced));
        }
        delivery
    }

    /// A delivery if one is ready now.
    pub fn try_next(&mut self) -> Option<Delivery> {
        loop {
            if let Some(delivery) = self.buffered.next() {
                return Some(self.traced(delivery));
            }
            self.taken();
            let chunk = self.deliveries.try_recv().ok()?;
            self.take(chunk);
        }
    }

    pub fn ack(&self, seqs: &[u64]) {
        self.control.ack(seqs);
    }

    pub fn nack(&self, seqs: &[u64], delay: Option<Duration>, error: &str) {
        self.control.nack(seqs, delay, error);
    }

    pub fn term(&self, seqs: &[u64], reason: &str) {
        self.control.term(seqs, reason);
    }

    /// Why the engine closed this subscription (a slow ephemeral subscriber, say).
    pub fn closed_reason(&self) -> Option<String> {
        self.control.closed_reason()
    }

    /// A handle that settles this subscription's deliveries by sequence from another
    /// task (a transport reading acks while another task sends deliveries).
    pub fn control(&self) -> Arc<dyn SubscriptionControl> {
        self.control.clone()
    }
}

/// An event that exhausted its deliveries, as its dead-letter topic holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The dead-letter event itself (on the dead-letter topic; original payload).
    pub event: Event,
    pub origin_topic: String,
    pub origin_seq: u64,
    pub subscription: String,
    pub attempts: u32,
    pub last_error: String,
}

/// A topic the bus has seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub topic: Topic,
    pub storage: StorageClass,
    pub events: u64,
    pub last_seq: u64,
}

/// Bytes of events in one page of a replay when the caller does not say.
pub const REPLAY_PAGE_BYTES: usize = 1024 * 1024;

/// A replay read a page at a time ([`EventBus::replay_pages`]).
pub trait ReplayPages: Send + fmt::Debug {
    /// The next page (at least one event), or `None` once the replay is done.
    fn next_page(&mut self) -> BoxFuture<'_, Result<Option<Vec<Event>>, BusError>>;
}

/// The bus, as publishers and subscribers use it: the embedded engine and the remote
/// client implement it, so a component runs against either without changing code.
pub trait EventBus: Send + Sync + 'static {
    /// Publishes a batch; every durable event is in the log before this returns.
    fn publish_batch(&self, events: Vec<Event>)
    -> BoxFuture<'_, Result<Vec<PublishAck>, BusError>>;

    /// Publishes one event.
    fn publish(&self, event: Event) -> BoxFuture<'_, Result<PublishAck, BusError>> {
        Box::pin(async move {
            let mut acks = self.publish_batch(vec![event]).await?;
            acks.pop()
                .ok_or_else(|| BusError::Internal("publish returned no ack".into()))
        })
    }

    fn subscribe(
        &self,
        pattern: Pattern,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Subscription, BusError>>;

    fn unsubscribe(&self, id: SubscriptionId) -> BoxFuture<'_, Result<(), BusError>>;

    /// Logged events matching `pattern` from `from`, at most `limit`, read a page at a
    /// time: each page holds at most `page_bytes` of events ([`Event::size`]; always at
    /// least one event), and only the page being read is in memory. Over a connection
    /// the server's message size bounds the pages too.
    fn replay_pages(
        &self,
        pattern: Pattern,
        from: StartPosition,
        limit: usize,
        page_bytes: usize,
    ) -> BoxFuture<'_, Result<Box<dyn ReplayPages>, BusError>>;

    /// Logged events matching `pattern` from `from`, at most `limit`, all in memory at
    /// once: [`replay_pages`](Self::replay_pages) reads big replays in bounded pages.
    fn replay(
        &self,
        pattern: Pattern,
        from: StartPosition,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Event>, BusError>> {
        Box::pin(async move {
            let mut pages = self
                .replay_pages(pattern, from, limit, REPLAY_PAGE_BYTES)
                .await?;
            let mut events = Vec::new();
            while let Some(page) = pages.next_page().await? {
                events.extend(page);
            }
            Ok(events)
        })
    }

    /// Dead letters of a subscription not yet redriven, oldest first. A letter is listed
    /// once its publication has completed, which can trail its delivery to a
    /// subscriber of the dead-letter topic by a moment.
    fn dead_letters(
        &self,
        subscription: String,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<DeadLetter>, BusError>>;

    /// Republishes dead letters (these dead-letter sequences, or all if empty) to their
    /// origin topics; returns how many.
    fn redrive(&self, subscription: String, seqs: Vec<u64>)
    -> BoxFuture<'_, Result<u64, BusError>>;

    fn topics(&self) -> BoxFuture<'_, Result<Vec<TopicInfo>, BusError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100ms_caps_at_60s_and_jitters_20_percent() {
        let b = Backoff::default();
        assert_eq!(b.delay(1, 0.5), Duration::from_millis(100));
        assert_eq!(b.delay(2, 0.5), Duration::from_millis(200));
        assert_eq!(b.delay(4, 0.5), Duration::from_millis(800));
        assert_eq!(b.delay(30, 0.5), Duration::from_secs(60));
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(80));
        assert!(b.delay(1, 0.999_999) <= Duration::from_millis(120));
    }

    #[test]
    fn options_name_the_bad_field() {
        let bad = SubscribeOptions {
            durable: Some("has space".into()),
            ..SubscribeOptions::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "durable: must be 1 to 64 letters, digits, '-' or '_'"
        );
        let bad = SubscribeOptions {
            backoff: Backoff {
                jitter: 1.5,
                ..Backoff::default()
            },
            ..SubscribeOptions::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "backoff.jitter: must be in [0, 1)"
        );
        SubscribeOptions::default().validate().unwrap();
    }

    #[test]
    fn filters_match_type_and_headers() {
        let e = Event::new(Topic::new("a").unwrap(), "")
            .with_type("HandPlayed")
            .with_header("game", "7");
        let f = |types: &[&str], headers: &[(&str, &str)]| Filter {
            types: types.iter().map(|s| s.to_string()).collect(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        assert!(f(&[], &[]).accepts(&e));
        assert!(f(&["RoundCompleted", "HandPlayed"], &[("game", "7")]).accepts(&e));
        assert!(!f(&["RoundCompleted"], &[]).accepts(&e));
        assert!(!f(&[], &[("game", "8")]).accepts(&e));
    }
}
