//! Handing events to members: what is ready, in priority order, within the in-flight
//! and byte limits, in chunks; and counting what was delivered.

use std::sync::Arc;
use std::time::Duration;

use ganglion_core::Event;
use ganglion_core::bus::{AckMode, Chunk, DeliveredEvent, Delivery, KeyCount, SubscriptionId};
use tokio::sync::mpsc;

use crate::stats::add;

use super::{CHUNK_BYTES, Consumer, EPHEMERAL_CHUNK, InFlight, Ready, member_channel, room_needed};

impl Consumer {
    /// Takes a logged event into the ready queue if this consumer wants it.
    pub(super) fn offer(&mut self, event: Arc<Event>) {
        let seq = event.seq;
        if !self.pattern.matches(&event.topic)
            || self.done.contains(&seq)
            || !self.options.filter.accepts(&event)
        {
            return;
        }
        if self.core.retention.expired(event.topic.as_str(), seq) {
            // Expired under retention before this subscriber read it.
            add(&self.shared.counters.expired, 1);
            return;
        }
        let attempt = self.resumed_attempts.remove(&seq).unwrap_or(0) + 1;
        self.push_ready(event, attempt);
    }

    pub(super) fn push_ready(&mut self, event: Arc<Event>, attempt: u32) {
        let priority = if self.options.prioritized {
            event.priority()
        } else {
            0
        };
        self.outstanding.insert(event.seq);
        self.ready_bytes += event.size();
        self.ready.push(Ready {
            priority,
            seq: event.seq,
            event,
            attempt,
        });
    }

    /// Hands ready events to subscribers, in chunks, or into the batch window.
    pub(super) fn dispatch(&mut self) {
        if self.cut_off || self.members.is_empty() || self.blocked {
            return;
        }
        if self.options.batch.is_some() {
            self.fill_window();
            return;
        }
        loop {
            let open: Vec<usize> = (0..self.members.len())
                .filter(|&i| {
                    let member = &self.members[i];
                    member.has_room(room_needed(&member.tx, false))
                })
                .collect();
            if open.is_empty() {
                self.blocked = self.has_deliverable();
                return;
            }
            // A lone member takes ephemeral events as they are: pointers, not deliveries
            // (its subscription makes those as they are taken).
            if let [only] = open[..]
                && !self.ephemeral_ready.is_empty()
            {
                self.send_ephemeral(only);
            } else {
                let Some(chunks) = self.build_chunks(&open) else {
                    return;
                };
                self.send_chunks(&open, chunks);
            }
            if self.members.is_empty() {
                return;
            }
        }
    }

    /// Sends member `only` one chunk of ready ephemeral events (up to EPHEMERAL_CHUNK
    /// events and about CHUNK_BYTES).
    fn send_ephemeral(&mut self, only: usize) {
        let (mut n, mut cost, mut bytes) = (0, 0, 0);
        for event in self.ephemeral_ready.iter().take(EPHEMERAL_CHUNK) {
            if n > 0 && bytes >= CHUNK_BYTES {
                break;
            }
            n += 1;
            cost += self.shared.ephemeral_cost(event);
            bytes += event.size();
        }
        let events: Vec<Arc<Event>> = self.ephemeral_ready.drain(..n).collect();
        self.return_permits(cost);
        self.count_delivered(n as u64, 0, events.first().map(|e| &**e));
        let member = &self.members[only];
        member.queued.add(bytes);
        // This consumer is the channel's only sender and saw room in it.
        if member
            .tx
            .try_send(Chunk::Ephemeral { events, bytes })
            .is_err()
        {
            let id = member.id;
            self.member_gone(id);
        }
    }

    /// One chunk per `open` member, filled round robin, each at most a chunk's worth of
    /// deliveries and about CHUNK_BYTES; `None` when nothing was ready.
    fn build_chunks(&mut self, open: &[usize]) -> Option<Vec<(Vec<Delivery>, usize)>> {
        let (chunk_size, _) = member_channel(self.max_in_flight());
        let mut chunks: Vec<(Vec<Delivery>, usize)> =
            open.iter().map(|_| (Vec::new(), 0)).collect();
        let mut turn = self.next_member;
        let mut released = 0;
        let mut built = 0;
        let mut redelivered = 0;
        while built < open.len() * chunk_size {
            let slot = turn % open.len();
            if chunks[slot].1 >= CHUNK_BYTES {
                if chunks.iter().all(|(_, bytes)| *bytes >= CHUNK_BYTES) {
                    break;
                }
                turn += 1;
                continue;
            }
            let delivery = if let Some(event) = self.ephemeral_ready.pop_front() {
                released += self.shared.ephemeral_cost(&event);
                let delivered = DeliveredEvent {
                    event,
                    attempt: 1,
                    coalesced: 1,
                };
                Delivery::ephemeral(delivered)
            } else if self.may_send_durable()
                && let Some(ready) = self.pop_ready()
            {
                let delivered = DeliveredEvent {
                    event: ready.event.clone(),
                    attempt: ready.attempt,
                    coalesced: 1,
                };
                let member = &self.members[open[slot]];
                let delivery = Delivery::single(delivered, Some(ready.seq), member.control.clone());
                redelivered += u64::from(ready.attempt > 1);
                let id = member.id;
                self.delivered(ready.seq, ready.event, ready.attempt, id);
                delivery
            } else {
                break;
            };
            chunks[slot].1 += delivery.events()[0].event.size();
            chunks[slot].0.push(delivery);
            built += 1;
            turn += 1;
        }
        self.next_member = turn;
        self.return_permits(released);
        if built == 0 {
            return None;
        }
        let first = chunks
            .iter()
            .flat_map(|(chunk, _)| chunk)
            .next()
            .and_then(|d| d.events().first())
            .filter(|e| e.attempt == 1)
            .map(|e| &*e.event);
        self.count_delivered(built as u64, redelivered, first);
        Some(chunks)
    }

