//! The one mapping between the wire (`v1`) and the bus contract (`ganglion_core::bus`),
//! used by the server and the client alike, and the one mapping of [`BusError`] to and
//! from a gRPC [`Status`].
//!
//! Wire values that cannot be valid are refused with a [`BusError::InvalidArgument`]
//! naming the field (`events[3].topic`, `options.backoff.multiplier`); zero values mean
//! "the default", as the proto file says.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ganglion_core::bus::{
    AckMode, Aggregation, Backoff, BatchOptions, BusError, DeadLetter, DeliveredEvent, ErrorCode,
    Filter, GroupKey, KeyCount, PublishAck, StartPosition, StorageClass, SubscribeOptions,
    TopicInfo,
};
use ganglion_core::{Event, EventId, Pattern, Topic};
use tonic::{Code, Status};

use crate::v1;

/// Metadata key naming the offending field of an `INVALID_ARGUMENT` status.
pub const FIELD_METADATA: &str = "ganglion-field";
/// Metadata key carrying how long to wait (ms) after a `RESOURCE_EXHAUSTED` status.
pub const RETRY_AFTER_METADATA: &str = "retry-after-ms";

// ---- events ----

/// Parses topics, reusing the last one when the next is the same string (events of a
/// batch or a frame mostly share their topic): one validation and no allocation each.
#[derive(Debug, Default)]
pub struct TopicCache(Option<Topic>);

impl TopicCache {
    pub fn topic(&mut self, s: &str, field: impl FnOnce() -> String) -> Result<Topic, BusError> {
        if let Some(topic) = &self.0
            && topic.as_str() == s
        {
            return Ok(topic.clone());
        }
        let topic = Topic::new(s).map_err(|e| BusError::invalid(field(), e))?;
        self.0 = Some(topic.clone());
        Ok(topic)
    }
}

/// A core event on the wire (moves the payload and headers).
pub fn event_to_wire(event: Event) -> v1::Event {
    v1::Event {
        id: event.id.to_string(),
        topic: event.topic.as_str().to_owned(),
        r#type: event.event_type,
        source: event.source,
        timestamp_ms: event.timestamp_ms,
        headers: event.headers,
        payload: event.payload,
        content_type: event.content_type,
        seq: event.seq,
    }
}

/// A wire event as a core event; `field` names it in errors (`events[2]`). An empty id
/// gets a fresh UUIDv7.
pub fn event_from_wire(event: v1::Event, field: &str) -> Result<Event, BusError> {
    event_from_wire_cached(event, &mut TopicCache::default(), || field.to_owned())
}

/// [`event_from_wire`] with a topic cache; `field` is only called for an error.
pub fn event_from_wire_cached(
    event: v1::Event,
    topics: &mut TopicCache,
    field: impl Fn() -> String,
) -> Result<Event, BusError> {
    let topic = topics.topic(&event.topic, || format!("{}.topic", field()))?;
    Ok(Event {
        // An empty id is given at publication, one clock read per batch.
        id: EventId::from(event.id),
        topic,
        event_type: event.r#type,
        source: event.source,
        timestamp_ms: event.timestamp_ms,
        headers: event.headers,
        payload: event.payload,
        content_type: event.content_type,
        seq: event.seq,
    })
}

/// The events of a publish request, each checked; errors name `events[i]`.
pub fn events_from_wire(events: Vec<v1::Event>) -> Result<Vec<Event>, BusError> {
    let mut topics = TopicCache::default();
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| event_from_wire_cached(e, &mut topics, || format!("events[{i}]")))
        .collect()
}

pub fn ack_to_wire(ack: PublishAck) -> v1::PublishAck {
    v1::PublishAck {
        seq: ack.seq,
        id: ack.id.to_string(),
        duplicate: ack.duplicate,
    }
}

pub fn ack_from_wire(ack: v1::PublishAck) -> PublishAck {
    PublishAck {
        seq: ack.seq,
        id: EventId::from(ack.id),
        duplicate: ack.duplicate,
    }
}

/// A delivered event on the wire; the event is moved out when this was its last
/// reference (one subscriber of an ephemeral event), copied otherwise.
pub fn delivered_to_wire(delivered: DeliveredEvent) -> v1::DeliveredEvent {
    let event = Arc::try_unwrap(delivered.event).unwrap_or_else(|shared| (*shared).clone());
    v1::DeliveredEvent {
        event: Some(event_to_wire(event)),
        attempt: delivered.attempt,
        coalesced: delivered.coalesced,
    }
}

