//! The server's memory stays bounded in bytes, whatever the events' size: a subscriber
//! that stops reading (over gRPC or SSE), and replays of big events over gRPC and HTTP,
//! keep the peak resident memory of a real `ganglion serve` under its baseline +
//! 128 MiB. The baseline is the server after the same kind of publishing with nobody
//! stuck (the recent-events window full, the allocator warm), so the figure is what the
//! stuck subscriber or the replays cost.

mod common;

use std::io::Read as _;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use ganglion_client::Client;
use ganglion_core::bus::{EventBus, StartPosition, SubscribeOptions};
use ganglion_core::{Event, Pattern, Topic};

const KIB: usize = 1024;
const MIB: u64 = 1024 * 1024;
const BOUND: u64 = 128 * MIB;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A server with `mem.e.>` ephemeral (and `mem.d.>` durable), warmed up.
fn server(dir: &std::path::Path) -> Served {
    serve_with(dir, &[], &["--ephemeral", "mem.e.>"])
}

fn events(topic: &str, size: usize, n: usize) -> Vec<Event> {
    let payload = Bytes::from(vec![b'x'; size]);
    (0..n)
        .map(|_| Event::new(Topic::new(topic).unwrap(), payload.clone()))
        .collect()
}

/// Publishes `total` bytes of `size`-byte events, durable then ephemeral, in batches.
async fn publish(client: &Client, size: usize, total: usize) {
    let per_batch = (1024 * KIB / size).clamp(1, 64);
    for topic in ["mem.d.x", "mem.e.x"] {
        let mut sent = 0;
        while sent < total / 2 {
            client
                .publish_batch(events(topic, size, per_batch))
                .await
                .unwrap();
            sent += per_batch * size;
        }
    }
}

fn peak_over_baseline(served: &Served, baseline: u64) -> u64 {
    let (_, peak) = memory(served.child.id());
    peak.saturating_sub(baseline)
}

#[test]
fn a_grpc_subscriber_that_stops_reading_keeps_the_server_under_its_bound() {
    let rt = runtime();
    for size in [4 * KIB, 256 * KIB] {
        let dir = tempfile::tempdir().unwrap();
        let served = server(&dir.path().join("data"));
        let over = rt.block_on(async {
            let publisher = Client::connect(served.grpc.clone()).await.unwrap();
            publish(&publisher, size, 64 * MIB as usize).await;
            let (baseline, _) = memory(served.child.id());
            // A subscriber that never calls `next`: its client stops reading the
            // connection once its own small buffer is full.
            let reader = Client::connect(served.grpc.clone()).await.unwrap();
            let _stuck = reader
                .subscribe(Pattern::new("mem.>").unwrap(), SubscribeOptions::default())
                .await
                .unwrap();
            publish(&publisher, size, 200 * MIB as usize).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            peak_over_baseline(&served, baseline)
        });
        eprintln!(
            "gRPC, {} KiB events: peak RSS {} MiB over baseline",
            size / KIB,
            over / MIB
        );
        assert!(
            over < BOUND,
            "{} KiB events: peak RSS {} MiB over baseline",
            size / KIB,
            over / MIB
        );
    }
}

#[test]
fn an_sse_client_that_stops_reading_keeps_the_server_under_its_bound() {
    let rt = runtime();
    for size in [4 * KIB, 256 * KIB] {
        let dir = tempfile::tempdir().unwrap();
        let served = server(&dir.path().join("data"));
        let over = rt.block_on(async {
            let publisher = Client::connect(served.grpc.clone()).await.unwrap();
            publish(&publisher, size, 64 * MIB as usize).await;
            let (baseline, _) = memory(served.child.id());
            // Reads the response head, then nothing more.
            let _stuck = open_stream(&served.http, "/api/v1/stream?pattern=mem.%3E");
            publish(&publisher, size, 200 * MIB as usize).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            peak_over_baseline(&served, baseline)
        });
        eprintln!(
            "SSE, {} KiB events: peak RSS {} MiB over baseline",
            size / KIB,
            over / MIB
        );
        assert!(
            over < BOUND,
            "{} KiB events: peak RSS {} MiB over baseline",
            size / KIB,
            over / MIB
        );
    }
}

/// Reads a whole HTTP response slowly, 64 KiB at a time; returns its length.
fn slow_read(addr: &str, path: &str) -> usize {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = vec![0u8; 64 * KIB];
    let mut total = 0;
    loop {
        match stream.read(&mut buf).unwrap() {
            0 => return total,
            n => total += n,
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn replays_of_big_events_over_grpc_and_http_stay_under_the_bound() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let served = server(&dir.path().join("data"));
    let client = rt.block_on(Client::connect(served.grpc.clone())).unwrap();
    for _ in 0..10 {
        rt.block_on(client.publish_batch(events("mem.d.big", 900 * KIB, 8)))
            .unwrap();
    }
    // Let the allocator settle after the publications before the baseline.
    std::thread::sleep(Duration::from_millis(500));
    let (baseline, _) = memory(served.child.id());

    // Four concurrent HTTP replays, read slowly, and one over gRPC page by page.
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let addr = served.http.clone();
            std::thread::spawn(move || {
                slow_read(
                    &addr,
                    "/api/v1/events?pattern=mem.d.%3E&from_seq=1&limit=80",
                )
            })
        })
        .collect();
    let replayed = rt.block_on(async {
        let mut pages = client
            .replay_pages(
                Pattern::new("mem.d.>").unwrap(),
                StartPosition::All,
                80,
                1024 * KIB,
            )
            .await
            .unwrap();
        let mut n = 0;
        while let Some(page) = pages.next_page().await.unwrap() {
            n += page.len();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        n
    });
    assert_eq!(replayed, 80, "the gRPC replay returned every event");
    for reader in readers {
        let len = reader.join().unwrap();
        assert!(len > 80 * 900 * KIB, "an HTTP replay returned {len} bytes");
    }
    let over = peak_over_baseline(&served, baseline);
    eprintln!("replays: peak RSS {} MiB over baseline", over / MIB);
    assert!(over < BOUND, "peak RSS {} MiB over baseline", over / MIB);
}
