//! Where a consumer's events come from: the log, read by the consumer itself up to
//! `scan_until` (what was committed before it registered, or what the router dropped),
//! then the sequences the router hands it (see `crate::route`). Everything here moves
//! events into the ready queue, in sequence order, and the cursor past what is read or
//! not the consumer's own.

use std::sync::Arc;

use super::{Consumer, READ_BATCH};
use ganglion_log::Record;

use crate::codec;

impl Consumer {
    /// Takes matching logged events into the ready queue, up to `max_in_flight`: by
    /// reading the log itself up to `scan_until`, then the sequences routed to it.
    pub(super) fn fill(&mut self) {
        loop {
            self.scan();
            if self.cut_off || self.cursor < self.scan_until || !self.read_routed() {
                return;
            }
        }
    }

    /// Reads the log from the cursor up to `scan_until` (every topic's records, keeping
    /// the matching ones), while it wants more.
    fn scan(&mut self) {
        let core = self.core.clone();
        let log = &core.log;
        let mut recent = Vec::new();
        while !self.cut_off && self.wants_ready() && self.cursor < self.scan_until {
            let left = usize::try_from(self.scan_until - self.cursor).unwrap_or(usize::MAX);
            let want = READ_BATCH
                .min(self.max_ready() - self.ready.len())
                .clamp(1, left);
            // Recently published events come decoded from memory, shared with every
            // other consumer; older ones from the log.
            // (Not for events retention already deleted: the log decides what exists.)
            recent.clear();
            if self.cursor >= log.first_seq() {
                core.recent.run(self.cursor, want, &mut recent);
            }
            if !recent.is_empty() {
                self.has_read = true;
                for event in recent.drain(..) {
                    self.cursor = event.seq + 1;
                    self.offer(event);
                }
                continue;
            }
            let Some(mut records) = self.read_log(self.cursor, want) else {
                return;
            };
            records.truncate(records.partition_point(|r| r.seq < self.scan_until));
            let Some(last) = records.last() else {
                // Nothing left below `scan_until` (retention deleted it).
                self.cursor = self.scan_until;
                break;
            };
            let first = records[0].seq;
            if first > self.cursor && self.has_read && !self.lost(self.cursor, first) {
                return;
            }
            self.has_read = true;
            self.cursor = last.seq + 1;
            for record in records {
                self.offer_record(&record);
            }
        }
    }

    /// Events `from..until` were deleted before this consumer read them: a durable one
    /// says so and goes on; another is cut off (returns `false`).
    fn lost(&mut self, from: u64, until: u64) -> bool {
        let log = &self.core.log;
        let cause = if from < log.first_seq() {
            "deleted by retention"
        } else {
            "cut from the log by a repair"
        };
        let lost = format!(
            "{} events ({from}..={}) were {cause} before delivery",
            until - from,
            until - 1
        );
        if !self.durable {
            self.cut_off(format!("fell behind: {lost}"));
            return false;
        }
        tracing::error!(consumer = %self.name, "durable consumer fell behind: {lost}");
        true
    }

    /// Reads the sequences routed to it, in order, while it wants more, and moves the
    /// cursor past what is read or not its own. Returns `true` when it must read the
    /// log itself again (the router dropped sequences: `scan_until` is set).
    fn read_routed(&mut self) -> bool {
        // Read first: whatever is taken below this has been routed, and nothing below
        // it that matches is still to come.
        let below = self.routed_below();
        let left_in_route = self.take_routed();
        while !self.cut_off && self.wants_ready() {
            match self.routed.front() {
                Some(&seq) if seq < below => self.read_routed_run(below),
                _ => break,
            }
        }
        if self.cut_off {
            return false;
        }
        // (Below a drop the cursor may be already: an earlier read of the log went past
        // it.)
        self.cursor = self.cursor.max(self.read_to(below, left_in_route));
        if self.routed.is_empty() && self.dropped_from.take().is_some() {
            // What was dropped is read from the log, from the cursor up to what is
            // committed now; the router's later hand-overs below that are the same
            // events again.
            let until = self.core.log.next_seq();
            self.scan_until = until;
            self.skip_below = until;
            return true;
        }
        false
    }

