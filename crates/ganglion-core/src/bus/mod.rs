//! The event bus contract: what publishers and subscribers can rely on, whichever engine
//! or transport (in-process, gRPC) is behind it.
//!
//! # Delivery semantics
//!
//! - **Durable topics** (the default storage class): an event is in the event log before
//!   `publish` returns (fsynced, under the log's default policy), and is delivered **at
//!   least once** to every matching subscription (to one member of a queue group).
//! - **What an ack means**: the subscriber is done with the event; it will not be
//!   delivered to this subscription again. A nack, or no ack within the ack deadline,
//!   redelivers it after an exponential backoff (a timer, never a sleeping handler), so a
//!   failing event does not hold back the events behind it. After `max_deliveries`
//!   attempts, or on `term`, it goes to the subscription's dead-letter topic with its
//!   origin, attempts and last error. Every delivery carries its attempt number.
//! - **Ephemeral topics**: memory only, **at most once**, to the subscriptions connected
//!   when it is published; no acks, no replay.
//! - **Order**: a subscription receives a topic's events in publication order, except
//!   that a redelivered event arrives after the events that overtook it, the members of
//!   a queue group each see a subset, and a `prioritized` subscription lets
//!   higher-priority events overtake lower ones.
//! - **Backpressure, not dropping**: a subscription never has more than `max_in_flight`
//!   unacked events, nor `max_in_flight_bytes` of them, outstanding; what waits for a
//!   subscriber is bounded in bytes as well as in events (so a subscriber that stops
//!   reading holds a bounded amount of memory whatever the events' size); the rest wait
//!   in the log, not in memory, and publishers are slowed by the log's bounded queue
//!   rather than refused. Two cases drop a subscriber, with a reason it can read
//!   ([`Subscription::closed_reason`]): an ephemeral subscriber that lets its bounded
//!   buffer fill, and a non-durable subscriber that the log's retention overtakes (its
//!   events are gone). Every option has a ceiling ([`ceilings`]).
//! - **What survives a restart**: every acknowledged publication; a durable
//!   subscription's position (what was acked, and how often unacked events were
//!   delivered) — it resumes where acks stopped, and events delivered but not acked are
//!   delivered again; a durable exists from the moment its subscribe returns, so one
//!   that never acked resumes from its start position, not from "new" again; dead
//!   letters and what was redriven; idempotency keys within the dedupe window.
//!   Non-durable subscriptions and ephemeral events do not survive.

use std::fmt;

use crate::BoxFuture;
use crate::event::Event;
use crate::topic::{Pattern, Topic};

pub mod dead_letter;
mod delivery;
mod error;
pub mod layer;
mod options;
mod subscription;
pub mod window;

pub use delivery::{DeliveredEvent, Delivery, KeyCount, SubscriptionControl, SubscriptionId};
pub use error::{BusError, ErrorCode};
pub use options::{
    AckMode, Aggregation, Backoff, BatchOptions, Filter, GroupKey, StartPosition, StorageClass,
    SubscribeOptions, ceilings, is_valid_name,
};
pub use subscription::{Chunk, QueuedBytes, Subscription};

/// What a publisher gets back for each event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishAck {
    /// Sequence number in the event log (0 for ephemeral events).
    pub seq: u64,
    pub id: crate::EventId,
    /// `true` if the idempotency key was seen within the dedupe window: nothing was
    /// appended, and `seq` and `id` are the first publication's.
    pub duplicate: bool,
}

/// An event that exhausted its deliveries, as its dead-letter topic holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The dead-letter event itself (on the dead-letter topic; original payload).
    pub event: Event,
    pub origin_topic: String,
    pub origin_seq: u64,
    pub subscription: String,
    pub attempts: u32,
    pub last_error: String,
}

/// A topic the bus has seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub topic: Topic,
    pub storage: StorageClass,
    pub events: u64,
    pub last_seq: u64,
}

/// Bytes of events in one page of a replay when the caller does not say.
pub const REPLAY_PAGE_BYTES: usize = 1024 * 1024;

/// A replay read a page at a time ([`EventBus::replay_pages`]).
pub trait ReplayPages: Send + fmt::Debug {
    /// The next page (at least one event), or `None` once the replay is done.
    fn next_page(&mut self) -> BoxFuture<'_, Result<Option<Vec<Event>>, BusError>>;
}

/// The bus, as publishers and subscribers use it: the embedded engine and the remote
/// client implement it, so a component runs against either without changing code.
pub trait EventBus: Send + Sync + 'static {
    /// Publishes a batch; every durable event is in the log before this returns.
    fn publish_batch(&self, events: Vec<Event>)
    -> BoxFuture<'_, Result<Vec<PublishAck>, BusError>>;

    /// Publishes one event.
    fn publish(&self, event: Event) -> BoxFuture<'_, Result<PublishAck, BusError>> {
        Box::pin(async move {
            let mut acks = self.publish_batch(vec![event]).await?;
            acks.pop()
                .ok_or_else(|| BusError::Internal("publish returned no ack".into()))
        })
    }

    fn subscribe(
        &self,
        pattern: Pattern,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Subscription, BusError>>;

    fn unsubscribe(&self, id: SubscriptionId) -> BoxFuture<'_, Result<(), BusError>>;

    /// Logged events matching `pattern` from `from`, at most `limit`, read a page at a
    /// time: each page holds at most `page_bytes` of events ([`Event::size`]; always at
    /// least one event), and only the page being read is in memory. Over a connection
    /// the server's message size bounds the pages too.
    fn replay_pages(
        &self,
        pattern: Pattern,
        from: StartPosition,
        limit: usize,
        page_bytes: usize,
    ) -> BoxFuture<'_, Result<Box<dyn ReplayPages>, BusError>>;

    /// Logged events matching `pattern` from `from`, at most `limit`, all in memory at
    /// once: [`replay_pages`](Self::replay_pages) reads big replays in bounded pages.
    fn replay(
        &self,
        pattern: Pattern,
        from: StartPosition,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Event>, BusError>> {
        Box::pin(async move {
            let mut pages = self
                .replay_pages(pattern, from, limit, REPLAY_PAGE_BYTES)
                .await?;
            let mut events = Vec::new();
            while let Some(page) = pages.next_page().await? {
                events.extend(page);
            }
            Ok(events)
        })
    }

    /// Dead letters of a subscription not yet redriven, oldest first. A letter is listed
    /// once its publication has completed, which can trail its delivery to a
    /// subscriber of the dead-letter topic by a moment.
    fn dead_letters(
        &self,
        subscription: String,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<DeadLetter>, BusError>>;

    /// Republishes dead letters (these dead-letter sequences, or all if empty) to their
    /// origin topics; returns how many.
    fn redrive(&self, subscription: String, seqs: Vec<u64>)
    -> BoxFuture<'_, Result<u64, BusError>>;

    fn topics(&self) -> BoxFuture<'_, Result<Vec<TopicInfo>, BusError>>;
}
