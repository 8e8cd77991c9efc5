//! Routing: each logged event is matched once, against every consumer's pattern, and
//! handed to the consumers that want it. What must hold whatever the timing: every
//! subscriber gets each of its events exactly once and in order, whether it registered
//! before, during or after a storm of concurrent publishers, and when its queue of
//! routed sequences overflows.

mod common;

use std::time::Duration;

use common::*;
use ganglion_core::bus::{AckMode, StartPosition, SubscribeOptions, Subscription};
use ganglion_core::{Event, EventBus};

/// Reads `n` events from `sub`, acking each; returns their sequences.
async fn take(sub: &mut Subscription, n: usize) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(n);
    while seqs.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .unwrap_or_else(|_| panic!("timed out after {} of {n} events", seqs.len()))
            .expect("the subscription is open");
        seqs.extend(d.events().iter().map(|e| e.event.seq));
        d.ack();
    }
    seqs
}

/// Where `seqs` first fails to increase, to say so; `None` if it always does.
fn disorder(seqs: &[u64]) -> Option<String> {
    let i = seqs.windows(2).position(|w| w[0] >= w[1])?;
    let around = &seqs[i.saturating_sub(3)..(i + 5).min(seqs.len())];
    Some(format!("at {i} of {}: {around:?}", seqs.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_joining_during_concurrent_publishing_get_each_event_once_in_order() {
    let h = harness();
    const PUBLISHERS: u64 = 4;
    const BATCHES: u64 = 50;
    const PER_BATCH: u64 = 20;
    let total = (PUBLISHERS * BATCHES * PER_BATCH) as usize;
    let early = h
        .bus
        .subscribe(pattern("storm.>"), SubscribeOptions::default())
        .await
        .unwrap();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let bus = h.bus.clone();
            tokio::spawn(async move {
                for b in 0..BATCHES {
                    let batch: Vec<Event> = (0..PER_BATCH)
                        .flat_map(|i| {
                            [
                                event(&format!("storm.p{p}"), &format!("{b}-{i}")),
                                event("calm.other", "not theirs"),
                            ]
                        })
                        .collect();
                    bus.publish_batch(batch).await.unwrap();
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    // Joining while the publishers run: from the start of the log, and as durables.
    let mut joined = Vec::new();
    for n in 0..4 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let options = SubscribeOptions {
            durable: Some(format!("late-{n}")),
            start: StartPosition::All,
            ..SubscribeOptions::default()
        };
        joined.push(h.bus.subscribe(pattern("storm.*"), options).await.unwrap());
    }
    for p in publishers {
        p.await.unwrap();
    }
    let mut early = early;
    let seqs = take(&mut early, total).await;
    assert_eq!(disorder(&seqs), None, "in order, none twice");
    for mut sub in joined {
        let got = take(&mut sub, total).await;
        assert_eq!(
            got, seqs,
            "a subscriber that joined midway has them all, once, in order"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(100), sub.next())
                .await
                .is_err(),
            "and no more"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_whose_routed_queue_overflows_reads_the_rest_from_the_log() {
    // The router's queue for it (10 or 100 sequences here, in each of two places)
    // overflows many times over: once while nobody reads, then while a reader drains
    // it as publishing goes on.
    for queue in [10, 100] {
        for reading_meanwhile in [false, true] {
            overflow(queue, reading_meanwhile).await;
        }
    }
}

async fn overflow(queue: usize, reading_meanwhile: bool) {
    let h = harness_with(|o| ganglion_bus::BusOptions {
        routed_queue: queue,
        ..o
    });
    let options = SubscribeOptions {
        ack_mode: AckMode::Auto,
        ..SubscribeOptions::default()
    };
    let mut sub = h.bus.subscribe(pattern("flood.>"), options).await.unwrap();
    const EVENTS: usize = 10_000;
    let bus = h.bus.clone();
    let publishing = tokio::spawn(async move {
        for chunk in 0..EVENTS / 500 {
            let batch: Vec<Event> = (0..500)
                .flat_map(|i| {
                    [
                        event("flood.x", &format!("{chunk}-{i}")),
                        event("dry.x", "elsewhere"),
                    ]
                })
                .collect();
            bus.publish_batch(batch).await.unwrap();
            tokio::task::yield_now().await;
        }
    });
    if !reading_meanwhile {
        publishing.await.unwrap();
    }
    let reading = tokio::time::timeout(Duration::from_secs(20), take(&mut sub, EVENTS)).await;
    let Ok(seqs) = reading else {
        panic!("stalled (queue {queue}): {:?}", h.bus.subscriptions());
    };
    assert_eq!(
        disorder(&seqs),
        None,
        "in order, none twice (queue {queue})"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), sub.next())
            .await
            .is_err(),
        "and no more"
    );
    let stats = &h.bus.subscriptions()[0];
    assert_eq!(stats.lag, 0, "{stats:?}");
}

#[tokio::test]
async fn a_durable_that_matched_nothing_resumes_from_the_end_of_the_log() {
    let h = harness();
    let options = SubscribeOptions {
        durable: Some("quiet".into()),
        ..SubscribeOptions::default()
    };
    let sub = h.bus.subscribe(pattern("never.>"), options).await.unwrap();
    for _ in 0..10 {
        let batch = (0..100).map(|i| event("busy.x", &i.to_string())).collect();
        h.bus.publish_batch(batch).await.unwrap();
    }
    let stats = h.bus.subscriptions();
    assert_eq!(stats[0].lag, 0, "nothing of its own to read: {stats:?}");
    drop(sub);
    // Saved at the end of the log, not where it last had an event (the start).
    let parked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let stats = h.bus.subscriptions();
            if stats[0].members == 0 && stats[0].lag == 0 {
                return stats;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        parked.is_ok(),
        "parked with no lag: {:?}",
        h.bus.subscriptions()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_as_a_durable_leaves_is_kept_for_its_return() {
    // In memory: an append commits at once, so it often lands before the consumer has
    // taken in that its subscriber left.
    let h = harness_with(|o| ganglion_bus::BusOptions {
        in_memory: true,
        ..o
    });
    let options = || SubscribeOptions {
        durable: Some("returning".into()),
        ..SubscribeOptions::default()
    };
    let mut sub = h.bus.subscribe(pattern("ret.>"), options()).await.unwrap();
    // Each round: the subscriber leaves, an event is published at once (maybe before
    // the consumer has stopped and saved its place), and the subscriber returns: the
    // event must be there.
    for round in 0..300 {
        drop(sub);
        let published = h
            .bus
            .publish(event("ret.x", &round.to_string()))
            .await
            .unwrap();
        sub = h.bus.subscribe(pattern("ret.>"), options()).await.unwrap();
        let got = take(&mut sub, 1).await;
        assert_eq!(got, [published.seq], "round {round}");
    }
}
