//! Retention by topic pattern, and purges.
//!
//! # What a rule means
//!
//! Rules are tried in order; a topic follows the first whose pattern matches it, and a
//! topic no rule matches keeps its events. Of a rule's events (every topic it matches,
//! together) the log keeps those younger than `max_age`, the newest `max_events`, and
//! the newest `max_bytes` of records: an event past any of them has *expired*. A purge
//! expires every event of the matching topics published before it.
//!
//! Expiry takes effect at once: replays, subscriptions (durable ones included, and
//! dead-letter topics, which are topics like any other) no longer see expired events.
//! A subscriber whose unread events expire skips them, and counts them (`expired` in
//! its statistics). Disk space comes back a segment at a time: the oldest segment is
//! deleted once every record in it has expired (segments hold every topic's records in
//! order, so a long-lived topic's old event keeps its segment on disk until it too
//! expires, though the others in it are gone from every read).
//!
//! # How it is kept
//!
//! Each rule's floor (the first sequence it keeps) is worked out by [`Retention::pass`]:
//! by age from the log's time index; by count and bytes from a ledger of the rule's
//! events, with a checkpoint every 1,024 events, then a scan from the checkpoint for
//! the exact sequence. A sequence above every floor is live with one atomic load.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use ganglion_core::{BusError, Pattern};
use ganglion_log::Log;

use crate::codec;

pub use ganglion_core::engine::RetentionRule;

/// Events of a rule between two checkpoints.
const CHECKPOINT: u64 = 1024;

/// A checkpoint: the rule's event at `seq`, with the events and bytes before it.
#[derive(Debug, Clone, Copy)]
struct Mark {
    seq: u64,
    events: u64,
    bytes: u64,
}

/// One rule's events, counted since the log began (or since the rules last changed).
#[derive(Debug, Default, Clone)]
struct Ledger {
    marks: VecDeque<Mark>,
    events: u64,
    bytes: u64,
}

impl Ledger {
    fn record(&mut self, seq: u64, bytes: u64) {
        if self.events.is_multiple_of(CHECKPOINT) {
            self.marks.push_back(Mark {
                seq,
                events: self.events,
                bytes: self.bytes,
            });
        }
        self.events += 1;
        self.bytes += bytes;
    }

    /// The newest checkpoint with at most `events` events (or `bytes` bytes) before it.
    fn mark_before(&self, events: u64, bytes: u64) -> Option<Mark> {
        let i = self
            .marks
            .partition_point(|m| m.events <= events && m.bytes <= bytes);
        i.checked_sub(1).map(|i| self.marks[i])
    }
}

#[derive(Debug, Default, Clone)]
struct Floors {
    /// The first sequence each rule keeps.
    by_rule: Vec<u64>,
    /// Purges: the topics a pattern matches keep nothing below the sequence.
    purges: Vec<(Pattern, u64)>,
}

