use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::BoxFuture;

/// A source of time: the wall clock for timestamps, a monotonic clock for deadlines, and
/// sleeping until a monotonic deadline.
///
/// Production code uses [`SystemClock`]; tests use [`ManualClock`] and move time by hand,
/// so behaviour over an hour is tested in microseconds of real time, never by sleeping.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;

    /// The current time in microseconds since the Unix epoch (0 before the epoch).
    fn now_micros(&self) -> u64 {
        unix_micros(self.now())
    }

    /// Time on a clock that never goes back, from an arbitrary origin. Deadlines are
    /// points on this clock.
    fn monotonic(&self) -> Duration;

    /// Completes once [`monotonic`](Clock::monotonic) reaches `deadline`. Needs a tokio
    /// runtime with timers for [`SystemClock`].
    fn sleep_until(&self, deadline: Duration) -> BoxFuture<'static, ()>;
}

/// Microseconds since the Unix epoch, saturating at 0 for times before it.
pub fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The operating system's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn monotonic(&self) -> Duration {
        process_start().elapsed()
    }

    fn sleep_until(&self, deadline: Duration) -> BoxFuture<'static, ()> {
        let at = tokio::time::Instant::from_std(process_start() + deadline);
        Box::pin(tokio::time::sleep_until(at))
    }
}

/// The clock tests move by hand (with the `testing` feature; production builds do not
/// carry it).
#[cfg(any(test, feature = "testing"))]
mod manual {
    use std::collections::HashMap;
    use std::fmt;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::{Clock, unix_micros};
    use crate::BoxFuture;

    #[derive(Default)]
    struct ManualState {
        wall_micros: AtomicU64,
        mono_micros: AtomicU64,
        sleepers: Mutex<HashMap<u64, (u64, Waker)>>,
        next_sleeper: AtomicU64,
    }

    /// A clock that only moves when told to. Clones share the same time.
    #[derive(Clone)]
    pub struct ManualClock {
        state: Arc<ManualState>,
    }

    impl ManualClock {
        /// A clock whose wall time stands at `start`.
        pub fn new(start: SystemTime) -> Self {
            let state = ManualState::default();
            state
                .wall_micros
                .store(unix_micros(start), Ordering::SeqCst);
            Self {
                state: Arc::new(state),
            }
        }

        /// A clock standing at a fixed, arbitrary instant (2026-01-01T00:00:00Z).
        pub fn at_fixed_instant() -> Self {
            Self::new(UNIX_EPOCH + Duration::from_secs(1_767_225_600))
        }

        /// Moves wall and monotonic time forward by `by`, waking the sleepers now due.
        pub fn advance(&self, by: Duration) {
            let by = u64::try_from(by.as_micros()).unwrap_or(u64::MAX);
            self.state.wall_micros.fetch_add(by, Ordering::SeqCst);
            let now = self.state.mono_micros.fetch_add(by, Ordering::SeqCst) + by;
            let due: Vec<Waker> = {
                let mut sleepers = self
                    .state
                    .sleepers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let ids: Vec<u64> = sleepers
                    .iter()
                    .filter(|(_, (deadline, _))| *deadline <= now)
                    .map(|(id, _)| *id)
                    .collect();
                ids.iter()
                    .filter_map(|id| sleepers.remove(id).map(|(_, w)| w))
                    .collect()
            };
            due.into_iter().for_each(Waker::wake);
        }

        /// Sets the wall time to `to`, which may be earlier than now (a wall clock can step
        /// back). Monotonic time does not move.
        pub fn set(&self, to: SystemTime) {
            self.state
                .wall_micros
                .store(unix_micros(to), Ordering::SeqCst);
        }

        /// The earliest deadline (monotonic) anyone sleeps until, if anyone sleeps. A
        /// task woken by [`advance`](Self::advance) is off the list until it sleeps again,
        /// so "a deadline ahead of now" after an advance means every task it woke has
        /// done its work and is waiting again (or was never due).
        pub fn next_deadline(&self) -> Option<Duration> {
            let sleepers = self
                .state
                .sleepers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let earliest = sleepers.values().map(|(deadline, _)| *deadline).min()?;
            Some(Duration::from_micros(earliest))
        }

        /// Sleepers waiting for a deadline not reached yet.
        pub fn sleepers(&self) -> usize {
            self.state
                .sleepers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len()
        }
    }

    impl fmt::Debug for ManualClock {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("ManualClock")
                .field(
                    "unix_micros",
                    &self.state.wall_micros.load(Ordering::SeqCst),
                )
                .field(
                    "monotonic_micros",
                    &self.state.mono_micros.load(Ordering::SeqCst),
                )
                .finish()
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> SystemTime {
            UNIX_EPOCH + Duration::from_micros(self.state.wall_micros.load(Ordering::SeqCst))
        }

