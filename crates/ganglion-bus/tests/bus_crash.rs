//! A durable subscriber whose process is SIGKILLed mid-stream resumes after a restart:
//! every event ends up acked, none is lost, and redeliveries are counted.
//!
//! The child is this test binary, re-run with `--ignored --exact child_subscriber`.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use ganglion_bus::{Bus, BusOptions};
use ganglion_core::EventBus;
use ganglion_core::bus::{StartPosition, SubscribeOptions};

const CHILD_DIR: &str = "GANGLION_BUS_CRASH_CHILD_DIR";
const EVENTS: u64 = 3000;

fn durable() -> SubscribeOptions {
    SubscribeOptions {
        durable: Some("survivor".into()),
        start: StartPosition::All,
        max_in_flight: 64,
        ..SubscribeOptions::default()
    }
}

/// The subscriber that gets killed; does nothing unless run by the parent test.
#[test]
#[ignore = "run by a_durable_subscriber_killed_mid_stream_loses_nothing"]
fn child_subscriber() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let bus = Bus::open(BusOptions::new(&dir)).unwrap();
        let mut sub = bus.subscribe(pattern("game.>"), durable()).await.unwrap();
        let mut stdout = std::io::stdout().lock();
        while let Some(d) = sub.next().await {
            // Work a little, so the kill lands mid-stream.
            tokio::time::sleep(Duration::from_micros(200)).await;
            // Report first: whatever the bus may have recorded as acked is reported.
            writeln!(stdout, "ACK {}", d.seqs()[0]).unwrap();
            stdout.flush().unwrap();
            d.ack();
        }
    });
}

#[tokio::test]
async fn a_durable_subscriber_killed_mid_stream_loses_nothing() {
    let exe = std::env::current_exe().unwrap();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for trial in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        {
            let bus = Bus::open(BusOptions::new(dir.path())).unwrap();
            let batch = (1..=EVENTS)
                .map(|i| event("game.hand", &i.to_string()))
                .collect();
            bus.publish_batch(batch).await.unwrap();
            bus.shutdown().await.unwrap();
        }
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "child_subscriber",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut acked = BTreeSet::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The test harness may have printed on the same line first.
                if let Some(seq) = line.find("ACK ").map(|at| &line[at + 4..]) {
                    if acked.is_empty() {
                        let _ = first_tx.send(());
                    }
                    acked.insert(seq.parse::<u64>().unwrap());
                }
            }
            acked
        });
        first_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the child acked an event");
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(rng % 400));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acked_by_child = reader.join().unwrap();
        assert!(
            (acked_by_child.len() as u64) < EVENTS,
            "trial {trial}: killed mid-stream"
        );

        let bus = Bus::open(BusOptions::new(dir.path())).unwrap();
        let mut sub = bus.subscribe(pattern("game.>"), durable()).await.unwrap();
        let mut seen = acked_by_child.clone();
        let mut redelivered = 0;
        while (seen.len() as u64) < EVENTS {
            let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .unwrap_or_else(|_| {
                    let missing: Vec<u64> = (1..=EVENTS).filter(|s| !seen.contains(s)).collect();
                    panic!("trial {trial}: events {missing:?} were lost")
                })
                .unwrap();
            let seq = d.seqs()[0];
            if acked_by_child.contains(&seq) {
                redelivered += 1;
            }
            assert!(
                seen.insert(seq) || acked_by_child.contains(&seq),
                "trial {trial}: {seq} twice after restart"
            );
            d.ack();
        }
        bus.shutdown().await.unwrap();
        drop((sub, bus));
        eprintln!(
            "trial {trial}: child acked {}, redelivered after restart {redelivered}",
            acked_by_child.len()
        );
        // Everything is acked now: a third run of the subscriber gets nothing.
        let bus = Bus::open(BusOptions::new(dir.path())).unwrap();
        let mut sub = bus.subscribe(pattern("game.>"), durable()).await.unwrap();
        bus.publish(event("game.hand", "after")).await.unwrap();
        let d = next(&mut sub).await;
        assert_eq!(
            payload(&d),
            "after",
            "trial {trial}: nothing left over from before"
        );
        d.ack();
        bus.shutdown().await.unwrap();
    }
}
