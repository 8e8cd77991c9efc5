//! How a subscription is asked for, with a ceiling on every option and the field named
//! when one is bad.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use super::BusError;
use crate::event::Event;
use crate::topic::Topic;

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