        fn monotonic(&self) -> Duration {
            Duration::from_micros(self.state.mono_micros.load(Ordering::SeqCst))
        }

        fn sleep_until(&self, deadline: Duration) -> BoxFuture<'static, ()> {
            Box::pin(ManualSleep {
                state: self.state.clone(),
                deadline: u64::try_from(deadline.as_micros()).unwrap_or(u64::MAX),
                id: self.state.next_sleeper.fetch_add(1, Ordering::Relaxed),
            })
        }
    }

    struct ManualSleep {
        state: Arc<ManualState>,
        deadline: u64,
        id: u64,
    }

    impl Future for ManualSleep {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            // Register before the final check, so an `advance` in between cannot be missed.
            let mut sleepers = self
                .state
                .sleepers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if self.state.mono_micros.load(Ordering::SeqCst) >= self.deadline {
                sleepers.remove(&self.id);
                return Poll::Ready(());
            }
            sleepers.insert(self.id, (self.deadline, cx.waker().clone()));
            Poll::Pending
        }
    }

    impl Drop for ManualSleep {
        fn drop(&mut self) {
            self.state
                .sleepers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.id);
        }
    }
}

#[cfg(any(test, feature = "testing"))]
pub use manual::ManualClock;

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
        assert_eq!(twin.monotonic(), Duration::from_secs(3600));
        twin.set(start);
        assert_eq!(clock.now_micros(), unix_micros(start));
        assert_eq!(
            clock.monotonic(),
            Duration::from_secs(3600),
            "monotonic never goes back"
        );
    }

    #[test]
    fn unix_micros_saturates_before_the_epoch() {
        assert_eq!(unix_micros(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(unix_micros(UNIX_EPOCH + Duration::from_micros(7)), 7);
    }

    #[tokio::test]
    async fn manual_sleep_wakes_exactly_when_the_deadline_is_reached() {
        let clock = ManualClock::at_fixed_instant();
        let sleep = tokio::spawn(clock.sleep_until(Duration::from_secs(10)));
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(9));
        tokio::task::yield_now().await;
        assert!(!sleep.is_finished());
        clock.advance(Duration::from_secs(1));
        sleep.await.unwrap();
        assert_eq!(clock.sleepers(), 0);
        // A deadline already passed completes at once; a dropped sleep unregisters.
        clock.sleep_until(Duration::from_secs(1)).await;
        drop(clock.sleep_until(Duration::from_secs(100)));
        assert_eq!(clock.sleepers(), 0);
    }
}

/// A duration as people write it: a whole number and a unit, `250ms`, `90s`, `15m`,
/// `2h`, `1d` (saturating); `None` for anything else.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit()).filter(|&i| i > 0)?;
    let (number, unit) = s.split_at(split);
    let n: u64 = number.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        _ => return None,
    })
}

/// A point in time as people write it on a command line or in a query: milliseconds
/// since the Unix epoch (`1764300000000`), or an age before `now` (`500ms`, `90s`, `15m`,
/// `2h`, `1d`). The error says what was expected.
pub fn parse_since(since: &str, now: SystemTime) -> Result<SystemTime, String> {
    let bad = || {
        format!(
            "{} is neither milliseconds since the epoch nor an age like 90s, 15m, 2h or 1d",
            crate::excerpt(since)
        )
    };
    if let Ok(ms) = since.parse::<u64>() {
        return Ok(UNIX_EPOCH + Duration::from_millis(ms));
    }
    let age = parse_duration(since).ok_or_else(bad)?;
    Ok(now
        .checked_sub(age)
        .filter(|t| *t >= UNIX_EPOCH)
        .unwrap_or(UNIX_EPOCH))
}

#[cfg(test)]
mod since_tests {
    use super::*;

    #[test]
    fn since_takes_epoch_millis_or_an_age() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_since("5000", now).unwrap(),
            UNIX_EPOCH + Duration::from_millis(5000)
        );
        assert_eq!(
            parse_since("15m", now).unwrap(),
            now - Duration::from_secs(900)
        );
        assert_eq!(
            parse_since("2h", now).unwrap(),
            now - Duration::from_secs(7200)
        );
        assert_eq!(
            parse_since("250ms", now).unwrap(),
            now - Duration::from_millis(250)
        );
        assert_eq!(parse_since("99999d", now).unwrap(), UNIX_EPOCH);
        for bad in ["yesterday", "5w", "m", "", "-5m"] {
            let err = parse_since(bad, now).unwrap_err();
            assert!(err.contains("neither"), "{bad}: {err}");
        }
    }
}
