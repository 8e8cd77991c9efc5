//! One consumer: the delivery state of a subscription (or of a queue group, or of a
//! durable name), run as one task.
//!
//! The consumer reads its pattern's events from the log at its cursor, keeps at most
//! `max_in_flight` + 256 of them in memory ahead of delivery and at most `max_in_flight` unacked
//! ones out with subscribers, and tracks each in-flight event's ack deadline. A nack or an
//! expired deadline schedules a redelivery after the backoff (a timer, never a sleeping
//! handler); the other events keep flowing meanwhile. An event out of attempts goes to the
//! dead-letter topic. Everything time-based reads the bus's [`Clock`].

mod source;

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ganglion_core::bus::{
    AckMode, Aggregation, Chunk, DeliveredEvent, Delivery, KeyCount, QueuedBytes, SubscribeOptions,
    SubscriptionControl, SubscriptionId,
};
use ganglion_core::{Clock, Event, Pattern, Topic};
use tokio::sync::mpsc;

use crate::route::Route;
use crate::state::DurableState;
use crate::stats::{ConsumerCounters, add};
use crate::{Core, dlq};

/// How long acks may gather before a durable consumer's state is written.
const PERSIST_EVERY: Duration = Duration::from_millis(100);
/// How long to wait before trying a failed dead-letter publication again.
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(1);
/// Records read from the log per read.
const READ_BATCH: usize = 256;
/// Most deliveries handed to a subscriber in one channel operation: a quarter of the
/// default in-flight cap, so acks flow back while later chunks are on their way (a
/// chunk as large as the window makes delivery stop-and-wait).
const MAX_CHUNK: usize = 256;
/// Most ephemeral events handed to a lone subscriber in one channel operation. They
/// are not in flight (nothing to ack), and large chunks matter: a subscriber that keeps
/// up parks between chunks, and waking it costs the consumer a system call (tens of
/// microseconds on a virtual machine), so 1,024 events per wake-up rather than 256 made
/// in-process ephemeral delivery ~20% faster.
const EPHEMERAL_CHUNK: usize = 1024;
/// Chunks an unbatched subscriber's channel may hold before the consumer waits for it
/// to take some.
const QUEUED_CHUNKS: usize = 256;
/// A chunk stops growing at this many bytes of events (it always takes one).
const CHUNK_BYTES: usize = 1024 * 1024;

/// Deliveries per chunk, and chunks a subscriber's channel holds (`max_in_flight`, so
/// events trickling in one per chunk can still fill the in-flight window). With manual
/// acks the in-flight cap bounds what waits for a subscriber; with auto acks and for
/// ephemeral events, at most [`QUEUED_CHUNKS`] chunks of `min(256, max_in_flight)`
/// deliveries or of 1,024 ephemeral events wait in an unbatched subscriber's channel.
pub(crate) fn member_channel(max_in_flight: usize) -> (usize, usize) {
    let chunk = MAX_CHUNK.min(max_in_flight).max(1);
    (chunk, max_in_flight.max(1))
}

/// Free slots a member's channel needs before an unbatched consumer hands it another
/// chunk: one, or enough that no more than [`QUEUED_CHUNKS`] will wait in it.
fn room_needed(tx: &mpsc::Sender<Chunk>, batched: bool) -> usize {
    if batched {
        1
    } else {
        tx.max_capacity().saturating_sub(QUEUED_CHUNKS - 1).max(1)
    }
}

/// What reaches a consumer task from its subscribers and from the bus.
#[derive(Debug)]
pub(crate) enum Control {
    Join(Member),
    Leave(SubscriptionId),
    Ack(Vec<u64>),
    Nack {
        seqs: Vec<u64>,
        delay: Option<Duration>,
        error: String,
    },
    Term {
        seqs: Vec<u64>,
        reason: String,
    },
    /// Close every subscriber with this reason (a slow ephemeral subscriber).
    CutOff(String),
    Stop,
}

/// A subscriber attached to a consumer.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) id: SubscriptionId,
    /// Deliveries go over in chunks; see [`member_channel`].
    pub(crate) tx: mpsc::Sender<Chunk>,
    pub(crate) control: Arc<dyn SubscriptionControl>,
    /// The bytes in `tx` not yet taken by the subscription.
    pub(crate) queued: Arc<QueuedBytes>,
}

