//! The event envelope.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::topic::Topic;

/// Header names with a meaning to Ganglion. Any other header is carried as it is.
pub mod headers {
    /// Ties together the events, logs and spans of one piece of work; created when absent
    /// and passed on to the events a handler publishes.
    pub const CORRELATION_ID: &str = "correlation_id";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// Publishing the same key again within the dedupe window returns the first
    /// publication's sequence number and appends nothing.
    pub const IDEMPOTENCY_KEY: &str = "idempotency_key";
    /// An integer; in a subscription with `prioritized` set, higher goes first.
    pub const PRIORITY: &str = "priority";
}

/// An event's id: a UUIDv7 unless the publisher gave its own.
///
/// A UUID is kept as its 16 bytes (made, copied and compared without an allocation;
/// written out in its hyphenated form only where text is needed), any other id as shared
/// text. Ids that read as a lowercase hyphenated UUID are kept as one, so an id equals
/// itself however it was made. The default is the empty id: not given yet.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(IdRepr);

#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum IdRepr {
    #[default]
    Empty,
    Uuid(uuid::Uuid),
    Text(Arc<str>),
}

impl EventId {
    /// A new UUIDv7 of the present millisecond.
    pub fn now() -> EventId {
        EventId::at(unix_millis_now())
    }

    /// A new UUIDv7 for `unix_millis`, so a batch of events takes one clock read, not
    /// one each (on a virtual machine the clock read is a third of an id's cost).
    ///
    /// The random bits come from a per-thread generator seeded from the operating
    /// system once, not from a system call per id: ids are made at publication rates.
    pub fn at(unix_millis: u64) -> EventId {
        use std::cell::Cell;
        use std::hash::{BuildHasher, Hasher};

        thread_local! {
            static STATE: Cell<u64> = Cell::new({
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u64(crate::unix_micros(std::time::SystemTime::now()));
                h.finish()
            });
        }
        let next = || {
            STATE.with(|s| {
                // splitmix64
                let z = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
                s.set(z);
                let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^ (z >> 31)
            })
        };
        let mut random = [0u8; 10];
        random[..8].copy_from_slice(&next().to_le_bytes());
        random[8..].copy_from_slice(&next().to_le_bytes()[..2]);
        EventId(IdRepr::Uuid(
            uuid::Builder::from_unix_timestamp_millis(unix_millis, &random).into_uuid(),
        ))
    }

    /// Not given yet (the bus gives one at publication).
    pub fn is_empty(&self) -> bool {
        matches!(self.0, IdRepr::Empty)
    }

    /// The UUID, when the id is one.
    pub fn as_uuid(&self) -> Option<uuid::Uuid> {
        match self.0 {
            IdRepr::Uuid(uuid) => Some(uuid),
            _ => None,
        }
    }

    /// Length of the id as text.
    pub fn len(&self) -> usize {
        match &self.0 {
            IdRepr::Empty => 0,
            IdRepr::Uuid(_) => uuid::fmt::Hyphenated::LENGTH,
            IdRepr::Text(text) => text.len(),
        }
    }

    /// Calls `f` with the id as text, without allocating.
    pub fn with_str<T>(&self, f: impl FnOnce(&str) -> T) -> T {
        match &self.0 {
            IdRepr::Empty => f(""),
            IdRepr::Uuid(uuid) => f(uuid
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer())),
            IdRepr::Text(text) => f(text),
        }
    }
}

impl From<&str> for EventId {
    fn from(id: &str) -> EventId {
        if id.is_empty() {
            return EventId(IdRepr::Empty);
        }
        match uuid::Uuid::try_parse(id) {
            // Only the form it would be written back in: other spellings of a UUID
            // (braces, capitals, no hyphens) stay the text they were given as.
            Ok(uuid)
                if uuid
                    .hyphenated()
                    .encode_lower(&mut uuid::Uuid::encode_buffer())
                    == id =>
            {
                EventId(IdRepr::Uuid(uuid))
            }
            _ => EventId(IdRepr::Text(Arc::from(id))),
        }
    }
}

impl From<String> for EventId {
    fn from(id: String) -> EventId {
        EventId::from(id.as_str())
    }
}

impl From<uuid::Uuid> for EventId {
    fn from(uuid: uuid::Uuid) -> EventId {
        EventId(IdRepr::Uuid(uuid))
    }
}

impl PartialEq<str> for EventId {
    fn eq(&self, other: &str) -> bool {
        self.with_str(|id| id == other)
    }
}

impl PartialEq<&str> for EventId {
    fn eq(&self, other: &&str) -> bool {
        self == *other
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            IdRepr::Empty => Ok(()),
            IdRepr::Uuid(uuid) => std::fmt::Display::fmt(&uuid.hyphenated(), f),
            IdRepr::Text(text) => f.write_str(text),
        }
    }
}

impl std::fmt::Debug for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.to_string(), f)
    }
}

/// Gives every event without an id a UUIDv7 of the present millisecond (one clock
/// read for them all).
pub fn assign_ids(events: &mut [Event]) {
    let mut now_ms = None;
    for event in events.iter_mut().filter(|e| e.id.is_empty()) {
        event.id = EventId::at(*now_ms.get_or_insert_with(unix_millis_now));
    }
}

fn unix_millis_now() -> u64 {
    crate::unix_micros(std::time::SystemTime::now()) / 1000
}

