//! Appending, reading by sequence and time, tailing, reopening, limits and retention.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use ganglion_core::{Clock, ManualClock};
use ganglion_log::storage::{CrashMode, MemStorage, Storage};
use ganglion_log::{Durability, Log, LogError, LogOptions, Retention};

#[test]
fn batches_get_consecutive_sequences_and_read_back_across_segments_and_reopen() {
    let storage = MemStorage::new();
    let clock = ManualClock::at_fixed_instant();
    let log = open_mem(&storage, small_segments(&clock));
    assert_eq!((log.first_seq(), log.next_seq()), (1, 1));

    let ack = log
        .append_blocking(vec![payload(1), payload(2), payload(3)])
        .unwrap();
    assert_eq!((ack.first_seq, ack.last_seq), (1, 3));
    append_numbered(&log, 4, 60);
    assert_eq!(log.next_seq(), 64);
    assert!(log.stats().segments > 3, "{:?}", log.stats());

    let records = read_all(&log);
    assert_eq!(records.len(), 63);
    for r in &records {
        assert_eq!(r.payload, payload(r.seq));
    }
    let middle = log.read(30, 5).unwrap();
    assert_eq!(
        middle.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [30, 31, 32, 33, 34]
    );
    assert!(log.read(64, 10).unwrap().is_empty());

    drop(log);
    let log = open_mem(&storage, small_segments(&clock));
    assert_eq!(read_all(&log), records);
    let ack = log.append_blocking(vec![payload(64)]).unwrap();
    assert_eq!(ack.first_seq, 64);
}