pub fn delivered_from_wire(
    delivered: v1::DeliveredEvent,
    topics: &mut TopicCache,
) -> Result<DeliveredEvent, BusError> {
    let event = delivered
        .event
        .ok_or_else(|| BusError::invalid("deliveries.events.event", "is missing"))?;
    Ok(DeliveredEvent {
        event: Arc::new(event_from_wire_cached(event, topics, || {
            "deliveries.events.event".to_owned()
        })?),
        attempt: delivered.attempt,
        coalesced: delivered.coalesced,
    })
}

pub fn key_count_to_wire(count: &KeyCount) -> v1::KeyCount {
    v1::KeyCount {
        key: count.key.clone(),
        count: count.count,
    }
}

pub fn key_count_from_wire(count: v1::KeyCount) -> KeyCount {
    KeyCount {
        key: count.key,
        count: count.count,
    }
}

// ---- subscriptions ----

/// Subscribe options from the wire: zero values take the defaults; impossible values are
/// refused naming `options.<field>`.
pub fn options_from_wire(
    options: Option<v1::SubscribeOptions>,
) -> Result<SubscribeOptions, BusError> {
    let defaults = SubscribeOptions::default();
    let Some(o) = options else {
        return Ok(defaults);
    };
    let ack_mode = match v1::AckMode::try_from(o.ack_mode) {
        Ok(v1::AckMode::Manual) => AckMode::Manual,
        Ok(v1::AckMode::Auto) => AckMode::Auto,
        Err(_) => {
            return Err(BusError::invalid(
                "options.ack_mode",
                format!("unknown value {}", o.ack_mode),
            ));
        }
    };
    let start = match o.start.and_then(|s| s.position) {
        None | Some(v1::start_position::Position::New(_)) => StartPosition::New,
        Some(v1::start_position::Position::All(_)) => StartPosition::All,
        Some(v1::start_position::Position::Seq(seq)) => StartPosition::Seq(seq),
        Some(v1::start_position::Position::TimeMs(ms)) => {
            StartPosition::Time(UNIX_EPOCH + Duration::from_millis(ms))
        }
    };
    let backoff = o.backoff.map_or(defaults.backoff, backoff_from_wire);
    let dead_letter_topic = match o.dead_letter_topic.as_str() {
        "" => None,
        topic => {
            Some(Topic::new(topic).map_err(|e| BusError::invalid("options.dead_letter_topic", e))?)
        }
    };
    let filter = o
        .filter
        .map(|f| Filter {
            types: f.types,
            headers: f.headers,
        })
        .unwrap_or_default();
    let batch = o.batch.map(batch_from_wire).transpose()?;
    let options = SubscribeOptions {
        durable: nonempty(o.durable),
        queue_group: nonempty(o.queue_group),
        start,
        ack_mode,
        ack_deadline: nonzero_ms(o.ack_deadline_ms, defaults.ack_deadline),
        max_in_flight: if o.max_in_flight == 0 {
            defaults.max_in_flight
        } else {
            o.max_in_flight as usize
        },
        max_in_flight_bytes: if o.max_in_flight_bytes == 0 {
            defaults.max_in_flight_bytes
        } else {
            usize::try_from(o.max_in_flight_bytes).unwrap_or(usize::MAX)
        },
        max_deliveries: if o.max_deliveries == 0 {
            defaults.max_deliveries
        } else {
            o.max_deliveries
        },
        backoff,
        dead_letter_topic,
        filter,
        prioritized: o.prioritized,
        batch,
    };
    options.validate().map_err(|e| match e {
        BusError::InvalidArgument { field, message } => BusError::InvalidArgument {
            field: format!("options.{field}"),
            message,
        },
        other => other,
    })?;
    Ok(options)
}

/// A backoff from the wire: 0 is the default, a negative jitter is none.
fn backoff_from_wire(b: v1::Backoff) -> Backoff {
    let defaults = Backoff::default();
    Backoff {
        initial: nonzero_ms(b.initial_ms, defaults.initial),
        multiplier: if b.multiplier == 0.0 {
            defaults.multiplier
        } else {
            b.multiplier
        },
        max: nonzero_ms(b.max_ms, defaults.max),
        jitter: if b.jitter == 0.0 {
            defaults.jitter
        } else {
            b.jitter.max(0.0)
        },
    }
}

