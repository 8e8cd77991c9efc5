//! A damaged log under a durable subscriber: the bus refuses to open instead of handing
//! out acknowledged sequence numbers again; after a repair, new events get new numbers
//! and reach the subscriber whose floor was above the lost ones.

mod common;

use common::*;
use ganglion_bus::Bus;
use ganglion_bus::log::{Log, LogOptions, Recovery};
use ganglion_core::EventBus;
use ganglion_core::ManualClock;
use ganglion_core::bus::{StartPosition, SubscribeOptions};

fn durable() -> SubscribeOptions {
    SubscribeOptions {
        durable: Some("analytics".into()),
        start: StartPosition::All,
        ..SubscribeOptions::default()
    }
}

#[tokio::test]
async fn a_durable_subscriber_gets_new_events_after_the_log_end_was_damaged_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_fixed_instant();
    {
        let bus = Bus::open(options(dir.path(), &clock)).unwrap();
        let mut sub = bus.subscribe(pattern("game.>"), durable()).await.unwrap();
        for i in 1..=20 {
            bus.publish(event("game.move", &format!("move {i}")))
                .await
                .unwrap();
        }
        for _ in 1..=20 {
            next(&mut sub).await.ack();
        }
        drop(sub);
        bus.shutdown().await.unwrap();
    }
    // The newest segment loses its last records (a bad disk, an operator's truncate).
    let log_dir = dir.path().join("log");
    let segment = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max()
        .unwrap();
    let len = std::fs::metadata(&segment).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.set_len(len - 60).unwrap();
    drop(file);

    let err = Bus::open(options(dir.path(), &clock)).unwrap_err();
    assert!(
        err.to_string().contains("acknowledged records are missing"),
        "{err}"
    );

    let repaired = Log::open(
        &log_dir,
        LogOptions {
            recovery: Recovery::DropDamagedTail,
            ..LogOptions::default()
        },
    )
    .unwrap();
    assert_eq!(repaired.next_seq(), 21, "numbering goes on after 20");
    repaired.close().unwrap();

    let bus = Bus::open(options(dir.path(), &clock)).unwrap();
    let ack = bus.publish(event("game.move", "move 21")).await.unwrap();
    assert_eq!(ack.seq, 21);
    let mut sub = bus.subscribe(pattern("game.>"), durable()).await.unwrap();
    let delivery = next(&mut sub).await;
    assert_eq!(payload(&delivery), "move 21");
    assert_eq!(delivery.event().unwrap().seq, 21);
}
