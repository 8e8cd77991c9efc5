//! In-process publish → deliver throughput of 128-byte events.
//!
//! Run with: `cargo bench -p ganglion-bus --bench bus_publish_deliver`
//!
//! One "element" is one event received by every subscriber. Publishers send batches of
//! 1,000 (`publish_batch`); subscribers take deliveries as they come (auto ack). The
//! bench uses mimalloc as its global allocator, as a service should: under glibc's
//! malloc, events allocated by publishers and freed by subscribers contend on its arena
//! locks (the README gives both figures). `1000_idle_durables` runs with a thousand
//! durable subscriptions open on topics nobody publishes to: what they cost the rest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ganglion_bus::{Bus, BusOptions};
use ganglion_core::bus::{AckMode, StorageClass, SubscribeOptions};
use ganglion_core::{Event, EventBus, Pattern, Topic};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: u64 = 1000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn open(dir: &std::path::Path, ephemeral: bool) -> Bus {
    let mut options = BusOptions::new(dir);
    if ephemeral {
        options.storage_classes = vec![(Pattern::new(">").unwrap(), StorageClass::Ephemeral)];
    }
    Bus::open(options).unwrap()
}

/// `total` in batches of `BATCH` (the last one smaller).
fn batch_sizes(total: u64) -> Vec<u64> {
    let mut left = total;
    std::iter::from_fn(|| {
        (left > 0).then(|| {
            let n = BATCH.min(left);
            left -= n;
            n
        })
    })
    .collect()
}

/// Publishes `total` events from `publishers` tasks and waits until each of the
/// subscribers on `patterns` has received them all. With `prebuilt`, the events (each
/// with its own payload) are made before the clock starts, so only the bus's work is
/// timed (giving them ids is the bus's work).
async fn run(
    bus: &Bus,
    patterns: &[&str],
    publishers: u64,
    total: u64,
    prebuilt: bool,
) -> Duration {
    let options = SubscribeOptions {
        ack_mode: AckMode::Auto,
        max_in_flight: 10_000,
        ..SubscribeOptions::default()
    };
    let mut subs = Vec::new();
    for p in patterns {
        subs.push(
            bus.subscribe(Pattern::new(p).unwrap(), options.clone())
                .await
                .unwrap(),
        );
    }
    let topic = Topic::new("bench.events.x").unwrap();
    let payload = [7u8; 128];
    let per_publisher = total.div_ceil(publishers);
    // Every event has a payload of its own, as a real producer's would.
    let make = move |topic: &Topic, n: u64| -> Vec<Event> {
        (0..n)
            .map(|_| Event::new(topic.clone(), Bytes::copy_from_slice(&payload)))
            .collect()
    };
    // Each publisher's batches: made now when prebuilt, else only their sizes (the
    // events are made inside the timing, by the publisher).
    let work: Vec<Vec<(u64, Vec<Event>)>> = (0..publishers)
        .map(|_| {
            batch_sizes(per_publisher)
                .into_iter()
                .map(|n| {
                    (
                        n,
                        if prebuilt {
                            make(&topic, n)
                        } else {
                            Vec::new()
                        },
                    )
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    let receivers: Vec<_> = subs
        .into_iter()
        .map(|mut sub| {
            tokio::spawn(async move {
                let mut got = 0;
                while got < per_publisher * publishers {
                    let d = sub.next().await.expect("subscription open");
                    got += d.events().len() as u64;
                }
            })
        })
        .collect();
    let senders: Vec<_> = work
        .into_iter()
        .map(|batches| {
            let (bus, topic) = (bus.clone(), topic.clone());
            tokio::spawn(async move {
                for (n, events) in batches {
                    let events = if prebuilt { events } else { make(&topic, n) };
                    bus.publish_batch(events).await.unwrap();
                }
            })
        })
        .collect();
    for t in senders.into_iter().chain(receivers) {
        t.await.unwrap();
    }
    started.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    // (name, ephemeral, the subscribers' patterns, publishers, idle durable
    // subscriptions on other topics)
    let cases: &[(&str, bool, &[&str], u64, usize)] = &[
        ("ephemeral/one_exact", true, &["bench.events.x"], 1, 0),
        (
            "ephemeral/one_exact_prebuilt",
            true,
            &["bench.events.x"],
            1,
            0,
        ),
        ("ephemeral/one_wildcard", true, &["bench.events.*"], 1, 0),
        ("ephemeral/fan_out_10", true, &["bench.events.*"; 10], 1, 0),
        ("durable/one_wildcard", false, &["bench.events.*"], 1, 0),
        (
            "durable/one_wildcard_8_publishers",
            false,
            &["bench.events.*"],
            8,
            0,
        ),
        ("durable/fan_out_10", false, &["bench.events.*"; 10], 1, 0),
        (
            "durable/one_wildcard_1000_idle_durables",
            false,
            &["bench.events.*"],
            1,
            1000,
        ),
    ];
    let mut group = c.benchmark_group("bus_publish_deliver_128B");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    for &(name, ephemeral, patterns, publishers, idle) in cases {
        let dir = tempfile::tempdir().unwrap();
        let bus = Arc::new(open(dir.path(), ephemeral));
        // Durable subscriptions on topics nobody publishes to, open while this case runs.
        let _idle: Vec<_> = (0..idle)
            .map(|n| {
                let options = SubscribeOptions {
                    durable: Some(format!("idle-{n}")),
                    ..SubscribeOptions::default()
                };
                let pattern = Pattern::new(&format!("idle.{n}.>")).unwrap();
                rt.block_on(bus.subscribe(pattern, options)).unwrap()
            })
            .collect();
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            let prebuilt = name.ends_with("_prebuilt");
            b.iter_custom(|iters| {
                rt.block_on(run(&bus, patterns, publishers, iters.max(BATCH), prebuilt))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
