//! Recovery: torn tails are cut, any other damage is refused and named, never served.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use ganglion_core::ManualClock;
use ganglion_log::storage::MemStorage;
use ganglion_log::{Damage, Log, LogError, LogOptions, Recovery, VerifyOnOpen};

/// A segment header (format version 2) with its commit marks.
const HEADER_LEN: usize = 64;

/// Byte offsets where each record of a segment file starts, plus the file's end.
fn record_starts(file: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut at = HEADER_LEN;
    while at < file.len() {
        starts.push(at);
        let len = u32::from_le_bytes(file[at + 4..at + 8].try_into().unwrap()) as usize;
        at += 24 + len;
    }
    assert_eq!(at, file.len(), "test parser agrees with the file");
    starts.push(at);
    starts
}

/// A log of `count` numbered records in 512-byte segments, closed.
fn written_log(count: u64) -> (MemStorage, ManualClock) {
    let storage = MemStorage::new();
    let clock = ManualClock::at_fixed_instant();
    let log = open_mem(&storage, small_segments(&clock));
    append_numbered(&log, 1, count);
    log.close().unwrap();
    (storage, clock)
}

fn base_seq_of(path: &Path) -> u64 {
    path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

#[test]
fn a_torn_write_anywhere_in_an_unacknowledged_group_keeps_exactly_the_complete_records() {
    // The log as it was acknowledged (42 records), and as it looked with three more
    // records written whose group commit never returned: their bytes may be on disk,
    // torn anywhere, but the commit marks and log.meta still say 42.
    let (acked, clock) = written_log(42);
    let active = segment_files(&acked).pop().unwrap();
    let base = base_seq_of(&active);
    let meta_path = dir().join("log.meta");
    let later = acked.snapshot();
    let log = open_mem(&later, small_segments(&clock));
    append_numbered(&log, 43, 3);
    log.close().unwrap();
    assert_eq!(
        segment_files(&later).pop().unwrap(),
        active,
        "the three records went into the same segment"
    );
    let header = acked.read_file(&active).unwrap()[..HEADER_LEN].to_vec();
    let bytes = later.read_file(&active).unwrap();
    let starts = record_starts(&bytes);
    let first_torn_byte = starts[starts.len() - 4];
    assert_eq!(
        first_torn_byte,
        acked.read_file(&active).unwrap().len(),
        "the three records follow the acknowledged ones"
    );

    let mut checked = 0;
    for cut in first_torn_byte..bytes.len() {
        // Complete records are those that end at or before the cut.
        let complete = starts[1..].iter().filter(|&&end| end <= cut).count() as u64;
        let expected_last = base + complete - 1;
        for variant in ["truncated", "zeroed", "garbage"] {
            let storage = acked.snapshot();
            let mut torn = bytes[..cut].to_vec();
            match variant {
                "zeroed" => torn.resize(bytes.len(), 0),
                "garbage" => torn.extend((cut..bytes.len()).map(|i| (i * 31 + 7) as u8)),
                _ => {}
            }
            torn[..HEADER_LEN].copy_from_slice(&header);
            storage.write_file(&active, torn);
            assert_eq!(storage.read_file(&meta_path), acked.read_file(&meta_path));
            let log = open_mem(&storage, small_segments(&clock));
            assert_eq!(
                log.next_seq(),
                expected_last + 1,
                "{variant} at byte {cut}: keeps records up to {expected_last}"
            );
            assert_eq!(
                storage.read_file(&active).unwrap().len(),
                starts[complete as usize]
            );
            if variant != "truncated" || !starts.contains(&cut) {
                assert!(
                    log.findings().iter().any(|f| !f.refuses_open),
                    "{variant} at byte {cut}: the cut is reported"
                );
            }
            let ack = log.append_blocking(vec![payload(999)]).unwrap();
            assert_eq!(ack.first_seq, expected_last + 1);
            let records = read_all(&log);
            assert_eq!(records.len() as u64, expected_last + 1);
            assert!(
                records[..records.len() - 1]
                    .iter()
                    .all(|r| r.payload == payload(r.seq))
            );
            assert_eq!(records.last().unwrap().payload, payload(999));
            checked += 1;
        }
    }
    assert!(checked > 3 * 100, "checked {checked} torn tails");
}

#[test]
fn a_segment_header_torn_while_the_segment_was_being_created_is_written_again() {
    // The crash came after the new segment's file appeared and before its creation
    // completed (header and directory fsynced, log.meta told): nothing was ever
    // written in it.
    let (pristine, clock) = written_log(45);
    let next = {
        let log = open_mem(&pristine.snapshot(), small_segments(&clock));
        log.next_seq()
    };
    let created = dir().join(format!("{next:020}.log"));
    let full_header = {
        let scratch = pristine.snapshot();
        let log = open_mem(
            &scratch,
            LogOptions {
                segment_bytes: 64,
                ..small_segments(&clock)
            },
        );
        log.append_blocking(vec![payload(next)]).unwrap();
        drop(log);
        scratch
            .read_file(&created)
            .expect("a segment at the next sequence")[..HEADER_LEN]
            .to_vec()
    };
    for cut in 0..HEADER_LEN {
        let storage = pristine.snapshot();
        // The old active segment must look full so the new one follows it.
        storage.write_file(&created, full_header[..cut].to_vec());
        let log = open_mem(&storage, small_segments(&clock));
        assert_eq!(log.next_seq(), next, "cut at {cut}");
        assert_eq!(
            log.append_blocking(vec![payload(1)]).unwrap().first_seq,
            next
        );
    }
}

#[test]
fn damage_before_valid_records_in_the_active_segment_is_refused_unless_the_operator_allows_it() {
    let (storage, clock) = written_log(45);
    let active = segment_files(&storage).pop().unwrap();
    let mut bytes = storage.read_file(&active).unwrap();
    let starts = record_starts(&bytes);
    bytes[starts[1] + 30] ^= 0x01; // the second record's payload
    storage.write_file(&active, bytes.clone());

    let err = Log::open_with_storage(
        std::sync::Arc::new(storage.clone()),
        DIR,
        small_segments(&clock),
    )
    .unwrap_err();
    let LogError::Corrupt {
        file,
        offset,
        damage,
        valid_records_after,
        acknowledged_missing,
    } = &err
    else {
        panic!("expected Corrupt, got {err}");
    };
    assert_eq!(file, &active);
    assert_eq!(*offset, starts[1] as u64);
    assert!(matches!(damage, Damage::ChecksumMismatch { .. }));
    assert_eq!(*valid_records_after, starts.len() as u64 - 3);
    let base = base_seq_of(&active);
    assert_eq!(*acknowledged_missing, 46 - (base + 1));
    assert!(
        err.to_string().contains(&active.display().to_string()),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!("offset {}", starts[1])),
        "{err}"
    );
    assert_eq!(
        storage.read_file(&active).unwrap(),
        bytes,
        "refusing changes nothing"
    );

    let log = open_mem(
        &storage,
        LogOptions {
            recovery: Recovery::DropDamagedTail,
            ..small_segments(&clock)
        },
    );
    assert_eq!(
        log.next_seq(),
        46,
        "numbering goes on above every acknowledged sequence"
    );
    assert_eq!(
        log.read(base, 100).unwrap().len(),
        1,
        "the valid prefix stays"
    );
}

