//! Model-based test: random sequences of appends, reads, clock moves, retention, reopens
//! and power losses, checked against a plain in-memory model of what the log must hold.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use ganglion_core::{Clock, ManualClock};
use ganglion_log::storage::{CrashMode, MemStorage};
use ganglion_log::{Log, LogOptions, Retention};
use proptest::prelude::*;

const SEGMENT_BYTES: u64 = 256;
const MAX_BYTES: u64 = 4_000;
const MAX_AGE_SECS: u64 = 300;
const MAX_PAYLOAD: usize = 120;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<usize>),
    Read {
        from: u64,
        limit: usize,
    },
    ReadAtTime {
        secs: u64,
    },
    Advance {
        secs: u64,
    },
    ApplyRetention,
    Reopen,
    PowerLoss {
        mode: u8,
        seed: u64,
    },
    /// Power fails after `ops` more storage operations, while a batch is being appended.
    AppendDuringPowerLoss {
        sizes: Vec<usize>,
        ops: u64,
        mode: u8,
        seed: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => prop::collection::vec(0..MAX_PAYLOAD, 1..5).prop_map(Op::Append),
        3 => (0u64..200, 1usize..30).prop_map(|(from, limit)| Op::Read { from, limit }),
        2 => (0u64..400).prop_map(|secs| Op::ReadAtTime { secs }),
        2 => (0u64..90).prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::ApplyRetention),
        1 => Just(Op::Reopen),
        1 => (0u8..3, any::<u64>()).prop_map(|(mode, seed)| Op::PowerLoss { mode, seed }),
        2 => (prop::collection::vec(0..MAX_PAYLOAD, 1..5), 0u64..8, 0u8..3, any::<u64>())
            .prop_map(|(sizes, ops, mode, seed)| Op::AppendDuringPowerLoss { sizes, ops, mode, seed }),
    ]
}

/// What the log must hold: every acknowledged record not yet deleted by retention.
#[derive(Debug, Default)]
struct Model {
    records: Vec<(u64, u64, Bytes)>, // (seq, timestamp, payload), oldest first
    next_seq: u64,
}

fn options(clock: &ManualClock) -> LogOptions {
    LogOptions {
        segment_bytes: SEGMENT_BYTES,
        index_interval_bytes: 64,
        retention: Retention {
            max_age: Some(Duration::from_secs(MAX_AGE_SECS)),
            max_bytes: Some(MAX_BYTES),
            check_interval: Duration::from_secs(3600),
        },
        clock: Arc::new(clock.clone()),
        ..LogOptions::default()
    }
}