/// Batch options from the wire: 0 is the default.
fn batch_from_wire(b: v1::BatchOptions) -> Result<BatchOptions, BusError> {
    let d = BatchOptions::default();
    let aggregation = match v1::Aggregation::try_from(b.aggregation) {
        Ok(v1::Aggregation::None) => Aggregation::None,
        Ok(v1::Aggregation::KeepLast) => Aggregation::KeepLast,
        Ok(v1::Aggregation::Count) => Aggregation::Count,
        Err(_) => {
            return Err(BusError::invalid(
                "options.batch.aggregation",
                format!("unknown value {}", b.aggregation),
            ));
        }
    };
    Ok(BatchOptions {
        window: (b.window_ms > 0).then(|| Duration::from_millis(b.window_ms)),
        max_events: if b.max_events == 0 {
            d.max_events
        } else {
            b.max_events as usize
        },
        max_bytes: if b.max_bytes == 0 {
            d.max_bytes
        } else {
            usize::try_from(b.max_bytes).unwrap_or(usize::MAX)
        },
        key: if b.key_header.is_empty() {
            GroupKey::Topic
        } else {
            GroupKey::Header(b.key_header)
        },
        aggregation,
    })
}

/// Subscribe options on the wire (the inverse of [`options_from_wire`]).
pub fn options_to_wire(o: &SubscribeOptions) -> v1::SubscribeOptions {
    let position = match o.start {
        StartPosition::New => v1::start_position::Position::New(true),
        StartPosition::All => v1::start_position::Position::All(true),
        StartPosition::Seq(seq) => v1::start_position::Position::Seq(seq),
        StartPosition::Time(t) => v1::start_position::Position::TimeMs(system_time_ms(t)),
    };
    v1::SubscribeOptions {
        durable: o.durable.clone().unwrap_or_default(),
        queue_group: o.queue_group.clone().unwrap_or_default(),
        start: Some(v1::StartPosition {
            position: Some(position),
        }),
        ack_mode: match o.ack_mode {
            AckMode::Manual => v1::AckMode::Manual,
            AckMode::Auto => v1::AckMode::Auto,
        } as i32,
        ack_deadline_ms: duration_ms(o.ack_deadline),
        max_in_flight: u32::try_from(o.max_in_flight).unwrap_or(u32::MAX),
        max_in_flight_bytes: o.max_in_flight_bytes as u64,
        max_deliveries: o.max_deliveries,
        backoff: Some(v1::Backoff {
            initial_ms: duration_ms(o.backoff.initial),
            multiplier: o.backoff.multiplier,
            max_ms: duration_ms(o.backoff.max),
            // 0 on the wire means the default; "no jitter" is sent as negative.
            jitter: if o.backoff.jitter == 0.0 {
                -1.0
            } else {
                o.backoff.jitter
            },
        }),
        dead_letter_topic: o
            .dead_letter_topic
            .as_ref()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        filter: Some(v1::Filter {
            types: o.filter.types.clone(),
            headers: o.filter.headers.clone(),
        }),
        prioritized: o.prioritized,
        batch: o.batch.as_ref().map(|b| v1::BatchOptions {
            window_ms: b.window.map_or(0, duration_ms),
            max_events: u32::try_from(b.max_events).unwrap_or(u32::MAX),
            max_bytes: b.max_bytes as u64,
            key_header: match &b.key {
                GroupKey::Topic => String::new(),
                GroupKey::Header(h) => h.clone(),
            },
            aggregation: match b.aggregation {
                Aggregation::None => v1::Aggregation::None,
                Aggregation::KeepLast => v1::Aggregation::KeepLast,
                Aggregation::Count => v1::Aggregation::Count,
            } as i32,
        }),
    }
}

/// A pattern from the wire; `field` names it in the error.
pub fn pattern_from_wire(pattern: &str, field: &str) -> Result<Pattern, BusError> {
    Pattern::new(pattern).map_err(|e| BusError::invalid(field, e))
}

