//! Batch windows, whatever the engine: what a window holds, when it must close (its time,
//! its event count, its bytes), and how it becomes one delivery, kept whole or coalesced
//! per key (keep-last, count). The engine decides what goes in (what is ready, what its
//! in-flight limits allow) and sets a timer for [`Window::closes_at`]; this is the rest,
//! written once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Aggregation, BatchOptions, DeliveredEvent, KeyCount};
use crate::event::Event;

/// An open batch window.
#[derive(Debug, Clone)]
pub struct Window {
    /// When it closes (the engine's monotonic time).
    pub closes_at: Duration,
    /// (event, attempt), in arrival order; ephemeral events have seq 0.
    items: Vec<(Arc<Event>, u32)>,
    /// Bytes of the events.
    bytes: usize,
}

/// What a closed window delivers: the events (or the counts) and the sequences an ack of
/// the batch acknowledges.
#[derive(Debug, Clone)]
pub struct Batch {
    pub events: Vec<DeliveredEvent>,
    pub counts: Vec<KeyCount>,
    /// Every stored event the window held, coalesced or not.
    pub seqs: Vec<u64>,
}

impl Window {
    /// An empty window that closes at `closes_at`.
    pub fn open(closes_at: Duration) -> Window {
        Window {
            closes_at,
            items: Vec::new(),
            bytes: 0,
        }
    }

    pub fn push(&mut self, event: Arc<Event>, attempt: u32) {
        self.bytes += event.size();
        self.items.push((event, attempt));
    }

    /// Events gathered.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes of the events gathered.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Stored events gathered (ephemeral ones have no sequence).
    pub fn stored(&self) -> usize {
        self.items.iter().filter(|(e, _)| e.seq != 0).count()
    }

    /// Whether it must close now, before its time: it holds `max_events`, or (with at
    /// least one event) `max_bytes`.
    pub fn is_full(&self, batch: &BatchOptions) -> bool {
        self.items.len() >= batch.max_events || (!self.is_empty() && self.bytes >= batch.max_bytes)
    }

    /// Whether its time is up at `now`.
    pub fn is_due(&self, now: Duration) -> bool {
        self.closes_at <= now
    }

    /// The events gathered, with their attempts.
    pub fn items(&self) -> &[(Arc<Event>, u32)] {
        &self.items
    }

    /// The delivery it makes, per `batch.aggregation`: every event; the last per key
    /// (in the order of each key's last event, with how many it stands for); or a count
    /// per key (in the order keys first came).
    pub fn batch(&self, batch: &BatchOptions) -> Batch {
        let seqs = self
            .items
            .iter()
            .map(|(e, _)| e.seq)
            .filter(|&s| s != 0)
            .collect();
        let (events, counts) = match batch.aggregation {
            Aggregation::None => (self.every_event(), Vec::new()),
            Aggregation::KeepLast => (self.last_per_key(batch), Vec::new()),
            Aggregation::Count => (Vec::new(), self.count_per_key(batch)),
        };
        Batch {
            events,
            counts,
            seqs,
        }
    }

    fn every_event(&self) -> Vec<DeliveredEvent> {
        self.items
            .iter()
            .map(|(event, attempt)| DeliveredEvent {
                event: event.clone(),
                attempt: *attempt,
                coalesced: 1,
            })
            .collect()
    }

    fn last_per_key(&self, batch: &BatchOptions) -> Vec<DeliveredEvent> {
        let mut last: HashMap<String, (usize, u64)> = HashMap::new();
        for (i, (event, _)) in self.items.iter().enumerate() {
            let entry = last.entry(batch.key.of(event)).or_insert((i, 0));
            *entry = (i, entry.1 + 1);
        }
        let mut kept: Vec<(usize, u64)> = last.into_values().collect();
        kept.sort_unstable();
        kept.into_iter()
            .map(|(i, coalesced)| DeliveredEvent {
                event: self.items[i].0.clone(),
                attempt: self.items[i].1,
                coalesced,
            })
            .collect()
    }

