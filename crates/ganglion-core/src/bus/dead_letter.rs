//! Dead letters, whatever the engine: the dead-letter event's format (the original
//! payload, type, content type and headers, plus headers that say where it came from and
//! why it died), reading one back, redrive markers, and the decision every engine makes
//! when a delivery fails: retry after the backoff, or dead-letter after
//! `max_deliveries`. An engine supplies the storage (a durable dead-letter topic) and the
//! timers; this module is the policy and the format, written once.

use std::collections::HashSet;
use std::time::Duration;

use super::{DeadLetter, SubscribeOptions};
use crate::event::{Event, EventId};
use crate::topic::Topic;

pub const ORIGIN_TOPIC: &str = "dlq_origin_topic";
pub const ORIGIN_SEQ: &str = "dlq_origin_seq";
pub const SUBSCRIPTION: &str = "dlq_subscription";
pub const ATTEMPTS: &str = "dlq_attempts";
pub const LAST_ERROR: &str = "dlq_last_error";
/// On a redrive marker: the dead-letter sequence it redrove.
pub const REDRIVEN_SEQ: &str = "dlq_redriven_seq";
/// The type of a redrive marker.
pub const REDRIVEN_TYPE: &str = "ganglion.dlq.redriven";

pub const DLQ_HEADERS: [&str; 5] = [ORIGIN_TOPIC, ORIGIN_SEQ, SUBSCRIPTION, ATTEMPTS, LAST_ERROR];

/// The default dead-letter topic of a subscription.
pub fn default_topic(subscription: &str) -> Option<Topic> {
    Topic::new(&format!("dlq.{subscription}")).ok()
}

pub fn dead_letter_event(
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
pub fn parse(event: Event) -> Option<DeadLetter> {
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
pub fn redriven(events: &[Event]) -> impl Iterator<Item = u64> + '_ {
    events
        .iter()
        .filter(|e| e.event_type == REDRIVEN_TYPE)
        .filter_map(|e| e.header(REDRIVEN_SEQ)?.parse().ok())
}

/// The dead letters among `events` (a page of a dead-letter topic's history) that no
/// marker has redriven, oldest first.
pub fn live(events: Vec<Event>, redriven: &HashSet<u64>) -> Vec<DeadLetter> {
    events
        .into_iter()
        .filter(|e| e.event_type != REDRIVEN_TYPE && !redriven.contains(&e.seq))
        .filter_map(parse)
        .collect()
}

/// The event to republish for a dead letter: the original, with a new id.
pub fn redrive_event(letter: &DeadLetter) -> Option<Event> {
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

pub fn redrive_marker(letter: &DeadLetter) -> Event {
    Event::new(letter.event.topic.clone(), bytes::Bytes::new())
        .with_type(REDRIVEN_TYPE)
        .with_source("ganglion")
        .with_header(REDRIVEN_SEQ, letter.event.seq.to_string())
        .with_header(SUBSCRIPTION, letter.subscription.clone())
}

/// Dead letters of one subscription: published, and redriven since.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub letters: u64,
    pub redriven: u64,
}

impl Counts {
    /// Counts a dead letter (`true`) or a redrive marker (`false`), as [`classify`] says.
    pub fn count(&mut self, letter: bool) {
        if letter {
            self.letters += 1;
        } else {
            self.redriven += 1;
        }
    }

    /// Dead letters not redriven.
    pub fn live(&self) -> u64 {
        self.letters.saturating_sub(self.redriven)
    }
}

/// The subscription an event is a dead letter (`true`) or a redrive marker (`false`)
/// of, if it is either.
pub fn classify_parts<'a>(
    event_type: &str,
    subscription: Option<&'a str>,
) -> Option<(&'a str, bool)> {
    let subscription = subscription?;
    Some((subscription, event_type != REDRIVEN_TYPE))
}

/// [`classify_parts`] of an event.
pub fn classify(event: &Event) -> Option<(&str, bool)> {
    if event.headers.is_empty() {
        return None;
    }
    classify_parts(&event.event_type, event.header(SUBSCRIPTION))
}

/// What becomes of a delivery that failed (nacked, or its ack deadline passed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AfterFailure {
    /// Deliver it again after this long.
    Retry(Duration),
    /// It had its `max_deliveries` attempts: publish it to the dead-letter topic.
    DeadLetter,
}

/// The fate of attempt `attempt` (1-based) that failed: the nack's own `delay` if it
/// gave one, else the subscription's backoff (its jitter drawn from `jitter`), unless the
/// attempts are used up.
pub fn after_failure(
    options: &SubscribeOptions,
    attempt: u32,
    delay: Option<Duration>,
    jitter: &mut Jitter,
) -> AfterFailure {
    if attempt >= options.max_deliveries {
        return AfterFailure::DeadLetter;
    }
    AfterFailure::Retry(delay.unwrap_or_else(|| options.backoff.delay(attempt, jitter.unit())))
}

/// Where a subscription's backoff jitter comes from: a xorshift generator, seeded per
/// subscription so that failing subscribers spread out (not for anything secret).
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        // Xorshift never leaves zero.
        Jitter(seed | 1)
    }

    /// The next number in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_attempt_retries_after_the_backoff_until_the_last_one() {
        let options = SubscribeOptions {
            max_deliveries: 3,
            ..SubscribeOptions::default()
        };
        let first = options.backoff.delay(1, Jitter::new(7).unit());
        let jitter = &mut Jitter::new(7);
        assert_eq!(
            after_failure(&options, 1, None, jitter),
            AfterFailure::Retry(first)
        );
        let asked = Duration::from_secs(7);
        assert_eq!(
            after_failure(&options, 2, Some(asked), jitter),
            AfterFailure::Retry(asked)
        );
        assert_eq!(
            after_failure(&options, 3, Some(asked), jitter),
            AfterFailure::DeadLetter
        );
        let units: Vec<f64> = (0..1000).map(|_| jitter.unit()).collect();
        assert!(units.iter().all(|u| (0.0..1.0).contains(u)));
        assert!(units.windows(2).all(|w| w[0] != w[1]), "it moves");
        assert!(Jitter::new(0).unit() > 0.0, "a zero seed still moves");
    }

    #[test]
    fn a_dead_letter_reads_back_and_redrives_as_the_original() {
        let topic = Topic::new("game.hand").unwrap();
        let mut original = Event::new(topic, "p").with_header("game", "g1");
        original.seq = 42;
        let dlq = default_topic("scorer").unwrap();
        let letter = dead_letter_event(&original, &dlq, "scorer", 5, "boom");
        assert_eq!(letter.topic.as_str(), "dlq.scorer");
        let read = parse(letter.clone()).unwrap();
        assert_eq!(
            (
                read.origin_topic.as_str(),
                read.origin_seq,
                read.attempts,
                read.last_error.as_str()
            ),
            ("game.hand", 42, 5, "boom")
        );
        let again = redrive_event(&read).unwrap();
        assert_eq!(again.topic.as_str(), "game.hand");
        assert_eq!(
            again.headers.len(),
            1,
            "only the original's headers: {:?}",
            again.headers
        );
        assert_ne!(again.id, original.id);
        let mut marker = redrive_marker(&read);
        marker.seq = 43;
        assert_eq!(parse(marker.clone()), None, "a marker is not a dead letter");
        assert_eq!(classify(&marker), Some(("scorer", false)));
        assert_eq!(classify(&letter), Some(("scorer", true)));
        assert_eq!(
            redriven(std::slice::from_ref(&marker)).collect::<Vec<_>>(),
            [0]
        );
    }
}
