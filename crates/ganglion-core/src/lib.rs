//! Ganglion's shared vocabulary, used by every other crate.
//!
//! Everything time-based in Ganglion (log timestamps, retention by age, leases, quotas,
//! backoff, batch windows) reads time through [`Clock`], so tests drive it with a
//! [`ManualClock`] instead of sleeping.

mod clock;

pub use clock::{Clock, ManualClock, SystemClock, unix_micros};
