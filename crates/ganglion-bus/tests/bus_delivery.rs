//! Routing, acks, redelivery with backoff, ack deadlines, dead letters and redrive,
//! all on a manual clock.

mod common;

use std::time::Duration;

use common::*;
use ganglion_core::EventBus;
use ganglion_core::bus::{Backoff, StartPosition, SubscribeOptions};

#[tokio::test]
async fn wildcards_route_each_event_to_exactly_the_matching_subscriptions() {
    let h = harness();
    let mut exact = h
        .bus
        .subscribe(pattern("game.state.update"), SubscribeOptions::default())
        .await
        .unwrap();
    let mut star = h
        .bus
        .subscribe(pattern("game.*.update"), SubscribeOptions::default())
        .await
        .unwrap();
    let mut tail = h
        .bus
        .subscribe(pattern("game.>"), SubscribeOptions::default())
        .await
        .unwrap();
    let mut chat = h
        .bus
        .subscribe(pattern("chat.>"), SubscribeOptions::default())
        .await
        .unwrap();

    let acks = h
        .bus
        .publish_batch(vec![
            event("game.state.update", "1"),
            event("game.round.completed", "2"),
            event("chat.room.message", "3"),
        ])
        .await
        .unwrap();
    assert_eq!(acks.iter().map(|a| a.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(acks.iter().all(|a| !a.duplicate && !a.id.is_empty()));

    let got = next(&mut exact).await;
    assert_eq!(
        (payload(&got), got.attempt(), got.seqs().to_vec()),
        ("1".into(), 1, vec![1])
    );
    got.ack();
    assert_eq!(payload(&next(&mut star).await), "1");
    assert_eq!(payload(&next(&mut tail).await), "1");
    assert_eq!(payload(&next(&mut tail).await), "2");
    assert_eq!(payload(&next(&mut chat).await), "3");
    caught_up(&h.bus).await;
    assert!(exact.try_next().is_none());
    assert!(star.try_next().is_none());
    assert!(chat.try_next().is_none());
}

#[tokio::test]
async fn a_nacked_event_comes_back_after_the_backoff_without_holding_up_the_others() {
    let h = harness();
    let mut sub = h
        .bus
        .subscribe(pattern("jobs.>"), SubscribeOptions::default())
        .await
        .unwrap();
    h.bus.publish(event("jobs.a", "first")).await.unwrap();
    let first = next(&mut sub).await;
    first.nack(None, "handler failed");
    until("the nack is applied", || only_stats(&h.bus).nacked == 1).await;
    h.bus.publish(event("jobs.b", "second")).await.unwrap();
    let second = next(&mut sub).await;
    assert_eq!(
        payload(&second),
        "second",
        "the failing event does not block the next"
    );
    second.ack();
    until("the ack is applied", || only_stats(&h.bus).acked == 1).await;

    // Default backoff: 100 ms ± 20 %. Not before 80 ms, surely by 120 ms. The consumer
    // sleeps until then; 79 ms wakes no one.
    until("the consumer sleeps on the clock", || {
        h.clock.sleepers() >= 1
    })
    .await;
    h.clock.advance(Duration::from_millis(79));
    // Woken by the advance, it would redeliver and sleep again; not woken, it sleeps on.
    until("the consumer sleeps", || h.clock.sleepers() >= 1).await;
    assert!(sub.try_next().is_none(), "redelivered before the backoff");
    h.clock.advance(Duration::from_millis(41));
    let again = next(&mut sub).await;
    assert_eq!((payload(&again), again.attempt()), ("first".into(), 2));
    again.ack();
}

#[tokio::test]
async fn backoff_grows_exponentially_and_a_nack_delay_overrides_it() {
    let h = harness();
    let options = SubscribeOptions {
        backoff: Backoff {
            jitter: 0.0,
            ..Backoff::default()
        },
        max_deliveries: 10,
        ..SubscribeOptions::default()
    };
    let mut sub = h.bus.subscribe(pattern("jobs.>"), options).await.unwrap();
    h.bus.publish(event("jobs.a", "x")).await.unwrap();
    for (attempt, wait_ms) in [(1u32, 100u64), (2, 200), (3, 400), (4, 800)] {
        let d = next(&mut sub).await;
        assert_eq!(d.attempt(), attempt);
        d.nack(None, "again");
        // The consumer takes the nack at the current time, then sleeps until the backoff.
        until("the nack is applied", || {
            only_stats(&h.bus).nacked == u64::from(attempt)
        })
        .await;
        until("the consumer sleeps on the clock", || {
            h.clock.sleepers() >= 1
        })
        .await;
        h.clock.advance(Duration::from_millis(wait_ms - 1));
        until("the consumer sleeps", || h.clock.sleepers() >= 1).await;
        assert!(
            sub.try_next().is_none(),
            "attempt {} came early",
            attempt + 1
        );
        h.clock.advance(Duration::from_millis(1));
    }
    let d = next(&mut sub).await;
    assert_eq!(d.attempt(), 5);
    d.nack(Some(Duration::from_secs(10)), "later please");
    until("the nack is applied", || only_stats(&h.bus).nacked == 5).await;
    until("the consumer sleeps on the clock", || {
        h.clock.sleepers() >= 1
    })
    .await;
    h.clock.advance(Duration::from_millis(9_999));
    until("the consumer sleeps", || h.clock.sleepers() >= 1).await;
    assert!(sub.try_next().is_none());
    h.clock.advance(Duration::from_millis(1));
    assert_eq!(next(&mut sub).await.attempt(), 6);
}

#[tokio::test]
async fn an_unacked_delivery_is_redelivered_after_the_ack_deadline() {
    let h = harness();
    let options = SubscribeOptions {
        backoff: Backoff {
            jitter: 0.0,
            ..Backoff::default()
        },
        ..SubscribeOptions::default()
    };
    let mut sub = h.bus.subscribe(pattern("jobs.>"), options).await.unwrap();
    h.bus.publish(event("jobs.a", "x")).await.unwrap();
    let _ignored = next(&mut sub).await;
    until("the consumer sleeps on the clock", || {
        h.clock.sleepers() >= 1
    })
    .await;
    h.clock.advance(Duration::from_secs(30));
    until("the ack deadline passes", || {
        only_stats(&h.bus).ack_timeouts == 1
    })
    .await;
    until("the consumer sleeps until the backoff", || {
        h.clock.sleepers() >= 1
    })
    .await;
    assert!(
        sub.try_next().is_none(),
        "the backoff follows the expired deadline"
    );
    h.clock.advance(Duration::from_millis(100));
    let again = next(&mut sub).await;
    assert_eq!(again.attempt(), 2);

    // What the subscription counted (for /metrics).
    until("the redelivery is counted", || {
        only_stats(&h.bus).delivered == 2
    })
    .await;
    let stats = &h.bus.subscriptions()[0];
    assert_eq!(stats.name, sub.name());
    assert_eq!(
        (stats.delivered, stats.redelivered, stats.ack_timeouts),
        (2, 1, 1)
    );
    assert_eq!((stats.in_flight, stats.acked, stats.lag), (1, 0, 0));
    again.ack();
    until("the ack is applied", || only_stats(&h.bus).acked == 1).await;
    let stats = &h.bus.subscriptions()[0];
    assert_eq!((stats.in_flight, stats.acked), (0, 1));
    // Only first deliveries are sampled for latency: the redelivery is not.
    assert_eq!(h.bus.delivery_latency().count, 1);
}

#[tokio::test]
async fn an_event_out_of_attempts_is_dead_lettered_listed_and_redriven() {
    let h = harness();
    let options = SubscribeOptions {
        durable: Some("worker".into()),
        max_deliveries: 3,
        backoff: Backoff {
            jitter: 0.0,
            ..Backoff::default()
        },
        ..SubscribeOptions::default()
    };
    let mut sub = h.bus.subscribe(pattern("jobs.>"), options).await.unwrap();
    let original = event("jobs.render", "poison")
        .with_type("RenderJob")
        .with_header("correlation_id", "c-9");
    let published = h.bus.publish(original).await.unwrap();
    for (attempt, backoff_ms) in [(1u32, 100u64), (2, 200)] {
        let d = next(&mut sub).await;
        assert_eq!(d.attempt(), attempt);
        d.nack(None, &format!("boom {attempt}"));
        until("the nack is applied", || {
            stats_of(&h.bus, "worker").nacked == u64::from(attempt)
        })
        .await;
        h.clock.advance(Duration::from_millis(backoff_ms));
    }
    let last = next(&mut sub).await;
    assert_eq!(last.attempt(), 3);
    last.nack(None, "boom 3");

    let mut dlq = h
        .bus
        .subscribe(
            pattern("dlq.worker"),
            SubscribeOptions {
                start: StartPosition::All,
                ..SubscribeOptions::default()
            },
        )
        .await
        .unwrap();
    let letter = next(&mut dlq).await;
    let e = letter.event().unwrap();
    assert_eq!(payload(&letter), "poison");
    assert_eq!(e.event_type, "RenderJob");
    assert_eq!(e.header("correlation_id"), Some("c-9"));
    assert_eq!(e.header("dlq_origin_topic"), Some("jobs.render"));
    assert_eq!(
        e.header("dlq_origin_seq"),
        Some(published.seq.to_string().as_str())
    );
    assert_eq!(e.header("dlq_subscription"), Some("worker"));
    assert_eq!(e.header("dlq_attempts"), Some("3"));
    assert_eq!(e.header("dlq_last_error"), Some("boom 3"));

    // Listed once its publication has completed, which can trail its delivery.
    let letters = dead_letters_soon(&h.bus, "worker").await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0].origin_seq, letters[0].attempts),
        (published.seq, 3)
    );
    assert_eq!(letters[0].last_error, "boom 3");
    until("the dead letter leaves the in-flight count", || {
        let s = stats_of(&h.bus, "worker");
        s.dead_lettered == 1 && s.in_flight == 0
    })
    .await;
    caught_up(&h.bus).await;
    assert!(sub.try_next().is_none(), "a dead letter is not redelivered");

    assert_eq!(h.bus.redrive("worker".into(), vec![]).await.unwrap(), 1);
    let redriven = next(&mut sub).await;
    assert_eq!(payload(&redriven), "poison");
    assert_eq!(redriven.attempt(), 1);
    assert_eq!(redriven.event().unwrap().header("dlq_origin_topic"), None);
    redriven.ack();
    assert!(
        h.bus
            .dead_letters("worker".into(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let err = h
        .bus
        .redrive("worker".into(), vec![424242])
        .await
        .unwrap_err();
    assert_eq!(err.code().as_str(), "NOT_FOUND");
}

#[tokio::test]
async fn term_sends_an_event_straight_to_the_dead_letter_topic() {
    let h = harness();
    let mut sub = h
        .bus
        .subscribe(pattern("jobs.>"), SubscribeOptions::default())
        .await
        .unwrap();
    h.bus.publish(event("jobs.a", "bad input")).await.unwrap();
    let d = next(&mut sub).await;
    d.term("cannot parse");
    let name = sub.name().to_owned();
    let letters = dead_letters_soon(&h.bus, &name).await;
    assert_eq!(
        (letters[0].attempts, letters[0].last_error.as_str()),
        (1, "cannot parse")
    );
    assert_eq!(letters[0].event.topic.as_str(), format!("dlq.{name}"));
}

#[tokio::test]
async fn dead_letter_counts_are_letters_not_redrive_markers_on_custom_topics_too() {
    let h = harness();
    let mut sub = h
        .bus
        .subscribe(
            pattern("jobs.>"),
            SubscribeOptions {
                durable: Some("worker".into()),
                dead_letter_topic: Some(topic("errors.worker")),
                ..SubscribeOptions::default()
            },
        )
        .await
        .unwrap();
    for n in 0..3 {
        h.bus
            .publish(event("jobs.a", &format!("bad {n}")))
            .await
            .unwrap();
        next(&mut sub).await.term("cannot parse");
    }
    let counted = |bus: &ganglion_bus::Bus| {
        let listed = bus
            .subscriptions()
            .into_iter()
            .find(|s| s.name == "worker")
            .map(|s| (s.dead_letter_topic.clone(), s.dead_letters));
        (listed, bus.dead_letter_counts())
    };
    let want = |n: u64| {
        (
            Some(("errors.worker".to_owned(), n)),
            vec![("worker".to_owned(), n)],
        )
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        while counted(&h.bus) != want(3) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("three dead letters counted: {:?}", counted(&h.bus)));

    // A redrive appends the event again and a marker on the dead-letter topic: one
    // dead letter fewer, not one more.
    let first = dead_letters_soon(&h.bus, "worker").await[0].event.seq;
    assert_eq!(
        h.bus.redrive("worker".into(), vec![first]).await.unwrap(),
        1
    );
    next(&mut sub).await.ack();
    assert_eq!(counted(&h.bus), want(2));

    // Counted again from the log after a restart, while the subscriber is away.
    drop(sub);
    let Harness { bus, clock, dir } = h;
    bus.shutdown().await.unwrap();
    drop(bus);
    let bus = ganglion_bus::Bus::open(options(dir.path(), &clock)).unwrap();
    assert_eq!(counted(&bus), want(2));
}
