//! Helpers shared by the bus's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use ganglion_bus::{Bus, BusOptions};
use ganglion_core::bus::{Delivery, Subscription};
use ganglion_core::{Event, ManualClock, Pattern, Topic};

pub struct Harness {
    pub bus: Bus,
    pub clock: ManualClock,
    pub dir: tempfile::TempDir,
}

pub fn options(dir: &std::path::Path, clock: &ManualClock) -> BusOptions {
    BusOptions {
        clock: Arc::new(clock.clone()),
        ..BusOptions::new(dir)
    }
}

pub fn harness() -> Harness {
    harness_with(|o| o)
}

pub fn harness_with(f: impl FnOnce(BusOptions) -> BusOptions) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_fixed_instant();
    let bus = Bus::open(f(options(dir.path(), &clock))).unwrap();
    Harness { bus, clock, dir }
}

pub fn topic(s: &str) -> Topic {
    Topic::new(s).unwrap()
}

pub fn pattern(s: &str) -> Pattern {
    Pattern::new(s).unwrap()
}

pub fn event(t: &str, payload: &str) -> Event {
    Event::new(topic(t), payload.to_owned())
}

/// The next delivery; fails the test rather than hang if none comes.
pub async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a delivery within 10 s")
        .expect("the subscription is open")
}

/// Waits (up to 10 s) until `done` holds: what a test waits for is state it can
/// observe, not a number of turns; panics naming `what` if it does not come.
pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let wait = async {
        while !done() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("not within 10 s: {what}"));
}

/// The counters of the bus's only subscription.
pub fn only_stats(bus: &Bus) -> ganglion_bus::SubscriptionStats {
    let mut all = bus.subscriptions();
    assert_eq!(all.len(), 1, "one subscription");
    all.remove(0)
}

/// The counters of the subscription named `name`.
pub fn stats_of(bus: &Bus, name: &str) -> ganglion_bus::SubscriptionStats {
    bus.subscriptions()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no subscription named {name:?}"))
}

/// Every subscription has read what was routed to it and has nothing waiting to be
/// handed out: a delivery that has not come by now will not come.
pub async fn caught_up(bus: &Bus) {
    until("every subscription caught up", || {
        bus.subscriptions()
            .iter()
            .all(|s| s.lag == 0 && s.ready == 0)
    })
    .await;
}

/// Nothing is delivered for a moment (50 ms of real time): a check that can pass wrongly
/// on a very slow machine, never fail wrongly.
pub async fn quiet(sub: &mut Subscription, why: &str) {
    if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(50), sub.next()).await {
        panic!("{why}: got seqs {:?} (attempt {})", d.seqs(), d.attempt());
    }
}

/// The bus's only subscription holds `n` events ready or gathered in its open window
/// (so its window's timer is set).
pub async fn holds(bus: &Bus, n: u64) {
    let wait = async {
        while only_stats(bus).ready != n {
            tokio::task::yield_now().await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .is_err()
    {
        panic!(
            "not within 10 s: {n} events held for delivery; {:?}",
            only_stats(bus)
        );
    }
}

/// Waits until what `clock` woke is asleep on it again: some deadline lies ahead. For a
/// test with one consumer (whose one timer is always set while it has work pending),
/// after an `advance`: the consumer has handled every timer due by now.
pub async fn asleep(clock: &ManualClock) {
    use ganglion_core::Clock as _;
    until("a sleeper on the clock, due after now", || {
        clock.next_deadline().is_some_and(|d| d > clock.monotonic())
    })
    .await;
}

/// Waits until `task` is done or everything on `clock` waits for a deadline ahead of now
/// (a publisher held back by a stuck subscriber waits on the clock).
pub async fn done_or_waiting<T>(task: &tokio::task::JoinHandle<T>, clock: &ManualClock) {
    use ganglion_core::Clock as _;
    until("the task done or waiting on the clock", || {
        task.is_finished() || clock.next_deadline().is_some_and(|d| d > clock.monotonic())
    })
    .await;
}

pub fn payload(d: &Delivery) -> String {
    String::from_utf8(d.event().unwrap().payload.to_vec()).unwrap()
}

/// The dead letters of `subscription`, once there are some (the dead-letter
/// publication happens in the consumer's task); fails the test rather than hang.
pub async fn dead_letters_soon(
    bus: &impl ganglion_core::EventBus,
    subscription: &str,
) -> Vec<ganglion_core::bus::DeadLetter> {
    let wait = async {
        loop {
            let letters = bus
                .dead_letters(subscription.to_owned(), 100)
                .await
                .unwrap();
            if !letters.is_empty() {
                return letters;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("dead letters within 10 s")
}
