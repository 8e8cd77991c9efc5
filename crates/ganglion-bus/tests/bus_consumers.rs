//! Queue groups, durable resume across restarts, backpressure, filters, priority and
//! start positions.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use ganglion_bus::Bus;
use ganglion_core::bus::{AckMode, Filter, StartPosition, SubscribeOptions};
use ganglion_core::{Clock, EventBus};

#[tokio::test]
async fn a_queue_group_gives_each_event_to_exactly_one_member() {
    let h = harness();
    let group = || SubscribeOptions {
        queue_group: Some("workers".into()),
        ..SubscribeOptions::default()
    };
    let mut a = h.bus.subscribe(pattern("jobs.*"), group()).await.unwrap();
    let mut b = h.bus.subscribe(pattern("jobs.*"), group()).await.unwrap();
    let mut other = h
        .bus
        .subscribe(pattern("jobs.*"), SubscribeOptions::default())
        .await
        .unwrap();
    let batch = (0..100).map(|i| event("jobs.x", &i.to_string())).collect();
    h.bus.publish_batch(batch).await.unwrap();

    let mut seen = HashSet::new();
    let (mut from_a, mut from_b) = (0, 0);
    while seen.len() < 100 {
        let either = async {
            tokio::select! {
                Some(d) = a.next() => (true, d),
                Some(d) = b.next() => (false, d),
            }
        };
        let (from_first, d) = tokio::time::timeout(Duration::from_secs(10), either)
            .await
            .expect("a delivery within 10 s");
        if from_first {
            from_a += 1;
        } else {
            from_b += 1;
        }
        assert!(seen.insert(payload(&d)), "{} delivered twice", payload(&d));
        d.ack();
    }
    assert!(
        from_a > 0 && from_b > 0,
        "both members worked: {from_a} / {from_b}"
    );
    caught_up(&h.bus).await;
    assert!(
        a.try_next().is_none() && b.try_next().is_none(),
        "no event went to both"
    );
    for _ in 0..100 {
        next(&mut other).await.ack();
    }
}

#[tokio::test]
async fn a_member_that_leaves_hands_its_unacked_events_to_the_others() {
    let h = harness();
    let group = || SubscribeOptions {
        queue_group: Some("g".into()),
        ..SubscribeOptions::default()
    };
    let mut a = h.bus.subscribe(pattern("jobs.*"), group()).await.unwrap();
    let mut b = h.bus.subscribe(pattern("jobs.*"), group()).await.unwrap();
    h.bus
        .publish_batch(vec![event("jobs.x", "1"), event("jobs.x", "2")])
        .await
        .unwrap();
    let first = next(&mut a).await;
    let second = next(&mut b).await;
    second.ack();
    let taken = payload(&first);
    drop(first);
    h.bus.unsubscribe(a.id()).await.unwrap();
    assert!(
        a.next().await.is_none(),
        "an unsubscribed member's stream ends"
    );
    let again = next(&mut b).await;
    assert_eq!((payload(&again), again.attempt()), (taken, 2));
    let err = h.bus.unsubscribe(a.id()).await.unwrap_err();
    assert_eq!(err.code().as_str(), "NOT_FOUND");
}

#[tokio::test]
async fn a_durable_subscription_resumes_exactly_where_acks_stopped_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ganglion_core::ManualClock::at_fixed_instant();
    let durable = || SubscribeOptions {
        durable: Some("analytics".into()),
        start: StartPosition::All,
        max_in_flight: 6,
        ..SubscribeOptions::default()
    };
    {
        let bus = Bus::open(options(dir.path(), &clock)).unwrap();
        let batch = (1..=10)
            .map(|i| event("game.hand", &i.to_string()))
            .collect();
        bus.publish_batch(batch).await.unwrap();
        let mut sub = bus.subscribe(pattern("game.>"), durable()).await.unwrap();
        let mut held = Vec::new();
        for _ in 1..=6 {
            held.push(next(&mut sub).await);
        }
        // Ack 1, 2, 3 and 5; leave 4 and 6 unacked; 7 to 10 were never delivered.
        for (i, d) in held.iter().enumerate() {
            if i != 3 && i != 5 {
                d.ack();
            }
        }
        bus.shutdown().await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(10), sub.next()).await;
        assert!(matches!(end, Ok(None)), "shutdown ends subscriptions");
    }
    let bus = Bus::open(options(dir.path(), &clock)).unwrap();
    bus.publish(event("game.hand", "11")).await.unwrap();
    let mut sub = bus.subscribe(pattern("game.>"), durable()).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..7 {
        let d = next(&mut sub).await;
        got.push((payload(&d), d.attempt()));
        d.ack();
    }
    let expected: Vec<(String, u32)> = [
        ("4", 2),
        ("6", 2),
        ("7", 1),
        ("8", 1),
        ("9", 1),
        ("10", 1),
        ("11", 1),
    ]
    .iter()
    .map(|(p, a)| (p.to_string(), *a))
    .collect();
    assert_eq!(got, expected);
    caught_up(&bus).await;
    assert!(sub.try_next().is_none());

    // A second subscriber to the same durable name needs a queue group.
    let err = bus
        .subscribe(pattern("game.>"), durable())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("already has a subscriber"),
        "{err}"
    );
    let err = bus
        .subscribe(
            pattern("chat.>"),
            SubscribeOptions {
                durable: Some("analytics".into()),
                ..SubscribeOptions::default()
            },
        )
        .await
        .unwrap_err();
    // Refused without telling the caller the durable's real pattern.
    let message = err.to_string();
    assert!(
        message.starts_with("pattern: durable \"analytics\" exists with another pattern"),
        "{message}"
    );
    assert!(!message.contains("game"), "{message}");
}

