//! Routing logged events to the consumers that want them, once per event.
//!
//! The log tells the bus of every committed group of records, in sequence order, on its
//! writer thread ([`ganglion_log::Log::on_commit`]). The bus matches each record's topic
//! against one index of every consumer's pattern (the token trie, which ephemeral events
//! use too) and hands the sequence to each consumer that matches, then wakes those
//! consumers. A consumer whose pattern matches nothing is never woken and reads nothing,
//! however busy the log is.
//!
//! `routed_below` (in the core) says how far routing has gone: every sequence below it
//! has been handed to the consumers registered at the time. A consumer registered later
//! reads the log itself from where it starts up to the `routed_below` it saw when it
//! registered (under the same lock as routing), then takes routed sequences; so every
//! event reaches it exactly once.
//!
//! A consumer's queue of routed sequences is bounded (`BusOptions::routed_queue`, by
//! default [`MAX_PENDING`]): past it the
//! router drops sequences and remembers the first it dropped, and the consumer reads the
//! log from there (as a new one does) once it has caught up with what it was handed.

use crate::registry::Registry;
use crate::{codec, lock};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Most sequences waiting for one consumer by default (8 bytes each: 512 KiB).
pub(crate) const MAX_PENDING: usize = 64 * 1024;

/// One consumer's routed sequences, and the signal that wakes it.
#[derive(Debug)]
pub(crate) struct Route {
    pending: Mutex<Pending>,
    wake: Notify,
    /// Most sequences held here, and most held by the consumer once taken.
    max: usize,
    /// Where routing stood when the consumer left the index (`u64::MAX` while in it):
    /// nothing from there on is routed to it.
    closed_at: AtomicU64,
}

#[derive(Debug, Default)]
struct Pending {
    /// In sequence order (the log commits, and the router routes, in order).
    seqs: Vec<u64>,
    /// The first sequence dropped because `seqs` was full.
    dropped_from: Option<u64>,
}

/// What a consumer takes from its route.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Taken {
    /// The first sequence the router dropped since the last take, if any: the consumer
    /// must read the log from there.
    pub(crate) dropped_from: Option<u64>,
    /// The first sequence routed to the consumer and not handed over by this take
    /// (left waiting, or dropped): its cursor must not pass it.
    pub(crate) first_left: Option<u64>,
}

impl Route {
    pub(crate) fn new(max: usize) -> Route {
        Route {
            pending: Mutex::default(),
            wake: Notify::new(),
            max: max.max(1),
            closed_at: AtomicU64::new(u64::MAX),
        }
    }

    /// Marks the consumer out of the index, with routing at `routed_below` (called
    /// under the registry's lock, as routing runs).
    pub(crate) fn close(&self, routed_below: u64) {
        self.closed_at.store(routed_below, Ordering::Release);
        self.wake();
    }

    /// See `close`.
    pub(crate) fn closed_at(&self) -> u64 {
        self.closed_at.load(Ordering::Acquire)
    }

    /// Hands the sequences `seqs` to the consumer (the router's side).
    pub(crate) fn push(&self, seqs: std::ops::Range<u64>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.dropped_from.is_some() || seqs.is_empty() {
            return;
        }
        let room = self.max.saturating_sub(pending.seqs.len()) as u64;
        let kept = seqs.start..seqs.end.min(seqs.start.saturating_add(room));
        if kept.end < seqs.end {
            pending.dropped_from = Some(kept.end);
        }
        pending.seqs.extend(kept);
    }

    /// Wakes the consumer (or its next wait, if it is not waiting now).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Completes when the router has handed over something since the last wake.
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Moves routed sequences onto the end of `into`, until it holds as many as a route
    /// may (the rest wait here). A drop is reported once everything before it was taken.
    pub(crate) fn take(&self, into: &mut VecDeque<u64>) -> Taken {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let n = self.max.saturating_sub(into.len()).min(pending.seqs.len());
        into.extend(pending.seqs.drain(..n));
        let first_left = pending.seqs.first().copied().or(pending.dropped_from);
        let dropped_from = if pending.seqs.is_empty() {
            pending.dropped_from.take()
        } else {
            None
        };
        Taken {
            dropped_from,
            first_left,
        }
    }

    /// Sequences waiting to be taken.
    pub(crate) fn len(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .seqs
            .len()
    }
}

/// Hands a committed group of records (`first_seq` on) to the consumers whose pattern
/// matches each, wakes them, and marks the group routed. Runs on the log's writer
/// thread, in sequence order.
pub(crate) fn route_committed(
    registry: &Mutex<Registry>,
    routed_below: &AtomicU64,
    first_seq: u64,
    records: &[Bytes],
) {
    let end = first_seq + records.len() as u64;
    let mut woken: Vec<Arc<Route>> = Vec::new();
    {
        let registry = lock(registry);
        if !registry.consumers.is_empty() {
            // Records of one topic usually come in runs: match each run once and hand
            // it over whole.
            let mut run: Option<(&str, u64)> = None;
            let mut matched: Vec<&Arc<Route>> = Vec::new();
            for (seq, record) in (first_seq..).zip(records) {
                // An undecodable record goes to no one (a consumer reading it from the
                // log skips it too).
                let topic = codec::peek_topic(record, seq).ok();
                if run.is_some_and(|(t, _)| Some(t) == topic) {
                    continue;
                }
                if let Some((_, start)) = run.take() {
                    matched.iter().for_each(|r| r.push(start..seq));
                }
                matched.clear();
                if let Some(topic) = topic {
                    registry.index.for_each_match_str(topic, |key| {
                        if let Some(entry) = registry.consumers.get(key) {
                            matched.push(&entry.route);
                        }
                    });
                    woken.extend(matched.iter().map(|r| Arc::clone(r)));
                    run = Some((topic, seq));
                }
            }
            if let Some((_, start)) = run {
                matched.iter().for_each(|r| r.push(start..end));
            }
        }
        woken.sort_unstable_by_key(|r| Arc::as_ptr(r) as usize);
        woken.dedup_by(|a, b| Arc::ptr_eq(a, b));
        // Under the registry's lock: a consumer registering now either saw this group
        // routed to it, or reads it from the log itself.
        routed_below.store(end, Ordering::Release);
    }
    for route in woken {
        route.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_route_drops_and_remembers_the_first_dropped() {
        let route = Route::new(MAX_PENDING);
        route.push(1..MAX_PENDING as u64 - 9);
        route.push(MAX_PENDING as u64 - 9..MAX_PENDING as u64 + 11);
        route.push(MAX_PENDING as u64 + 20..MAX_PENDING as u64 + 21);
        let mut taken = VecDeque::from([0]);
        let t = route.take(&mut taken);
        assert_eq!(taken.len(), MAX_PENDING, "no more than it may hold");
        assert_eq!(t.dropped_from, None, "not before the one left is taken");
        assert_eq!(
            t.first_left,
            Some(MAX_PENDING as u64),
            "but the cursor stops there"
        );
        taken.clear();
        let t = route.take(&mut taken);
        assert_eq!(
            taken.iter().copied().collect::<Vec<_>>(),
            [MAX_PENDING as u64]
        );
        assert_eq!(t.dropped_from, Some(MAX_PENDING as u64 + 1));
        // Taken: routing goes on, and the drop is reported once.
        route.push(99_999_999..100_000_000);
        let t = route.take(&mut taken);
        assert_eq!(t.dropped_from, None);
        assert_eq!(taken.back(), Some(&99_999_999));
    }
}
