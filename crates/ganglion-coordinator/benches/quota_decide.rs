//! In-process permit decisions: `try_acquire` granting (a quota with room) and denying
//! (a quota used up), on the system clock.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ganglion_coordinator::quota::{Quota, QuotaSpec};
use ganglion_core::SystemClock;

fn decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("quota");
    group.throughput(Throughput::Elements(1));

    // Room for every grant the run makes: each decision records one (1 s window keeps
    // the log at about a second of grants).
    let granting = Quota::new(
        QuotaSpec::new("granting", u32::MAX, Duration::from_secs(1)),
        Arc::new(SystemClock),
    )
    .unwrap();
    group.bench_function("try_acquire_granted", |b| {
        b.iter(|| granting.try_acquire("bench").is_ok())
    });

    let full = Quota::new(
        QuotaSpec::parse("full", "100 per 1h").unwrap(),
        Arc::new(SystemClock),
    )
    .unwrap();
    for _ in 0..100 {
        full.try_acquire("bench").unwrap();
    }
    group.bench_function("try_acquire_denied", |b| {
        b.iter(|| full.try_acquire("bench").is_err())
    });
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