#[tokio::test]
async fn a_durable_that_never_acked_resumes_from_where_it_was_subscribed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ganglion_core::ManualClock::at_fixed_instant();
    // Starting from new events: what is published before the subscription is not its.
    let durable = || SubscribeOptions {
        durable: Some("late".into()),
        ..SubscribeOptions::default()
    };
    {
        let bus = Bus::open(options(dir.path(), &clock)).unwrap();
        bus.publish(event("game.hand", "before")).await.unwrap();
        let mut sub = bus.subscribe(pattern("game.>"), durable()).await.unwrap();
        bus.publish(event("game.hand", "1")).await.unwrap();
        // Delivered, never acked; then the bus stops.
        assert_eq!(payload(&next(&mut sub).await), "1");
        bus.shutdown().await.unwrap();
    }
    // Published while no consumer ran: still the durable's.
    let bus = Bus::open(options(dir.path(), &clock)).unwrap();
    bus.publish(event("game.hand", "2")).await.unwrap();
    let mut sub = bus.subscribe(pattern("game.>"), durable()).await.unwrap();
    let first = next(&mut sub).await;
    assert_eq!(payload(&first), "1");
    let second = next(&mut sub).await;
    assert_eq!((payload(&second), second.attempt()), ("2".to_owned(), 1));
}

#[tokio::test]
async fn a_subscriber_at_its_in_flight_cap_gets_nothing_more_until_it_acks() {
    let h = harness();
    let options = SubscribeOptions {
        max_in_flight: 5,
        ..SubscribeOptions::default()
    };
    let mut sub = h.bus.subscribe(pattern("t.>"), options).await.unwrap();
    let batch = (0..50).map(|i| event("t.x", &i.to_string())).collect();
    h.bus.publish_batch(batch).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(next(&mut sub).await);
    }
    // Everything read: what is not out is waiting for room (without the cap, all 50
    // would be out).
    let settled = |out: u64| {
        let s = only_stats(&h.bus);
        s.lag == 0 && s.ready + s.in_flight == 50 - (5 - out)
    };
    until("the consumer has read everything", || settled(5)).await;
    assert!(sub.try_next().is_none(), "the sixth waits for an ack");
    held.remove(0).ack();
    let sixth = next(&mut sub).await;
    assert_eq!(payload(&sixth), "5");
    until("the ack is applied", || only_stats(&h.bus).acked == 1).await;
    until("the consumer has read everything", || settled(4)).await;
    assert_eq!(only_stats(&h.bus).in_flight, 5, "one out for the one acked");
    assert!(sub.try_next().is_none());
}

#[tokio::test]
async fn auto_ack_never_redelivers() {
    let h = harness();
    let options = SubscribeOptions {
        ack_mode: AckMode::Auto,
        ..SubscribeOptions::default()
    };
    let mut sub = h.bus.subscribe(pattern("t.>"), options).await.unwrap();
    h.bus.publish(event("t.x", "once")).await.unwrap();
    assert_eq!(payload(&next(&mut sub).await), "once");
    // Acked as it was handed over: nothing in flight, nothing for a deadline to resend.
    until("the delivery is acked", || {
        let s = only_stats(&h.bus);
        s.in_flight == 0 && s.acked == 1
    })
    .await;
    h.clock.advance(Duration::from_secs(3600));
    caught_up(&h.bus).await;
    assert!(sub.try_next().is_none());
}

