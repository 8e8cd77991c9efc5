//! Dead letters are ordinary durable events on the dead-letter topic (`dlq.<name>` by
//! default): the original payload, type, content type and headers, plus headers that say
//! where the event came from and why it died. Redriving republishes the original to its
//! topic and appends a marker (type [`REDRIVEN_TYPE`]) so it is not listed again: the
//! dead-letter topic is its own history.

use std::collections::HashSet;

use ganglion_core::bus::{DeadLetter, REPLAY_PAGE_BYTES};
use ganglion_core::{BusError, Event, EventId, Pattern, Topic};

use crate::{Bus, Core, lock};

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

/// Dead letters redriven per publication when all of a subscription's are.
const REDRIVE_BATCH: usize = 1000;

impl Core {
    /// The dead-letter topic of the consumer called `name`.
    pub(crate) fn dlq_topic_of(&self, name: &str) -> Result<Topic, BusError> {
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
        default_topic(name)
            .ok_or_else(|| BusError::invalid("subscription", "is not a valid subscription name"))
    }

    /// The oldest `limit` dead letters of `name` not yet redriven, read a page at a time
    /// (markers first, then the letters), so memory holds `limit` letters, not the
    /// dead-letter topic's whole history.
    pub(crate) fn dead_letters(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
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
            redriven.extend(self::redriven(&page));
            true
        })?;
        let mut letters = Vec::new();
        pages(&mut |page| {
            letters.extend(live(page, &redriven));
            letters.truncate(limit);
            letters.len() < limit
        })?;
        Ok(letters)
    }

    /// Counts the dead letters and redrive markers among `events` (being logged).
    pub(crate) fn count_dead_letters<'a>(&self, events: impl IntoIterator<Item = &'a Event>) {
        let mut counts = None;
        for event in events {
            if let Some((subscription, letter)) = classify(event) {
                counts
                    .get_or_insert_with(|| lock(&self.dead_letter_counts))
                    .entry(subscription.to_owned())
                    .or_default()
                    .count(letter);
            }
        }
    }
}

impl Bus {
    pub(crate) async fn redrive_now(&self, name: String, seqs: Vec<u64>) -> Result<u64, BusError> {
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

    pub(crate) async fn letters(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        let core = self.core.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || core.dead_letters(&name, limit))
            .await
            .map_err(|e| BusError::Internal(e.to_string()))?
    }

    pub(crate) async fn redrive_letters(
        &self,
        name: &str,
        chosen: Vec<DeadLetter>,
    ) -> Result<u64, BusError> {
        if chosen.is_empty() {
            return Ok(0);
        }
        let events: Vec<Event> = chosen
            .iter()
            .map(|l| {
                redrive_event(l).ok_or_else(|| {
                    BusError::Internal(format!(
                        "dead letter {} has an invalid origin topic",
                        l.event.seq
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        self.core.publish_internal(events).await?;
        let markers = chosen.iter().map(redrive_marker).collect();
        self.core.publish_internal(markers).await?;
        tracing::info!(subscription = %name, count = chosen.len(), "dead letters redriven");
        Ok(chosen.len() as u64)
    }
}
