//! Batch windows and aggregation rules, on a manual clock.

mod common;

use std::time::Duration;

use common::*;
use ganglion_core::EventBus;
use ganglion_core::bus::{
    Aggregation, BatchOptions, GroupKey, KeyCount, StorageClass, SubscribeOptions,
};

fn batched(aggregation: Aggregation, key: GroupKey, max_events: usize) -> SubscribeOptions {
    SubscribeOptions {
        batch: Some(BatchOptions {
            window: Some(Duration::from_millis(100)),
            max_events,
            key,
            max_bytes: 1024 * 1024,
            aggregation,
        }),
        ..SubscribeOptions::default()
    }
}

fn payloads(d: &ganglion_core::bus::Delivery) -> Vec<String> {
    d.events()
        .iter()
        .map(|e| String::from_utf8(e.event.payload.to_vec()).unwrap())
        .collect()
}

#[tokio::test]
async fn a_window_delivers_everything_that_arrived_within_100_ms_together() {
    let h = harness();
    let mut sub = h
        .bus
        .subscribe(
            pattern("game.>"),
            batched(Aggregation::None, GroupKey::Topic, 1000),
        )
        .await
        .unwrap();
    h.bus.publish(event("game.a", "1")).await.unwrap();
    h.bus.publish(event("game.b", "2")).await.unwrap();
    holds(&h.bus, 2).await;
    h.clock.advance(Duration::from_millis(99));
    quiet(&mut sub, "the window is still open").await;
    h.bus.publish(event("game.a", "3")).await.unwrap();
    holds(&h.bus, 3).await;
    h.clock.advance(Duration::from_millis(1));
    let batch = next(&mut sub).await;
    assert_eq!(payloads(&batch), ["1", "2", "3"]);
    assert_eq!(batch.seqs(), [1, 2, 3]);
    batch.ack();

    // The next window opens with the next event.
    h.bus.publish(event("game.a", "4")).await.unwrap();
    holds(&h.bus, 1).await;
    h.clock.advance(Duration::from_millis(100));
    assert_eq!(payloads(&next(&mut sub).await), ["4"]);
}

#[tokio::test]
async fn a_full_window_is_delivered_before_its_time() {
    let h = harness();
    let mut sub = h
        .bus
        .subscribe(
            pattern("game.>"),
            batched(Aggregation::None, GroupKey::Topic, 3),
        )
        .await
        .unwrap();
    let batch = (1..=7).map(|i| event("game.a", &i.to_string())).collect();
    h.bus.publish_batch(batch).await.unwrap();
    assert_eq!(payloads(&next(&mut sub).await), ["1", "2", "3"]);
    assert_eq!(payloads(&next(&mut sub).await), ["4", "5", "6"]);
    holds(&h.bus, 1).await;
    quiet(&mut sub, "the seventh waits for its window").await;
    h.clock.advance(Duration::from_millis(100));
    assert_eq!(payloads(&next(&mut sub).await), ["7"]);
}

#[tokio::test]
async fn keep_last_coalesces_high_frequency_updates_per_key() {
    let h = harness_with(|o| ganglion_bus::BusOptions {
        storage_classes: vec![(pattern("game.state.>"), StorageClass::Ephemeral)],
        ..o
    });
    let options = batched(
        Aggregation::KeepLast,
        GroupKey::Header("game_id".into()),
        1000,
    );
    let mut strategy = h
        .bus
        .subscribe(pattern("game.state.>"), options)
        .await
        .unwrap();
    for (game, round) in [("g1", 1), ("g2", 1), ("g1", 2), ("g1", 3), ("g2", 2)] {
        let update = event("game.state.update", &format!("{game}-round-{round}"))
            .with_header("game_id", game);
        h.bus.publish(update).await.unwrap();
    }
    holds(&h.bus, 5).await;
    h.clock.advance(Duration::from_millis(100));
    let batch = next(&mut strategy).await;
    assert_eq!(payloads(&batch), ["g1-round-3", "g2-round-2"]);
    let coalesced: Vec<u64> = batch.events().iter().map(|e| e.coalesced).collect();
    assert_eq!(coalesced, [3, 2]);
}

#[tokio::test]
async fn count_reports_how_many_events_each_key_had() {
    let h = harness();
    let mut analytics = h
        .bus
        .subscribe(
            pattern("game.>"),
            batched(Aggregation::Count, GroupKey::Topic, 1000),
        )
        .await
        .unwrap();
    let batch = ["game.hand", "game.joker", "game.hand", "game.hand"]
        .iter()
        .map(|t| event(t, "x"))
        .collect();
    h.bus.publish_batch(batch).await.unwrap();
    holds(&h.bus, 4).await;
    h.clock.advance(Duration::from_millis(100));
    let d = next(&mut analytics).await;
    assert!(d.events().is_empty());
    assert_eq!(
        d.counts(),
        [
            KeyCount {
                key: "game.hand".into(),
                count: 3
            },
            KeyCount {
                key: "game.joker".into(),
                count: 1
            }
        ]
    );
    assert_eq!(
        d.seqs(),
        [1, 2, 3, 4],
        "acking the counts acks every counted event"
    );
}

#[tokio::test]
async fn a_nacked_batch_is_redelivered_whole_with_its_attempt_numbers() {
    let h = harness();
    let mut sub = h
        .bus
        .subscribe(
            pattern("game.>"),
            batched(Aggregation::None, GroupKey::Topic, 1000),
        )
        .await
        .unwrap();
    h.bus
        .publish_batch(vec![event("game.a", "1"), event("game.a", "2")])
        .await
        .unwrap();
    holds(&h.bus, 2).await;
    h.clock.advance(Duration::from_millis(100));
    let first = next(&mut sub).await;
    first.nack(Some(Duration::from_secs(1)), "try later");
    until("the nack applied", || only_stats(&h.bus).nacked == 2).await;
    h.clock.advance(Duration::from_secs(1));
    holds(&h.bus, 2).await;
    h.clock.advance(Duration::from_millis(100));
    let again = next(&mut sub).await;
    assert_eq!(payloads(&again), ["1", "2"]);
    assert!(again.events().iter().all(|e| e.attempt == 2));
}

#[tokio::test]
async fn the_default_window_changes_live_for_subscriptions_that_give_none() {
    let h = harness();
    assert_eq!(h.bus.batch_window(), Duration::from_millis(100));
    let options = SubscribeOptions {
        batch: Some(BatchOptions::default()),
        ..SubscribeOptions::default()
    };
    let mut sub = h.bus.subscribe(pattern("game.>"), options).await.unwrap();

    // The configured 100 ms.
    h.bus.publish(event("game.a", "1")).await.unwrap();
    holds(&h.bus, 1).await;
    h.clock.advance(Duration::from_millis(99));
    quiet(&mut sub, "99 ms of a 100 ms window").await;
    h.clock.advance(Duration::from_millis(1));
    assert_eq!(payloads(&next(&mut sub).await), ["1"]);

    // Reconfigured to 25 ms while subscribed: the next window closes after 25 ms.
    h.bus.set_batch_window(Duration::from_millis(25)).unwrap();
    h.bus.publish(event("game.a", "2")).await.unwrap();
    holds(&h.bus, 1).await;
    h.clock.advance(Duration::from_millis(24));
    quiet(&mut sub, "24 ms of a 25 ms window").await;
    h.clock.advance(Duration::from_millis(1));
    assert_eq!(payloads(&next(&mut sub).await), ["2"]);

    assert!(h.bus.set_batch_window(Duration::ZERO).is_err());
    assert_eq!(h.bus.batch_window(), Duration::from_millis(25));
}
