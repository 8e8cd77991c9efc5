//! The scenarios, each on its own topics and names. Every one of them holds for every
//! harness; a difference between implementations is a bug in one of them.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use ganglion_core::bus::{
    Aggregation, Backoff, BatchOptions, Delivery, Filter, GroupKey, StartPosition,
    SubscribeOptions, Subscription,
};
use ganglion_core::engine::SubscriptionStats;
use ganglion_core::{Clock, ErrorCode, Event, Pattern, Topic};

use crate::{Harness, soon};

/// How long "nothing arrives" is watched for, in real time.
const QUIET: Duration = Duration::from_millis(100);

fn topic(s: &str) -> Topic {
    Topic::new(s).expect("a valid topic")
}

fn pattern(s: &str) -> Pattern {
    Pattern::new(s).expect("a valid pattern")
}

fn event(t: &str, payload: &str) -> Event {
    Event::new(topic(t), payload.to_owned())
}

fn payload(d: &Delivery) -> String {
    let event = d.event().expect("a delivery with an event");
    String::from_utf8_lossy(&event.payload).into_owned()
}

async fn subscribe(h: &dyn Harness, p: &str, options: SubscribeOptions) -> Subscription {
    soon("subscribing", h.bus().subscribe(pattern(p), options))
        .await
        .expect("the subscription opens")
}

async fn next(sub: &mut Subscription) -> Delivery {
    soon("a delivery", sub.next())
        .await
        .expect("the subscription is open")
}

/// Nothing is delivered for a moment (real time).
async fn quiet(sub: &mut Subscription, why: &str) {
    if let Ok(Some(d)) = tokio::time::timeout(QUIET, sub.next()).await {
        panic!("{why}: got {:?} (attempt {})", payload(&d), d.attempt());
    }
}

