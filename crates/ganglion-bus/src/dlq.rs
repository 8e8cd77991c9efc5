//! Dead letters are ordinary durable events on the dead-letter topic (`dlq.<name>` by
//! default): the original payload, type, content type and headers, plus headers that say
//! where the event came from and why it died. Redriving republishes the original to its
//! topic and appends a marker (type [`REDRIVEN_TYPE`]) so it is not listed again: the
//! dead-letter topic is its own history.

use std::collections::HashSet;

use ganglion_core::bus::DeadLetter;
use ganglion_core::{Event, EventId, Topic};

pub(crate) const ORIGIN_TOPIC: &str = "dlq_origin_topic";
pub(crate) const ORIGIN_SEQ: &str = "dlq_origin_seq";
pub(crate) const SUBSCRIPTION: &str = "dlq_subscription";
pub(crate) const ATTEMPTS: &str = "dlq_attempts";
pub(crate) const LAST_ERROR: &str = "dlq_last_error";
/// On a redrive marker: the dead-letter sequence it redrove.
pub(crate) const REDRIVEN_SEQ: &str = "dlq_redriven_seq";
/// The type of a redrive marker.
pub const REDRIVEN_TYPE: &str = "ganglion.dlq.redriven";

const DLQ_HEADERS: [&str; 5] = [ORIGIN_TOPIC, ORIGIN_SEQ, SUBSCRIPTION, ATTEMPTS, LAST_ERROR];

/// The default dead-letter topic of a subscription.
pub(crate) fn default_topic(subscription: &str) -> Option<Topic> {
    Topic::new(&format!("dlq.{subscription}")).ok()
}

pub(crate) fn dead_letter_event(
    event: &Event,
    dlq_topic: &Topic,
    subscription: &str,
    attempts: u32,
    error: &str,
) -> Event {
    let mut letter = Event {
        id: EventId::now(),
        topic: dlq_topic.clone(),
        seq: 0,
        timestamp_ms: 0,
        ..event.clone()
    };
    letter
        .headers
        .insert(ORIGIN_TOPIC.into(), event.topic.to_string());
    letter
        .headers
        .insert(ORIGIN_SEQ.into(), event.seq.to_string());
    letter
        .headers
        .insert(SUBSCRIPTION.into(), subscription.into());
    letter.headers.insert(ATTEMPTS.into(), attempts.to_string());
    letter.headers.insert(LAST_ERROR.into(), error.into());
    letter
}

/// Reads a dead-letter event back; `None` for markers and foreign events.
pub(crate) fn parse(event: Event) -> Option<DeadLetter> {
    let origin_topic = event.header(ORIGIN_TOPIC)?.to_owned();
    let origin_seq = event.header(ORIGIN_SEQ)?.parse().ok()?;
    let subscription = event.header(SUBSCRIPTION)?.to_owned();
    let attempts = event.header(ATTEMPTS)?.parse().ok()?;
    let last_error = event.header(LAST_ERROR)?.to_owned();
    Some(DeadLetter {
        event,
        origin_topic,
        origin_seq,
        subscription,
        attempts,
        last_error,
    })
}

/// The dead-letter sequences the redrive markers among `events` redrove.
pub(crate) fn redriven(events: &[Event]) -> impl Iterator<Item = u64> + '_ {
    events
        .iter()
        .filter(|e| e.event_type == REDRIVEN_TYPE)
        .filter_map(|e| e.header(REDRIVEN_SEQ)?.parse().ok())
}

/// The dead letters among `events` (a page of a dead-letter topic's history) that no
/// marker has redriven, oldest first.
pub(crate) fn live(events: Vec<Event>, redriven: &HashSet<u64>) -> Vec<DeadLetter> {
    events
        .into_iter()
        .filter(|e| e.event_type != REDRIVEN_TYPE && !redriven.contains(&e.seq))
        .filter_map(parse)
        .collect()
}

/// The event to republish for a dead letter: the original, with a new id.
pub(crate) fn redrive_event(letter: &DeadLetter) -> Option<Event> {
    let mut event = Event {
        id: EventId::now(),
        topic: Topic::new(&letter.origin_topic).ok()?,
        seq: 0,
        timestamp_ms: 0,
        ..letter.event.clone()
    };
    for h in DLQ_HEADERS {
        event.headers.remove(h);
    }
    Some(event)
}

pub(crate) fn redrive_marker(letter: &DeadLetter) -> Event {
    Event::new(letter.event.topic.clone(), bytes::Bytes::new())
        .with_type(REDRIVEN_TYPE)
        .with_source("ganglion")
        .with_header(REDRIVEN_SEQ, letter.event.seq.to_string())
        .with_header(SUBSCRIPTION, letter.subscription.clone())
}

/// Dead letters of one subscription: published, and redriven since.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) letters: u64,
    pub(crate) redriven: u64,
}

impl Counts {
    /// Counts a dead letter (`true`) or a redrive marker (`false`), as [`classify`] says.
    pub(crate) fn count(&mut self, letter: bool) {
        if letter {
            self.letters += 1;
        } else {
            self.redriven += 1;
        }
    }

    /// Dead letters not redriven.
    pub(crate) fn live(&self) -> u64 {
        self.letters.saturating_sub(self.redriven)
    }
}

/// The subscription an event is a dead letter (`true`) or a redrive marker (`false`)
/// of, if it is either.
pub(crate) fn classify_parts<'a>(
    event_type: &str,
    subscription: Option<&'a str>,
) -> Option<(&'a str, bool)> {
    let subscription = subscription?;
    Some((subscription, event_type != REDRIVEN_TYPE))
}

/// [`classify_parts`] of an event.
pub(crate) fn classify(event: &Event) -> Option<(&str, bool)> {
    if event.headers.is_empty() {
        return None;
    }
    classify_parts(&event.event_type, event.header(SUBSCRIPTION))
}