/// Where a replay starts: at most one of `from_seq` and `since_ms`.
pub fn replay_start(from_seq: u64, since_ms: u64) -> Result<StartPosition, BusError> {
    match (from_seq, since_ms) {
        (0, 0) => Ok(StartPosition::All),
        (seq, 0) => Ok(StartPosition::Seq(seq)),
        (0, ms) => Ok(StartPosition::Time(UNIX_EPOCH + Duration::from_millis(ms))),
        _ => Err(BusError::invalid(
            "since_ms",
            "give from_seq or since_ms, not both",
        )),
    }
}

// ---- listings ----

pub fn topic_to_wire(info: TopicInfo) -> v1::TopicInfo {
    v1::TopicInfo {
        topic: info.topic.as_str().to_owned(),
        storage: match info.storage {
            StorageClass::Durable => v1::StorageClass::Durable,
            StorageClass::Ephemeral => v1::StorageClass::Ephemeral,
        } as i32,
        events: info.events,
        last_seq: info.last_seq,
    }
}

pub fn topic_from_wire(info: v1::TopicInfo) -> Result<TopicInfo, BusError> {
    Ok(TopicInfo {
        topic: Topic::new(&info.topic).map_err(|e| BusError::invalid("topic", e))?,
        storage: match v1::StorageClass::try_from(info.storage) {
            Ok(v1::StorageClass::Ephemeral) => StorageClass::Ephemeral,
            _ => StorageClass::Durable,
        },
        events: info.events,
        last_seq: info.last_seq,
    })
}

pub fn dead_letter_to_wire(dead: DeadLetter) -> v1::DeadLetter {
    v1::DeadLetter {
        event: Some(event_to_wire(dead.event)),
        origin_topic: dead.origin_topic,
        origin_seq: dead.origin_seq,
        subscription: dead.subscription,
        attempts: dead.attempts,
        last_error: dead.last_error,
    }
}

pub fn dead_letter_from_wire(dead: v1::DeadLetter) -> Result<DeadLetter, BusError> {
    let event = dead
        .event
        .ok_or_else(|| BusError::invalid("dead_letters.event", "is missing"))?;
    Ok(DeadLetter {
        event: event_from_wire(event, "dead_letters.event")?,
        origin_topic: dead.origin_topic,
        origin_seq: dead.origin_seq,
        subscription: dead.subscription,
        attempts: dead.attempts,
        last_error: dead.last_error,
    })
}

// ---- errors ----

/// The gRPC status for a bus error: the code maps one to one, the field and the
/// retry-after travel as metadata. Internal details are not sent.
pub fn status_from_error(error: &BusError) -> Status {
    let message = match error {
        BusError::Internal(_) => "internal error".to_owned(),
        BusError::Unauthenticated(m) | BusError::PermissionDenied(m) => m.clone(),
        other => other.to_string(),
    };
    let retry_after = match error {
        BusError::ResourceExhausted { retry_after, .. } => Some(*retry_after),
        _ => None,
    };
    status_for(error.code(), message, error.field(), retry_after)
}

/// The one mapping of a stable error code to a gRPC status, with the field and the
/// retry-after in metadata (every service's errors go through it).
pub fn status_for(
    code: ErrorCode,
    message: String,
    field: Option<&str>,
    retry_after: Option<std::time::Duration>,
) -> Status {
    let code = match code {
        ErrorCode::InvalidArgument => Code::InvalidArgument,
        ErrorCode::NotFound => Code::NotFound,
        ErrorCode::ResourceExhausted => Code::ResourceExhausted,
        ErrorCode::Unavailable => Code::Unavailable,
        ErrorCode::Internal => Code::Internal,
        ErrorCode::Unauthenticated => Code::Unauthenticated,
        ErrorCode::PermissionDenied => Code::PermissionDenied,
        ErrorCode::Stale => Code::FailedPrecondition,
        ErrorCode::DeadlineExceeded => Code::DeadlineExceeded,
    };
    let mut status = Status::new(code, message);
    if let Some(value) = field.and_then(|f| f.parse().ok()) {
        status.metadata_mut().insert(FIELD_METADATA, value);
    }
    if let Some(after) = retry_after
        && let Ok(value) = duration_ms(after).max(1).to_string().parse()
    {
        status.metadata_mut().insert(RETRY_AFTER_METADATA, value);
    }
    status
}

