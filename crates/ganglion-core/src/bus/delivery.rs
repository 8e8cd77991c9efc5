//! What a subscriber receives (one event, or one batch window) and how it settles it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::event::Event;

/// Identifies a subscription within one bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(pub u64);

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sub-{}", self.0)
    }
}

/// The engine side of a subscription: what acks, nacks and terms reach.
pub trait SubscriptionControl: Send + Sync + fmt::Debug {
    fn ack(&self, seqs: &[u64]);
    /// Redeliver after `delay`, or after the backoff when `None`.
    fn nack(&self, seqs: &[u64], delay: Option<Duration>, error: &str);
    /// Send straight to the dead-letter topic.
    fn term(&self, seqs: &[u64], reason: &str);
    /// Why the engine closed the subscription, if it did.
    fn closed_reason(&self) -> Option<String>;
}

/// One event as delivered.
#[derive(Debug, Clone)]
pub struct DeliveredEvent {
    pub event: Arc<Event>,
    /// 1 on first delivery, then 2, 3, …
    pub attempt: u32,
    /// How many events this one stands for (more than 1 under `KeepLast`).
    pub coalesced: u64,
}

/// How many events one key had in a `Count` window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCount {
    pub key: String,
    pub count: u64,
}

/// What a subscriber receives: one event, or one batch window. Acking it acks every
/// event it covers.
#[derive(Debug)]
pub struct Delivery {
    body: Body,
    /// `None` for an ephemeral event: there is nothing to settle.
    control: Option<Arc<dyn SubscriptionControl>>,
    /// The deliver span, when a tracer is installed; boxed to keep untraced deliveries
    /// small.
    pub(super) trace: Option<Box<crate::trace::Traced>>,
}

/// A single event needs no allocation beyond the event itself; a batch window's parts
/// are boxed, so single deliveries (moved by the million) stay small.
#[derive(Debug)]
enum Body {
    One {
        event: DeliveredEvent,
        /// `None` for an ephemeral event.
        seq: Option<u64>,
    },
    Batch(Box<BatchBody>),
}

#[derive(Debug)]
struct BatchBody {
    events: Vec<DeliveredEvent>,
    counts: Vec<KeyCount>,
    seqs: Vec<u64>,
}

impl Delivery {
    /// One event (with its log sequence, or `None` for an ephemeral event).
    pub fn single(
        event: DeliveredEvent,
        seq: Option<u64>,
        control: Arc<dyn SubscriptionControl>,
    ) -> Self {
        Delivery {
            body: Body::One { event, seq },
            control: Some(control),
            trace: None,
        }
    }

    /// One ephemeral event (at most once: ack, nack and term do nothing), without a
    /// handle on the subscription, so a delivery costs no shared reference count.
    pub fn ephemeral(event: DeliveredEvent) -> Self {
        Delivery {
            body: Body::One { event, seq: None },
            control: None,
            trace: None,
        }
    }

    /// A batch window: its events, per-key counts, and every log sequence it covers.
    pub fn batch(
        events: Vec<DeliveredEvent>,
        counts: Vec<KeyCount>,
        seqs: Vec<u64>,
        control: Arc<dyn SubscriptionControl>,
    ) -> Self {
        Delivery {
            body: Body::Batch(Box::new(BatchBody {
                events,
                counts,
                seqs,
            })),
            control: Some(control),
            trace: None,
        }
    }

    /// The events delivered (one, unless this is a batch window).
    pub fn events(&self) -> &[DeliveredEvent] {
        match &self.body {
            Body::One { event, .. } => std::slice::from_ref(event),
            Body::Batch(batch) => &batch.events,
        }
    }

    /// Per-key counts, for `Aggregation::Count`.
    pub fn counts(&self) -> &[KeyCount] {
        match &self.body {
            Body::One { .. } => &[],
            Body::Batch(batch) => &batch.counts,
        }
    }

    /// Every log sequence this delivery covers (coalesced and counted ones included);
    /// empty for ephemeral events.
    pub fn seqs(&self) -> &[u64] {
        match &self.body {
            Body::One { seq: Some(seq), .. } => std::slice::from_ref(seq),
            Body::One { seq: None, .. } => &[],
            Body::Batch(batch) => &batch.seqs,
        }
    }

    /// The parts of a delivery (its events, per-key counts and log sequences), for an
    /// edge that converts it to a wire frame.
    pub fn into_parts(self) -> (Vec<DeliveredEvent>, Vec<KeyCount>, Vec<u64>) {
        match self.body {
            Body::One { event, seq } => (vec![event], Vec::new(), seq.into_iter().collect()),
            Body::Batch(batch) => (batch.events, batch.counts, batch.seqs),
        }
    }

    /// The first (for an unbatched subscription, the only) event.
    pub fn event(&self) -> Option<&Event> {
        self.events().first().map(|e| &*e.event)
    }

    /// The context to handle this delivery in (its first event's correlation id and
    /// trace parent): run the handler in [`crate::EventContext::scope`] and what it logs
    /// and publishes carries them. When traced, the trace parent is the deliver span.
    pub fn context(&self) -> Option<crate::EventContext> {
        let mut context = crate::EventContext::of(self.event()?);
        if let Some(trace) = &self.trace {
            context.traceparent = trace.traceparent.clone().or(context.traceparent);
            context.parent_span = Some(trace.span.clone());
        }
        Some(context)
    }

    /// The deliver span's W3C `traceparent`, when traced (see [`crate::trace`]): what a
    /// transport puts in the event's headers so the remote handler's spans nest in it.
    pub fn deliver_traceparent(&self) -> Option<&str> {
        self.trace.as_ref()?.traceparent.as_deref()
    }

    /// The attempt number of the first event.
    pub fn attempt(&self) -> u32 {
        self.events().first().map_or(1, |e| e.attempt)
    }

    pub fn ack(&self) {
        if let Some(control) = &self.control {
            control.ack(self.seqs());
        }
    }

    pub fn nack(&self, delay: Option<Duration>, error: &str) {
        if let Some(control) = &self.control {
            control.nack(self.seqs(), delay, error);
        }
    }

    pub fn term(&self, reason: &str) {
        if let Some(control) = &self.control {
            control.term(self.seqs(), reason);
        }
    }
}
