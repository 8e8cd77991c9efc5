//! A subscription's receiving end, bounded in bytes as well as in deliveries.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{DeliveredEvent, Delivery, SubscriptionControl, SubscriptionId};
use crate::event::Event;

/// What an engine hands a subscription in one channel operation, with the bytes of its
/// events (what [`QueuedBytes`] counts).
#[derive(Debug)]
pub enum Chunk {
    /// Deliveries, yielded in order.
    Deliveries {
        deliveries: Vec<Delivery>,
        bytes: usize,
    },
    /// Ephemeral events on their first (and only) delivery, with nothing to settle: the
    /// subscription makes each one's [`Delivery::ephemeral`] as it is taken, so an
    /// engine hands over pointers rather than deliveries.
    Ephemeral {
        events: Vec<Arc<Event>>,
        bytes: usize,
    },
}

impl Chunk {
    /// The bytes of the chunk's events ([`Event::size`]).
    pub fn bytes(&self) -> usize {
        match self {
            Chunk::Deliveries { bytes, .. } | Chunk::Ephemeral { bytes, .. } => *bytes,
        }
    }
}

impl From<Vec<Delivery>> for Chunk {
    fn from(deliveries: Vec<Delivery>) -> Self {
        let bytes = deliveries
            .iter()
            .flat_map(|d| d.events())
            .map(|e| e.event.size())
            .sum();
        Chunk::Deliveries { deliveries, bytes }
    }
}

/// The bytes waiting for one subscriber: an engine counts a chunk in as it hands it
/// over, and the subscription counts it out once it has taken the chunk's last
/// delivery. An engine hands over nothing more while the count is at the limit (a
/// chunk always goes when nothing waits), so what a subscriber that stops reading can
/// hold is bounded in bytes, not only in events.
#[derive(Debug)]
pub struct QueuedBytes {
    bytes: std::sync::atomic::AtomicUsize,
    limit: usize,
    room: tokio::sync::Notify,
}

impl QueuedBytes {
    pub fn new(limit: usize) -> Arc<QueuedBytes> {
        Arc::new(QueuedBytes {
            bytes: std::sync::atomic::AtomicUsize::new(0),
            limit: limit.max(1),
            room: tokio::sync::Notify::new(),
        })
    }

    /// Bytes handed over and not yet taken.
    pub fn queued(&self) -> usize {
        self.bytes.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether another chunk may be handed over now.
    pub fn has_room(&self) -> bool {
        self.queued() < self.limit
    }

    pub fn add(&self, bytes: usize) {
        self.bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::AcqRel);
    }

    pub fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let before = self
            .bytes
            .fetch_sub(bytes, std::sync::atomic::Ordering::AcqRel);
        if before >= self.limit && before - bytes < self.limit {
            self.room.notify_waiters();
        }
    }

    /// Completes once another chunk may be handed over.
    pub async fn room(&self) {
        loop {
            let notified = self.room.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.has_room() {
                return;
            }
            notified.await;
        }
    }
}

/// The rest of the chunk last received, taken in place (no copy into a queue).
#[derive(Debug)]
enum Buffered {
    Deliveries(std::vec::IntoIter<Delivery>),
    Ephemeral(std::vec::IntoIter<Arc<Event>>),
}

impl Buffered {
    fn next(&mut self) -> Option<Delivery> {
        match self {
            Buffered::Deliveries(rest) => rest.next(),
            Buffered::Ephemeral(rest) => rest.next().map(|event| {
                Delivery::ephemeral(DeliveredEvent {
                    event,
                    attempt: 1,
                    coalesced: 1,
                })
            }),
        }
    }
}

impl From<Chunk> for Buffered {
    fn from(chunk: Chunk) -> Self {
        match chunk {
            Chunk::Deliveries { deliveries, .. } => Buffered::Deliveries(deliveries.into_iter()),
            Chunk::Ephemeral { events, .. } => Buffered::Ephemeral(events.into_iter()),
        }
    }
}