/// Waits until the engine's counters for subscription `name` satisfy `ready`.
async fn until(
    h: &dyn Harness,
    name: &str,
    what: &str,
    ready: impl Fn(&SubscriptionStats) -> bool,
) {
    soon(what, async {
        loop {
            let stats = h.engine().subscriptions();
            if stats.iter().any(|s| s.name == name && ready(s)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

fn durable(name: &str) -> SubscribeOptions {
    SubscribeOptions {
        durable: Some(name.into()),
        ..SubscribeOptions::default()
    }
}

/// A fixed backoff (no jitter), so the clock can step exactly past it.
fn fixed_backoff(delay: Duration) -> Backoff {
    Backoff {
        initial: delay,
        multiplier: 1.0,
        max: delay,
        jitter: 0.0,
    }
}

/// `*` is one token, `>` one or more at the end; durable and ephemeral topics alike.
pub async fn routes_by_wildcards(h: &dyn Harness) {
    let mut one = subscribe(h, "r.*.update", SubscribeOptions::default()).await;
    let mut rest = subscribe(h, "r.>", SubscribeOptions::default()).await;
    let mut live = subscribe(h, "eph.r.*", SubscribeOptions::default()).await;
    for t in ["r.a.update", "r.a.b.update", "r", "eph.r.x", "rr.a.update"] {
        h.bus().publish(event(t, t)).await.expect("published");
    }
    let d = next(&mut one).await;
    assert_eq!(payload(&d), "r.a.update");
    d.ack();
    quiet(&mut one, "`*` matches one token only").await;
    for expected in ["r.a.update", "r.a.b.update"] {
        let d = next(&mut rest).await;
        assert_eq!(payload(&d), expected);
        d.ack();
    }
    quiet(&mut rest, "`r.>` matches neither `r` nor `rr.…`").await;
    let d = next(&mut live).await;
    assert_eq!(payload(&d), "eph.r.x");
    assert_eq!(
        d.event().map(|e| e.seq),
        Some(0),
        "ephemeral events are not logged"
    );
    d.ack();
}

/// An ack settles; a nack with a delay redelivers after exactly that delay.
pub async fn acks_and_nacks_with_a_delay(h: &dyn Harness) {
    let mut sub = subscribe(h, "n.>", durable("nacker")).await;
    h.bus()
        .publish(event("n.a", "once"))
        .await
        .expect("published");
    h.bus()
        .publish(event("n.b", "twice"))
        .await
        .expect("published");
    let first = next(&mut sub).await;
    let second = next(&mut sub).await;
    assert_eq!(
        (payload(&first), payload(&second)),
        ("once".into(), "twice".into())
    );
    first.ack();
    second.nack(Some(Duration::from_secs(5)), "not yet");
    until(h, "nacker", "the nack to be counted", |s| {
        s.nacked == 1 && s.acked == 1
    })
    .await;
    h.clock().advance(Duration::from_millis(4_999));
    quiet(&mut sub, "not redelivered before its delay").await;
    h.clock().advance(Duration::from_millis(1));
    let again = next(&mut sub).await;
    assert_eq!((payload(&again), again.attempt()), ("twice".into(), 2));
    again.ack();
    quiet(&mut sub, "an acked event is not redelivered").await;
}

/// A delivery never settled comes back after the ack deadline (and the backoff).
pub async fn redelivers_after_the_ack_deadline(h: &dyn Harness) {
    let options = SubscribeOptions {
        ack_deadline: Duration::from_secs(30),
        backoff: fixed_backoff(Duration::from_secs(1)),
        ..durable("sleepy")
    };
    let mut sub = subscribe(h, "d.>", options).await;
    h.bus()
        .publish(event("d.job", "job"))
        .await
        .expect("published");
    let first = next(&mut sub).await;
    assert_eq!(first.attempt(), 1);
    h.clock().advance(Duration::from_secs(29));
    quiet(&mut sub, "not before the deadline").await;
    h.clock().advance(Duration::from_secs(1));
    until(h, "sleepy", "the deadline to be counted", |s| {
        s.ack_timeouts == 1
    })
    .await;
    h.clock().advance(Duration::from_secs(1));
    let again = next(&mut sub).await;
    assert_eq!((payload(&again), again.attempt()), ("job".into(), 2));
    again.ack();
    first.ack(); // too late: that attempt is over; the event is not delivered again
    quiet(&mut sub, "settled").await;
}

/// Each failure waits out the backoff; after `max_deliveries` the event goes to the
/// dead-letter topic with its origin, attempts and last error; a redrive publishes it
/// again on its topic.
pub async fn backs_off_then_dead_letters_and_redrives(h: &dyn Harness) {
    let options = SubscribeOptions {
        max_deliveries: 3,
        backoff: Backoff {
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            max: Duration::from_secs(60),
            jitter: 0.0,
        },
        ..durable("scorer")
    };
    let mut letters = subscribe(h, "dlq.scorer", SubscribeOptions::default()).await;
    let mut sub = subscribe(h, "b.>", options).await;
    let published = h
        .bus()
        .publish(event("b.hand", "poison"))
        .await
        .expect("published");
    for (attempt, backoff) in [(1, 1), (2, 2)] {
        let d = next(&mut sub).await;
        assert_eq!(d.attempt(), attempt);
        d.nack(None, &format!("cannot score (attempt {attempt})"));
        until(h, "scorer", "the nack to be counted", |s| {
            s.nacked == u64::from(attempt)
        })
        .await;
        h.clock().advance(Duration::from_millis(backoff * 1000 - 1));
        quiet(&mut sub, "not before the backoff").await;
        h.clock().advance(Duration::from_millis(1));
    }
    let last = next(&mut sub).await;
    assert_eq!(last.attempt(), 3);
    last.nack(None, "cannot score (attempt 3)");
    let letter = next(&mut letters).await;
    let dead = letter.event().expect("an event");
    assert_eq!(dead.topic.as_str(), "dlq.scorer");
    assert_eq!(dead.payload, "poison");
    letter.ack();
    let listed = soon("the dead letter to be listed", async {
        loop {
            let listed = h
                .bus()
                .dead_letters("scorer".into(), 10)
                .await
                .expect("listed");
            if !listed.is_empty() {
                return listed;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].origin_topic, "b.hand");
    assert_eq!(listed[0].origin_seq, published.seq);
    assert_eq!(listed[0].attempts, 3);
    assert_eq!(listed[0].last_error, "cannot score (attempt 3)");
    assert_eq!(
        h.bus()
            .redrive("scorer".into(), vec![])
            .await
            .expect("redriven"),
        1
    );
    let redriven = next(&mut sub).await;
    assert_eq!(
        (payload(&redriven), redriven.attempt()),
        ("poison".into(), 1)
    );
    redriven.ack();
    let left = h
        .bus()
        .dead_letters("scorer".into(), 10)
        .await
        .expect("listed");
    assert!(
        left.is_empty(),
        "a redriven letter is no longer listed: {left:?}"
    );
}

/// Members of one queue group share the events: each goes to exactly one of them.
pub async fn shares_a_queue_group(h: &dyn Harness) {
    let group = || SubscribeOptions {
        queue_group: Some("workers".into()),
        ..SubscribeOptions::default()
    };
    let mut a = subscribe(h, "q.>", group()).await;
    let mut b = subscribe(h, "q.>", group()).await;
    for n in 0..20 {
        h.bus()
            .publish(event("q.job", &n.to_string()))
            .await
            .expect("published");
    }
    let mut seen = BTreeMap::new();
    while seen.len() < 20 {
        let d = tokio::select! {
            d = next(&mut a) => ("a", d),
            d = next(&mut b) => ("b", d),
        };
        assert!(seen.insert(payload(&d.1), d.0).is_none(), "delivered twice");
        d.1.ack();
    }
    quiet(&mut a, "every event went once").await;
    assert!(
        seen.values().any(|m| *m == "a") && seen.values().any(|m| *m == "b"),
        "{seen:?}"
    );
}

/// A durable subscription resumes where its acks stopped, with what was published
/// while nobody was subscribed.
pub async fn resumes_a_durable(h: &dyn Harness) {
    let mut sub = subscribe(h, "l.>", durable("ledger")).await;
    h.bus()
        .publish(event("l.entry", "1"))
        .await
        .expect("published");
    let held = next(&mut sub).await;
    held.ack();
    until(h, "ledger", "the ack to be counted", |s| s.acked == 1).await;
    // The delivery is still held: dropping the subscription must end it all the same.
    drop(sub);
    until(h, "ledger", "the subscriber to be gone", |s| s.members == 0).await;
    h.bus()
        .publish(event("l.entry", "2"))
        .await
        .expect("published");
    let mut again = subscribe(h, "l.>", durable("ledger")).await;
    let d = next(&mut again).await;
    assert_eq!((payload(&d), d.attempt()), ("2".into(), 1));
    d.ack();
    quiet(&mut again, "the acked event is not delivered again").await;
    drop(held);
}

/// A batch window gathers what arrives within it and keeps the newest per key.
pub async fn keeps_the_last_per_key_in_a_batch_window(h: &dyn Harness) {
    let options = SubscribeOptions {
        batch: Some(BatchOptions {
            window: Some(Duration::from_millis(100)),
            key: GroupKey::Header("game".into()),
            aggregation: Aggregation::KeepLast,
            ..BatchOptions::default()
        }),
        ..durable("latest")
    };
    let mut sub = subscribe(h, "w.>", options).await;
    for (game, round) in [("a", 1), ("b", 1), ("a", 2), ("a", 3)] {
        let e = event("w.state", &format!("{game}{round}")).with_header("game", game);
        h.bus().publish(e).await.expect("published");
    }
    // Held for the subscription (in a window, or out with the layer that keeps one)...
    until(h, "latest", "the window to hold every event", |s| {
        s.ready + s.in_flight == 4
    })
    .await;
    // ...and the window open: something sleeps until it closes.
    let closes = h.clock().monotonic() + Duration::from_millis(100);
    soon("the window's timer", async {
        while h.clock().next_deadline().is_none_or(|d| d > closes) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    h.clock().advance(Duration::from_millis(99));
    quiet(&mut sub, "the window is still open").await;
    h.clock().advance(Duration::from_millis(1));
    let window = next(&mut sub).await;
    let kept: Vec<(String, u64)> = window
        .events()
        .iter()
        .map(|d| {
            (
                String::from_utf8_lossy(&d.event.payload).into_owned(),
                d.coalesced,
            )
        })
        .collect();
    assert_eq!(kept, [("b1".to_owned(), 1), ("a3".to_owned(), 3)]);
    assert_eq!(
        window.seqs().len(),
        4,
        "the window's ack covers every event in it"
    );
    window.ack();
    until(h, "latest", "the window's ack", |s| s.acked == 4).await;
}

/// Replay reads the log from a sequence or from a time.
pub async fn replays_by_sequence_and_time(h: &dyn Harness) {
    let first = h.bus().publish(event("p.a", "1")).await.expect("published");
    h.clock().advance(Duration::from_secs(60));
    let later = h.clock().now();
    h.bus().publish(event("p.b", "2")).await.expect("published");
    h.bus()
        .publish(event("other", "x"))
        .await
        .expect("published");
    let all = h
        .bus()
        .replay(pattern("p.>"), StartPosition::Seq(first.seq), 10)
        .await;
    let all: Vec<String> = all
        .expect("replayed")
        .iter()
        .map(|e| e.topic.to_string())
        .collect();
    assert_eq!(all, ["p.a", "p.b"]);
    let since = h
        .bus()
        .replay(pattern("p.>"), StartPosition::Time(later), 10)
        .await;
    let since = since.expect("replayed");
    assert_eq!(since.len(), 1);
    assert_eq!(since[0].topic.as_str(), "p.b");
    let stamped = UNIX_EPOCH + Duration::from_millis(since[0].timestamp_ms);
    assert!(stamped >= later, "stamped on the engine's clock");
    let limited = h.bus().replay(pattern("p.>"), StartPosition::All, 1).await;
    assert_eq!(limited.expect("replayed").len(), 1);
}

/// A filter delivers only the events it accepts (by type and by header); the others are
/// settled without a delivery, so nothing stays held for them.
pub async fn filters_by_type_and_header(h: &dyn Harness) {
    let options = SubscribeOptions {
        filter: Filter {
            types: vec!["HandPlayed".into()],
            headers: [("table".to_owned(), "t1".to_owned())].into(),
        },
        ..durable("picky")
    };
    let mut sub = subscribe(h, "f.>", options).await;
    let sent = [
        ("HandPlayed", "t1", "wanted 1"),
        ("ChatMessage", "t1", "other type"),
        ("HandPlayed", "t2", "other table"),
        ("HandPlayed", "t1", "wanted 2"),
    ];
    for (event_type, table, body) in sent {
        let e = event("f.game", body)
            .with_type(event_type)
            .with_header("table", table);
        h.bus().publish(e).await.expect("published");
    }
    for wanted in ["wanted 1", "wanted 2"] {
        let d = next(&mut sub).await;
        assert_eq!(payload(&d), wanted);
        d.ack();
    }
    until(h, "picky", "everything settled", |s| {
        s.lag == 0 && s.ready == 0 && s.in_flight == 0
    })
    .await;
    quiet(&mut sub, "the filter refused the rest").await;
}

/// A repeated idempotency key is answered with the first publication's ack.
pub async fn dedupes_idempotency_keys(h: &dyn Harness) {
    let mut sub = subscribe(h, "k.>", SubscribeOptions::default()).await;
    let keyed = || event("k.order", "1").with_header("idempotency_key", "order-1");
    let first = h.bus().publish(keyed()).await.expect("published");
    let again = h.bus().publish(keyed()).await.expect("published");
    assert!(!first.duplicate && again.duplicate);
    assert_eq!((again.seq, &again.id), (first.seq, &first.id));
    next(&mut sub).await.ack();
    quiet(&mut sub, "a duplicate is not delivered").await;
}

/// At most `max_in_flight` events are out unacked; the next waits for an ack.
pub async fn holds_back_past_max_in_flight(h: &dyn Harness) {
    let options = SubscribeOptions {
        max_in_flight: 2,
        ..durable("narrow")
    };
    let mut sub = subscribe(h, "f.>", options).await;
    for n in 1..=3 {
        h.bus()
            .publish(event("f.job", &n.to_string()))
            .await
            .expect("published");
    }
    let one = next(&mut sub).await;
    let two = next(&mut sub).await;
    quiet(&mut sub, "two in flight at most").await;
    one.ack();
    let three = next(&mut sub).await;
    assert_eq!(payload(&three), "3");
    two.ack();
    three.ack();
}

/// Bad input is refused with the field it concerns, and nothing is published.
pub async fn refuses_bad_input_naming_the_field(h: &dyn Harness) {
    let options = SubscribeOptions {
        max_deliveries: 0,
        ..SubscribeOptions::default()
    };
    let refused = h.bus().subscribe(pattern("z.>"), options).await.err();
    let refused = refused.expect("zero deliveries is refused");
    assert_eq!(refused.code(), ErrorCode::InvalidArgument);
    assert!(
        refused
            .field()
            .is_some_and(|f| f.ends_with("max_deliveries")),
        "{refused:?}"
    );
    let batch = vec![
        event("z.ok", "1"),
        event("z.ok", "2").with_type("t".repeat(10_000)),
    ];
    let refused = h.bus().publish_batch(batch).await.err();
    let refused = refused.expect("a 10,000-byte type is refused");
    assert_eq!(refused.code(), ErrorCode::InvalidArgument);
    assert_eq!(refused.field(), Some("events[1].type"), "{refused:?}");
    let logged = h.bus().replay(pattern("z.>"), StartPosition::All, 10).await;
    assert!(
        logged.expect("replayed").is_empty(),
        "a refused batch publishes nothing"
    );
}