impl Member {
    /// Whether a chunk could be handed over now (`room` free slots, and bytes).
    fn has_room(&self, room: usize) -> bool {
        self.tx.capacity() >= room && self.queued.has_room()
    }
}

/// What the consumer shares with its subscribers' handles.
#[derive(Debug)]
pub(crate) struct ConsumerShared {
    pub(crate) closed_reason: Mutex<Option<String>>,
    pub(crate) durable: bool,
    /// Kept when a durable consumer stops, so its series go on while it is away.
    pub(crate) counters: Arc<ConsumerCounters>,
    /// The room for ephemeral events this consumer has left, in units of
    /// [`ephemeral_cost`](Self::ephemeral_cost): publishers take permits before handing
    /// events over, the consumer returns them as events leave.
    pub(crate) ephemeral_permits: tokio::sync::Semaphore,
    /// All the permits there are: the buffer's bytes.
    pub(crate) ephemeral_budget: usize,
    /// What the smallest event costs: the budget over the most events it may hold, so
    /// that both the event count and the bytes stay bounded.
    min_cost: usize,
}

impl ConsumerShared {
    pub(crate) fn new(
        ephemeral_buffer: usize,
        buffer_bytes: usize,
        durable: bool,
        counters: Arc<ConsumerCounters>,
    ) -> Self {
        let budget = buffer_bytes.clamp(1, u32::MAX as usize);
        ConsumerShared {
            closed_reason: Mutex::new(None),
            durable,
            counters,
            ephemeral_permits: tokio::sync::Semaphore::new(budget),
            ephemeral_budget: budget,
            min_cost: (budget / ephemeral_buffer.max(1)).max(1),
        }
    }

    /// The permits an ephemeral event takes while it waits in the consumer: its bytes
    /// (at least the minimum, at most the whole buffer).
    pub(crate) fn ephemeral_cost(&self, event: &Event) -> usize {
        event.size().clamp(self.min_cost, self.ephemeral_budget)
    }
}

/// Everything a consumer task starts from.
#[derive(Debug)]
pub(crate) struct ConsumerSpec {
    /// The durable name, the queue group, or `sub-N`.
    pub(crate) name: String,
    pub(crate) pattern: Pattern,
    pub(crate) options: SubscribeOptions,
    pub(crate) dlq_topic: Topic,
    pub(crate) durable: bool,
    /// Where logged events matching `pattern` are handed to it from now on.
    pub(crate) route: Arc<Route>,
    /// How far routing had gone when it was registered: it reads the log itself up to
    /// here.
    pub(crate) routed_below: u64,
    /// The first log sequence to read.
    pub(crate) cursor: u64,
    /// Resumed from a saved state: events missing at the cursor were lost since.
    pub(crate) resumed: bool,
    /// Sequences at or after `cursor` already done (from a durable state).
    pub(crate) done: BTreeSet<u64>,
    /// Deliveries so far of sequences not done (from a durable state).
    pub(crate) attempts: BTreeMap<u64, u32>,
    pub(crate) first_member: Member,
}

/// An event waiting to be delivered: highest priority first, then lowest sequence.
#[derive(Debug)]
struct Ready {
    priority: i64,
    seq: u64,
    event: Arc<Event>,
    /// The attempt this delivery will be (1 for the first).
    attempt: u32,
}

impl Ready {
    fn key(&self) -> (i64, Reverse<u64>) {
        (self.priority, Reverse(self.seq))
    }
}

