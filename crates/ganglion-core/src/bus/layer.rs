//! The delivery features as a layer above any engine: [`subscribe_layered`] subscribes
//! through an [`EventBus`] for plain deliveries (no window, no filter, the engine's own
//! dead-lettering out of reach) and adds, on top, what the subscription asked for:
//!
//! - **filters**: an event the filter refuses is acked to the engine and not delivered;
//! - **batch windows** with keep-last and count ([`Window`]), on the given clock;
//! - **retries and dead letters**: a nack is passed down with the subscription's backoff
//!   as its delay, and after `max_deliveries` attempts (or on `term`) the event is
//!   published to the dead-letter topic in the common format ([`dead_letter`]) and acked
//!   to the engine.
//!
//! The embedded engine does all of this natively (its consumer drives the same
//! [`Window`] and [`after_failure`]); the layer is how an engine that does not gets the
//! same behaviour, and the conformance scenarios run through it to prove that.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::dead_letter::{self, AfterFailure, Jitter, after_failure};
use super::window::Window;
use super::{
    BusError, Chunk, DeliveredEvent, Delivery, EventBus, SubscribeOptions, Subscription,
    SubscriptionControl, ceilings,
};
use crate::clock::Clock;
use crate::event::Event;
use crate::topic::{Pattern, Topic};

/// The window of a batched subscription that names none.
const DEFAULT_WINDOW: Duration = Duration::from_millis(100);

/// Deliveries handed over but not taken, at most (then the layer stops reading from the
/// engine, whose own bounds apply).
const HANDED_OVER: usize = 16;

/// Subscribes through `bus` with filters, batch windows and dead-lettering applied above
/// it (see the module docs). `clock` times the windows and must be the engine's.
pub async fn subscribe_layered(
    bus: Arc<dyn EventBus>,
    clock: Arc<dyn Clock>,
    pattern: Pattern,
    options: SubscribeOptions,
) -> Result<Subscription, BusError> {
    options.validate()?;
    let plain = SubscribeOptions {
        batch: None,
        filter: Default::default(),
        // The layer decides when attempts are used up; the engine never gets that far.
        max_deliveries: ceilings::MAX_DELIVERIES,
        ..options.clone()
    };
    let raw = bus.subscribe(pattern, plain).await?;
    let name = raw.name().to_owned();
    let dead_letter_topic = match &options.dead_letter_topic {
        Some(topic) => topic.clone(),
        None => dead_letter::default_topic(&name)
            .ok_or_else(|| BusError::invalid("durable", "cannot name a dead-letter topic"))?,
    };
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (out_tx, out_rx) = mpsc::channel(HANDED_OVER);
    let control = Arc::new(LayerControl {
        tx: control_tx,
        engine: raw.control(),
    });
    let clock_seed = clock.monotonic().as_nanos() as u64 ^ raw.id().0.rotate_left(17);
    let layered = Subscription::new(raw.id(), name.clone(), out_rx, control.clone());
    let layer = Layer {
        bus,
        clock,
        options,
        name,
        dead_letter_topic,
        raw,
        control,
        out: out_tx,
        window: None,
        out_with_subscriber: HashMap::new(),
        jitter: Jitter::new(clock_seed),
    };
    tokio::spawn(layer.run(control_rx));
    Ok(layered)
}

/// What the subscriber's acks, nacks and terms become: messages to the layer's task.
#[derive(Debug)]
enum Verdict {
    Ack(Vec<u64>),
    Nack(Vec<u64>, Option<Duration>, String),
    Term(Vec<u64>, String),
}

#[derive(Debug)]
struct LayerControl {
    tx: mpsc::UnboundedSender<Verdict>,
    /// The engine's subscription, for why it was closed.
    engine: Arc<dyn SubscriptionControl>,
}

impl SubscriptionControl for LayerControl {
    fn ack(&self, seqs: &[u64]) {
        let _ = self.tx.send(Verdict::Ack(seqs.to_vec()));
    }

    fn nack(&self, seqs: &[u64], delay: Option<Duration>, error: &str) {
        let _ = self
            .tx
            .send(Verdict::Nack(seqs.to_vec(), delay, error.to_owned()));
    }

    fn term(&self, seqs: &[u64], reason: &str) {
        let _ = self
            .tx
            .send(Verdict::Term(seqs.to_vec(), reason.to_owned()));
    }

    fn closed_reason(&self) -> Option<String> {
        self.engine.closed_reason()
    }
}

struct Layer {
    bus: Arc<dyn EventBus>,
    clock: Arc<dyn Clock>,
    options: SubscribeOptions,
    name: String,
    dead_letter_topic: Topic,
    raw: Subscription,
    control: Arc<LayerControl>,
    out: mpsc::Sender<Chunk>,
    window: Option<Window>,
    /// Stored events out with the subscriber, by sequence: the event and its attempt.
    out_with_subscriber: HashMap<u64, (Arc<Event>, u32)>,
    jitter: Jitter,
}