/// The stable code a gRPC status stands for: the inverse of [`status_for`] (codes it
/// never sends read as the nearest: `OutOfRange` as invalid, `Cancelled` and `Aborted` as
/// unavailable, the rest as internal).
pub fn code_from_status(status: &Status) -> ErrorCode {
    match status.code() {
        Code::InvalidArgument | Code::OutOfRange => ErrorCode::InvalidArgument,
        Code::NotFound => ErrorCode::NotFound,
        Code::ResourceExhausted => ErrorCode::ResourceExhausted,
        Code::Unavailable | Code::Cancelled | Code::Aborted => ErrorCode::Unavailable,
        Code::Unauthenticated => ErrorCode::Unauthenticated,
        Code::PermissionDenied => ErrorCode::PermissionDenied,
        Code::FailedPrecondition => ErrorCode::Stale,
        Code::DeadlineExceeded => ErrorCode::DeadlineExceeded,
        _ => ErrorCode::Internal,
    }
}

/// The field a gRPC status names (an invalid argument's), if it names one.
pub fn field_of_status(status: &Status) -> Option<&str> {
    status.metadata().get(FIELD_METADATA)?.to_str().ok()
}

/// When a refusal says to try again, if it says.
pub fn retry_after_of_status(status: &Status) -> Option<Duration> {
    let ms = status.metadata().get(RETRY_AFTER_METADATA)?.to_str().ok()?;
    ms.parse().ok().map(Duration::from_millis)
}

/// The bus error a gRPC status stands for (the client's side of [`status_from_error`]).
pub fn error_from_status(status: &Status) -> BusError {
    let metadata = |key: &str| {
        status
            .metadata()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let message = status.message().to_owned();
    match status.code() {
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            let field = metadata(FIELD_METADATA).unwrap_or_default();
            // The message is "field: message" when the server named a field.
            let message = message
                .strip_prefix(&format!("{field}: "))
                .map(str::to_owned)
                .unwrap_or(message);
            BusError::InvalidArgument { field, message }
        }
        Code::NotFound => BusError::NotFound {
            what: message.trim_end_matches(" not found").to_owned(),
        },
        Code::ResourceExhausted => BusError::ResourceExhausted {
            retry_after: Duration::from_millis(
                metadata(RETRY_AFTER_METADATA)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            ),
            what: message,
        },
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Aborted => {
            BusError::Unavailable(message)
        }
        Code::Unauthenticated => BusError::Unauthenticated(message),
        Code::PermissionDenied => BusError::PermissionDenied(message),
        _ => BusError::Internal(format!("{:?}: {message}", status.code())),
    }
}

/// A bus error as the wire's `Error` message (for streams that carry errors in-band).
pub fn error_to_wire(error: &BusError) -> v1::Error {
    v1::Error {
        code: error.code().as_str().to_owned(),
        message: match error {
            BusError::InvalidArgument { message, .. } => message.clone(),
            BusError::TooLarge { size, limit, .. } => {
                format!("the event is {size} bytes; at most {limit} are allowed")
            }
            BusError::Internal(_) => "internal error".to_owned(),
            BusError::Unauthenticated(m) | BusError::PermissionDenied(m) => m.clone(),
            other => other.to_string(),
        },
        field: error.field().unwrap_or_default().to_owned(),
        retry_after_ms: match error {
            BusError::ResourceExhausted { retry_after, .. } => duration_ms(*retry_after),
            _ => 0,
        },
    }
}

/// The bus error an in-band wire `Error` stands for.
pub fn error_from_wire(error: v1::Error) -> BusError {
    match error.code.as_str() {
        "UNAUTHENTICATED" => BusError::Unauthenticated(error.message),
        "PERMISSION_DENIED" => BusError::PermissionDenied(error.message),
        "INVALID_ARGUMENT" => BusError::InvalidArgument {
            field: error.field,
            message: error.message,
        },
        "NOT_FOUND" => BusError::NotFound {
            what: error.message,
        },
        "RESOURCE_EXHAUSTED" => BusError::ResourceExhausted {
            what: error.message,
            retry_after: Duration::from_millis(error.retry_after_ms),
        },
        "UNAVAILABLE" => BusError::Unavailable(error.message),
        _ => BusError::Internal(error.message),
    }
}

// ---- small helpers ----

fn nonempty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn nonzero_ms(ms: u64, default: Duration) -> Duration {
    if ms == 0 {
        default
    } else {
        Duration::from_millis(ms)
    }
}