    /// Sends each `open` member its chunk; a member whose channel is closed is gone.
    fn send_chunks(&mut self, open: &[usize], chunks: Vec<(Vec<Delivery>, usize)>) {
        let mut gone = Vec::new();
        for (slot, (deliveries, bytes)) in chunks.into_iter().enumerate() {
            if deliveries.is_empty() {
                continue;
            }
            let member = &self.members[open[slot]];
            member.queued.add(bytes);
            // This consumer is the channel's only sender and saw room in it.
            if member
                .tx
                .try_send(Chunk::Deliveries { deliveries, bytes })
                .is_err()
            {
                gone.push(member.id);
            }
        }
        for id in gone {
            self.member_gone(id);
        }
    }

    /// Forgets a member whose subscription is gone; its events in flight go back to
    /// the ready queue.
    pub(super) fn member_gone(&mut self, id: SubscriptionId) {
        self.members.retain(|m| m.id != id);
        self.requeue_member(id);
    }

    /// Counts `n` events handed over (`redelivered` of them again) and samples the
    /// delivery latency from `first_new`, the first of them when it is a first delivery:
    /// one clock read per round, not per event.
    pub(super) fn count_delivered(&self, n: u64, redelivered: u64, first_new: Option<&Event>) {
        add(&self.shared.counters.delivered, n);
        add(&self.shared.counters.redelivered, redelivered);
        if let Some(event) = first_new {
            self.sample_latency(event);
        }
    }

    /// Records how old `event` is at its first delivery (its timestamp is in ms).
    pub(super) fn sample_latency(&self, event: &Event) {
        let now_ms = self.clock.now_micros() / 1000;
        if event.timestamp_ms > 0 {
            let age = now_ms.saturating_sub(event.timestamp_ms);
            self.core
                .delivery_latency
                .record(Duration::from_millis(age));
        }
    }

    /// Whether something could be delivered if a subscriber had room.
    pub(super) fn has_deliverable(&self) -> bool {
        !self.ephemeral_ready.is_empty() || (!self.ready.is_empty() && self.may_send_durable())
    }

    /// Gives publishers of ephemeral events room for `n` more.
    pub(super) fn return_permits(&self, n: usize) {
        if n > 0 {
            self.shared.ephemeral_permits.add_permits(n);
        }
    }

    /// Records a delivery of a durable event: in flight until acked, or done at once
    /// under `AckMode::Auto`.
    pub(super) fn delivered(
        &mut self,
        seq: u64,
        event: Arc<Event>,
        attempt: u32,
        member: SubscriptionId,
    ) {
        if self.options.ack_mode == AckMode::Auto {
            add(&self.shared.counters.acked, 1);
            self.mark_done(seq);
            return;
        }
        let deadline = self.now() + self.options.ack_deadline;
        self.deadlines.insert((deadline, seq));
        self.in_flight_bytes += event.size();
        self.in_flight.insert(
            seq,
            InFlight {
                event,
                attempt,
                deadline,
                member,
            },
        );
    }

    /// Offers a delivery to the members in turn; the member that took it, or `None` if
    /// every member's channel is full (the consumer is then blocked until one has room).
    pub(super) fn send(
        &mut self,
        events: Vec<DeliveredEvent>,
        counts: Vec<KeyCount>,
        seqs: Vec<u64>,
    ) -> Option<SubscriptionId> {
        let mut tries = self.members.len();
        while tries > 0 && !self.members.is_empty() {
            tries -= 1;
            let i = self.next_member % self.members.len();
            let member = &self.members[i];
            if !member.queued.has_room() {
                self.next_member = i + 1;
                continue;
            }
            let gone = match member.tx.try_reserve() {
                Ok(room) => {
                    let delivery = Delivery::batch(events, counts, seqs, member.control.clone());
                    let chunk = Chunk::from(vec![delivery]);
                    member.queued.add(chunk.bytes());
                    room.send(chunk);
                    let id = member.id;
                    self.next_member = i + 1;
                    return Some(id);
                }
                Err(mpsc::error::TrySendError::Closed(())) => Some(member.id),
                Err(mpsc::error::TrySendError::Full(())) => None,
            };
            match gone {
                Some(id) => self.member_gone(id),
                None => self.next_member = i + 1,
            }
        }
        self.blocked = !self.members.is_empty();
        None
    }
}
