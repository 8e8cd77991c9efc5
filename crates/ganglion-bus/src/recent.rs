//! The most recently published durable events, decoded and shared: a consumer that
//! keeps up takes its events from here instead of reading and decoding the log, and
//! every consumer of a fan-out shares one copy.
//!
//! Only committed events enter (the publisher adds them after the log acknowledged
//! them), so what a consumer takes from here is exactly what the log holds. A sequence
//! that is not here (evicted, or its publisher not back yet) is read from the log.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use ganglion_core::Event;

/// Most events kept.
const MAX_EVENTS: usize = 16 * 1024;
/// Most payload bytes kept.
const MAX_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, Default)]
pub(crate) struct Recent {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    events: BTreeMap<u64, Arc<Event>>,
    bytes: usize,
}

impl Recent {
    /// Adds committed events (each with its sequence set).
    pub(crate) fn add(&self, events: impl IntoIterator<Item = Arc<Event>>) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        for event in events {
            inner.bytes += event.payload.len();
            inner.events.insert(event.seq, event);
        }
        while inner.events.len() > MAX_EVENTS || inner.bytes > MAX_BYTES {
            let Some((_, old)) = inner.events.pop_first() else {
                break;
            };
            inner.bytes -= old.payload.len();
        }
    }

    /// Appends to `out` the events from `from` on, as long as they follow each other
    /// without a hole, at most `max`.
    pub(crate) fn run(&self, from: u64, max: usize, out: &mut Vec<Arc<Event>>) {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        for (expected, (&seq, event)) in (from..).zip(inner.events.range(from..).take(max)) {
            if seq != expected {
                break;
            }
            out.push(event.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ganglion_core::Topic;

    fn event(seq: u64) -> Arc<Event> {
        let mut e = Event::new(Topic::new("t").unwrap(), vec![0u8; 10]);
        e.seq = seq;
        Arc::new(e)
    }

    #[test]
    fn runs_stop_at_holes_and_old_events_are_evicted() {
        let recent = Recent::default();
        recent.add([event(1), event(2), event(4)]);
        let mut out = Vec::new();
        recent.run(1, 10, &mut out);
        assert_eq!(out.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        out.clear();
        recent.run(3, 10, &mut out);
        assert!(out.is_empty());
        recent.add([event(3)]);
        recent.run(1, 3, &mut out);
        assert_eq!(out.len(), 3);
        recent.add((5..MAX_EVENTS as u64 + 10).map(event));
        out.clear();
        recent.run(1, 10, &mut out);
        assert!(out.is_empty(), "the oldest were evicted");
    }
}