/// Whole milliseconds, saturating.
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn system_time_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, duration_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_survives_a_status_with_its_field_and_retry_after() {
        for code in ErrorCode::ALL {
            let after = Duration::from_millis(1500);
            let status = status_for(code, "m".into(), Some("wait_ms"), Some(after));
            assert_eq!(code_from_status(&status), code);
            assert_eq!(field_of_status(&status), Some("wait_ms"));
            assert_eq!(retry_after_of_status(&status), Some(after));
        }
        let bare = Status::new(Code::Internal, "x");
        assert_eq!(
            (field_of_status(&bare), retry_after_of_status(&bare)),
            (None, None)
        );
    }

    #[test]
    fn options_round_trip_through_the_wire() {
        let options = SubscribeOptions {
            durable: Some("analytics".into()),
            queue_group: Some("workers".into()),
            start: StartPosition::Seq(42),
            ack_mode: AckMode::Auto,
            ack_deadline: Duration::from_secs(5),
            max_in_flight: 7,
            max_in_flight_bytes: 4096,
            max_deliveries: 3,
            backoff: Backoff {
                initial: Duration::from_millis(50),
                multiplier: 3.0,
                max: Duration::from_secs(9),
                jitter: 0.0,
            },
            dead_letter_topic: Some(Topic::new("dead.ones").unwrap()),
            filter: Filter {
                types: vec!["HandPlayed".into()],
                headers: [("game".to_owned(), "g1".to_owned())].into(),
            },
            prioritized: true,
            batch: Some(BatchOptions {
                window: Some(Duration::from_millis(250)),
                max_events: 10,
                max_bytes: 65_536,
                key: GroupKey::Header("game".into()),
                aggregation: Aggregation::KeepLast,
            }),
        };
        let back = options_from_wire(Some(options_to_wire(&options))).unwrap();
        assert_eq!(back, options);
    }

    #[test]
    fn zero_options_are_the_defaults_and_bad_ones_name_their_field() {
        let zero = options_from_wire(Some(v1::SubscribeOptions::default())).unwrap();
        assert_eq!(zero, SubscribeOptions::default());

        let bad = v1::SubscribeOptions {
            backoff: Some(v1::Backoff {
                multiplier: 0.5,
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = options_from_wire(Some(bad)).unwrap_err();
        assert!(
            matches!(&err, BusError::InvalidArgument { field, .. } if field == "options.backoff.multiplier"),
            "{err:?}"
        );
        let bad_name = v1::SubscribeOptions {
            durable: "has space".into(),
            ..Default::default()
        };
        let err = options_from_wire(Some(bad_name)).unwrap_err();
        assert!(
            matches!(&err, BusError::InvalidArgument { field, .. } if field == "options.durable"),
            "{err:?}"
        );
    }

    #[test]
    fn errors_survive_a_status_round_trip() {
        let errors = [
            BusError::invalid("events[2].topic", "empty token"),
            BusError::NotFound {
                what: "subscription sub-3".into(),
            },
            BusError::ResourceExhausted {
                what: "too many subscriptions".into(),
                retry_after: Duration::from_millis(1500),
            },
            BusError::Unavailable("log failed".into()),
        ];
        for error in errors {
            let back = error_from_status(&status_from_error(&error));
            assert_eq!(back.code(), error.code());
            let wire = error_from_wire(error_to_wire(&error));
            assert_eq!(wire.code(), error.code());
            if let BusError::InvalidArgument { field, message } = &error {
                assert_eq!(
                    back,
                    BusError::InvalidArgument {
                        field: field.clone(),
                        message: message.clone()
                    }
                );
                assert_eq!(back, wire);
            }
            if let BusError::ResourceExhausted { retry_after, .. } = &error {
                assert!(
                    matches!(back, BusError::ResourceExhausted { retry_after: r, .. } if r == *retry_after)
                );
            }
        }
        // Internal details stay on the server.
        let status = status_from_error(&BusError::Internal("disk at /secret".into()));
        assert!(!status.message().contains("secret"));
    }

    #[test]
    fn a_wire_event_with_a_bad_topic_names_the_field() {
        let err = events_from_wire(vec![
            v1::Event {
                topic: "ok.topic".into(),
                ..Default::default()
            },
            v1::Event {
                topic: "bad..topic".into(),
                ..Default::default()
            },
        ])
        .unwrap_err();
        assert!(
            matches!(&err, BusError::InvalidArgument { field, .. } if field == "events[1].topic"),
            "{err:?}"
        );
    }
}
