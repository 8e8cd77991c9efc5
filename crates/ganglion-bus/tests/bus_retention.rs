//! Retention by topic pattern (age, count, bytes), purges and topic deletion: what
//! expires disappears from replays and subscriptions at once, and the disk comes back a
//! segment at a time. Ages are on the virtual clock.

mod common;

use std::time::Duration;

use common::*;
use ganglion_bus::{Bus, BusOptions, RetentionRule};
use ganglion_core::bus::{AckMode, StartPosition, SubscribeOptions};
use ganglion_core::{EventBus, ManualClock};

fn rule(pattern_: &str) -> RetentionRule {
    RetentionRule {
        pattern: pattern(pattern_),
        max_age: None,
        max_bytes: None,
        max_events: None,
    }
}

fn small_segments(o: BusOptions) -> BusOptions {
    let mut o = o;
    o.log.segment_bytes = 2048;
    o
}

async fn replayed(bus: &Bus, p: &str) -> Vec<String> {
    bus.replay(pattern(p), StartPosition::All, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.payload.to_vec()).unwrap())
        .collect()
}

async fn publish_n(bus: &Bus, topic: &str, from: usize, n: usize) {
    for i in from..from + n {
        bus.publish(event(topic, &i.to_string())).await.unwrap();
    }
}

#[tokio::test]
async fn max_events_keeps_the_newest_of_the_topics_a_rule_matches_and_others_keep_all() {
    let h = harness_with(|o| BusOptions {
        retention: vec![RetentionRule {
            max_events: Some(10),
            ..rule("game.>")
        }],
        ..small_segments(o)
    });
    publish_n(&h.bus, "game.move", 0, 20).await;
    publish_n(&h.bus, "chat.line", 0, 5).await;
    publish_n(&h.bus, "game.score", 20, 10).await;
    h.bus.apply_retention().await.unwrap();

    let kept = replayed(&h.bus, "game.>").await;
    assert_eq!(kept, (20..30).map(|i| i.to_string()).collect::<Vec<_>>());
    assert_eq!(replayed(&h.bus, "chat.>").await.len(), 5, "no rule: kept");

    // A durable subscriber from the start sees only what is kept, and counts the rest.
    let options = SubscribeOptions {
        durable: Some("late".into()),
        start: StartPosition::All,
        ack_mode: AckMode::Auto,
        ..SubscribeOptions::default()
    };
    let mut sub = h.bus.subscribe(pattern("game.>"), options).await.unwrap();
    for want in 20..30 {
        assert_eq!(payload(&next(&mut sub).await), want.to_string());
    }
    let stats = h.bus.subscriptions();
    assert_eq!(stats[0].expired, 20, "{stats:?}");
}

#[tokio::test]
async fn max_age_expires_by_the_clock() {
    let h = harness_with(|o| BusOptions {
        retention: vec![RetentionRule {
            max_age: Some(Duration::from_secs(3600)),
            ..rule(">")
        }],
        ..o
    });
    publish_n(&h.bus, "a.b", 0, 5).await;
    h.clock.advance(Duration::from_secs(1800));
    publish_n(&h.bus, "a.b", 5, 3).await;
    h.bus.apply_retention().await.unwrap();
    assert_eq!(
        replayed(&h.bus, ">").await.len(),
        8,
        "nothing is an hour old"
    );
    h.clock.advance(Duration::from_secs(1801));
    h.bus.apply_retention().await.unwrap();
    assert_eq!(replayed(&h.bus, ">").await, ["5", "6", "7"]);
}

