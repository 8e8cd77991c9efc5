//! One consumer: the delivery state of a subscription (or of a queue group, or of a
//! durable name), run as one task.
//!
//! The consumer reads its pattern's events from the log at its cursor, keeps at most
//! `max_in_flight` + 256 of them in memory ahead of delivery and at most `max_in_flight` unacked
//! ones out with subscribers, and tracks each in-flight event's ack deadline. A nack or an
//! expired deadline schedules a redelivery after the backoff (a timer, never a sleeping
//! handler); the other events keep flowing meanwhile. An event out of attempts goes to the
//! dead-letter topic. Everything time-based reads the bus's [`Clock`].

mod dispatch;
mod settle;
mod source;
mod window;

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ganglion_core::bus::dead_letter::Jitter;
use ganglion_core::bus::window::Window;
use ganglion_core::bus::{
    Chunk, QueuedBytes, SubscribeOptions, SubscriptionControl, SubscriptionId,
};
use ganglion_core::{Clock, Event, Pattern, Topic};
use tokio::sync::mpsc;

use crate::Core;
use crate::route::Route;
use crate::stats::ConsumerCounters;

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
    jitter: Jitter,
}

impl Consumer {
    pub(crate) fn new(core: Arc<Core>, spec: ConsumerSpec, shared: Arc<ConsumerShared>) -> Self {
        let clock = core.clock.clone();
        let seed = clock.monotonic().as_nanos() as u64 ^ spec.cursor.rotate_left(17) ^ 0x9E37_79B9;
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
            jitter: Jitter::new(seed),
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
        let windowed = self.window.as_ref().map_or(0, Window::stored);
        self.in_flight.len() + windowed
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
                    if !self.handle_waiting(command, &mut control).await {
                        break;
                    }
                }
                _ = wait_unblocked, if self.blocked => self.blocked = false,
                events = ephemeral.recv(), if wants_ephemeral => {
                    self.take_ephemeral(events, &mut ephemeral);
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

    /// Handles `first`, then whatever else is waiting (up to 1,024), so acks are
    /// applied in bulk; `false` once one says stop.
    async fn handle_waiting(
        &mut self,
        first: Control,
        control: &mut mpsc::UnboundedReceiver<Control>,
    ) -> bool {
        if !self.handle(first).await {
            return false;
        }
        for _ in 0..1024 {
            match control.try_recv() {
                Ok(command) => {
                    if !self.handle(command).await {
                        return false;
                    }
                }
                Err(_) => break,
            }
        }
        true
    }

    /// Takes `events` (`None`: the bus closed the queue) and what else is waiting, up to
    /// READ_BATCH ready: one turn of the run loop per batch. Filtered-out events leave
    /// at once, their room given back.
    fn take_ephemeral(
        &mut self,
        events: Option<Vec<Arc<Event>>>,
        ephemeral: &mut mpsc::UnboundedReceiver<Vec<Arc<Event>>>,
    ) {
        if events.is_none() {
            self.ephemeral_closed = true;
        }
        let mut next = events;
        while let Some(events) = next {
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

    fn now(&self) -> Duration {
        self.clock.monotonic()
    }
}
