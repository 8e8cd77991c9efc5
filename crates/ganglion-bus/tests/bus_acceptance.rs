//! The acceptance scenarios: a poison event among healthy ones, a keep_last
//! window over 1,000 updates, and the in-memory test bus driving a handler's deadlines.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use ganglion_bus::testing::TestBus;
use ganglion_core::bus::{Aggregation, BatchOptions, GroupKey, StorageClass, SubscribeOptions};
use ganglion_core::{Clock, EventBus};

#[tokio::test]
async fn a_poison_event_is_tried_max_deliveries_times_on_schedule_then_dead_lettered_while_healthy_events_flow()
 {
    let h = harness();
    let options = SubscribeOptions {
        durable: Some("scorer".into()),
        max_deliveries: 5,
        ..SubscribeOptions::default()
    };
    let mut sub = h.bus.subscribe(pattern("game.>"), options).await.unwrap();
    h.bus.publish(event("game.hand", "poison")).await.unwrap();

    // Step the virtual clock 1 ms at a time; every healthy event published meanwhile
    // must be delivered (and is acked), the poison one is nacked every time.
    let start = h.clock.monotonic();
    let mut poison_at = Vec::new();
    let mut healthy_delivered = 0;
    let mut healthy_published = 0;
    while poison_at.len() < 5 {
        assert!(
            h.clock.monotonic() - start < Duration::from_secs(5),
            "the schedule ran out"
        );
        if h.clock.monotonic().as_millis().is_multiple_of(50) {
            h.bus.publish(event("game.hand", "healthy")).await.unwrap();
            healthy_published += 1;
            caught_up(&h.bus).await;
        }
        let before = stats_of(&h.bus, "scorer");
        let (mut acked, mut nacked) = (before.acked, before.nacked);
        while let Some(d) = sub.try_next() {
            if payload(&d) == "poison" {
                assert_eq!(d.attempt() as usize, poison_at.len() + 1);
                poison_at.push(h.clock.monotonic() - start);
                d.nack(
                    None,
                    &format!("cannot score hand (attempt {})", d.attempt()),
                );
                nacked += 1;
            } else {
                healthy_delivered += 1;
                d.ack();
                acked += 1;
            }
        }
        until("the acks and nacks applied", || {
            let s = stats_of(&h.bus, "scorer");
            (s.acked, s.nacked) == (acked, nacked)
        })
        .await;
        // Then 1 ms on, and the consumer has handled whatever came due.
        h.clock.advance(Duration::from_millis(1));
        asleep(&h.clock).await;
    }
    // Gaps follow 100 ms × 2^n within ±20 % jitter (and the 1 ms step).
    for (n, pair) in poison_at.windows(2).enumerate() {
        let gap = (pair[1] - pair[0]).as_secs_f64() * 1000.0;
        let nominal = 100.0 * 2f64.powi(n as i32);
        assert!(
            gap >= nominal * 0.8 && gap <= nominal * 1.2 + 2.0,
            "gap {n} was {gap} ms, nominal {nominal} ms"
        );
    }
    // Healthy events kept flowing throughout.
    caught_up(&h.bus).await;
    while let Some(d) = sub.try_next() {
        healthy_delivered += 1;
        d.ack();
    }
    assert_eq!(healthy_delivered, healthy_published);
    assert!(healthy_published > 20);

    let letters = dead_letters_soon(&h.bus, "scorer").await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 5);
    assert_eq!(letters[0].last_error, "cannot score hand (attempt 5)");
    // Dead-lettered after its fifth attempt: nothing in flight, no timer left to resend.
    until("the poison event leaves the in-flight count", || {
        let s = stats_of(&h.bus, "scorer");
        s.dead_lettered == 1 && s.in_flight == 0
    })
    .await;
    h.clock.advance(Duration::from_secs(3600));
    caught_up(&h.bus).await;
    assert!(
        sub.try_next().is_none(),
        "delivered exactly max_deliveries times"
    );
}

#[tokio::test]
async fn keep_last_over_1000_updates_to_10_keys_delivers_10_events_per_window() {
    let h = harness_with(|o| ganglion_bus::BusOptions {
        storage_classes: vec![(pattern("game.state.>"), StorageClass::Ephemeral)],
        ..o
    });
    let options = SubscribeOptions {
        batch: Some(BatchOptions {
            window: Some(Duration::from_millis(100)),
            key: GroupKey::Header("game_id".into()),
            aggregation: Aggregation::KeepLast,
            // Room for the whole window: it closes on time, not for being full.
            max_events: 10_000,
            ..BatchOptions::default()
        }),
        ..SubscribeOptions::default()
    };
    let mut strategy = h
        .bus
        .subscribe(pattern("game.state.>"), options)
        .await
        .unwrap();
    for window in 0..3 {
        let updates = (0..1000)
            .map(|i| {
                event("game.state.update", &format!("w{window}-u{i}"))
                    .with_header("game_id", format!("g{}", i % 10))
            })
            .collect();
        h.bus.publish_batch(updates).await.unwrap();
        holds(&h.bus, 1000).await;
        h.clock.advance(Duration::from_millis(99));
        quiet(&mut strategy, "the window is still open").await;
        h.clock.advance(Duration::from_millis(1));
        let batch = next(&mut strategy).await;
        assert_eq!(batch.events().len(), 10, "window {window}");
        let latest: HashMap<String, String> = batch
            .events()
            .iter()
            .map(|e| {
                let key = e.event.header("game_id").unwrap().to_owned();
                (key, String::from_utf8(e.event.payload.to_vec()).unwrap())
            })
            .collect();
        for k in 0..10 {
            assert_eq!(latest[&format!("g{k}")], format!("w{window}-u{}", 990 + k));
        }
        assert!(batch.events().iter().all(|e| e.coalesced == 100));
    }
}

#[tokio::test]
async fn the_test_bus_records_publications_and_drives_deadlines_on_its_virtual_clock() {
    let bus = TestBus::new();
    let mut jobs = bus
        .subscribe(pattern("jobs.>"), SubscribeOptions::default())
        .await
        .unwrap();
    bus.publish(event("jobs.render", "frame-1")).await.unwrap();
    let first = next(&mut jobs).await;
    assert_eq!(first.attempt(), 1);
    // The handler never acks: after the 30 s deadline and the backoff, it comes back.
    bus.clock().advance(Duration::from_secs(30));
    until("the deadline passes and the backoff is set", || {
        only_stats(bus.bus()).ack_timeouts == 1 && bus.clock().sleepers() >= 1
    })
    .await;
    bus.clock().advance(Duration::from_millis(120));
    let again = next(&mut jobs).await;
    assert_eq!(again.attempt(), 2);
    assert_eq!(bus.published_on("jobs.>").len(), 1);
    assert_eq!(bus.published()[0].seq, 1);
    bus.clear();
    assert!(bus.published().is_empty());
}