/// Flips `bits` bits of one sealed segment; returns the file and the offset at which
/// the damage starts (the record holding the first flipped bit, or 0 for the header).
fn flip_bits(storage: &MemStorage, sealed: &[PathBuf], rng: &mut Rng) -> (PathBuf, u64) {
    let file = sealed[rng.below(sealed.len() as u64) as usize].clone();
    let mut bytes = storage.read_file(&file).unwrap();
    let starts = record_starts(&bytes);
    let flips = 1 + rng.below(2) as usize;
    let mut first = usize::MAX;
    let mut flipped = Vec::new();
    while flipped.len() < flips {
        let bit = rng.below(bytes.len() as u64 * 8) as usize;
        // A sealed segment's commit marks (bytes 24..64) say nothing it needs: they are
        // read only in the active segment.
        let in_marks = (24..HEADER_LEN).contains(&(bit / 8));
        if !flipped.contains(&bit) && !in_marks {
            flipped.push(bit);
            bytes[bit / 8] ^= 1 << (bit % 8);
            first = first.min(bit / 8);
        }
    }
    storage.write_file(&file, bytes);
    let record = starts.iter().rev().find(|&&s| s <= first).copied();
    (file, record.map_or(0, |s| s as u64))
}

#[test]
fn a_thousand_bit_flips_in_sealed_segments_are_all_detected_and_named() {
    let (pristine, clock) = written_log(120);
    let mut sealed = segment_files(&pristine);
    sealed.pop();
    assert!(sealed.len() >= 5);
    // Make the index files durable too, so `ActiveSegment` opens trust them.
    drop(open_mem(&pristine, small_segments(&clock)));
    let mut rng = Rng::new(0x5eed_b17f);

    let mut found_by_reads = 0;
    for trial in 0..1000 {
        let storage = pristine.snapshot();
        let (file, offset) = flip_bits(&storage, &sealed, &mut rng);

        let err = Log::open_with_storage(
            std::sync::Arc::new(storage.clone()),
            DIR,
            small_segments(&clock),
        )
        .expect_err("a flipped bit in a sealed segment refuses the open");
        match &err {
            LogError::Corrupt {
                file: named,
                offset: at,
                ..
            } => {
                assert_eq!((named, *at), (&file, offset), "trial {trial}: {err}");
            }
            other => panic!("trial {trial}: expected Corrupt, got {other}"),
        }

        // Opened without checking sealed segments, reads find the damage instead, and
        // never hand out a damaged payload.
        let options = LogOptions {
            verify_on_open: VerifyOnOpen::ActiveSegment,
            ..small_segments(&clock)
        };
        let Ok(log) = Log::open_with_storage(std::sync::Arc::new(storage), DIR, options) else {
            continue; // header damage is found on open in this mode too
        };
        let mut next = log.first_seq();
        let detected = loop {
            match log.read(next, 7) {
                Ok(batch) if batch.is_empty() => break false,
                Ok(batch) => {
                    for r in &batch {
                        assert_eq!(
                            r.payload,
                            payload(r.seq),
                            "trial {trial}: damaged payload served"
                        );
                    }
                    next = batch.last().unwrap().seq + 1;
                }
                Err(LogError::Corrupt {
                    file: named,
                    offset: at,
                    ..
                }) => {
                    assert_eq!((named, at), (file.clone(), offset), "trial {trial}");
                    break true;
                }
                Err(other) => panic!("trial {trial}: {other}"),
            }
        };
        assert!(
            detected,
            "trial {trial}: read everything without noticing the flip"
        );
        found_by_reads += 1;
    }
    assert!(
        found_by_reads > 900,
        "only {found_by_reads} flips reached the read path"
    );
}

#[test]
fn a_missing_sealed_segment_is_a_named_gap_of_acknowledged_records() {
    let (storage, clock) = written_log(60);
    let files = segment_files(&storage);
    let removed = &files[1];
    use ganglion_log::storage::Storage;
    storage.remove(removed).unwrap();
    let err = Log::open_with_storage(
        std::sync::Arc::new(storage.clone()),
        DIR,
        small_segments(&clock),
    )
    .unwrap_err();
    match err {
        LogError::Corrupt {
            file,
            damage: Damage::Gap { end, next_base },
            acknowledged_missing,
            ..
        } => {
            assert_eq!(file, files[0]);
            assert_eq!(acknowledged_missing, next_base - end);
            assert_eq!(end, base_seq_of(removed));
            assert_eq!(next_base, base_seq_of(&files[2]));
        }
        other => panic!("expected a gap, got {other}"),
    }
}