impl PartialEq for Ready {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Ready {}
impl PartialOrd for Ready {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ready {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

#[derive(Debug)]
struct InFlight {
    event: Arc<Event>,
    attempt: u32,
    deadline: Duration,
    member: SubscriptionId,
}

/// An event that failed `attempt` and waits for its next one (or for a retry of its
/// dead-letter publication).
#[derive(Debug)]
struct Waiting {
    event: Arc<Event>,
    attempt: u32,
    error: String,
}

#[derive(Debug)]
struct Window {
    closes_at: Duration,
    /// (event, attempt); ephemeral events have seq 0.
    items: Vec<(Arc<Event>, u32)>,
    /// Bytes of the events.
    bytes: usize,
}

pub(crate) struct Consumer {
    core: Arc<Core>,
    clock: Arc<dyn Clock>,
    name: String,
    pattern: Pattern,
    options: SubscribeOptions,
    dlq_topic: Topic,
    durable: bool,
    shared: Arc<ConsumerShared>,
    members: Vec<Member>,
    next_member: usize,
    /// Every member's channel was full at the last try.
    blocked: bool,
    cut_off: bool,
    ephemeral_closed: bool,
    /// The cursor has been read from once (a gap after that means the log's retention
    /// overtook this consumer).
    has_read: bool,
    /// Every log sequence below this is read or not this consumer's.
    cursor: u64,
    /// Where the router hands it sequences.
    route: Arc<Route>,
    /// It reads the log itself (from `cursor`) up to here, before taking routed
    /// sequences: what was committed before it registered, or what the router dropped.
    scan_until: u64,
    /// Routed sequences below this were covered by a read of the log: they are dropped.
    skip_below: u64,
    /// Sequences routed to it, taken from the route and not read yet, in order.
    routed: VecDeque<u64>,
    /// The router dropped sequences from here on (its queue was full): once `routed`
    /// is read, the log is read from here.
    dropped_from: Option<u64>,
    ready: BinaryHeap<Ready>,
    /// Bytes of the events in `ready`.
    ready_bytes: usize,
    ephemeral_ready: VecDeque<Arc<Event>>,
    in_flight: HashMap<u64, InFlight>,
    /// Bytes of the events in `in_flight` and in the open window.
    in_flight_bytes: usize,
    deadlines: BTreeSet<(Duration, u64)>,
    retries: BTreeMap<(Duration, u64), Waiting>,
    dead_pending: BTreeMap<(Duration, u64), Waiting>,
    window: Option<Window>,
    /// Matched log sequences not done yet: the floor is the smallest.
    outstanding: BTreeSet<u64>,
    done: BTreeSet<u64>,
    resumed_attempts: BTreeMap<u64, u32>,
    dirty: bool,
    persist_at: Option<Duration>,
    rng: u64,
}

impl Consumer {
    pub(crate) fn new(core: Arc<Core>, spec: ConsumerSpec, shared: Arc<ConsumerShared>) -> Self {
        let clock = core.clock.clone();
        let rng = clock.monotonic().as_nanos() as u64 ^ spec.cursor.rotate_left(17) ^ 0x9E37_79B9;
        Consumer {
            core,
            clock,
            name: spec.name,
            pattern: spec.pattern,
            options: spec.options,
            dlq_topic: spec.dlq_topic,
            durable: spec.durable,
            shared,
            members: vec![spec.first_member],
            next_member: 0,
            blocked: false,
            cut_off: false,
            ephemeral_closed: false,
            has_read: spec.resumed,
            cursor: spec.cursor,
            route: spec.route,
            scan_until: spec.routed_below,
            skip_below: spec.routed_below.max(spec.cursor),
            routed: VecDeque::new(),
            dropped_from: None,
            ready: BinaryHeap::new(),
            ready_bytes: 0,
            ephemeral_ready: VecDeque::new(),
            in_flight: HashMap::new(),
            in_flight_bytes: 0,
            deadlines: BTreeSet::new(),
            retries: BTreeMap::new(),
            dead_pending: BTreeMap::new(),
            window: None,
            outstanding: BTreeSet::new(),
            done: spec.done,
            resumed_attempts: spec.attempts,
            dirty: false,
            persist_at: None,
            rng,
        }
    }

    fn max_in_flight(&self) -> usize {
        self.options.max_in_flight
    }

    /// Most events read ahead of delivery: enough for priorities to reorder a backlog,
    /// bounded so a backlog stays in the log rather than in memory.
    fn max_ready(&self) -> usize {
        self.options.max_in_flight.saturating_add(READ_BATCH)
    }

    /// Whether another event may be read ahead of delivery.
    fn wants_ready(&self) -> bool {
        self.ready.len() < self.max_ready()
            && self.ready_bytes < self.core.options.subscriber_buffer_bytes
    }

    /// Whether another durable event may go out to a subscriber unacked.
    fn may_send_durable(&self) -> bool {
        self.in_flight_count() < self.max_in_flight()
            && (self.in_flight_count() == 0
                || self.in_flight_bytes < self.options.max_in_flight_bytes)
    }