/// A live subscription: a stream of deliveries. Dropping it unsubscribes.
///
/// Engines hand deliveries over in [`Chunk`]s (one channel operation for many
/// deliveries); the subscription yields them one at a time.
#[derive(Debug)]
pub struct Subscription {
    id: SubscriptionId,
    name: String,
    deliveries: mpsc::Receiver<Chunk>,
    buffered: Buffered,
    /// Where the bytes of taken chunks are counted out, when the engine counts them.
    queued: Option<Arc<QueuedBytes>>,
    /// Bytes of the chunk being taken (counted out when the next one is received).
    taking: usize,
    control: Arc<dyn SubscriptionControl>,
    _guard: Option<DropGuard>,
}

/// Something an engine wants dropped with the subscription (to unsubscribe, say).
struct DropGuard(#[allow(dead_code)] Box<dyn std::any::Any + Send + Sync>);

impl fmt::Debug for DropGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DropGuard")
    }
}

impl Subscription {
    pub fn new(
        id: SubscriptionId,
        name: String,
        deliveries: mpsc::Receiver<Chunk>,
        control: Arc<dyn SubscriptionControl>,
    ) -> Self {
        Subscription {
            id,
            name,
            deliveries,
            buffered: Buffered::Deliveries(Vec::new().into_iter()),
            queued: None,
            taking: 0,
            control,
            _guard: None,
        }
    }

    /// Counts the bytes of each chunk out of `queued` once its last delivery is taken.
    pub fn with_queued_bytes(mut self, queued: Arc<QueuedBytes>) -> Self {
        self.queued = Some(queued);
        self
    }

    /// Takes `chunk` as the one being read.
    fn take(&mut self, chunk: Chunk) {
        self.taking = chunk.bytes();
        self.buffered = chunk.into();
    }

    /// Counts out the chunk whose last delivery was taken.
    fn taken(&mut self) {
        if let Some(queued) = &self.queued {
            queued.release(std::mem::take(&mut self.taking));
        }
    }

    /// Keeps `guard` until the subscription is dropped; engines use its `Drop` to
    /// unsubscribe.
    pub fn with_guard(mut self, guard: impl Send + Sync + 'static) -> Self {
        self._guard = Some(DropGuard(Box::new(guard)));
        self
    }

    pub fn id(&self) -> SubscriptionId {
        self.id
    }

    /// The durable name, or the generated one (`sub-7`); dead letters go to
    /// `dlq.<name>` by default.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next delivery; `None` once the subscription is closed (by `unsubscribe`, by
    /// the bus shutting down, or by the engine: see [`closed_reason`](Self::closed_reason)).
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            if let Some(delivery) = self.buffered.next() {
                return Some(self.traced(delivery));
            }
            self.taken();
            let chunk = self.deliveries.recv().await?;
            self.take(chunk);
        }
    }

    /// Opens the deliver span when a tracer is installed (see [`crate::trace`]).
    fn traced(&self, mut delivery: Delivery) -> Delivery {
        if let Some(tracer) = crate::trace::tracer()
            && let Some(first) = delivery.events().first()
        {
            let traced = tracer.deliver(&first.event, &self.name, first.attempt);
            delivery.trace = Some(Box::new(traced));
        }
        delivery
    }

    /// A delivery if one is ready now.
    pub fn try_next(&mut self) -> Option<Delivery> {
        loop {
            if let Some(delivery) = self.buffered.next() {
                return Some(self.traced(delivery));
            }
            self.taken();
            let chunk = self.deliveries.try_recv().ok()?;
            self.take(chunk);
        }
    }

    pub fn ack(&self, seqs: &[u64]) {
        self.control.ack(seqs);
    }

    pub fn nack(&self, seqs: &[u64], delay: Option<Duration>, error: &str) {
        self.control.nack(seqs, delay, error);
    }

    pub fn term(&self, seqs: &[u64], reason: &str) {
        self.control.term(seqs, reason);
    }

    /// Why the engine closed this subscription (a slow ephemeral subscriber, say).
    pub fn closed_reason(&self) -> Option<String> {
        self.control.closed_reason()
    }

    /// A handle that settles this subscription's deliveries by sequence from another
    /// task (a transport reading acks while another task sends deliveries).
    pub fn control(&self) -> Arc<dyn SubscriptionControl> {
        self.control.clone()
    }
}
