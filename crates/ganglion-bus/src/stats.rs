//! What each consumer counts, for `/metrics` and the API: [`Bus::subscriptions`] and
//! [`Bus::delivery_latency`](crate::Bus::delivery_latency).
//!
//! [`Bus::subscriptions`]: crate::Bus::subscriptions

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters a consumer task updates (relaxed: they are read for reporting only).
#[derive(Debug, Default)]
pub(crate) struct ConsumerCounters {
    pub(crate) delivered: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) nacked: AtomicU64,
    pub(crate) ack_timeouts: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) ready: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) cursor: AtomicU64,
    /// A durable's first event not done: where it resumes.
    pub(crate) floor: AtomicU64,
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// One consumer (a subscription, a queue group, or a durable name) as counted since it
/// started in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionStats {
    /// The durable name, the queue group, or the generated `sub-N`.
    pub name: String,
    pub pattern: String,
    pub queue_group: Option<String>,
    pub durable: bool,
    /// Subscribers attached now.
    pub members: usize,
    /// Events handed to subscribers (each event of a batch window counts), redeliveries
    /// included.
    pub delivered: u64,
    /// Deliveries after the first attempt.
    pub redelivered: u64,
    /// Logged events acknowledged (by the subscriber, or at delivery under auto ack).
    pub acked: u64,
    pub nacked: u64,
    /// In-flight events whose ack deadline passed (each becomes a failed attempt).
    pub ack_timeouts: u64,
    /// Events published to the dead-letter topic (out of attempts, or termed).
    pub dead_lettered: u64,
    /// Events that expired under retention (or a purge) before this subscription read
    /// them.
    pub expired: u64,
    /// Events in memory waiting for a subscriber (the rest wait in the log).
    pub ready: u64,
    /// Logged events out with subscribers, not yet acked.
    pub in_flight: u64,
    /// Log records not read by this consumer yet (every topic's, not only its own); for
    /// a durable with no subscriber now, those from where it will resume (its first
    /// unacked event).
    pub lag: u64,
    /// Where its dead letters go.
    pub dead_letter_topic: String,
    /// Dead letters published for it and not redriven.
    pub dead_letters: u64,
}

impl ConsumerCounters {
    pub(crate) fn report(
        &self,
        name: &str,
        pattern: String,
        queue_group: Option<String>,
        durable: bool,
        members: usize,
        next_seq: u64,
    ) -> SubscriptionStats {
        SubscriptionStats {
            name: name.to_owned(),
            pattern,
            queue_group,
            durable,
            members,
            delivered: get(&self.delivered),
            redelivered: get(&self.redelivered),
            acked: get(&self.acked),
            nacked: get(&self.nacked),
            ack_timeouts: get(&self.ack_timeouts),
            dead_lettered: get(&self.dead_lettered),
            expired: get(&self.expired),
            ready: get(&self.ready),
            in_flight: get(&self.in_flight),
            // A durable with no subscriber resumes from its floor: that is its backlog.
            lag: next_seq.saturating_sub(get(if members == 0 && durable {
                &self.floor
            } else {
                &self.cursor
            })),
            dead_letter_topic: String::new(),
            dead_letters: 0,
        }
    }
}