impl Layer {
    async fn run(mut self, mut verdicts: mpsc::UnboundedReceiver<Verdict>) {
        loop {
            let timer = self
                .window
                .as_ref()
                .map(|w| self.clock.sleep_until(w.closes_at));
            let timer = async move {
                match timer {
                    Some(timer) => timer.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                verdict = verdicts.recv() => match verdict {
                    Some(verdict) => self.settle(verdict).await,
                    None => return,
                },
                // The subscription was dropped: so is the engine's, by returning.
                () = self.out.closed() => return,
                () = timer => {
                    if !self.flush().await {
                        return;
                    }
                }
                delivery = self.raw.next() => match delivery {
                    Some(delivery) => {
                        if !self.take(delivery).await {
                            return;
                        }
                    }
                    None => return,
                },
            }
        }
    }

    /// One delivery from the engine: refused by the filter, out of attempts, into the
    /// window, or straight to the subscriber. `false` once the subscriber is gone.
    async fn take(&mut self, delivery: Delivery) -> bool {
        // The engine delivers one event at a time: the layer asked it for no batches.
        let (events, _, seqs) = delivery.into_parts();
        let seq = seqs.first().copied().unwrap_or(0);
        for DeliveredEvent { event, attempt, .. } in events {
            if !self.options.filter.accepts(&event) {
                self.raw.ack(&[seq]);
                continue;
            }
            if seq != 0 && attempt > self.options.max_deliveries {
                // Its ack deadline passed on its last attempt.
                let error = "ack deadline exceeded on the last attempt".to_owned();
                self.dead_letter(&event, attempt - 1, &error).await;
                continue;
            }
            let Some(batch) = self.options.batch.clone() else {
                return self.hand_over(event, attempt, seq).await;
            };
            let window = match &mut self.window {
                Some(window) => window,
                None => {
                    // A window of no length of its own gets 100 ms: the layer does not know
                    // an engine's configured default.
                    let length = batch.window.unwrap_or(DEFAULT_WINDOW);
                    self.window
                        .insert(Window::open(self.clock.monotonic() + length))
                }
            };
            window.push(event, attempt);
            if window.is_full(&batch) && !self.flush().await {
                return false;
            }
        }
        true
    }

    /// Hands one event to the subscriber.
    async fn hand_over(&mut self, event: Arc<Event>, attempt: u32, seq: u64) -> bool {
        let control: Arc<dyn SubscriptionControl> = self.control.clone();
        if seq != 0 {
            self.out_with_subscriber
                .insert(seq, (event.clone(), attempt));
        }
        let delivered = DeliveredEvent {
            event,
            attempt,
            coalesced: 1,
        };
        let delivery = Delivery::single(delivered, (seq != 0).then_some(seq), control);
        self.out.send(Chunk::from(vec![delivery])).await.is_ok()
    }

    /// Delivers the open window as one batch.
    async fn flush(&mut self) -> bool {
        let (Some(window), Some(batch)) = (self.window.take(), self.options.batch.clone()) else {
            return true;
        };
        let made = window.batch(&batch);
        for (event, attempt) in window.into_items() {
            if event.seq != 0 {
                self.out_with_subscriber.insert(event.seq, (event, attempt));
            }
        }
        let control: Arc<dyn SubscriptionControl> = self.control.clone();
        let delivery = Delivery::batch(made.events, made.counts, made.seqs, control);
        self.out.send(Chunk::from(vec![delivery])).await.is_ok()
    }

    async fn settle(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::Ack(seqs) => {
                let done: Vec<u64> = seqs
                    .into_iter()
                    .filter(|s| self.out_with_subscriber.remove(s).is_some())
                    .collect();
                self.raw.ack(&done);
            }
            Verdict::Nack(seqs, delay, error) => {
                for seq in seqs {
                    let Some((event, attempt)) = self.out_with_subscriber.remove(&seq) else {
                        continue;
                    };
                    match after_failure(&self.options, attempt, delay, &mut self.jitter) {
                        AfterFailure::Retry(after) => self.raw.nack(&[seq], Some(after), &error),
                        AfterFailure::DeadLetter => {
                            self.dead_letter(&event, attempt, &error).await;
                        }
                    }
                }
            }
            Verdict::Term(seqs, reason) => {
                for seq in seqs {
                    if let Some((event, attempt)) = self.out_with_subscriber.remove(&seq) {
                        self.dead_letter(&event, attempt, &reason).await;
                    }
                }
            }
        }
    }

    /// Publishes `event` to the dead-letter topic and acks it to the engine; if the
    /// publication fails, the engine redelivers it (nacked), to be dead-lettered then.
    async fn dead_letter(&mut self, event: &Event, attempts: u32, error: &str) {
        let letter = dead_letter::dead_letter_event(
            event,
            &self.dead_letter_topic,
            &self.name,
            attempts,
            error,
        );
        match self.bus.publish(letter).await {
            Ok(_) => self.raw.ack(&[event.seq]),
            Err(e) => {
                tracing::warn!(subscription = %self.name, seq = event.seq, error = %e, "dead-letter publication failed; redelivering");
                self.raw
                    .nack(&[event.seq], Some(self.options.backoff.initial), error);
            }
        }
    }
}