    /// Takes the next ready event (highest priority first).
    fn pop_ready(&mut self) -> Option<Ready> {
        let ready = self.ready.pop()?;
        self.ready_bytes -= ready.event.size();
        Some(ready)
    }

    /// Forgets an event out with a subscriber (acked, nacked, timed out, its member gone).
    fn take_in_flight(&mut self, seq: u64) -> Option<InFlight> {
        let flight = self.in_flight.remove(&seq)?;
        self.deadlines.remove(&(flight.deadline, seq));
        self.in_flight_bytes -= flight.event.size();
        Some(flight)
    }

    /// Durable events out with subscribers or gathered in the open window.
    fn in_flight_count(&self) -> usize {
        let windowed = self
            .window
            .as_ref()
            .map_or(0, |w| w.items.iter().filter(|(e, _)| e.seq != 0).count());
        self.in_flight.len() + windowed
    }

    fn unit(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) async fn run(
        mut self,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut ephemeral: mpsc::UnboundedReceiver<Vec<Arc<Event>>>,
    ) {
        loop {
            self.fill();
            self.dispatch();
            self.report_gauges();
            let wants_log = !self.cut_off && self.wants_ready();
            let wants_ephemeral = !self.cut_off
                && !self.ephemeral_closed
                && !self.blocked
                && self.ephemeral_ready.len() < READ_BATCH
                && !self.members.is_empty();
            // With events of its own still to read (taken from the route, or in the log
            // up to `scan_until`), it goes round again at once; else it waits for the
            // router.
            let route = self.route.clone();
            let unread = self.has_unread();
            let routed = async move {
                if !unread {
                    route.woken().await;
                }
            };
            let timer = self.next_timer().map(|at| self.clock.sleep_until(at));
            let has_timer = timer.is_some();
            let timer = async move {
                if let Some(timer) = timer {
                    timer.await
                }
            };
            let batched = self.options.batch.is_some();
            let unblocked = self
                .members
                .get(self.next_member % self.members.len().max(1))
                .map(|m| (m.tx.clone(), room_needed(&m.tx, batched), m.queued.clone()));
            let wait_unblocked = async move {
                if let Some((tx, room, queued)) = unblocked {
                    queued.room().await;
                    let _ = tx.reserve_many(room).await;
                }
            };
            tokio::select! {
                biased;
                command = control.recv() => {
                    let Some(command) = command else { break };
                    if !self.handle(command).await {
                        break;
                    }
                    // Take whatever else is waiting, so acks are applied in bulk.
                    let mut stop = false;
                    for _ in 0..1024 {
                        match control.try_recv() {
                            Ok(command) => if !self.handle(command).await { stop = true; break },
                            Err(_) => break,
                        }
                    }
                    if stop {
                        break;
                    }
                }
                _ = wait_unblocked, if self.blocked => self.blocked = false,
                events = ephemeral.recv(), if wants_ephemeral => {
                    if events.is_none() {
                        self.ephemeral_closed = true;
                    }
                    // Take what is waiting in bulk: one turn of this loop per batch.
                    let mut next = events;
                    while let Some(events) = next {
                        // Filtered-out events leave at once: give their room back.
                        let mut filtered_out = 0;
                        for event in events {
                            if self.options.filter.accepts(&event) {
                                self.ephemeral_ready.push_back(event);
                            } else {
                                filtered_out += self.shared.ephemeral_cost(&event);
                            }
                        }
                        self.return_permits(filtered_out);
                        next = if self.ephemeral_ready.len() < READ_BATCH {
                            ephemeral.try_recv().ok()
                        } else {
                            None
                        };
                    }
                }
                _ = routed, if wants_log => {}
                _ = timer, if has_timer => self.on_timers().await,
            }
        }
        if self.durable {
            self.catch_up();
            self.persist();
            // Its last acks may have moved the floor: the parked listing counts from it.
            self.shared
                .counters
                .floor
                .store(self.floor(), std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Takes a logged event into the ready queue if this consumer wants it.
    fn offer(&mut self, event: Arc<Event>) {
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

    fn push_ready(&mut self, event: Arc<Event>, attempt: u32) {
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
    fn dispatch(&mut self) {
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
            let (chunk_size, _) = member_channel(self.max_in_flight());
            // A lone member takes ephemeral events as they are: pointers, not deliveries
            // (its subscription makes those as they are taken).
            if let [only] = open[..]
                && !self.ephemeral_ready.is_empty()
            {
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
                    if self.members.is_empty() {
                        return;
                    }
                }
                continue;
            }
            // One chunk per open member, filled round robin, each at most `chunk_size`
            // deliveries and about CHUNK_BYTES.
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
                let member = open[slot];
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
                    let member = &self.members[member];
                    let delivery =
                        Delivery::single(delivered, Some(ready.seq), member.control.clone());
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
                return;
            }
            let first = chunks
                .iter()
                .flat_map(|(chunk, _)| chunk)
                .next()
                .and_then(|d| d.events().first())
                .filter(|e| e.attempt == 1)
                .map(|e| &*e.event);
            self.count_delivered(built as u64, redelivered, first);
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
            if self.members.is_empty() {
                return;
            }
        }
    }

    /// Forgets a member whose subscription is gone; its events in flight go back to
    /// the ready queue.
    fn member_gone(&mut self, id: SubscriptionId) {
        self.members.retain(|m| m.id != id);
        self.requeue_member(id);
    }

    /// Counts `n` events handed over (`redelivered` of them again) and samples the
    /// delivery latency from `first_new`, the first of them when it is a first delivery:
    /// one clock read per round, not per event.
    fn count_delivered(&self, n: u64, redelivered: u64, first_new: Option<&Event>) {
        add(&self.shared.counters.delivered, n);
        add(&self.shared.counters.redelivered, redelivered);
        if let Some(event) = first_new {
            self.sample_latency(event);
        }
    }

    /// Records how old `event` is at its first delivery (its timestamp is in ms).
    fn sample_latency(&self, event: &Event) {
        let now_ms = self.clock.now_micros() / 1000;
        if event.timestamp_ms > 0 {
            let age = now_ms.saturating_sub(event.timestamp_ms);
            self.core
                .delivery_latency
                .record(Duration::from_millis(age));
        }
    }

    fn report_gauges(&self) {
        let c = &self.shared.counters;
        let windowed = self.window.as_ref().map_or(0, |w| w.items.len());
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

    /// Whether something could be delivered if a subscriber had room.
    fn has_deliverable(&self) -> bool {
        !self.ephemeral_ready.is_empty() || (!self.ready.is_empty() && self.may_send_durable())
    }

    /// Gives publishers of ephemeral events room for `n` more.
    fn return_permits(&self, n: usize) {
        if n > 0 {
            self.shared.ephemeral_permits.add_permits(n);
        }
    }

    fn now(&self) -> Duration {
        self.clock.monotonic()
    }

    /// Records a delivery of a durable event: in flight until acked, or done at once
    /// under `AckMode::Auto`.
    fn delivered(&mut self, seq: u64, event: Arc<Event>, attempt: u32, member: SubscriptionId) {
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
    fn send(
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

    fn fill_window(&mut self) {
        let Some(batch) = self.options.batch.clone() else {
            return;
        };
        loop {
            let window_len = self.window.as_ref().map_or(0, |w| w.items.len());
            if window_len >= batch.max_events {
                self.flush_window();
                if self.window.is_some() {
                    return; // no room with any subscriber
                }
                continue;
            }
            let window_bytes = self.window.as_ref().map_or(0, |w| w.bytes);
            if window_len > 0 && window_bytes >= batch.max_bytes {
                self.flush_window();
                if self.window.is_some() {
                    return;
                }
                continue;
            }
            let item = if let Some(event) = self.ephemeral_ready.pop_front() {
                self.return_permits(self.shared.ephemeral_cost(&event));
                (event, 1)
            } else if self.may_send_durable()
                && let Some(ready) = self.pop_ready()
            {
                // Counted as in flight while it waits in the window.
                self.in_flight_bytes += ready.event.size();
                (ready.event, ready.attempt)
            } else {
                return;
            };
            let closes_at = self.now() + batch.window.unwrap_or_else(|| self.core.batch_window());
            let window = self.window.get_or_insert_with(|| Window {
                closes_at,
                items: Vec::new(),
                bytes: 0,
            });
            window.bytes += item.0.size();
            window.items.push(item);
        }
    }

    /// Delivers the open window, coalesced per the subscription's aggregation.
    fn flush_window(&mut self) {
        let (Some(window), Some(batch)) = (self.window.take(), self.options.batch.clone()) else {
            return;
        };
        let seqs: Vec<u64> = window
            .items
            .iter()
            .map(|(e, _)| e.seq)
            .filter(|&s| s != 0)
            .collect();
        let (events, counts) = match batch.aggregation {
            Aggregation::None => {
                let events = window
                    .items
                    .iter()
                    .map(|(event, attempt)| DeliveredEvent {
                        event: event.clone(),
                        attempt: *attempt,
                        coalesced: 1,
                    })
                    .collect();
                (events, Vec::new())
            }
            Aggregation::KeepLast => {
                let mut last: HashMap<String, (usize, u64)> = HashMap::new();
                for (i, (event, _)) in window.items.iter().enumerate() {
                    let entry = last.entry(batch.key.of(event)).or_insert((i, 0));
                    *entry = (i, entry.1 + 1);
                }
                let mut kept: Vec<(usize, u64)> = last.into_values().collect();
                kept.sort_unstable();
                let events = kept
                    .into_iter()
                    .map(|(i, coalesced)| DeliveredEvent {
                        event: window.items[i].0.clone(),
                        attempt: window.items[i].1,
                        coalesced,
                    })
                    .collect();
                (events, Vec::new())
            }
            Aggregation::Count => {
                let mut counts: Vec<KeyCount> = Vec::new();
                let mut index: HashMap<String, usize> = HashMap::new();
                for (event, _) in &window.items {
                    let key = batch.key.of(event);
                    match index.get(&key) {
                        Some(&i) => counts[i].count += 1,
                        None => {
                            index.insert(key.clone(), counts.len());
                            counts.push(KeyCount { key, count: 1 });
                        }
                    }
                }
                (Vec::new(), counts)
            }
        };
        let first = events
            .first()
            .filter(|e| e.attempt == 1)
            .map(|e| e.event.clone());
        match self.send(events, counts, seqs) {
            Some(member) => {
                let redelivered = window.items.iter().filter(|(_, a)| *a > 1).count();
                let covered = window.items.len() as u64;
                self.count_delivered(covered, redelivered as u64, first.as_deref());
                for (event, attempt) in window.items {
                    if event.seq != 0 {
                        // Out of the window; in flight again if it waits for an ack.
                        self.in_flight_bytes -= event.size();
                        self.delivered(event.seq, event, attempt, member);
                    }
                }
            }
            None => self.window = Some(window),
        }
    }

    fn next_timer(&self) -> Option<Duration> {
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

    async fn on_timers(&mut self) {
        let now = self.now();
        while let Some(&(deadline, seq)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(flight) = self.take_in_flight(seq) {
                add(&self.shared.counters.ack_timeouts, 1);
                let error = format!(
                    "ack deadline of {} ms exceeded",
                    self.options.ack_deadline.as_millis()
                );
                self.fail(flight.event, flight.attempt, error, None).await;
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
    async fn handle(&mut self, command: Control) -> bool {
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
                        add(&self.shared.counters.nacked, 1);
                        self.fail(flight.event, flight.attempt, error.clone(), delay)
                            .await;
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

    fn cut_off(&mut self, reason: String) {
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
    fn requeue_member(&mut self, id: SubscriptionId) {
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
    async fn fail(
        &mut self,
        event: Arc<Event>,
        attempt: u32,
        error: String,
        delay: Option<Duration>,
    ) {
        if attempt >= self.options.max_deliveries {
            self.dead_letter(event, attempt, error).await;
            return;
        }
        let unit = self.unit();
        let delay = delay.unwrap_or_else(|| self.options.backoff.delay(attempt, unit));
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

    async fn dead_letter(&mut self, event: Arc<Event>, attempts: u32, error: String) {
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

    fn mark_done(&mut self, seq: u64) {
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
    fn floor(&self) -> u64 {
        self.outstanding
            .first()
            .copied()
            .unwrap_or(self.cursor)
            .min(self.cursor)
    }

    /// Writes a durable consumer's state: everything below the floor is done.
    fn persist(&mut self) {
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
            .flat_map(|w| w.items.iter().map(|(e, a)| (e.seq, *a)));
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
