//! Append throughput of 256-byte records on the real filesystem.
//!
//! Run with: `cargo bench -p ganglion-log --bench log_append`
//!
//! One "element" is one record acknowledged. Under `Always` every acknowledgement waited
//! for an fdatasync shared with the other appenders of its group.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ganglion_log::{Durability, Log, LogOptions};

const RECORD: usize = 256;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap()
}

/// Appends `total` records, `batch` per append, from `appenders` concurrent tasks, and
/// returns how long it took.
fn append_concurrently(
    rt: &tokio::runtime::Runtime,
    log: &Arc<Log>,
    appenders: u64,
    batch: u64,
    total: u64,
) -> Duration {
    let payload = Bytes::from(vec![0xAB; RECORD]);
    rt.block_on(async {
        let per_task = total.div_ceil(appenders * batch).max(1);
        let started = Instant::now();
        let tasks: Vec<_> = (0..appenders)
            .map(|_| {
                let (log, payload) = (log.clone(), payload.clone());
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        let records = vec![payload.clone(); batch as usize];
                        log.append(records).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        started.elapsed()
    })
}

fn bench(c: &mut Criterion, name: &str, durability: Durability, cases: &[(u64, u64)]) {
    let rt = runtime();
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for &(appenders, batch) in cases {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(
            Log::open(
                dir.path(),
                LogOptions {
                    durability,
                    ..LogOptions::default()
                },
            )
            .unwrap(),
        );
        group.throughput(Throughput::Elements(1));
        let id = BenchmarkId::new(format!("appenders={appenders}"), format!("batch={batch}"));
        group.bench_function(id, |b| {
            b.iter_custom(|iters| append_concurrently(&rt, &log, appenders, batch, iters))
        });
    }
    group.finish();
}

fn always(c: &mut Criterion) {
    bench(
        c,
        "log_append_256B_always",
        Durability::Always,
        &[(1, 1), (16, 1), (64, 1), (1, 100)],
    );
}

fn interval(c: &mut Criterion) {
    let every = Durability::Interval(Duration::from_millis(100));
    bench(
        c,
        "log_append_256B_interval_100ms",
        every,
        &[(1, 1), (64, 1)],
    );
}

criterion_group!(benches, always, interval);
criterion_main!(benches);
