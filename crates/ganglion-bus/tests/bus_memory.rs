//! Every place an event waits for a subscriber is bounded in bytes, not only in events:
//! a subscriber that stops reading holds a bounded amount whatever the events' size.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use ganglion_bus::BusOptions;
use ganglion_core::bus::{AckMode, BatchOptions, StorageClass, SubscribeOptions};
use ganglion_core::{Event, EventBus};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

fn big(topic: &str, size: usize) -> Event {
    Event::new(
        ganglion_core::Topic::new(topic).unwrap(),
        Bytes::from(vec![7u8; size]),
    )
}

fn one_mib_buffers(o: BusOptions) -> BusOptions {
    BusOptions {
        storage_classes: vec![(pattern("live.>"), StorageClass::Ephemeral)],
        subscriber_buffer_bytes: MIB,
        ..o
    }
}

/// Drains what a subscription still holds; returns the events and their bytes.
async fn drain(sub: &mut ganglion_core::bus::Subscription) -> (usize, usize) {
    let (mut events, mut bytes) = (0, 0);
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
        for e in d.events() {
            events += 1;
            bytes += e.event.payload.len();
        }
    }
    (events, bytes)
}

#[tokio::test]
async fn a_stuck_ephemeral_subscriber_holds_a_bounded_number_of_bytes_of_big_events_then_is_cut_off()
 {
    let h = harness_with(one_mib_buffers);
    let mut stuck = h
        .bus
        .subscribe(pattern("live.>"), SubscribeOptions::default())
        .await
        .unwrap();
    let bus = h.bus.clone();
    let publisher = tokio::spawn(async move {
        for _ in 0..200 {
            bus.publish(big("live.frame", 256 * KIB)).await.unwrap();
        }
    });
    for _ in 0..100 {
        // The publisher is done, or waits (on the clock) for the stuck subscriber.
        done_or_waiting(&publisher, &h.clock).await;
        if publisher.is_finished() {
            break;
        }
        h.clock.advance(Duration::from_millis(200));
    }
    publisher.await.unwrap();
    let (events, bytes) = drain(&mut stuck).await;
    // The buffer in the consumer (1 MiB) and the chunks handed over (1 MiB, plus the
    // chunk that crossed it): well under 200 × 256 KiB = 50 MiB.
    assert!(
        bytes <= 3 * MIB + 256 * KIB,
        "{events} events ({bytes} bytes) were held"
    );
    let reason = stuck.closed_reason().expect("cut off with a reason");
    assert!(
        reason.starts_with("slow consumer") && reason.contains("bytes"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_durable_subscriber_that_stops_reading_holds_at_most_its_in_flight_bytes() {
    let h = harness_with(one_mib_buffers);
    let options = SubscribeOptions {
        max_in_flight_bytes: 2 * MIB,
        ..SubscribeOptions::default()
    };
    let mut sub = h.bus.subscribe(pattern("log.>"), options).await.unwrap();
    for _ in 0..100 {
        h.bus.publish(big("log.frame", 256 * KIB)).await.unwrap();
    }
    until("its channel full and its read-ahead too", || {
        let s = only_stats(&h.bus);
        s.in_flight == 4 && s.ready >= 4
    })
    .await;
    let stats = &h.bus.subscriptions()[0];
    // Not reading: what waits for it is its channel's 1 MiB (and 1 MiB read ahead, plus
    // the event that crossed the line).
    assert_eq!(stats.in_flight, 4, "{stats:?}");
    assert!(stats.ready <= 5, "{stats:?}");
    // Reading without acking: out unacked at most 2 MiB of 256 KiB events.
    let mut held = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
        held.push(d);
    }
    assert_eq!(held.len(), 8, "2 MiB in flight");
    // The rest waits in the log, and comes as the subscriber acks.
    let mut got = held.len();
    held.drain(..).for_each(|d| d.ack());
    while got < 100 {
        next(&mut sub).await.ack();
        got += 1;
    }
}

#[tokio::test]
async fn an_auto_ack_subscriber_that_stops_reading_stops_its_consumer_at_the_buffer() {
    let h = harness_with(one_mib_buffers);
    let options = SubscribeOptions {
        ack_mode: AckMode::Auto,
        ..SubscribeOptions::default()
    };
    let mut sub = h.bus.subscribe(pattern("log.>"), options).await.unwrap();
    for _ in 0..100 {
        h.bus.publish(big("log.frame", 256 * KIB)).await.unwrap();
    }
    until("its channel full and its read-ahead too", || {
        let s = only_stats(&h.bus);
        s.delivered >= 4 && s.ready >= 4
    })
    .await;
    let stats = &h.bus.subscriptions()[0];
    // Handed over (1 MiB and one chunk of at most 1 MiB) and read ahead (1 MiB).
    assert!(
        stats.delivered * 256 <= 3 * 1024 + 256,
        "{} delivered of 256 KiB each",
        stats.delivered
    );
    let (events, _) = drain(&mut sub).await;
    assert_eq!(events, 100, "nothing was lost: the rest waited in the log");
}

#[tokio::test]
async fn a_batch_window_closes_at_its_byte_limit() {
    let h = harness();
    let options = SubscribeOptions {
        batch: Some(BatchOptions {
            window: Some(Duration::from_secs(60)),
            max_bytes: 600 * KIB,
            ..BatchOptions::default()
        }),
        ..SubscribeOptions::default()
    };
    let mut sub = h.bus.subscribe(pattern("log.>"), options).await.unwrap();
    for _ in 0..5 {
        h.bus.publish(big("log.frame", 256 * KIB)).await.unwrap();
    }
    let first = next(&mut sub).await;
    assert_eq!(
        first.events().len(),
        3,
        "the window closed once it held 600 KiB, long before its 60 s"
    );
    first.ack();
}

#[tokio::test]
async fn options_above_their_ceilings_are_refused_naming_the_field() {
    let h = harness();
    for (options, field) in [
        (
            SubscribeOptions {
                max_in_flight: 1_000_000,
                ..SubscribeOptions::default()
            },
            "max_in_flight",
        ),
        (
            SubscribeOptions {
                max_in_flight_bytes: usize::MAX,
                ..SubscribeOptions::default()
            },
            "max_in_flight_bytes",
        ),
        (
            SubscribeOptions {
                batch: Some(BatchOptions {
                    max_events: 10_000_000,
                    ..BatchOptions::default()
                }),
                ..SubscribeOptions::default()
            },
            "batch.max_events",
        ),
        (
            SubscribeOptions {
                batch: Some(BatchOptions {
                    max_bytes: usize::MAX,
                    ..BatchOptions::default()
                }),
                ..SubscribeOptions::default()
            },
            "batch.max_bytes",
        ),
        (
            SubscribeOptions {
                ack_deadline: Duration::from_secs(10 * 24 * 3600),
                ..SubscribeOptions::default()
            },
            "ack_deadline",
        ),
        (
            SubscribeOptions {
                filter: ganglion_core::bus::Filter {
                    types: vec!["x".repeat(10_000)],
                    ..Default::default()
                },
                ..SubscribeOptions::default()
            },
            "filter.types[0]",
        ),
    ] {
        let err = h
            .bus
            .subscribe(pattern("a.>"), options)
            .await
            .err()
            .unwrap_or_else(|| panic!("{field}: accepted"));
        assert_eq!(err.field(), Some(field), "{err}");
        assert!(err.to_string().len() < 200, "the error stays short: {err}");
    }
}
