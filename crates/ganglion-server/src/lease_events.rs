//! Lease events on the bus: every grant, warning, revocation and release is published as
//! `coordinator.lease.<stage>`, in order, off the coordinator's lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ganglion_coordinator::ResourceCoordinator;
use ganglion_coordinator::lease::LeaseEvent;
use ganglion_core::Engine;
use ganglion_core::{Event, Topic};
use ganglion_proto::convert::duration_ms;

/// Publishes every lease event on the bus as `coordinator.lease.<kind>` (JSON), in the
/// order the coordinator made them.
///
/// The coordinator hands each event over under its lock. The first of a run starts a
/// drain task on the runtime of the thread that made it (a gRPC thread, for a grant or a
/// release) rather than waking a publisher elsewhere: that wake-up cost a grant or a
/// release more than the rest of its work. One drain runs at a time, which keeps the
/// order. Events made as the server stops may go unpublished, as with any notification
/// (`coordinator.>` is ephemeral by default).
#[derive(Debug)]
pub(crate) struct LeaseEventPublisher {
    bus: Arc<dyn Engine>,
    pending: std::sync::Mutex<Vec<LeaseEvent>>,
    /// A drain is running, or about to: it will see what is pending.
    draining: AtomicBool,
    /// Where a drain runs when the event was made off any runtime.
    runtime: tokio::runtime::Handle,
}

impl LeaseEventPublisher {
    /// Hands `coordinator`'s lease events to a new publisher on `bus` (in place of any
    /// before it); `stop` hands them to no one.
    pub(crate) fn start(bus: Arc<dyn Engine>, coordinator: &dyn ResourceCoordinator) {
        let publisher = Arc::new(LeaseEventPublisher {
            bus,
            pending: std::sync::Mutex::new(Vec::new()),
            draining: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
        });
        coordinator.on_lease_event(Some(Box::new(move |event| publisher.push(event))));
    }

    pub(crate) fn stop(coordinator: &dyn ResourceCoordinator) {
        coordinator.on_lease_event(None);
    }

    fn push(self: &Arc<Self>, event: LeaseEvent) {
        self.pending_events().push(event);
        if !self.draining.swap(true, Ordering::AcqRel) {
            self.spawn_drain();
        }
    }

    fn pending_events(&self) -> std::sync::MutexGuard<'_, Vec<LeaseEvent>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn_drain(self: &Arc<Self>) {
        let runtime =
            tokio::runtime::Handle::try_current().unwrap_or_else(|_| self.runtime.clone());
        runtime.spawn(
            Drain {
                publisher: self.clone(),
                finished: false,
            }
            .run(),
        );
    }
}

/// The one drain running; if it is dropped unfinished (its runtime stopped), the next
/// event starts another.
struct Drain {
    publisher: Arc<LeaseEventPublisher>,
    finished: bool,
}

impl Drain {
    async fn run(mut self) {
        let publisher = self.publisher.clone();
        // Let the call that made the event send its reply first.
        tokio::task::yield_now().await;
        loop {
            let events = std::mem::take(&mut *publisher.pending_events());
            if events.is_empty() {
                self.finished = true;
                publisher.draining.store(false, Ordering::Release);
                // An event pushed after the take but before the store saw a drain
                // running and left it to us; one pushed after the store started its own.
                if publisher.pending_events().is_empty()
                    || publisher.draining.swap(true, Ordering::AcqRel)
                {
                    return;
                }
                self.finished = false;
                continue;
            }
            let events = events.iter().filter_map(lease_event_to_bus).collect();
            if let Err(error) = publisher.bus.publish_batch(events).await {
                tracing::warn!(%error, "cannot publish lease events");
            }
        }
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        if !self.finished {
            self.publisher.draining.store(false, Ordering::Release);
        }
    }
}

/// `coordinator.lease.<kind>`, with the lease as JSON.
fn lease_event_to_bus(event: &LeaseEvent) -> Option<Event> {
    let (kind, body) = match event {
        LeaseEvent::Granted(l) => (
            "granted",
            serde_json::json!({"lease": l.id.0, "pool": l.pool, "holder": l.holder, "units": l.units, "fencing_token": l.fencing_token.0}),
        ),
        LeaseEvent::Warning {
            lease,
            pool,
            holder,
            revoked_in,
        } => (
            "warning",
            serde_json::json!({"lease": lease.0, "pool": pool, "holder": holder, "revoked_in_ms": duration_ms(*revoked_in)}),
        ),
        LeaseEvent::Revoked {
            lease,
            pool,
            holder,
            release_in,
        } => (
            "revoked",
            serde_json::json!({"lease": lease.0, "pool": pool, "holder": holder, "release_in_ms": duration_ms(*release_in)}),
        ),
        LeaseEvent::Released {
            lease,
            pool,
            holder,
            reason,
        } => (
            "released",
            serde_json::json!({"lease": lease.0, "pool": pool, "holder": holder, "reason": reason}),
        ),
    };
    let topic = Topic::new(&format!("coordinator.lease.{kind}")).ok()?;
    Some(
        Event::new(topic, body.to_string())
            .with_type(format!("Lease{}", kind[..1].to_uppercase() + &kind[1..]))
            .with_source("ganglion-coordinator")
            .with_content_type("application/json"),
    )
}
