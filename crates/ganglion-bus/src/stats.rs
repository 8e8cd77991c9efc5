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
    /// Its own events it has not read yet, that it knows of (routed to it, or in the
    /// part of the log it reads itself).
    pub(crate) behind: AtomicU64,
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

pub use ganglion_core::engine::SubscriptionStats;

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
