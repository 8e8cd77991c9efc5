//! Testing support for components that use the bus: an in-memory bus on a virtual
//! clock that records what was published, so a component's tests can assert "this
//! handler published X" without a server or a disk.
//!
//! ```
//! use ganglion_bus::testing::TestBus;
//! use ganglion_core::bus::SubscribeOptions;
//! use ganglion_core::{Event, EventBus, Pattern, Topic};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let bus = TestBus::new();
//! // The component under test: answers every hand with a strategy hint.
//! let mut hands = bus.subscribe(Pattern::new("game.hand.*").unwrap(), SubscribeOptions::default()).await.unwrap();
//! bus.publish(Event::new(Topic::new("game.hand.played").unwrap(), "pair of kings")).await.unwrap();
//! let hand = hands.next().await.unwrap();
//! bus.publish(Event::new(Topic::new("strategy.hint").unwrap(), "raise")).await.unwrap();
//! hand.ack();
//!
//! let hints = bus.published_on("strategy.>");
//! assert_eq!(hints.len(), 1);
//! assert_eq!(hints[0].payload, "raise");
//! # });
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ganglion_core::bus::{
    DeadLetter, PublishAck, ReplayPages, StartPosition, SubscribeOptions, Subscription,
    SubscriptionId, TopicInfo,
};
use ganglion_core::engine::{Engine, EngineHealth, RetentionRule, StorageStats, SubscriptionStats};
use ganglion_core::stats::HistogramSnapshot;
use ganglion_core::{BoxFuture, BusError, Event, EventBus, ManualClock, Pattern, Topic};

use crate::{Bus, BusOptions};

/// An in-memory [`Bus`] on a [`ManualClock`] that remembers every event published
/// through it. Clones share the bus, the clock and the record.
#[derive(Debug, Clone)]
pub struct TestBus {
    bus: Bus,
    clock: ManualClock,
    published: Arc<Mutex<Vec<Event>>>,
}

impl Default for TestBus {
    fn default() -> Self {
        Self::new()
    }
}

impl TestBus {
    /// A fresh bus whose clock stands at 2026-01-01T00:00:00Z.
    pub fn new() -> Self {
        Self::with_options(|options| options)
    }

    /// A fresh bus with options adjusted by `f` (storage classes, limits, …); it stays
    /// in memory and on the virtual clock.
    pub fn with_options(f: impl FnOnce(BusOptions) -> BusOptions) -> Self {
        let clock = ManualClock::at_fixed_instant();
        let options = BusOptions {
            clock: Arc::new(clock.clone()),
            in_memory: true,
            ..f(BusOptions::new("/ganglion"))
        };
        let bus = Bus::open(options).expect("an in-memory bus opens");
        TestBus {
            bus,
            clock,
            published: Arc::default(),
        }
    }

    /// The virtual clock: `advance` it to fire deadlines, backoffs and batch windows.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// The bus itself.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Every event published through this handle (and its clones), in order, with the
    /// sequence numbers the bus gave them.
    pub fn published(&self) -> Vec<Event> {
        self.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The published events whose topic matches `pattern`.
    ///
    /// # Panics
    /// If `pattern` is not a valid pattern.
    pub fn published_on(&self, pattern: &str) -> Vec<Event> {
        let pattern = Pattern::new(pattern).expect("a valid pattern");
        self.published()
            .into_iter()
            .filter(|e| pattern.matches(&e.topic))
            .collect()
    }

    /// Forgets what was published so far.
    pub fn clear(&self) {
        self.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl EventBus for TestBus {
    fn publish_batch(
        &self,
        mut events: Vec<Event>,
    ) -> BoxFuture<'_, Result<Vec<PublishAck>, BusError>> {
        // What the bus adds from a handler's context is part of what was published.
        if let Some(context) = ganglion_core::EventContext::current() {
            events.iter_mut().for_each(|e| context.apply(e));
        }
        Box::pin(async move {
            let acks = self.bus.publish_batch(events.clone()).await?;
            let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
            for (mut event, ack) in events.into_iter().zip(&acks) {
                if !ack.duplicate {
                    event.seq = ack.seq;
                    event.id.clone_from(&ack.id);
                    published.push(event);
                }
            }
            Ok(acks)
        })
    }

    fn subscribe(
        &self,
        pattern: Pattern,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Subscription, BusError>> {
        self.bus.subscribe(pattern, options)
    }

    fn unsubscribe(&self, id: SubscriptionId) -> BoxFuture<'_, Result<(), BusError>> {
        self.bus.unsubscribe(id)
    }

    fn replay_pages(
        &self,
        pattern: Pattern,
        from: StartPosition,
        limit: usize,
        page_bytes: usize,
    ) -> BoxFuture<'_, Result<Box<dyn ReplayPages>, BusError>> {
        self.bus.replay_pages(pattern, from, limit, page_bytes)
    }

    fn dead_letters(
        &self,
        subscription: String,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<DeadLetter>, BusError>> {
        self.bus.dead_letters(subscription, limit)
    }

    fn redrive(
        &self,
        subscription: String,
        seqs: Vec<u64>,
    ) -> BoxFuture<'_, Result<u64, BusError>> {
        self.bus.redrive(subscription, seqs)
    }

    fn topics(&self) -> BoxFuture<'_, Result<Vec<TopicInfo>, BusError>> {
        self.bus.topics()
    }
}

/// A server can run over a `TestBus` as over the embedded engine (its storage in
/// memory, its time the virtual clock), so server tests drive deadlines and windows by
/// advancing the clock.
impl Engine for TestBus {
    fn kind(&self) -> &'static str {
        "test"
    }

    fn health(&self) -> EngineHealth {
        Engine::health(&self.bus)
    }

    fn storage(&self) -> StorageStats {
        self.bus.storage()
    }

    fn subscriptions(&self) -> Vec<SubscriptionStats> {
        self.bus.subscriptions()
    }

    fn delivery_latency(&self) -> HistogramSnapshot {
        self.bus.delivery_latency()
    }

    fn dead_letter_counts(&self) -> Vec<(String, u64)> {
        self.bus.dead_letter_counts()
    }

    fn purge(&self, pattern: Pattern) -> BoxFuture<'_, Result<(u64, u64), BusError>> {
        Engine::purge(&self.bus, pattern)
    }

    fn delete_topics(
        &self,
        pattern: Pattern,
    ) -> BoxFuture<'_, Result<(Vec<Topic>, u64), BusError>> {
        Engine::delete_topics(&self.bus, pattern)
    }

    fn set_retention(&self, rules: Vec<RetentionRule>) -> BoxFuture<'_, Result<(), BusError>> {
        Engine::set_retention(&self.bus, rules)
    }

    fn set_batch_window(&self, window: Duration) -> Result<(), BusError> {
        self.bus.set_batch_window(window)
    }

    fn upkeep(&self, every: Duration) -> BoxFuture<'static, ()> {
        self.bus.upkeep(every)
    }

    fn shutdown(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Engine::shutdown(&self.bus)
    }
}
