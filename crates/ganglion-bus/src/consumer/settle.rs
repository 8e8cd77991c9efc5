//! What happens after delivery: acks, nacks and terms from members, ack deadlines and
//! backoff timers, dead letters, and the durable state written as acks come in.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ganglion_core::Event;
use ganglion_core::bus::SubscriptionId;
use ganglion_core::bus::dead_letter::{AfterFailure, after_failure};

use crate::dlq;
use crate::state::DurableState;
use crate::stats::add;

use super::{Consumer, Control, DEAD_LETTER_RETRY, PERSIST_EVERY, Waiting};

impl Consumer {
    pub(super) fn report_gauges(&self) {
        let c = &self.shared.counters;
        let windowed = self.window.as_ref().map_or(0, |w| w.len());
        let ready = self.ready.len() + self.ephemeral_ready.len() + windowed;
        c.ready
            .store(ready as u64, std::sync::atomic::Ordering::Relaxed);
        c.in_flight.store(
            self.in_flight.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        c.cursor
            .store(self.cursor, std::sync::atomic::Ordering::Relaxed);
        let behind = self.routed.len() as u64 + self.scan_until.saturating_sub(self.cursor);
        c.behind.store(behind, std::sync::atomic::Ordering::Relaxed);
        if self.durable {
            c.floor
                .store(self.floor(), std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub(super) fn next_timer(&self) -> Option<Duration> {
        let window = self
            .window
            .as_ref()
            .filter(|_| !self.blocked)
            .map(|w| w.closes_at);
        [
            self.deadlines.first().map(|d| d.0),
            self.retries.first_key_value().map(|(k, _)| k.0),
            self.dead_pending.first_key_value().map(|(k, _)| k.0),
            window,
            self.persist_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub(super) async fn on_timers(&mut self) {
        let now = self.now();
        while let Some(&(deadline, seq)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(flight) = self.take_in_flight(seq) {
                let error = format!(
                    "ack deadline of {} ms exceeded",
                    self.options.ack_deadline.as_millis()
                );
                self.fail(flight.event, flight.attempt, error, None).await;
                add(&self.shared.counters.ack_timeouts, 1);
            }
        }
        while let Some(entry) = self.retries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let waiting = entry.remove();
            self.push_ready(waiting.event, waiting.attempt + 1);
        }
        while let Some(entry) = self.dead_pending.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let waiting = entry.remove();
            self.dead_letter(waiting.event, waiting.attempt, waiting.error)
                .await;
        }
        if self.window.as_ref().is_some_and(|w| w.closes_at <= now) {
            self.flush_window();
        }
        if self.persist_at.is_some_and(|at| at <= now) {
            self.persist();
        }
    }

    /// Applies one control message; `false` to stop the consumer.
    pub(super) async fn handle(&mut self, command: Control) -> bool {
        match command {
            Control::Join(member) => {
                if self.cut_off {
                    drop(member);
                } else {
                    self.members.push(member);
                    self.blocked = false;
                }
            }
            Control::Leave(id) => self.member_gone(id),
            Control::Ack(seqs) => {
                for seq in seqs {
                    if self.take_in_flight(seq).is_some() {
                        add(&self.shared.counters.acked, 1);
                        self.mark_done(seq);
                    }
                }
            }
            Control::Nack { seqs, delay, error } => {
                for seq in seqs {
                    if let Some(flight) = self.take_in_flight(seq) {
                        self.fail(flight.event, flight.attempt, error.clone(), delay)
                            .await;
                        // Counted once its redelivery is scheduled (from the time it
                        // was nacked), so whoever sees the count can move the clock.
                        add(&self.shared.counters.nacked, 1);
                    }
                }
            }
            Control::Term { seqs, reason } => {
                for seq in seqs {
                    if let Some(flight) = self.take_in_flight(seq) {
                        self.dead_letter(flight.event, flight.attempt, reason.clone())
                            .await;
                    }
                }
            }
            Control::CutOff(reason) => self.cut_off(reason),
            Control::Stop => return false,
        }
        true
    }

    pub(super) fn cut_off(&mut self, reason: String) {
        tracing::warn!(consumer = %self.name, %reason, "closing subscription");
        *self
            .shared
            .closed_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(reason);
        self.cut_off = true;
        self.members.clear();
        let cost = self
            .ephemeral_ready
            .drain(..)
            .map(|e| self.shared.ephemeral_cost(&e))
            .sum();
        self.return_permits(cost);
        // Publishers waiting for room stop waiting.
        self.shared.ephemeral_permits.close();
    }

    /// Puts a departed member's unacked events back for redelivery (each counts as a
    /// failed attempt, so a poison event that crashes its subscribers still ends in the
    /// dead-letter topic).
    pub(super) fn requeue_member(&mut self, id: SubscriptionId) {
        let seqs: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.member == id)
            .map(|(seq, _)| *seq)
            .collect();
        let now = self.now();
        for seq in seqs {
            if let Some(flight) = self.take_in_flight(seq) {
                let waiting = Waiting {
                    event: flight.event,
                    attempt: flight.attempt,
                    error: "subscriber left before acking".into(),
                };
                if flight.attempt >= self.options.max_deliveries {
                    self.dead_pending.insert((now, seq), waiting);
                } else {
                    self.retries.insert((now, seq), waiting);
                }
            }
        }
    }

    /// A failed attempt: redeliver after the backoff (or `delay`), or dead-letter it.
    pub(super) async fn fail(
        &mut self,
        event: Arc<Event>,
        attempt: u32,
        error: String,
        delay: Option<Duration>,
    ) {
        let delay = match after_failure(&self.options, attempt, delay, &mut self.jitter) {
            AfterFailure::DeadLetter => return self.dead_letter(event, attempt, error).await,
            AfterFailure::Retry(delay) => delay,
        };
        tracing::debug!(
            consumer = %self.name, seq = event.seq, correlation_id = %event.correlation_or_id(),
            attempt, ?delay, %error, "redelivery scheduled"
        );
        let due = self.now() + delay;
        self.retries.insert(
            (due, event.seq),
            Waiting {
                event,
                attempt,
                error,
            },
        );
    }

    pub(super) async fn dead_letter(&mut self, event: Arc<Event>, attempts: u32, error: String) {
        let seq = event.seq;
        let letter = dlq::dead_letter_event(&event, &self.dlq_topic, &self.name, attempts, &error);
        match self.core.publish_internal(vec![letter]).await {
            Ok(acks) => {
                tracing::info!(
                    consumer = %self.name, seq, topic = %event.topic,
                    correlation_id = %event.correlation_or_id(), attempts, %error,
                    dead_letter_seq = acks.first().map_or(0, |a| a.seq), "event dead-lettered"
                );
                add(&self.shared.counters.dead_lettered, 1);
                self.mark_done(seq);
            }
            Err(e) => {
                tracing::warn!(
                    consumer = %self.name, seq, correlation_id = %event.correlation_or_id(), error = %e,
                    "dead-letter publication failed; will retry"
                );
                let due = self.now() + DEAD_LETTER_RETRY;
                self.dead_pending.insert(
                    (due, seq),
                    Waiting {
                        event,
                        attempt: attempts,
                        error,
                    },
                );
            }
        }
    }

    pub(super) fn mark_done(&mut self, seq: u64) {
        self.outstanding.remove(&seq);
        if self.durable {
            self.done.insert(seq);
            self.dirty = true;
            if self.persist_at.is_none() {
                self.persist_at = Some(self.now() + PERSIST_EVERY);
            }
        }
    }

    /// Everything below this is done: the first event still outstanding, or the cursor.
    pub(super) fn floor(&self) -> u64 {
        self.outstanding
            .first()
            .copied()
            .unwrap_or(self.cursor)
            .min(self.cursor)
    }

    /// Writes a durable consumer's state: everything below the floor is done.
    pub(super) fn persist(&mut self) {
        self.persist_at = None;
        if !self.dirty {
            return;
        }
        let floor = self.floor();
        self.done = self.done.split_off(&floor);
        let mut attempts = BTreeMap::new();
        for (seq, f) in &self.in_flight {
            attempts.insert(*seq, f.attempt);
        }
        for ((_, seq), w) in self.retries.iter().chain(&self.dead_pending) {
            attempts.insert(*seq, w.attempt);
        }
        // Waiting events carry the attempt they will be delivered as.
        let waiting = self.ready.iter().map(|r| (r.seq, r.attempt));
        let windowed = self
            .window
            .iter()
            .flat_map(|w| w.items().iter().map(|(e, a)| (e.seq, *a)));
        for (seq, attempt) in waiting.chain(windowed) {
            if seq != 0 && attempt > 1 {
                attempts.insert(seq, attempt - 1);
            }
        }
        let state = DurableState {
            pattern: self.pattern.to_string(),
            dlq_topic: self.dlq_topic.to_string(),
            floor,
            done: self.done.clone(),
            attempts,
        };
        match self.core.states.save(&self.name, &state) {
            Ok(()) => self.dirty = false,
            Err(e) => {
                tracing::error!(consumer = %self.name, error = %e, "saving consumer state failed; will retry");
                self.persist_at = Some(self.now() + PERSIST_EVERY);
            }
        }
    }
}