/// One event. Payloads are [`Bytes`], so fanning an event out never copies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Unique id; a UUIDv7 of the moment of publication unless the publisher gave one
    /// (empty until then: see [`Event::new`]).
    pub id: EventId,
    pub topic: Topic,
    /// What kind of event this is (`GameStateUpdate`); free-form, may be empty.
    pub event_type: String,
    /// Who published it (`game-server`); free-form, may be empty.
    pub source: String,
    /// When it happened, in milliseconds since the Unix epoch; the bus sets it at
    /// publication when it is 0.
    pub timestamp_ms: u64,
    pub headers: BTreeMap<String, String>,
    pub payload: Bytes,
    /// MIME type of the payload (`application/json`); may be empty.
    pub content_type: String,
    /// Sequence number in the event log, assigned at append; 0 for events not logged
    /// (ephemeral topics) and before publication.
    pub seq: u64,
}

impl Event {
    /// An event on `topic`; everything else empty. Its id is given at publication (a
    /// UUIDv7, one clock read per batch; the acknowledgement carries it): set `id`, or
    /// use [`Event::with_id`], to know it before.
    pub fn new(topic: Topic, payload: impl Into<Bytes>) -> Event {
        Event {
            id: EventId::default(),
            topic,
            event_type: String::new(),
            source: String::new(),
            timestamp_ms: 0,
            headers: BTreeMap::new(),
            payload: payload.into(),
            content_type: String::new(),
            seq: 0,
        }
    }

    /// This event with `id` (a fresh UUIDv7 from [`EventId::now`], or the caller's own).
    pub fn with_id(mut self, id: impl Into<EventId>) -> Event {
        self.id = id.into();
        self
    }

    pub fn with_type(mut self, event_type: impl Into<String>) -> Event {
        self.event_type = event_type.into();
        self
    }

    pub fn with_source(mut self, source: impl Into<String>) -> Event {
        self.source = source.into();
        self
    }

    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Event {
        self.content_type = content_type.into();
        self
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Event {
        self.headers.insert(name.into(), value.into());
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The correlation id from the headers. (Handlers use [`crate::EventContext::of`],
    /// which falls back to the event's own id.)
    pub fn correlation_id(&self) -> Option<&str> {
        self.header(headers::CORRELATION_ID)
    }

    /// The correlation id its work carries: the header's, or the event's own id when it
    /// starts a piece of work.
    pub fn correlation_or_id(&self) -> std::borrow::Cow<'_, str> {
        self.correlation_id()
            .map_or_else(|| self.id.to_string().into(), Into::into)
    }

    pub fn idempotency_key(&self) -> Option<&str> {
        self.header(headers::IDEMPOTENCY_KEY)
    }

    /// The `priority` header as a number (0 when absent or not a number).
    pub fn priority(&self) -> i64 {
        self.header(headers::PRIORITY)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Bytes this event occupies: payload, strings and headers (what size limits count).
    pub fn size(&self) -> usize {
        self.payload.len()
            + self.id.len()
            + self.topic.as_str().len()
            + self.event_type.len()
            + self.source.len()
            + self.content_type.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_without_an_id_get_distinct_uuid7s_of_the_present_and_given_ids_stay() {
        let topic = Topic::new("a.b").unwrap();
        let mut events = vec![
            Event::new(topic.clone(), "x"),
            Event::new(topic.clone(), "y").with_id("mine"),
            Event::new(topic, "z"),
        ];
        assert!(events[0].id.is_empty(), "given at publication");
        let before = crate::unix_micros(std::time::SystemTime::now()) / 1000;
        assign_ids(&mut events);
        let after = crate::unix_micros(std::time::SystemTime::now()) / 1000;
        assert_eq!(events[1].id, "mine");
        assert_ne!(events[0].id, events[2].id);
        for id in [&events[0].id, &events[2].id] {
            let uuid = uuid::Uuid::parse_str(&id.to_string()).unwrap();
            assert_eq!(id.as_uuid(), Some(uuid));
            assert_eq!(uuid.get_version_num(), 7);
            let (secs, nanos) = uuid.get_timestamp().unwrap().to_unix();
            let ms = secs * 1000 + u64::from(nanos) / 1_000_000;
            assert!(
                (before..=after).contains(&ms),
                "{ms} not in {before}..={after}"
            );
        }
    }

    #[test]
    fn an_id_equals_itself_as_text_and_only_the_written_form_of_a_uuid_becomes_one() {
        let id = EventId::now();
        let text = id.to_string();
        assert_eq!(text.len(), id.len());
        assert_eq!(EventId::from(text.as_str()), id, "read back from its text");
        assert_eq!(id, text.as_str());
        assert_eq!(format!("{id:?}"), format!("{text:?}"));

        // Other spellings of the same UUID are kept as given (they are written back so).
        let upper = EventId::from(text.to_uppercase());
        assert_eq!(upper.as_uuid(), None);
        assert_eq!(upper.to_string(), text.to_uppercase());
        assert_ne!(upper, id);

        let own = EventId::from("order-17");
        assert_eq!(
            (own.as_uuid(), own.len(), own.to_string()),
            (None, 8, "order-17".into())
        );
        assert!(EventId::from("").is_empty() && EventId::default().is_empty());
        assert_eq!(EventId::from(""), EventId::default());
    }

    #[test]
    fn priority_reads_the_header_leniently() {
        let e = Event::new(Topic::new("a").unwrap(), "");
        assert_eq!(e.priority(), 0);
        assert_eq!(e.clone().with_header("priority", " 5 ").priority(), 5);
        assert_eq!(e.with_header("priority", "high").priority(), 0);
    }
}
