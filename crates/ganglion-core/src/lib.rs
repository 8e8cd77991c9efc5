//! Ganglion's shared vocabulary, used by every other crate.
//!
//! Everything time-based in Ganglion (log timestamps, retention by age, leases, quotas,
//! backoff, batch windows) reads time through [`Clock`], so tests drive it with a
//! [`ManualClock`] instead of sleeping.

pub mod bus;
mod clock;
pub mod context;
mod event;
pub mod stats;
mod topic;
pub mod trace;
mod trie;

pub use bus::{BusError, ErrorCode, EventBus, is_valid_name};

/// A boxed, sendable future, as trait methods that must stay object-safe return.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
pub use clock::{Clock, ManualClock, SystemClock, parse_duration, parse_since, unix_micros};
pub use context::EventContext;
pub use event::{Event, EventId, assign_ids, headers};
pub use topic::{MAX_TOPIC_BYTES, Pattern, PatternToken, Topic, TopicError};
pub use trie::PatternIndex;