/// The bus's retention: rules, purges, and what they expire.
#[derive(Debug)]
pub(crate) struct Retention {
    rules: RwLock<Arc<Vec<RetentionRule>>>,
    ledgers: Mutex<Vec<Ledger>>,
    floors: RwLock<Floors>,
    /// Every sequence at or above this is live (the highest floor).
    live_from: AtomicU64,
    /// Where purges are kept (none for an in-memory bus).
    purges_file: Option<PathBuf>,
    /// The first record found live in the oldest segment at the last pass, and its
    /// topic: until it expires, the segment stays and is not scanned again.
    blocked_by: Mutex<Option<(u64, String)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Retention {
    pub(crate) fn new(
        rules: Vec<RetentionRule>,
        purges_file: Option<PathBuf>,
    ) -> Result<Retention, BusError> {
        let purges = match &purges_file {
            Some(path) => load_purges(path)?,
            None => Vec::new(),
        };
        let n = rules.len();
        let retention = Retention {
            rules: RwLock::new(Arc::new(rules)),
            ledgers: Mutex::new(vec![Ledger::default(); n]),
            floors: RwLock::new(Floors {
                by_rule: vec![0; n],
                purges,
            }),
            live_from: AtomicU64::new(0),
            purges_file,
            blocked_by: Mutex::new(None),
        };
        retention.update_live_from();
        Ok(retention)
    }

    pub(crate) fn rules(&self) -> Arc<Vec<RetentionRule>> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn rule_of(rules: &[RetentionRule], topic: &str) -> Option<usize> {
        rules.iter().position(|r| r.pattern.matches_str(topic))
    }

    /// Whether record `seq` of `topic` has expired.
    pub(crate) fn expired(&self, topic: &str, seq: u64) -> bool {
        if seq >= self.live_from.load(Ordering::Acquire) {
            return false;
        }
        let rules = self.rules();
        let floors = self.floors.read().unwrap_or_else(|e| e.into_inner());
        let mut floor = Self::rule_of(&rules, topic)
            .and_then(|i| floors.by_rule.get(i).copied())
            .unwrap_or(0);
        for (pattern, purged_below) in &floors.purges {
            if *purged_below > floor && pattern.matches_str(topic) {
                floor = *purged_below;
            }
        }
        seq < floor
    }

    /// Counts records (topic, sequence, bytes), in order, for the rules that limit
    /// counts or bytes: at publication, and when the log is read through at open.
    pub(crate) fn record<'a>(&self, records: impl IntoIterator<Item = (&'a str, u64, u64)>) {
        let rules = self.rules();
        if !rules.iter().any(RetentionRule::counts) {
            return;
        }
        let mut ledgers = lock(&self.ledgers);
        for (topic, seq, bytes) in records {
            if let Some(i) = Self::rule_of(&rules, topic)
                && rules[i].counts()
            {
                ledgers[i].record(seq, bytes);
            }
        }
    }

    /// Whether recording publications is needed at all (no counting rule: nothing to do).
    pub(crate) fn counts(&self) -> bool {
        self.rules().iter().any(RetentionRule::counts)
    }

    fn update_live_from(&self) {
        let floors = self.floors.read().unwrap_or_else(|e| e.into_inner());
        let highest = floors
            .by_rule
            .iter()
            .copied()
            .chain(floors.purges.iter().map(|(_, f)| *f))
            .max()
            .unwrap_or(0);
        self.live_from.store(highest, Ordering::Release);
    }

    /// Replaces the rules (a reloaded config); the ledgers are rebuilt from the log.
    pub(crate) fn set_rules(&self, rules: Vec<RetentionRule>, log: &Log) -> Result<(), BusError> {
        let n = rules.len();
        let mut ledgers = lock(&self.ledgers);
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
        *ledgers = vec![Ledger::default(); n];
        {
            let mut floors = self.floors.write().unwrap_or_else(|e| e.into_inner());
            floors.by_rule = vec![0; n];
        }
        *lock(&self.blocked_by) = None;
        drop(ledgers);
        if self.counts() {
            let mut next = log.first_seq();
            loop {
                let records = log.read(next, 4096).map_err(crate::log_error)?;
                let Some(last) = records.last() else { break };
                next = last.seq + 1;
                self.record(records.iter().filter_map(|r| {
                    let topic = codec::peek_topic(&r.payload, r.seq).ok()?;
                    Some((topic, r.seq, r.payload.len() as u64))
                }));
            }
        }
        self.update_live_from();
        Ok(())
    }

    /// Expires every event of the topics `pattern` matches published before `below`.
    pub(crate) fn purge(&self, pattern: Pattern, below: u64) -> Result<(), BusError> {
        let mut floors = self.floors.write().unwrap_or_else(|e| e.into_inner());
        floors.purges.retain(|(p, _)| *p != pattern);
        floors.purges.push((pattern, below));
        if let Some(path) = &self.purges_file {
            save_purges(path, &floors.purges).map_err(|e| {
                BusError::Unavailable(format!("saving purges to {}: {e}", path.display()))
            })?;
        }
        drop(floors);
        self.update_live_from();
        Ok(())
    }

    /// Works the floors out again for the log as it is at `now_micros` (reading the
    /// log: call it off the async threads), and returns the sequence below which every
    /// sealed segment holds only expired records, for [`Log::delete_before`].
    pub(crate) fn pass(&self, log: &Log, now_micros: u64) -> Result<Option<u64>, BusError> {
        let idle = self.rules().is_empty()
            && self
                .floors
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .purges
                .is_empty();
        if idle {
            return Ok(None);
        }
        let floors = self.floors_now(log, now_micros)?;
        {
            let mut current = self.floors.write().unwrap_or_else(|e| e.into_inner());
            current.by_rule = floors;
            // A purge below the oldest record says nothing any more.
            let first = log.first_seq();
            current.purges.retain(|(_, below)| *below > first);
        }
        self.update_live_from();
        self.expired_prefix(log)
    }

    fn floors_now(&self, log: &Log, now_micros: u64) -> Result<Vec<u64>, BusError> {
        let rules = self.rules();
        let next = log.next_seq();
        let ledgers = lock(&self.ledgers).clone();
        let mut floors = Vec::with_capacity(rules.len());
        for (i, rule) in rules.iter().enumerate() {
            let mut floor = 0;
            if let Some(age) = rule.max_age {
                let cutoff =
                    now_micros.saturating_sub(u64::try_from(age.as_micros()).unwrap_or(u64::MAX));
                let at = std::time::UNIX_EPOCH + Duration::from_micros(cutoff);
                let first_young = log.seq_at_time(at).map_err(crate::log_error)?;
                floor = floor.max(first_young.unwrap_or(next));
            }
            let ledger = &ledgers[i];
            if let Some(max) = rule.max_events
                && ledger.events > max
            {
                floor = floor.max(self.seq_of(
                    log,
                    &rules,
                    i,
                    ledger,
                    ledger.events - max,
                    u64::MAX,
                )?);
            }
            if let Some(max) = rule.max_bytes
                && ledger.bytes > max
            {
                floor =
                    floor.max(self.seq_of(log, &rules, i, ledger, u64::MAX, ledger.bytes - max)?);
            }
            floors.push(floor);
        }
        // Checkpoints below the oldest record are of no use any more.
        let first = log.first_seq();
        for ledger in lock(&self.ledgers).iter_mut() {
            while ledger.marks.len() > 1 && ledger.marks.get(1).is_some_and(|m| m.seq <= first) {
                ledger.marks.pop_front();
            }
        }
        Ok(floors)
    }

    /// The sequence of rule `i`'s first event with at least `events` events, or at least
    /// `bytes` bytes, of the rule before it: the first it keeps.
    fn seq_of(
        &self,
        log: &Log,
        rules: &[RetentionRule],
        i: usize,
        ledger: &Ledger,
        events: u64,
        bytes: u64,
    ) -> Result<u64, BusError> {
        let Some(mark) = ledger.mark_before(events, bytes) else {
            return Ok(0);
        };
        let (mut counted, mut counted_bytes) = (mark.events, mark.bytes);
        let mut next = mark.seq;
        loop {
            let records = log.read(next, 4096).map_err(crate::log_error)?;
            let Some(last) = records.last() else {
                return Ok(log.next_seq());
            };
            next = last.seq + 1;
            for record in &records {
                let Ok(topic) = codec::peek_topic(&record.payload, record.seq) else {
                    continue;
                };
                if Self::rule_of(rules, topic) != Some(i) {
                    continue;
                }
                if counted >= events || counted_bytes >= bytes {
                    return Ok(record.seq);
                }
                counted += 1;
                counted_bytes += record.payload.len() as u64;
            }
        }
    }

    /// One past the last record of the oldest run of sealed segments whose every record
    /// has expired, if there is one.
    fn expired_prefix(&self, log: &Log) -> Result<Option<u64>, BusError> {
        let mut blocked = lock(&self.blocked_by);
        if let Some((seq, topic)) = blocked.as_ref()
            && !self.expired(topic, *seq)
        {
            return Ok(None);
        }
        let bounds = log.segment_bounds();
        let mut prefix = None;
        let mut from = blocked.take().map_or(0, |(seq, _)| seq);
        for &(base, end) in &bounds[..bounds.len().saturating_sub(1)] {
            let mut next = base.max(from);
            while next < end {
                let records = log.read(next, 4096).map_err(crate::log_error)?;
                let Some(last) = records.last() else { break };
                for record in records.iter().filter(|r| r.seq < end) {
                    let Ok(topic) = codec::peek_topic(&record.payload, record.seq) else {
                        continue;
                    };
                    if !self.expired(topic, record.seq) {
                        *blocked = Some((record.seq, topic.to_owned()));
                        return Ok(prefix);
                    }
                }
                next = last.seq + 1;
            }
            prefix = Some(end);
            from = end;
        }
        Ok(prefix)
    }
}

/// `pattern below` per line.
fn load_purges(path: &std::path::Path) -> Result<Vec<(Pattern, u64)>, BusError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(BusError::Unavailable(format!("{}: {e}", path.display()))),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, line)| {
            let bad = || {
                BusError::Unavailable(format!(
                    "{}:{}: expected `pattern sequence`",
                    path.display(),
                    n + 1
                ))
            };
            let (pattern, below) = line.rsplit_once(' ').ok_or_else(bad)?;
            Ok((
                Pattern::new(pattern).map_err(|_| bad())?,
                below.parse().map_err(|_| bad())?,
            ))
        })
        .collect()
}

fn save_purges(path: &std::path::Path, purges: &[(Pattern, u64)]) -> std::io::Result<()> {
    let text: String = purges
        .iter()
        .map(|(p, below)| format!("{p} {below}\n"))
        .collect();
    ganglion_core::fs::write_atomically(path, text.as_bytes())
}
