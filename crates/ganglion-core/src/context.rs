//! The context a handler works in: the correlation id (and trace context) of the event
//! it is handling, passed on to the events it publishes.
//!
//! ```
//! # use ganglion_core::{Event, EventBus, EventContext, Topic, bus::Subscription};
//! # async fn handle(bus: &dyn EventBus, mut sub: Subscription) -> Result<(), ganglion_core::BusError> {
//! while let Some(delivery) = sub.next().await {
//!     let context = delivery.context().expect("a delivery holds an event");
//!     context.scope(async {
//!         // Log lines here carry the event's correlation_id; events published here
//!         // inherit its correlation_id and traceparent.
//!         let derived = Event::new(Topic::new("scores.updated").expect("valid"), "derived");
//!         bus.publish(derived).await
//!     }).await?;
//!     delivery.ack();
//! }
//! # Ok(())
//! # }
//! ```

use std::future::Future;

use tracing::Instrument as _;

use crate::Event;
use crate::event::headers;

tokio::task_local! {
    static CURRENT: EventContext;
}

/// What a handler passes on from the event it handles.
#[derive(Debug, Clone)]
pub struct EventContext {
    pub correlation_id: String,
    /// W3C `traceparent`, when the event carried one (or the deliver span's, when
    /// traced: see [`crate::trace`]).
    pub traceparent: Option<String>,
    /// The deliver span the handler's `handle` span nests in, when traced.
    pub parent_span: Option<tracing::Span>,
}

/// Two contexts are the same piece of work when their ids and trace parents are.
impl PartialEq for EventContext {
    fn eq(&self, other: &Self) -> bool {
        self.correlation_id == other.correlation_id && self.traceparent == other.traceparent
    }
}

impl Eq for EventContext {}

impl EventContext {
    /// The context of `event`: its correlation id (its own id when it has none: the
    /// first event of a piece of work starts the correlation) and trace parent.
    pub fn of(event: &Event) -> EventContext {
        EventContext {
            correlation_id: event.correlation_or_id().into_owned(),
            traceparent: event.header(headers::TRACEPARENT).map(str::to_owned),
            parent_span: None,
        }
    }

    /// The context of the handler running now, if it runs inside [`scope`](Self::scope).
    pub fn current() -> Option<EventContext> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `work` in this context, inside a `handle` span whose `correlation_id` field
    /// puts the id on every log line written within.
    pub async fn scope<F: Future>(self, work: F) -> F::Output {
        let span = match &self.parent_span {
            Some(parent) => {
                tracing::info_span!(parent: parent, "handle", correlation_id = %self.correlation_id)
            }
            None => tracing::info_span!("handle", correlation_id = %self.correlation_id),
        };
        CURRENT.scope(self, work.instrument(span)).await
    }

    /// Fills in `event`'s correlation id and trace parent from this context where it has
    /// none of its own.
    pub fn apply(&self, event: &mut Event) {
        if !event.headers.contains_key(headers::CORRELATION_ID) {
            event.headers.insert(
                headers::CORRELATION_ID.to_owned(),
                self.correlation_id.clone(),
            );
        }
        if let Some(traceparent) = &self.traceparent
            && !event.headers.contains_key(headers::TRACEPARENT)
        {
            event
                .headers
                .insert(headers::TRACEPARENT.to_owned(), traceparent.clone());
        }
    }
}
