//! A real process appends acknowledged batches to a real directory and is SIGKILLed at a
//! random moment; every batch it reported acknowledged must be there after reopening.
//!
//! The child is this test binary itself, re-run with `--ignored --exact child_appender`
//! and told where to write by an environment variable.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::Rng;
use ganglion_log::{Log, LogOptions};

const CHILD_DIR: &str = "GANGLION_LOG_SIGKILL_CHILD_DIR";

fn batch_payload(task: u64, batch: u64, i: u64) -> Bytes {
    let mut p = format!("task{task}-batch{batch}-rec{i}-").into_bytes();
    p.resize(p.len() + ((task * 7 + batch * 13 + i) % 200) as usize, b'z');
    Bytes::from(p)
}

fn child_options() -> LogOptions {
    LogOptions {
        // Small segments, so kills also land during segment rolls.
        segment_bytes: 64 * 1024,
        ..LogOptions::default()
    }
}

/// The appending child; does nothing unless run by the parent test.
#[test]
#[ignore = "run by sigkill_at_random_moments_loses_no_acknowledged_batch"]
fn child_appender() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    runtime.block_on(async move {
        let log = Arc::new(Log::open(&dir, child_options()).expect("child opens the log"));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        for task in 0..8u64 {
            let (log, tx) = (log.clone(), tx.clone());
            tokio::spawn(async move {
                for batch in 0.. {
                    let size = 1 + (task + batch) % 16;
                    let records = (0..size).map(|i| batch_payload(task, batch, i)).collect();
                    let ack = log.append(records).await.expect("append");
                    let line = format!("ACK {} {} {task} {batch}\n", ack.first_seq, ack.last_seq);
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut stdout = std::io::stdout().lock();
        while let Some(line) = rx.recv().await {
            stdout.write_all(line.as_bytes()).unwrap();
            stdout.flush().unwrap();
        }
    });
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_batch() {
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng::new(0x51_61_4b_11);
    let mut total_acked = 0u64;
    for trial in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "child_appender",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (first_ack_tx, first_ack_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Some(rest) = line.strip_prefix("ACK ") else {
                    continue;
                };
                let f: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
                if acks.is_empty() {
                    let _ = first_ack_tx.send(());
                }
                acks.push((f[0], f[1], f[2], f[3]));
            }
            acks
        });
        first_ack_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("child acknowledged a batch");
        std::thread::sleep(Duration::from_millis(rng.below(150)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acks = reader.join().unwrap();
        assert!(!acks.is_empty());

        let log = Log::open(dir.path(), child_options())
            .unwrap_or_else(|e| panic!("trial {trial}: reopen after SIGKILL: {e}"));
        for &(first, last, task, batch) in &acks {
            let records = log.read(first, (last - first + 1) as usize).unwrap();
            assert_eq!(
                records.len() as u64,
                last - first + 1,
                "trial {trial}: batch {first}..={last} lost"
            );
            for (i, r) in records.iter().enumerate() {
                assert_eq!(r.seq, first + i as u64);
                assert_eq!(
                    r.payload,
                    batch_payload(task, batch, i as u64),
                    "trial {trial}: seq {}",
                    r.seq
                );
            }
        }
        total_acked += acks.len() as u64;
    }
    eprintln!("acknowledged batches across trials: {total_acked}");
    assert!(total_acked >= 20);
}