#[tokio::test]
async fn max_bytes_bounds_a_topics_records_and_the_disk_comes_back() {
    let h = harness_with(|o| BusOptions {
        retention: vec![RetentionRule {
            max_bytes: Some(4096),
            ..rule(">")
        }],
        ..small_segments(o)
    });
    let big = "x".repeat(500);
    for _ in 0..100 {
        h.bus.publish(event("logs.raw", &big)).await.unwrap();
    }
    let before = h.bus.log().stats();
    let deleted = h.bus.apply_retention().await.unwrap();
    let after = h.bus.log().stats();
    let kept = replayed(&h.bus, ">").await.len();
    assert!(
        (6..=8).contains(&kept),
        "about 4 KiB of ~560-byte records kept: {kept}"
    );
    assert!(deleted > 80, "{deleted} records deleted");
    assert!(
        after.bytes < 4096 + 3 * 2048 && after.bytes < before.bytes / 5,
        "the disk came back: {} -> {} bytes",
        before.bytes,
        after.bytes
    );
}

#[tokio::test]
async fn a_long_lived_topic_keeps_its_segment_on_disk_but_the_rest_of_it_is_gone_from_reads() {
    let h = harness_with(|o| BusOptions {
        retention: vec![RetentionRule {
            max_events: Some(2),
            ..rule("game.>")
        }],
        ..small_segments(o)
    });
    h.bus.publish(event("audit.login", "kept")).await.unwrap();
    publish_n(&h.bus, "game.move", 0, 60).await;
    h.bus.apply_retention().await.unwrap();
    assert_eq!(
        h.bus.log().first_seq(),
        1,
        "the audit event holds its segment"
    );
    assert_eq!(replayed(&h.bus, "game.>").await, ["58", "59"]);
    assert_eq!(replayed(&h.bus, "audit.>").await, ["kept"]);

    // Once it expires too, its segment (and those after it) go.
    h.bus
        .set_retention(vec![RetentionRule {
            max_events: Some(2),
            ..rule(">")
        }])
        .await
        .unwrap();
    assert!(
        h.bus.log().first_seq() > 1,
        "segments deleted once all expired"
    );
    assert!(replayed(&h.bus, "audit.>").await.is_empty());
}

#[tokio::test]
async fn a_purge_expires_what_is_there_keeps_what_comes_after_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_fixed_instant();
    {
        let bus = Bus::open(options(dir.path(), &clock)).unwrap();
        publish_n(&bus, "game.move", 0, 5).await;
        publish_n(&bus, "chat.line", 0, 2).await;
        let (topics, events) = bus.purge(&pattern("game.>")).unwrap();
        assert_eq!((topics, events), (1, 5));
        publish_n(&bus, "game.move", 5, 1).await;
        assert_eq!(replayed(&bus, "game.>").await, ["5"]);
        assert_eq!(replayed(&bus, "chat.>").await.len(), 2);
        bus.shutdown().await.unwrap();
    }
    let bus = Bus::open(options(dir.path(), &clock)).unwrap();
    assert_eq!(
        replayed(&bus, "game.>").await,
        ["5"],
        "the purge holds after a restart"
    );
    // Deleting forgets the topic until it is published to again.
    let (deleted, _) = bus.delete_topics(&pattern("chat.>")).unwrap();
    assert_eq!(deleted.len(), 1);
    let topics: Vec<String> = bus
        .topics()
        .await
        .unwrap()
        .iter()
        .map(|t| t.topic.to_string())
        .collect();
    assert_eq!(topics, ["game.move"]);
    assert!(replayed(&bus, "chat.>").await.is_empty());
}

#[tokio::test]
async fn dead_letter_topics_follow_the_rules_too() {
    let h = harness_with(|o| BusOptions {
        retention: vec![RetentionRule {
            max_events: Some(1),
            ..rule("dlq.>")
        }],
        ..o
    });
    let options = SubscribeOptions {
        durable: Some("worker".into()),
        max_deliveries: 1,
        ..SubscribeOptions::default()
    };
    let mut sub = h.bus.subscribe(pattern("jobs.>"), options).await.unwrap();
    publish_n(&h.bus, "jobs.run", 0, 3).await;
    for _ in 0..3 {
        next(&mut sub).await.term("bad");
    }
    until("three dead letters", || {
        h.bus.subscriptions()[0].dead_lettered == 3
    })
    .await;
    h.bus.apply_retention().await.unwrap();
    let letters = h.bus.dead_letters("worker".into(), 10).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].origin_seq, 3);
}