    fn count_per_key(&self, batch: &BatchOptions) -> Vec<KeyCount> {
        let mut counts: Vec<KeyCount> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for (event, _) in &self.items {
            let key = batch.key.of(event);
            match index.get(&key) {
                Some(&i) => counts[i].count += 1,
                None => {
                    index.insert(key.clone(), counts.len());
                    counts.push(KeyCount { key, count: 1 });
                }
            }
        }
        counts
    }

    /// The events gathered, with their attempts, emptying the window.
    pub fn into_items(self) -> Vec<(Arc<Event>, u32)> {
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::GroupKey;
    use crate::topic::Topic;

    fn update(game: &str, round: u32, seq: u64) -> Arc<Event> {
        let mut e = Event::new(Topic::new("game.state").unwrap(), format!("{game}-{round}"))
            .with_header("game", game);
        e.seq = seq;
        Arc::new(e)
    }

    fn window_of(items: &[(&str, u32, u64)]) -> Window {
        let mut w = Window::open(Duration::from_millis(100));
        for &(game, round, seq) in items {
            w.push(update(game, round, seq), 1);
        }
        w
    }

    fn by_game(aggregation: Aggregation) -> BatchOptions {
        BatchOptions {
            key: GroupKey::Header("game".into()),
            aggregation,
            ..BatchOptions::default()
        }
    }

    fn payloads(b: &Batch) -> Vec<String> {
        let text = |e: &DeliveredEvent| String::from_utf8_lossy(&e.event.payload).into_owned();
        b.events.iter().map(text).collect()
    }

    #[test]
    fn keep_last_keeps_each_keys_last_event_and_acks_them_all() {
        let w = window_of(&[
            ("g1", 1, 1),
            ("g2", 1, 2),
            ("g1", 2, 3),
            ("g1", 3, 4),
            ("g2", 2, 5),
        ]);
        let b = w.batch(&by_game(Aggregation::KeepLast));
        assert_eq!(payloads(&b), ["g1-3", "g2-2"]);
        let coalesced: Vec<u64> = b.events.iter().map(|e| e.coalesced).collect();
        assert_eq!(coalesced, [3, 2]);
        assert_eq!(b.seqs, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn count_counts_per_key_in_the_order_keys_came() {
        let w = window_of(&[("g2", 1, 1), ("g1", 1, 2), ("g2", 2, 3)]);
        let b = w.batch(&by_game(Aggregation::Count));
        assert!(b.events.is_empty());
        let counts: Vec<(&str, u64)> = b.counts.iter().map(|c| (c.key.as_str(), c.count)).collect();
        assert_eq!(counts, [("g2", 2), ("g1", 1)]);
    }

    #[test]
    fn none_delivers_everything_and_ephemeral_events_have_no_seq_to_ack() {
        let w = window_of(&[("g1", 1, 0), ("g1", 2, 7)]);
        let b = w.batch(&by_game(Aggregation::None));
        assert_eq!(payloads(&b), ["g1-1", "g1-2"]);
        assert_eq!(b.seqs, [7]);
        assert_eq!(w.stored(), 1);
    }

    #[test]
    fn a_window_is_full_at_its_event_count_or_its_bytes() {
        let w = window_of(&[("g1", 1, 1), ("g1", 2, 2)]);
        let two = BatchOptions {
            max_events: 2,
            ..BatchOptions::default()
        };
        assert!(w.is_full(&two));
        let roomy = BatchOptions::default();
        assert!(!w.is_full(&roomy));
        let small = BatchOptions {
            max_bytes: w.bytes(),
            ..BatchOptions::default()
        };
        assert!(w.is_full(&small));
        assert!(!Window::open(Duration::ZERO).is_full(&BatchOptions {
            max_bytes: 0,
            ..BatchOptions::default()
        }));
        assert!(w.is_due(Duration::from_millis(100)) && !w.is_due(Duration::from_millis(99)));
    }
}