    /// Reads routed sequences below `below`: from memory while they are recent, else
    /// the next batch of them from the log, in one read when they lie close together
    /// and one by one otherwise.
    fn read_routed_run(&mut self, below: u64) {
        let core = self.core.clone();
        let mut recent = Vec::new();
        let mut from_memory = false;
        while self.wants_ready() {
            let Some(&seq) = self.routed.front().filter(|&&s| s < below) else {
                break;
            };
            if seq < core.log.first_seq() {
                break; // deleted from the log: memory may still have it, but it is gone
            }
            // The sequences that follow one another from here, read together.
            let room = READ_BATCH.min(self.max_ready() - self.ready.len()).max(1);
            let consecutive = self
                .routed
                .iter()
                .zip(seq..below)
                .take(room)
                .take_while(|(routed, expected)| *routed == expected)
                .count();
            recent.clear();
            core.recent.run(seq, consecutive, &mut recent);
            if recent.is_empty() {
                break;
            }
            for event in recent.drain(..) {
                self.routed.pop_front();
                self.offer(event);
            }
            self.has_read = true;
            from_memory = true;
        }
        if from_memory {
            return;
        }
        let room = READ_BATCH.min(self.max_ready() - self.ready.len()).max(1);
        let run: Vec<u64> = self
            .routed
            .iter()
            .copied()
            .take_while(|&s| s < below)
            .take(room)
            .collect();
        let (Some(&first), Some(&last)) = (run.first(), run.last()) else {
            return;
        };
        let span = last - first + 1;
        let dense = span <= 8 * run.len() as u64;
        let Some(records) = self.read_log(first, if dense { span as usize } else { 1 }) else {
            return;
        };
        // What the read covers: a routed sequence up to here that it lacks was deleted.
        let covered = records.last().map_or(last, |r| r.seq.max(first));
        let mut records = records.into_iter().peekable();
        while let Some(&seq) = self.routed.front() {
            if seq >= below || seq > covered || !self.wants_ready() {
                break;
            }
            self.routed.pop_front();
            while records.next_if(|r| r.seq < seq).is_some() {}
            let Some(record) = records.next_if(|r| r.seq == seq) else {
                if !self.lost(seq, seq + 1) {
                    return;
                }
                continue;
            };
            self.has_read = true;
            self.offer_record(&record);
        }
    }

    /// Reads up to `max` records from `from`; a failure cuts the consumer off.
    fn read_log(&mut self, from: u64, max: usize) -> Option<Vec<Record>> {
        match self.core.log.read(from, max) {
            Ok(records) => Some(records),
            Err(e) => {
                tracing::error!(consumer = %self.name, error = %e, "reading the event log failed");
                self.cut_off(format!("reading the event log failed: {e}"));
                None
            }
        }
    }

    /// Offers a logged record if it is not done and matches (an undecodable one is
    /// skipped, and said so).
    fn offer_record(&mut self, record: &Record) {
        if self.done.contains(&record.seq) {
            return;
        }
        match codec::decode_matching(&record.payload, record.seq, &self.pattern) {
            Ok(Some(event)) => self.offer(Arc::new(event)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(consumer = %self.name, error = %e, "skipping undecodable record");
            }
        }
    }

    /// Takes what the router handed over, and forgets what a read of the log already
    /// covered. After a drop nothing is taken: what comes next lies beyond the dropped
    /// stretch and waits in the route until that stretch is read from the log. Returns
    /// the first sequence the route still holds or dropped.
    fn take_routed(&mut self) -> Option<u64> {
        let mut left_in_route = None;
        if self.dropped_from.is_none() {
            let taken = self.route.take(&mut self.routed);
            self.dropped_from = taken.dropped_from;
            left_in_route = taken.first_left;
        }
        while self.routed.front().is_some_and(|&s| s < self.skip_below) {
            self.routed.pop_front();
        }
        left_in_route
    }

    /// How far the cursor may go: below the first routed sequence left, what has been
    /// routed (`below`), the first sequence dropped, and what the route still holds.
    fn read_to(&self, below: u64, left_in_route: Option<u64>) -> u64 {
        self.routed
            .front()
            .map_or(below, |&s| s.min(below))
            .min(self.dropped_from.unwrap_or(u64::MAX))
            .min(left_in_route.unwrap_or(u64::MAX))
    }

    /// How far routing has gone for it: the bus's mark, or where it stood when this
    /// consumer left the index (what came after was not routed to it).
    fn routed_below(&self) -> u64 {
        let below = self
            .core
            .routed_below
            .load(std::sync::atomic::Ordering::Acquire);
        below.min(self.route.closed_at())
    }

    /// Whether it has events of its own it could read now, without waiting for the
    /// router.
    pub(super) fn has_unread(&self) -> bool {
        let below = self.routed_below();
        self.cursor < self.scan_until
            || self.routed.front().is_some_and(|&s| s < below)
            || (self.routed.is_empty() && self.dropped_from.is_some())
            || (self.dropped_from.is_none() && self.route.len() > 0)
    }

    /// Moves the cursor past what the router says is not its own, so that a durable
    /// that matched nothing for a while resumes from the end of the log, not from its
    /// last event.
    pub(super) fn catch_up(&mut self) {
        if self.cursor < self.scan_until || self.dropped_from.is_some() {
            return;
        }
        let below = self.routed_below();
        let left_in_route = self.take_routed();
        if self.dropped_from.is_some() {
            return;
        }
        let cursor = self.cursor.max(self.read_to(below, left_in_route));
        if cursor > self.cursor {
            self.cursor = cursor;
            self.dirty = true;
        }
    }
}
