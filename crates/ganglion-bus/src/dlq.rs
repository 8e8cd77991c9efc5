//! Dead letters are ordinary durable events on the dead-letter topic (`dlq.<name>` by
//! default): the original payload, type, content type and headers, plus headers that say
//! where the event came from and why it died. Redriving republishes the original to its
//! topic and appends a marker (type [`REDRIVEN_TYPE`]) so it is not listed again: the
//! dead-letter topic is its own history.

use std::collections::HashSet;

pub(crate) use ganglion_core::bus::dead_letter::{
    Counts, SUBSCRIPTION, classify_parts, dead_letter_event, default_topic,
};
use ganglion_core::bus::dead_letter::{classify, live, redrive_event, redrive_marker, redriven};
use ganglion_core::bus::{DeadLetter, REPLAY_PAGE_BYTES};
use ganglion_core::{BusError, Event, Pattern, Topic};

use crate::{Bus, Core, lock};

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
