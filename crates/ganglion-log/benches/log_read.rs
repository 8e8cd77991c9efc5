//! Sequential read throughput of 256-byte records (page cache warm).
//!
//! Run with: `cargo bench -p ganglion-log --bench log_read`

use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ganglion_log::{Log, LogOptions};

const RECORDS: u64 = 200_000;

fn sequential_read(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let payload = Bytes::from(vec![0xCD; 256]);
    for _ in 0..RECORDS / 1000 {
        log.append_blocking(vec![payload.clone(); 1000]).unwrap();
    }

    let mut group = c.benchmark_group("log_read_256B");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(RECORDS));
    group.bench_function("sequential_1000_per_read", |b| {
        b.iter(|| {
            let mut next = 1;
            let mut bytes = 0;
            while next <= RECORDS {
                let records = log.read(next, 1000).unwrap();
                next = records.last().unwrap().seq + 1;
                bytes += records.iter().map(|r| r.payload.len()).sum::<usize>();
            }
            assert_eq!(bytes as u64, RECORDS * 256);
        })
    });
    group.finish();
}

criterion_group!(benches, sequential_read);
criterion_main!(benches);