#[tokio::test]
async fn filters_route_by_type_and_headers() {
    let h = harness();
    let options = SubscribeOptions {
        filter: Filter {
            types: vec!["HandPlayed".into()],
            headers: [("game".to_string(), "7".to_string())].into(),
        },
        ..SubscribeOptions::default()
    };
    let mut sub = h.bus.subscribe(pattern("game.>"), options).await.unwrap();
    h.bus
        .publish_batch(vec![
            event("game.e", "wrong type")
                .with_type("RoundCompleted")
                .with_header("game", "7"),
            event("game.e", "wrong game")
                .with_type("HandPlayed")
                .with_header("game", "8"),
            event("game.e", "match")
                .with_type("HandPlayed")
                .with_header("game", "7"),
        ])
        .await
        .unwrap();
    assert_eq!(payload(&next(&mut sub).await), "match");
    caught_up(&h.bus).await;
    assert!(sub.try_next().is_none());
}

#[tokio::test]
async fn a_prioritized_subscription_delivers_higher_priority_first() {
    let h = harness();
    let options = SubscribeOptions {
        prioritized: true,
        max_in_flight: 1,
        start: StartPosition::All,
        ..SubscribeOptions::default()
    };
    let batch = vec![
        event("q.x", "low-1").with_header("priority", "1"),
        event("q.x", "none"),
        event("q.x", "high").with_header("priority", "9"),
        event("q.x", "low-2").with_header("priority", "1"),
    ];
    h.bus.publish_batch(batch).await.unwrap();
    let mut sub = h.bus.subscribe(pattern("q.>"), options).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..4 {
        let d = next(&mut sub).await;
        order.push(payload(&d));
        d.ack();
    }
    assert_eq!(order, ["high", "low-1", "low-2", "none"]);
}

#[tokio::test]
async fn start_positions_pick_where_a_subscription_begins() {
    let h = harness();
    h.bus.publish(event("s.x", "1")).await.unwrap();
    h.clock.advance(Duration::from_secs(60));
    let since = h.clock.now();
    h.bus.publish(event("s.x", "2")).await.unwrap();
    h.bus.publish(event("s.x", "3")).await.unwrap();
    for (start, first) in [
        (StartPosition::All, "1"),
        (StartPosition::Seq(3), "3"),
        (StartPosition::Time(since), "2"),
    ] {
        let mut sub = h
            .bus
            .subscribe(
                pattern("s.>"),
                SubscribeOptions {
                    start,
                    ..SubscribeOptions::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(payload(&next(&mut sub).await), first, "{start:?}");
    }
    let mut new_only = h
        .bus
        .subscribe(pattern("s.>"), SubscribeOptions::default())
        .await
        .unwrap();
    h.bus.publish(event("s.x", "4")).await.unwrap();
    assert_eq!(payload(&next(&mut new_only).await), "4");
}

#[tokio::test]
async fn a_subscriber_overtaken_by_retention_is_closed_with_a_reason() {
    let h = harness_with(|o| ganglion_bus::BusOptions {
        log: ganglion_log::LogOptions {
            segment_bytes: 4096,
            retention: ganglion_log::Retention {
                max_bytes: Some(16 * 1024),
                ..ganglion_log::Retention::default()
            },
            ..ganglion_log::LogOptions::default()
        },
        ..o
    });
    let mut lagging = h
        .bus
        .subscribe(
            pattern("t.>"),
            SubscribeOptions {
                max_in_flight: 1,
                ..SubscribeOptions::default()
            },
        )
        .await
        .unwrap();
    h.bus.publish(event("t.x", "0")).await.unwrap();
    let held = next(&mut lagging).await;
    for chunk in 0..20 {
        let batch = (0..100)
            .map(|i| event("t.x", &format!("{chunk}-{i}-{}", "p".repeat(40))))
            .collect();
        h.bus.publish_batch(batch).await.unwrap();
    }
    assert!(
        h.bus.log().first_seq() > 300,
        "retention deleted the head of the log"
    );
    held.ack();
    let mut rest = 0;
    while tokio::time::timeout(Duration::from_secs(10), lagging.next())
        .await
        .unwrap()
        .is_some()
    {
        rest += 1;
    }
    let reason = lagging.closed_reason().expect("closed with a reason");
    assert!(reason.starts_with("fell behind: "), "{reason}");
    assert!(
        reason.contains("deleted by retention before delivery"),
        "{reason}"
    );
    assert!(rest < 300);
}
