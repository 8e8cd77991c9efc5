use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
///
/// Production code uses [`SystemClock`]; tests use [`ManualClock`] and move time by hand,
/// so behaviour over an hour is tested in microseconds of real time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;

    /// The current time in microseconds since the Unix epoch (0 before the epoch).
    fn now_micros(&self) -> u64 {
        unix_micros(self.now())
    }
}

/// Microseconds since the Unix epoch, saturating at 0 for times before it.
pub fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Clone)]
pub struct ManualClock {
    micros: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: SystemTime) -> Self {
        Self {
            micros: Arc::new(AtomicU64::new(unix_micros(start))),
        }
    }

    /// A clock standing at a fixed, arbitrary instant (2026-01-01T00:00:00Z).
    pub fn at_fixed_instant() -> Self {
        Self::new(UNIX_EPOCH + Duration::from_secs(1_767_225_600))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_micros()).unwrap_or(u64::MAX);
        self.micros.fetch_add(by, Ordering::SeqCst);
    }

    /// Sets the clock to `to`, which may be earlier than now (a wall clock can step back).
    pub fn set(&self, to: SystemTime) {
        self.micros.store(unix_micros(to), Ordering::SeqCst);
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("unix_micros", &self.micros.load(Ordering::SeqCst))
            .finish()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.micros.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_clones_share_time() {
        let clock = ManualClock::at_fixed_instant();
        let twin = clock.clone();
        let start = clock.now();
        assert_eq!(clock.now(), start);
        clock.advance(Duration::from_secs(3600));
        assert_eq!(twin.now(), start + Duration::from_secs(3600));
        twin.set(start);
        assert_eq!(clock.now_micros(), unix_micros(start));
    }

    #[test]
    fn unix_micros_saturates_before_the_epoch() {
        assert_eq!(unix_micros(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(unix_micros(UNIX_EPOCH + Duration::from_micros(7)), 7);
    }
}