fn check_against_model(log: &Log, model: &mut Model, now: u64) -> Result<(), TestCaseError> {
    // Retention deletes whole old segments (at rolls and when asked): the model follows
    // the log's first sequence, checks that each deletion had a reason, and that what
    // is kept is exactly the model's suffix.
    let first = log.first_seq();
    let kept_before = model.records.first().map_or(model.next_seq, |r| r.0);
    prop_assert!(
        first >= kept_before,
        "first_seq went back: {first} < {kept_before}"
    );
    let stats = log.stats();
    // A segment is at most SEGMENT_BYTES plus one batch; one op adds at most one batch.
    let batch = 4 * (24 + MAX_PAYLOAD as u64);
    let size_reason = stats.bytes + SEGMENT_BYTES + 2 * batch > MAX_BYTES;
    for (seq, ts, _) in model.records.iter().take_while(|r| r.0 < first) {
        let aged = ts + MAX_AGE_SECS * 1_000_000 < now;
        prop_assert!(
            aged || size_reason,
            "seq {seq} deleted without a reason: {stats:?}"
        );
    }
    model.records.retain(|r| r.0 >= first);
    prop_assert_eq!(log.next_seq(), model.next_seq);
    let all = read_all(log);
    prop_assert_eq!(all.len(), model.records.len());
    for (r, (seq, ts, payload)) in all.iter().zip(&model.records) {
        prop_assert_eq!(
            (r.seq, r.timestamp_micros, &r.payload),
            (*seq, *ts, payload)
        );
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let clock = ManualClock::at_fixed_instant();
    let start = clock.now_micros();
    let mut storage = MemStorage::new();
    let mut log = Some(open_mem(&storage, options(&clock)));
    let mut model = Model {
        next_seq: 1,
        ..Model::default()
    };
    let mut counter = 0u64;
    let mut make_batch = |sizes: &[usize]| -> Vec<Bytes> {
        sizes
            .iter()
            .map(|&n| {
                counter += 1;
                let mut p = counter.to_le_bytes().to_vec();
                p.resize(n.max(8), (counter % 251) as u8);
                Bytes::from(p)
            })
            .collect()
    };
    let crash_mode = |mode, seed| match mode {
        0 => CrashMode::DropUnsynced,
        1 => CrashMode::TornUnsynced { seed },
        _ => CrashMode::GarbageTail { seed },
    };
    for op in ops {
        let l = log.as_ref().unwrap();
        match op {
            Op::Append(sizes) => {
                let batch = make_batch(&sizes);
                let ack = l.append_blocking(batch.clone()).unwrap();
                prop_assert_eq!(ack.first_seq, model.next_seq);
                prop_assert_eq!(ack.last_seq, model.next_seq + batch.len() as u64 - 1);
                for p in batch {
                    model
                        .records
                        .push((model.next_seq, ack.timestamp_micros, p));
                    model.next_seq += 1;
                }
            }
            Op::Read { from, limit } => {
                let got = l.read(from, limit).unwrap();
                let expected: Vec<_> = model
                    .records
                    .iter()
                    .filter(|r| r.0 >= from.max(l.first_seq()))
                    .take(limit)
                    .map(|r| r.0)
                    .collect();
                prop_assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), expected);
            }
            Op::ReadAtTime { secs } => {
                let at = start + secs * 1_000_000;
                let time = std::time::UNIX_EPOCH + Duration::from_micros(at);
                let expected = model.records.iter().find(|r| r.1 >= at).map(|r| r.0);
                prop_assert_eq!(l.seq_at_time(time).unwrap(), expected);
            }
            Op::Advance { secs } => clock.advance(Duration::from_secs(secs)),
            Op::ApplyRetention => {
                runtime.block_on(l.apply_retention()).unwrap();
            }
            Op::Reopen => {
                drop(log.take());
                log = Some(open_mem(&storage, options(&clock)));
            }
            Op::PowerLoss { mode, seed } => {
                let image = storage.crash_image(crash_mode(mode, seed));
                drop(log.take());
                storage = image;
                log = Some(open_mem(&storage, options(&clock)));
            }
            Op::AppendDuringPowerLoss {
                sizes,
                ops,
                mode,
                seed,
            } => {
                let batch = make_batch(&sizes);
                storage.crash_after_ops(ops);
                let acked = l.append_blocking(batch.clone());
                let image = storage.crash_image(crash_mode(mode, seed));
                drop(log.take());
                storage = image;
                let reopened = open_mem(&storage, options(&clock));
                // An acknowledged batch must be there; an unacknowledged one may have
                // left any prefix of complete records, and nothing else.
                let survived = reopened.next_seq() - model.next_seq;
                if acked.is_ok() {
                    prop_assert_eq!(survived, batch.len() as u64);
                }
                prop_assert!(survived <= batch.len() as u64);
                let got = reopened.read(model.next_seq, batch.len()).unwrap();
                for (r, p) in got.iter().zip(&batch) {
                    model.records.push((r.seq, r.timestamp_micros, p.clone()));
                    model.next_seq += 1;
                }
                storage.clear_faults();
                log = Some(reopened);
            }
        }
        check_against_model(log.as_ref().unwrap(), &mut model, clock.now_micros())?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_log_behaves_like_its_model(ops in prop::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
