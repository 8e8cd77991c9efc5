//! Ganglion's shared vocabulary, used by every other crate.
//!
//! Everything time-based in Ganglion (log timestamps, retention by age, leases, quotas,
//! backoff, batch windows) reads time through [`Clock`], so tests drive it with a
//! [`ManualClock`] instead of sleeping.

pub mod bus;
mod clock;
pub mod context;
pub mod engine;
mod event;
pub mod fs;
pub mod stats;
mod topic;
pub mod trace;
mod trie;

pub use bus::{BusError, ErrorCode, EventBus, is_valid_name};

/// A boxed, sendable future, as trait methods that must stay object-safe return.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
#[cfg(any(test, feature = "testing"))]
pub use clock::ManualClock;
pub use clock::{Clock, SystemClock, parse_duration, parse_since, unix_micros};
pub use context::EventContext;
pub use engine::Engine;
pub use event::{Event, EventId, assign_ids, headers};
pub use topic::{MAX_TOPIC_BYTES, Pattern, PatternToken, Topic, TopicError};
pub use trie::PatternIndex;

/// A client's string as an error message quotes it: whole when short, otherwise its
/// first 64 bytes and its length, so an error never echoes a megabyte back.
pub fn excerpt(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return format!("{s:?}");
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &s[..end], s.len())
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_strings_are_cut_in_errors() {
        assert_eq!(super::excerpt("gpu"), "\"gpu\"");
        let long = "é".repeat(1000);
        let cut = super::excerpt(&long);
        assert!(cut.len() < 100 && cut.ends_with("(2000 bytes)"), "{cut}");
    }
}
