//! Ganglion's shared vocabulary, used by every other crate.
//!
//! Everything time-based in Ganglion (log timestamps, retention by age, leases, quotas,
//! backoff, batch windows) reads time through [`Clock`], so tests drive it with a
//! [`ManualClock`] instead of sleeping.

mod clock;
mod topic;
mod trie;

pub use clock::{Clock, ManualClock, SystemClock, unix_micros};
pub use topic::{MAX_TOPIC_BYTES, Pattern, PatternToken, Topic, TopicError};
pub use trie::PatternIndex;
