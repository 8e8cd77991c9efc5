//! Faults from below: fsync errors, a full device, short writes and power loss.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use ganglion_core::ManualClock;
use ganglion_log::storage::{CrashMode, MemStorage, Storage};
use ganglion_log::{Log, LogHealth, LogOptions};

#[test]
fn a_failed_fsync_fails_the_log_for_writes_but_not_for_reads_and_is_never_retried() {
    let storage = MemStorage::new();
    let clock = ManualClock::at_fixed_instant();
    let log = open_mem(&storage, small_segments(&clock));
    append_numbered(&log, 1, 5);
    storage.fail_syncs_after(0);

    let err = log.append_blocking(vec![payload(6)]).unwrap_err();
    assert_eq!(err.code(), "LOG_FAILED", "{err}");
    assert!(err.to_string().contains("fsync"), "{err}");
    assert!(log.failure().is_some());
    let ops = storage.ops();
    let err = log.append_blocking(vec![payload(6)]).unwrap_err();
    assert_eq!(err.code(), "LOG_FAILED");
    assert_eq!(storage.ops(), ops, "a failed log touches the disk no more");

    // Readers see what was committed before, and not the record whose fsync failed.
    let records = read_all(&log);
    assert_eq!(records.len(), 5);
    assert_eq!(log.next_seq(), 6);
    drop(log);

    storage.clear_faults();
    let log = open_mem(&storage, small_segments(&clock));
    assert!(log.failure().is_none(), "reopening clears the failed state");
    let ack = log.append_blocking(vec![payload(7)]).unwrap();
    assert!(ack.first_seq >= 6);
}

#[test]
fn a_full_device_refuses_the_batch_whole_and_appends_resume_when_space_returns() {
    let storage = MemStorage::new();
    let log = open_mem(&storage, LogOptions::default());
    append_numbered(&log, 1, 10);
    let active = segment_files(&storage).pop().unwrap();
    let before = storage.read_file(&active).unwrap();

    storage.set_capacity(Some(before.len() as u64 + 100));
    let big = vec![Bytes::from(vec![7u8; 60]), Bytes::from(vec![8u8; 60])];
    let err = log.append_blocking(big.clone()).unwrap_err();
    assert_eq!(err.code(), "LOG_NO_SPACE", "{err}");
    assert!(err.to_string().contains("no space left"), "{err}");
    assert_eq!(
        storage.read_file(&active).unwrap(),
        before,
        "no partial record left behind"
    );
    assert_eq!(log.next_seq(), 11);
    assert!(log.failure().is_none(), "a full device is not a failed log");
    assert!(
        matches!(log.health(), LogHealth::NoSpace { ref file } if *file == active),
        "{:?}",
        log.health()
    );

    storage.set_capacity(None);
    let ack = log.append_blocking(big).unwrap();
    assert_eq!(
        (ack.first_seq, ack.last_seq),
        (11, 12),
        "no sequence was lost to the refusal"
    );
    assert_eq!(log.health(), LogHealth::Ok);
    drop(log);
    let log = open_mem(&storage, LogOptions::default());
    assert_eq!(read_all(&log).len(), 12);
}

#[test]
fn a_full_device_while_rolling_a_segment_leaves_no_half_made_segment() {
    let storage = MemStorage::new();
    let clock = ManualClock::at_fixed_instant();
    let log = open_mem(&storage, small_segments(&clock));
    let used = || -> u64 {
        let names = storage.list(&dir()).unwrap();
        names
            .iter()
            .map(|f| storage.read_file(&dir().join(f)).unwrap().len() as u64)
            .sum()
    };
    // Fill the active segment to its size: the next append must start a new one.
    let mut n = 1;
    while storage
        .read_file(segment_files(&storage).last().unwrap())
        .unwrap()
        .len()
        < 512
    {
        append_numbered(&log, n, 1);
        n += 1;
    }
    let segments = segment_files(&storage);

    storage.set_capacity(Some(used()));
    let err = log.append_blocking(vec![payload(n)]).unwrap_err();
    assert_eq!(err.code(), "LOG_NO_SPACE", "{err}");
    assert_eq!(
        segment_files(&storage),
        segments,
        "no half-made segment remains"
    );
    assert!(log.failure().is_none());

    storage.set_capacity(None);
    assert_eq!(log.append_blocking(vec![payload(n)]).unwrap().first_seq, n);
    assert_eq!(segment_files(&storage).len(), segments.len() + 1);
    drop(log);
    let log = open_mem(&storage, small_segments(&clock));
    let records = read_all(&log);
    assert_eq!(records.len() as u64, n);
    assert!(records.iter().all(|r| r.payload == payload(r.seq)));
}

