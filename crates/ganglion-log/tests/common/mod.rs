//! Helpers shared by the log's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use ganglion_core::ManualClock;
use ganglion_log::storage::MemStorage;
use ganglion_log::{Log, LogOptions, Record};

pub const DIR: &str = "/data/log";

pub fn dir() -> PathBuf {
    PathBuf::from(DIR)
}

/// Options with small segments, so a few records roll over several segments.
pub fn small_segments(clock: &ManualClock) -> LogOptions {
    LogOptions {
        segment_bytes: 512,
        index_interval_bytes: 128,
        clock: Arc::new(clock.clone()),
        ..LogOptions::default()
    }
}

pub fn open_mem(storage: &MemStorage, options: LogOptions) -> Log {
    Log::open_with_storage(Arc::new(storage.clone()), DIR, options).expect("open log")
}

/// A payload that says which record it is, of a length that varies with `n`.
pub fn payload(n: u64) -> Bytes {
    let mut s = format!("record-{n}-");
    while s.len() < 10 + (n as usize * 7) % 50 {
        s.push('x');
    }
    Bytes::from(s)
}

/// Appends records `payload(first..first+count)` one batch each, blocking.
pub fn append_numbered(log: &Log, first: u64, count: u64) {
    for n in first..first + count {
        let ack = log.append_blocking(vec![payload(n)]).expect("append");
        assert_eq!(ack.first_seq, n, "records are numbered by their sequence");
    }
}

pub fn read_all(log: &Log) -> Vec<Record> {
    let mut out = Vec::new();
    let mut next = log.first_seq();
    loop {
        let batch = log.read(next, 10_000).expect("read");
        let Some(last) = batch.last() else { break };
        next = last.seq + 1;
        out.extend(batch);
    }
    out
}

/// Segment file paths, oldest first.
pub fn segment_files(storage: &MemStorage) -> Vec<PathBuf> {
    use ganglion_log::storage::Storage;
    let mut names: Vec<String> = storage
        .list(Path::new(DIR))
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".log"))
        .collect();
    names.sort();
    names.into_iter().map(|n| dir().join(n)).collect()
}

/// A small seeded generator (splitmix64): tests stay reproducible from their seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
