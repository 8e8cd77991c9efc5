//! Publishing: idempotency keys, validation, ephemeral topics, replay and topics.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use ganglion_bus::Bus;
use ganglion_core::bus::{StartPosition, StorageClass, SubscribeOptions};
use ganglion_core::{Clock, EventBus};

fn keyed(t: &str, payload: &str, key: &str) -> ganglion_core::Event {
    event(t, payload).with_header("idempotency_key", key)
}

#[tokio::test]
async fn an_idempotency_key_is_appended_once_within_the_window() {
    let h = harness();
    let first = h
        .bus
        .publish(keyed("orders.new", "a", "order-1"))
        .await
        .unwrap();
    let again = h
        .bus
        .publish(keyed("orders.new", "a (retry)", "order-1"))
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!((again.seq, &again.id), (first.seq, &first.id));
    assert_eq!(h.bus.log().next_seq(), 2, "the duplicate appended nothing");

    // Twice in one batch: the second is a duplicate of the first.
    let acks = h
        .bus
        .publish_batch(vec![
            keyed("orders.new", "b", "order-2"),
            keyed("orders.new", "b", "order-2"),
        ])
        .await
        .unwrap();
    assert_eq!(acks[0].seq, acks[1].seq);
    assert_eq!((acks[0].duplicate, acks[1].duplicate), (false, true));

    // After the window (2 min) the key is new again.
    h.clock.advance(Duration::from_secs(121));
    let later = h
        .bus
        .publish(keyed("orders.new", "a", "order-1"))
        .await
        .unwrap();
    assert!(!later.duplicate);
    assert_ne!(later.seq, first.seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publications_of_one_key_append_it_once() {
    let h = harness();
    let bus = h.bus.clone();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let bus = bus.clone();
            tokio::spawn(async move {
                bus.publish(keyed("pay.x", &i.to_string(), "same"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut acks = Vec::new();
    for t in tasks {
        acks.push(t.await.unwrap());
    }
    assert_eq!(acks.iter().filter(|a| !a.duplicate).count(), 1);
    assert!(acks.iter().all(|a| a.seq == acks[0].seq));
    assert_eq!(h.bus.log().next_seq(), 2);
}

#[tokio::test]
async fn idempotency_keys_survive_a_restart_within_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ganglion_core::ManualClock::at_fixed_instant();
    let first = {
        let bus = Bus::open(options(dir.path(), &clock)).unwrap();
        let ack = bus.publish(keyed("orders.new", "a", "k")).await.unwrap();
        bus.shutdown().await.unwrap();
        ack
    };
    clock.advance(Duration::from_secs(60));
    let bus = Bus::open(options(dir.path(), &clock)).unwrap();
    let again = bus.publish(keyed("orders.new", "a", "k")).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.seq, first.seq);
}

#[tokio::test]
async fn bad_events_are_refused_naming_the_field() {
    let h = harness_with(|o| ganglion_bus::BusOptions {
        max_event_bytes: 1000,
        ..o
    });
    let big = event("a.b", &"x".repeat(2000));
    let err = h
        .bus
        .publish_batch(vec![event("a.b", "ok"), big])
        .await
        .unwrap_err();
    assert_eq!(err.code().as_str(), "INVALID_ARGUMENT");
    assert!(
        err.to_string()
            .starts_with("events[1].payload: the event is 20"),
        "{err}"
    );
    assert_eq!(h.bus.log().next_seq(), 1, "a refused batch appends nothing");

    let long_type = event("a.b", "x").with_type("t".repeat(300));
    let err = h.bus.publish(long_type).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "events[0].type: is 300 bytes; at most 256 are allowed"
    );
    let err = h.bus.publish_batch(vec![]).await.unwrap_err();
    assert_eq!(err.to_string(), "events: at least one event is required");
    let err = h
        .bus
        .subscribe(
            pattern("a.>"),
            SubscribeOptions {
                max_in_flight: 0,
                ..SubscribeOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "max_in_flight: must be at least 1");
}

#[tokio::test]
async fn ephemeral_topics_skip_the_log_and_reach_only_current_subscribers() {
    let h = harness_with(|o| ganglion_bus::BusOptions {
        storage_classes: vec![(pattern("game.state.>"), StorageClass::Ephemeral)],
        ..o
    });
    let mut sub = h
        .bus
        .subscribe(pattern("game.>"), SubscribeOptions::default())
        .await
        .unwrap();
    let ack = h
        .bus
        .publish(event("game.state.update", "tick"))
        .await
        .unwrap();
    assert_eq!(ack.seq, 0);
    assert_eq!(h.bus.log().next_seq(), 1, "nothing logged");
    let d = next(&mut sub).await;
    assert_eq!((payload(&d), d.seqs().len()), ("tick".to_string(), 0));
    let delivered = &d.events()[0];
    assert_eq!((delivered.attempt, delivered.coalesced), (1, 1));

    h.bus
        .publish(event("game.hand.played", "durable"))
        .await
        .unwrap();
    let replayed = h
        .bus
        .replay(pattern("game.>"), StartPosition::All, 10)
        .await
        .unwrap();
    assert_eq!(replayed.len(), 1, "ephemeral events are not replayable");
    assert_eq!(replayed[0].topic.as_str(), "game.hand.played");

    let mut late = h
        .bus
        .subscribe(
            pattern("game.>"),
            SubscribeOptions {
                start: StartPosition::All,
                ..SubscribeOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(payload(&next(&mut late).await), "durable");
    caught_up(&h.bus).await;
    assert!(
        late.try_next().is_none(),
        "a later subscriber never sees the earlier tick"
    );
    let topics = h.bus.topics().await.unwrap();
    let state = topics
        .iter()
        .find(|t| t.topic.as_str() == "game.state.update")
        .unwrap();
    assert_eq!((state.storage, state.events), (StorageClass::Ephemeral, 1));
}

fn fast_topics(o: ganglion_bus::BusOptions) -> ganglion_bus::BusOptions {
    ganglion_bus::BusOptions {
        storage_classes: vec![(pattern("fast.>"), StorageClass::Ephemeral)],
        ephemeral_buffer: 8,
        ..o
    }
}

fn small_in_flight() -> SubscribeOptions {
    SubscribeOptions {
        max_in_flight: 4,
        ..SubscribeOptions::default()
    }
}

#[tokio::test]
async fn a_momentarily_slow_ephemeral_subscriber_slows_the_publisher_down_and_misses_nothing() {
    let h = harness_with(fast_topics);
    let mut sub = h
        .bus
        .subscribe(pattern("fast.>"), small_in_flight())
        .await
        .unwrap();
    let bus = h.bus.clone();
    let publisher = tokio::spawn(async move {
        for i in 0..200 {
            bus.publish(event("fast.tick", &i.to_string()))
                .await
                .unwrap();
        }
    });
    until("the subscriber's buffer full", || {
        only_stats(&h.bus).ready >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!publisher.is_finished(), "the publisher waits for room");
    for i in 0..200 {
        assert_eq!(payload(&next(&mut sub).await), i.to_string());
    }
    publisher.await.unwrap();
    assert!(sub.closed_reason().is_none());
}

#[tokio::test]
async fn a_subscriber_that_does_not_read_holds_a_bounded_number_of_chunks_whatever_its_in_flight_cap()
 {
    // Default options: an in-flight cap of 1,000, so a channel of 1,000 chunks; events
    // trickling in one at a time make one chunk each. At most 256 chunks wait in the
    // channel (plus the consumer's 8 ephemeral permits) before the publisher waits.
    let h = harness_with(fast_topics);
    let mut sub = h
        .bus
        .subscribe(pattern("fast.>"), SubscribeOptions::default())
        .await
        .unwrap();
    let published = Arc::new(AtomicUsize::new(0));
    let (bus, count) = (h.bus.clone(), published.clone());
    let publisher = tokio::spawn(async move {
        for i in 0..400 {
            bus.publish(event("fast.tick", &i.to_string()))
                .await
                .unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            // One chunk each: the consumer takes this event (hands it over, or holds it
            // for want of room) before the next is published.
            let taken = i as u64 + 1;
            until("the consumer took the event", || {
                let s = &bus.subscriptions()[0];
                s.delivered + s.ready == taken
            })
            .await;
        }
    });
    // Until the publisher waits for room: 256 chunks handed over, then a moment more.
    until("256 events published", || {
        published.load(Ordering::SeqCst) >= 256
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiting = published.load(Ordering::SeqCst);
    assert!(
        !publisher.is_finished() && (256..=256 + 8 + 1).contains(&waiting),
        "the publisher waits once 256 chunks and the consumer's buffer are full: {waiting} published"
    );
    for i in 0..400 {
        assert_eq!(payload(&next(&mut sub).await), i.to_string());
    }
    publisher.await.unwrap();
    assert!(sub.closed_reason().is_none());
}

#[tokio::test]
async fn an_ephemeral_subscriber_that_stays_stuck_is_closed_with_a_reason() {
    let h = harness_with(fast_topics);
    let mut stuck = h
        .bus
        .subscribe(pattern("fast.>"), small_in_flight())
        .await
        .unwrap();
    let mut healthy = h
        .bus
        .subscribe(pattern("fast.>"), SubscribeOptions::default())
        .await
        .unwrap();
    let bus = h.bus.clone();
    let publisher = tokio::spawn(async move {
        for i in 0..200 {
            bus.publish(event("fast.tick", &i.to_string()))
                .await
                .unwrap();
        }
    });
    let mut healthy_got = 0;
    for _ in 0..1000 {
        if publisher.is_finished() {
            break;
        }
        // The stuck subscriber holds the publisher up for the grace period only.
        while healthy.try_next().is_some() {
            healthy_got += 1;
        }
        // The publisher is done, or waits (on the clock) for the stuck subscriber.
        done_or_waiting(&publisher, &h.clock).await;
        h.clock.advance(Duration::from_millis(100));
    }
    publisher.await.unwrap();
    // The healthy subscriber gets everything (`next` fails the test if one is missing).
    while healthy_got < 200 {
        drop(next(&mut healthy).await);
        healthy_got += 1;
    }
    quiet(&mut healthy, "nothing twice").await;
    let mut received = 0;
    while tokio::time::timeout(Duration::from_secs(10), stuck.next())
        .await
        .unwrap()
        .is_some()
    {
        received += 1;
    }
    assert!(
        received < 200,
        "memory stayed bounded: {received} were buffered"
    );
    let reason = stuck.closed_reason().expect("closed with a reason");
    assert!(reason.starts_with("slow consumer"), "{reason}");
}

#[tokio::test]
async fn replay_returns_a_patterns_events_from_a_sequence_or_a_time() {
    let h = harness();
    h.bus.publish(event("game.a", "1")).await.unwrap();
    h.bus.publish(event("chat.a", "c")).await.unwrap();
    h.clock.advance(Duration::from_secs(10));
    let since = h.clock.now();
    h.bus.publish(event("game.b", "2")).await.unwrap();
    h.bus.publish(event("game.c", "3")).await.unwrap();

    let all = h
        .bus
        .replay(pattern("game.>"), StartPosition::All, 100)
        .await
        .unwrap();
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 3, 4]);
    let from_seq = h
        .bus
        .replay(pattern("game.>"), StartPosition::Seq(2), 1)
        .await
        .unwrap();
    assert_eq!(from_seq.iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);
    let from_time = h
        .bus
        .replay(pattern("game.>"), StartPosition::Time(since), 100)
        .await
        .unwrap();
    assert_eq!(from_time.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
    let err = h
        .bus
        .replay(pattern("game.>"), StartPosition::New, 10)
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("from: replay needs a position"),
        "{err}"
    );

    let topics = h.bus.topics().await.unwrap();
    let names: Vec<_> = topics.iter().map(|t| t.topic.as_str()).collect();
    assert_eq!(names, ["chat.a", "game.a", "game.b", "game.c"]);
}

#[tokio::test]
async fn ephemeral_events_a_filter_drops_do_not_use_up_the_buffer() {
    let h = harness_with(fast_topics);
    let options = SubscribeOptions {
        filter: ganglion_core::bus::Filter {
            types: vec!["wanted".into()],
            ..Default::default()
        },
        ..SubscribeOptions::default()
    };
    let mut picky = h.bus.subscribe(pattern("fast.>"), options).await.unwrap();
    for i in 0..100 {
        // Mostly unwanted events, more than the buffer of 8 holds.
        let event_type = if i % 10 == 0 { "wanted" } else { "other" };
        let publish = h
            .bus
            .publish(event("fast.tick", &i.to_string()).with_type(event_type));
        // A publisher waiting for room that never comes would hang: fail instead.
        tokio::time::timeout(Duration::from_secs(10), publish)
            .await
            .expect("the buffer has room")
            .unwrap();
    }
    for i in (0..100).step_by(10) {
        assert_eq!(payload(&next(&mut picky).await), i.to_string());
    }
    assert!(picky.closed_reason().is_none());
}