#[test]
fn short_writes_are_completed_and_nothing_is_garbled() {
    let storage = MemStorage::new();
    storage.set_short_writes(60, 42);
    let clock = ManualClock::at_fixed_instant();
    let log = Arc::new(open_mem(&storage, small_segments(&clock)));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..100u64 {
                    let n = t * 1000 + i;
                    log.append_blocking(vec![payload(n), payload(n + 500)])
                        .unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let log = Arc::into_inner(log).unwrap();
    assert_eq!(read_all(&log).len(), 800);
    drop(log);
    storage.clear_faults();
    let log = open_mem(&storage, small_segments(&clock));
    let records = read_all(&log);
    assert_eq!(records.len(), 800);
    let distinct: HashSet<_> = records.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(distinct.len(), 800);
}

/// What one appender thread got acknowledged, and every payload anyone tried to append.
struct Outcome {
    acked: Vec<(u64, Bytes)>,
    attempted: HashSet<Bytes>,
}

fn append_until_power_fails(log: &Arc<Log>, threads: u64, seed: u64) -> Outcome {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed ^ (t << 32));
                let mut acked = Vec::new();
                let mut attempted = HashSet::new();
                for i in 0..300u64 {
                    let batch: Vec<Bytes> = (0..1 + rng.below(3))
                        .map(|j| {
                            let len = 1 + rng.below(90) as usize;
                            let mut p = format!("t{t}-i{i}-j{j}-").into_bytes();
                            p.resize(p.len() + len, b'a' + (i % 26) as u8);
                            Bytes::from(p)
                        })
                        .collect();
                    attempted.extend(batch.iter().cloned());
                    match log.append_blocking(batch.clone()) {
                        Ok(ack) => acked.extend((ack.first_seq..=ack.last_seq).zip(batch)),
                        Err(_) => break,
                    }
                }
                (acked, attempted)
            })
        })
        .collect();
    let mut outcome = Outcome {
        acked: Vec::new(),
        attempted: HashSet::new(),
    };
    for h in handles {
        let (acked, attempted) = h.join().unwrap();
        outcome.acked.extend(acked);
        outcome.attempted.extend(attempted);
    }
    outcome
}

#[test]
fn a_thousand_power_losses_lose_no_acknowledged_record() {
    let clock = ManualClock::at_fixed_instant();
    let options = || LogOptions {
        segment_bytes: 1024,
        index_interval_bytes: 200,
        ..small_segments(&clock)
    };
    let mut acked_total = 0;
    let mut torn_recoveries = 0;
    for trial in 0..1000u64 {
        let mut rng = Rng::new(trial);
        let storage = MemStorage::new();
        storage.crash_after_ops(rng.below(700));
        let outcome = match Log::open_with_storage(Arc::new(storage.clone()), DIR, options()) {
            Ok(log) => {
                let log = Arc::new(log);
                let outcome = append_until_power_fails(&log, 3, trial);
                drop(log);
                outcome
            }
            Err(_) => Outcome {
                acked: Vec::new(),
                attempted: HashSet::new(),
            },
        };
        assert!(
            storage.is_dead(),
            "trial {trial}: the workload reaches the power loss"
        );
        let mode = match trial % 3 {
            0 => CrashMode::DropUnsynced,
            1 => CrashMode::TornUnsynced { seed: trial },
            _ => CrashMode::GarbageTail { seed: trial },
        };
        let mut image = storage.crash_image(mode);
        if trial % 4 == 0 {
            // Lose power again, this time during recovery.
            image.crash_after_ops(rng.below(6));
            let _ = Log::open_with_storage(Arc::new(image.clone()), DIR, options());
            image = image.crash_image(CrashMode::TornUnsynced { seed: !trial });
        }
        let log = Log::open_with_storage(Arc::new(image.clone()), DIR, options())
            .unwrap_or_else(|e| panic!("trial {trial}: recovery failed: {e}"));
        let records = read_all(&log);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(
                r.seq,
                i as u64 + 1,
                "trial {trial}: sequences are contiguous"
            );
            assert!(
                outcome.attempted.contains(&r.payload),
                "trial {trial}: seq {} holds a payload nobody appended",
                r.seq
            );
        }
        for (seq, payload) in &outcome.acked {
            let found = records.get(*seq as usize - 1).map(|r| &r.payload);
            assert_eq!(
                found,
                Some(payload),
                "trial {trial}: acknowledged seq {seq} lost"
            );
        }
        if records.len() > outcome.acked.len() {
            torn_recoveries += 1;
        }
        acked_total += outcome.acked.len();
        let next = log.next_seq();
        assert_eq!(
            log.append_blocking(vec![payload(1)]).unwrap().first_seq,
            next
        );
    }
    assert!(
        acked_total > 50_000,
        "the trials acknowledged {acked_total} records"
    );
    assert!(
        torn_recoveries > 10,
        "some trials kept unacknowledged complete records"
    );
}

#[test]
fn a_log_refusing_appends_for_a_full_device_notices_space_coming_back_without_an_append() {
    let storage = MemStorage::new();
    let log = open_mem(&storage, LogOptions::default());
    append_numbered(&log, 1, 3);
    let used: u64 = storage
        .list(&dir())
        .unwrap()
        .iter()
        .filter_map(|f| storage.read_file(&dir().join(f)))
        .map(|b| b.len() as u64)
        .sum();
    storage.set_capacity(Some(used));
    assert!(log.append_blocking(vec![payload(4)]).is_err());
    assert!(matches!(log.health(), LogHealth::NoSpace { .. }));
    let before = segment_files(&storage)
        .iter()
        .map(|f| storage.read_file(f))
        .collect::<Vec<_>>();
    storage.set_capacity(None);
    // The writer checks once a second (its own timer, on the real clock).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while log.health() != LogHealth::Ok {
        assert!(std::time::Instant::now() < deadline, "{:?}", log.health());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let after = segment_files(&storage)
        .iter()
        .map(|f| storage.read_file(f))
        .collect::<Vec<_>>();
    assert_eq!(before, after, "the check leaves nothing behind");
    assert_eq!(log.append_blocking(vec![payload(4)]).unwrap().first_seq, 4);
}