#[test]
fn concurrent_appenders_share_fsyncs_and_every_batch_stays_contiguous() {
    let storage = MemStorage::new();
    let log = Arc::new(open_mem(&storage, LogOptions::default()));
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..200u32)
                    .map(|i| {
                        let batch = vec![
                            Bytes::from(vec![t; 3]),
                            Bytes::from(i.to_le_bytes().to_vec()),
                        ];
                        (log.append_blocking(batch).unwrap(), t, i)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let acks: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(log.next_seq(), 1 + 8 * 200 * 2);
    for (ack, t, i) in acks {
        assert_eq!(ack.last_seq, ack.first_seq + 1);
        let records = log.read(ack.first_seq, 2).unwrap();
        assert_eq!(records[0].payload, Bytes::from(vec![t; 3]));
        assert_eq!(records[1].payload, Bytes::from(i.to_le_bytes().to_vec()));
    }
    let stats = log.stats();
    assert!(stats.fsyncs <= stats.appends, "{stats:?}");
}

#[test]
fn reads_by_time_find_the_first_record_at_or_after_it() {
    let storage = MemStorage::new();
    let clock = ManualClock::at_fixed_instant();
    let log = open_mem(&storage, small_segments(&clock));
    let start = clock.now();
    for n in 1..=40 {
        log.append_blocking(vec![payload(n)]).unwrap();
        clock.advance(Duration::from_secs(1));
    }
    // Record n was appended at start + (n - 1) s.
    assert_eq!(log.seq_at_time(start).unwrap(), Some(1));
    assert_eq!(
        log.seq_at_time(start + Duration::from_millis(9_500))
            .unwrap(),
        Some(11)
    );
    assert_eq!(
        log.seq_at_time(start + Duration::from_secs(39)).unwrap(),
        Some(40)
    );
    assert_eq!(
        log.seq_at_time(start + Duration::from_secs(40)).unwrap(),
        None
    );
    let records = log
        .read_from_time(start + Duration::from_secs(20), 3)
        .unwrap();
    assert_eq!(
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [21, 22, 23]
    );
}

#[test]
fn timestamps_never_go_backwards_when_the_wall_clock_does() {
    let storage = MemStorage::new();
    let clock = ManualClock::at_fixed_instant();
    let log = open_mem(&storage, small_segments(&clock));
    let a = log.append_blocking(vec![payload(1)]).unwrap();
    clock.set(clock.now() - Duration::from_secs(3600));
    let b = log.append_blocking(vec![payload(2)]).unwrap();
    assert_eq!(b.timestamp_micros, a.timestamp_micros);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_waits_for_new_records_and_ends_when_the_log_closes() {
    let storage = MemStorage::new();
    let log = open_mem(&storage, LogOptions::default());
    log.append(vec![payload(1)]).await.unwrap();
    let mut tail = log.tail(1);
    assert_eq!(tail.next_batch(10).await.unwrap()[0].seq, 1);

    let waiting = tokio::spawn(async move {
        let batch = tail.next_batch(10).await.unwrap();
        (batch, tail)
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "nothing new to read yet");
    log.append(vec![payload(2), payload(3)]).await.unwrap();
    let (batch, mut tail) = waiting.await.unwrap();
    assert_eq!(batch.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 3]);

    tokio::task::spawn_blocking(move || log.close().unwrap())
        .await
        .unwrap();
    assert!(matches!(tail.next_batch(10).await, Err(LogError::Closed)));
}

#[test]
fn bad_appends_and_options_get_clear_errors() {
    let storage = MemStorage::new();
    let options = LogOptions {
        max_record_bytes: 10,
        ..LogOptions::default()
    };
    let log = open_mem(&storage, options);
    assert!(matches!(
        log.append_blocking(vec![]),
        Err(LogError::EmptyBatch)
    ));
    let err = log
        .append_blocking(vec![Bytes::from_static(b"ok"), Bytes::from(vec![0; 11])])
        .unwrap_err();
    assert_eq!(err.code(), "LOG_RECORD_TOO_LARGE");
    assert_eq!(
        err.to_string(),
        "record 1 of the batch is 11 bytes; max_record_bytes is 10"
    );
    assert_eq!(log.next_seq(), 1, "a refused batch appends nothing");

    let err = Log::open_with_storage(
        Arc::new(storage.clone()),
        "/other",
        LogOptions {
            segment_bytes: 10,
            ..LogOptions::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid log option segment_bytes: must be at least 64"
    );
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let err = Log::open(dir.path(), LogOptions::default()).unwrap_err();
    assert!(matches!(err, LogError::Locked { .. }), "{err}");
    drop(log);
    Log::open(dir.path(), LogOptions::default()).unwrap();
}

#[test]
fn real_files_survive_reopen_with_the_documented_names() {
    let dir = tempfile::tempdir().unwrap();
    let options = || LogOptions {
        segment_bytes: 256,
        ..LogOptions::default()
    };
    let log = Log::open(dir.path(), options()).unwrap();
    append_numbered(&log, 1, 20);
    drop(log);
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(
        names.contains(&"00000000000000000001.log".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"00000000000000000001.index".to_string()),
        "{names:?}"
    );
    let log = Log::open(dir.path(), options()).unwrap();
    let records = read_all(&log);
    assert_eq!(records.len(), 20);
    assert!(records.iter().all(|r| r.payload == payload(r.seq)));
}

#[test]
fn a_missing_or_damaged_index_is_rebuilt_and_reads_stay_right() {
    let storage = MemStorage::new();
    let clock = ManualClock::at_fixed_instant();
    let log = open_mem(&storage, small_segments(&clock));
    for n in 1..=40 {
        log.append_blocking(vec![payload(n)]).unwrap();
        clock.advance(Duration::from_secs(1));
    }
    drop(log);
    let first_index = dir().join("00000000000000000001.index");
    let original = storage
        .read_file(&first_index)
        .expect("sealed segment has an index");
    let mut damaged = original.clone();
    damaged[70] ^= 0xff;
    storage.write_file(&first_index, damaged);
    let second_index = segment_files(&storage)[1].with_extension("index");
    storage.remove(&second_index).unwrap();

    let log = open_mem(&storage, small_segments(&clock));
    assert_eq!(storage.read_file(&first_index), Some(original));
    assert!(storage.read_file(&second_index).is_some());
    let records = read_all(&log);
    assert_eq!(records.len(), 40);
    assert_eq!(log.read(17, 1).unwrap()[0].payload, payload(17));
    let t = clock.now() - Duration::from_secs(30);
    assert_eq!(log.seq_at_time(t).unwrap(), Some(11));
}

#[test]
fn a_lying_index_is_not_trusted_when_sealed_segments_are_verified() {
    let storage = MemStorage::new();
    let clock = ManualClock::at_fixed_instant();
    let log = open_mem(&storage, small_segments(&clock));
    append_numbered(&log, 1, 30);
    drop(log);
    // An index from another segment, copied over this one's.
    let files = segment_files(&storage);
    let other = storage
        .read_file(&files[1].with_extension("index"))
        .unwrap();
    storage.write_file(&files[0].with_extension("index"), other);
    let log = open_mem(&storage, small_segments(&clock));
    assert_eq!(read_all(&log).len(), 30);
}

#[tokio::test]
async fn retention_deletes_whole_sealed_segments_by_size_and_by_age_never_the_active_one() {
    let storage = MemStorage::new();
    let clock = ManualClock::at_fixed_instant();
    let options = LogOptions {
        retention: Retention {
            max_age: Some(Duration::from_secs(3600)),
            max_bytes: Some(2048),
            check_interval: Duration::from_secs(3600),
        },
        ..small_segments(&clock)
    };
    let log = open_mem(&storage, options);
    for n in 1..=200 {
        log.append(vec![payload(n)]).await.unwrap();
    }
    // Rolls applied the size limit as they went.
    let stats = log.stats();
    assert!(stats.bytes <= 2048 + 512, "{stats:?}");
    assert!(stats.first_seq > 1);
    let files = segment_files(&storage);
    assert_eq!(files.len() as u64, stats.segments);
    assert_eq!(read_all(&log).first().unwrap().seq, stats.first_seq);

    // Nothing is old yet.
    assert_eq!(log.apply_retention().await.unwrap().segments_deleted, 0);
    clock.advance(Duration::from_secs(3601));
    let report = log.apply_retention().await.unwrap();
    assert_eq!(report.segments_deleted, stats.segments - 1);
    assert_eq!(log.stats().segments, 1, "the active segment stays");
    assert_eq!(segment_files(&storage).len(), 1);
    let active_base = log.first_seq();
    let records = read_all(&log);
    assert_eq!(records.first().map(|r| r.seq), Some(active_base));
    assert_eq!(records.last().map(|r| r.seq), Some(200));
    // A read from before the retained range starts at the oldest retained record.
    assert_eq!(log.read(1, 1).unwrap()[0].seq, active_base);
}

#[tokio::test]
async fn interval_durability_acknowledges_before_fsync_and_can_lose_that_much() {
    let storage = MemStorage::new();
    let options = LogOptions {
        durability: Durability::Interval(Duration::from_secs(3600)),
        ..LogOptions::default()
    };
    let log = open_mem(&storage, options.clone());
    log.append(vec![payload(1)]).await.unwrap();
    log.sync().await.unwrap();
    log.append(vec![payload(2)]).await.unwrap();
    assert_eq!(log.read(2, 1).unwrap()[0].payload, payload(2));

    // Power loss before the interval's fsync: the acknowledged record 2 is gone, as
    // documented; record 1 was synced and stays.
    let image = storage.crash_image(CrashMode::DropUnsynced);
    let crashed = open_mem(&image, options.clone());
    assert_eq!(read_all(&crashed).len(), 1);

    // Closing syncs.
    log.close().unwrap();
    let image = storage.crash_image(CrashMode::DropUnsynced);
    assert_eq!(read_all(&open_mem(&image, options)).len(), 2);
}
