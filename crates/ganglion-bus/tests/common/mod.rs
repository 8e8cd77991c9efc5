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

/// Lets every task that can run, run (the tests use a current-thread runtime).
pub async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
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
