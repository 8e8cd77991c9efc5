//! Where the bus meets a tracer: the two moments an event is traced.
//!
//! The bus knows nothing of OpenTelemetry. A process that exports traces installs a
//! [`Tracer`] once (`ganglion-telemetry` does, when `telemetry.otlp_endpoint` is set);
//! the bus then asks it for a span
//!
//! - **publish**: for each event as it is published, before it is logged. The tracer
//!   parents the span on the event's W3C `traceparent` header when it has one (or on the
//!   current span) and writes the span's own context into the header, so the logged event
//!   carries the trace to every subscriber, in this process or another;
//! - **deliver**: when a subscriber takes a delivery ([`Subscription::next`]). The span is
//!   a child of the event's `traceparent`, lasts as long as the subscriber holds the
//!   delivery, and its context is what [`Delivery::context`] hands on to the events a
//!   handler publishes, so one trace runs publish → deliver → publish → deliver across
//!   components.
//!
//! With no tracer installed (the default) each moment costs one atomic load.
//!
//! [`Subscription::next`]: crate::bus::Subscription::next
//! [`Delivery::context`]: crate::bus::Delivery::context

use std::sync::OnceLock;

use crate::Event;

/// Makes the bus's spans. Installed once per process with [`install`].
pub trait Tracer: Send + Sync + 'static {
    /// The span of publishing `event`; writes the span's context into the event's
    /// `traceparent` (and `tracestate`) headers. The bus holds the span until the event
    /// is durable and routed.
    fn publish(&self, event: &mut Event) -> tracing::Span;

    /// The span of `subscription` handling `event` (the first of a batch), and the
    /// `traceparent` of that span for the events published while handling it.
    fn deliver(&self, event: &Event, subscription: &str, attempt: u32) -> Traced;
}

/// A deliver span and its W3C `traceparent`.
#[derive(Debug, Clone)]
pub struct Traced {
    pub span: tracing::Span,
    pub traceparent: Option<String>,
}

static TRACER: OnceLock<Box<dyn Tracer>> = OnceLock::new();

/// Installs the process's tracer. Fails (returning it) when one is installed already.
pub fn install(tracer: Box<dyn Tracer>) -> Result<(), Box<dyn Tracer>> {
    TRACER.set(tracer)
}

/// The installed tracer, if any.
pub fn tracer() -> Option<&'static dyn Tracer> {
    TRACER.get().map(|t| &**t)
}

/// What every engine does to events as they are published: gives those without an id
/// one ([`assign_ids`](crate::assign_ids)), fills in the context of the handler
/// publishing them ([`EventContext::current`](crate::EventContext::current)) and opens
/// their publish spans, which the caller holds until the events are acknowledged.
pub fn publishing(events: &mut [Event]) -> Vec<tracing::Span> {
    crate::assign_ids(events);
    if let Some(context) = crate::EventContext::current() {
        events.iter_mut().for_each(|e| context.apply(e));
    }
    match tracer() {
        Some(tracer) => events.iter_mut().map(|e| tracer.publish(e)).collect(),
        None => Vec::new(),
    }
}
