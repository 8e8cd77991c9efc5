//! `ganglion bench`: the three workloads the README reports, run against a server.
//!
//! - **W1** ephemeral throughput: one publisher, one subscriber on `bench.events.*`,
//!   events of 128 B on `bench.events.x` (an ephemeral topic under the default server
//!   settings), counted end to end: from the first publish to the last event received.
//! - **W2** durable: events of 256 B on a fresh durable topic, each batch fsynced before
//!   its ack; then a subscriber reads them from the log and acks every one.
//! - **W3** latency: events at a steady rate, publish-to-receive time of each, ephemeral
//!   and durable.
//! - **C1** (`--workloads c1`): a lease acquired and released over gRPC, one after the
//!   other, on the `bench` pool; the time of each round trip.
//!
//! Publisher and subscriber use separate connections, as separate components would.

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::StreamExt as _;
use ganglion_client::Client;
use ganglion_core::bus::{EventBus, StartPosition, SubscribeOptions, Subscription};
use ganglion_core::{Event, Pattern, Topic};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

use crate::{ClientArgs, Output};

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchArgs {
    /// Which workloads to run.
    #[arg(long, value_delimiter = ',', default_value = "w1,w2,w3")]
    workloads: Vec<String>,
    /// W1 events.
    #[arg(long, default_value_t = 1_000_000)]
    w1_events: u64,
    /// W2 events.
    #[arg(long, default_value_t = 200_000)]
    w2_events: u64,
    /// W3 events per run (ephemeral, then durable).
    #[arg(long, default_value_t = 20_000)]
    w3_events: u64,
    /// C1 lease round trips (acquire, then release, over gRPC on the `bench` pool).
    #[arg(long, default_value_t = 10_000)]
    c1_rounds: u64,
    /// W3 publish rate, events per second.
    #[arg(long, default_value_t = 5_000)]
    w3_rate: u64,
    /// Events per publish call in W1 and W2.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Publish calls in flight in W1 and W2.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    #[command(flatten)]
    client: ClientArgs,
}

/// Nothing received for this long ends a workload as failed.
const STALL: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct Row {
    workload: &'static str,
    events: u64,
    received: u64,
    publish_per_sec: Option<f64>,
    consume_per_sec: Option<f64>,
    end_to_end_per_sec: Option<f64>,
    latency_us: Option<[u64; 4]>,
    note: String,
}

impl Row {
    fn json(&self) -> Value {
        json!({
            "workload": self.workload,
            "events": self.events,
            "received": self.received,
            "publish_per_sec": self.publish_per_sec.map(f64::round),
            "consume_per_sec": self.consume_per_sec.map(f64::round),
            "end_to_end_per_sec": self.end_to_end_per_sec.map(f64::round),
            "latency_us": self.latency_us.map(|[p50, p90, p99, max]| json!({"p50": p50, "p90": p90, "p99": p99, "max": max})),
            "note": self.note,
        })
    }
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {per_sec} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(what.to_owned());
    bar
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let publisher = crate::commands::connect(&args.client).await?;
    let subscriber = crate::commands::connect(&args.client).await?;
    let run_id = ganglion_core::unix_micros(std::time::SystemTime::now());
    let mut rows = Vec::new();
    for workload in &args.workloads {
        match workload.to_ascii_lowercase().as_str() {
            "w1" => rows.push(w1(&args, &publisher, &subscriber).await?),
            "w2" => rows.push(w2(&args, &publisher, &subscriber, run_id).await?),
            "w3" => {
                rows.push(
                    w3(
                        &args,
                        &publisher,
                        &subscriber,
                        "bench.events.latency",
                        "W3 ephemeral",
                    )
                    .await?,
                );
                let topic = format!("bench.latency.r{run_id}");
                rows.push(w3(&args, &publisher, &subscriber, &topic, "W3 durable").await?);
            }
            "c1" => rows.push(c1_on_its_own_thread(&args).await?),
            other => bail!("--workloads: unknown workload {other:?} (expected w1, w2, w3, c1)"),
        }
    }
    print(&rows, args.client.output)
}

fn print(rows: &[Row], output: Output) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if output == Output::Json {
        writeln!(
            out,
            "{}",
            json!({ "results": rows.iter().map(Row::json).collect::<Vec<_>>() })
        )?;
        return Ok(());
    }
    let rate = |r: Option<f64>| r.map_or("-".to_owned(), |r| format!("{:.0}", r));
    writeln!(
        out,
        "{:<13} {:>9} {:>9} {:>11} {:>11} {:>11} {:>7} {:>7} {:>7} {:>7}  note",
        "workload",
        "events",
        "received",
        "publish/s",
        "consume/s",
        "e2e/s",
        "p50µs",
        "p90µs",
        "p99µs",
        "maxµs"
    )?;
    for r in rows {
        let [p50, p90, p99, max] = r
            .latency_us
            .map(|l| l.map(|v| v.to_string()))
            .unwrap_or_else(|| {
                [
                    "-".to_owned(),
                    "-".to_owned(),
                    "-".to_owned(),
                    "-".to_owned(),
                ]
            });
        writeln!(
            out,
            "{:<13} {:>9} {:>9} {:>11} {:>11} {:>11} {:>7} {:>7} {:>7} {:>7}  {}",
            r.workload,
            r.events,
            r.received,
            rate(r.publish_per_sec),
            rate(r.consume_per_sec),
            rate(r.end_to_end_per_sec),
            p50,
            p90,
            p99,
            max,
            r.note
        )?;
    }
    Ok(())
}

fn payload(size: usize) -> Bytes {
    Bytes::from(
        (0..size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// Publishes `count` events in batches with `in_flight` calls outstanding; returns the
/// first sequence number and when the last ack arrived.
async fn publish_all(
    client: &Client,
    topic: &Topic,
    body: &Bytes,
    count: u64,
    args: &BenchArgs,
    bar: &ProgressBar,
) -> anyhow::Result<(u64, Instant)> {
    let batch = args.batch.max(1) as u64;
    let batches = count.div_ceil(batch);
    let mut acks = futures_util::stream::iter(0..batches)
        .map(|b| {
            let n = batch.min(count - b * batch);
            let events: Vec<Event> = (0..n)
                .map(|_| Event::new(topic.clone(), body.clone()))
                .collect();
            client.publish_batch(events)
        })
        .buffered(args.in_flight.max(1));
    let mut first_seq = u64::MAX;
    while let Some(result) = acks.next().await {
        let acks = result.context("publishing")?;
        first_seq = first_seq.min(acks.first().map_or(u64::MAX, |a| a.seq));
        bar.inc(acks.len() as u64);
    }
    Ok((first_seq, Instant::now()))
}

/// Receives until `count` events arrived (acking them when `ack`), or nothing arrived
/// for [`STALL`]. Returns how many arrived and when the last did.
async fn receive(
    subscription: &mut Subscription,
    count: u64,
    ack: bool,
    bar: &ProgressBar,
    mut on_event: impl FnMut(&Event),
) -> (u64, Instant) {
    let mut received = 0;
    let mut last = Instant::now();
    let mut seqs = Vec::new();
    while received < count {
        let first = match tokio::time::timeout(STALL, subscription.next()).await {
            Ok(Some(d)) => d,
            Ok(None) | Err(_) => break,
        };
        // Take whatever else is ready, and ack it all at once.
        let mut next = Some(first);
        while let Some(delivery) = next {
            for delivered in delivery.events() {
                on_event(&delivered.event);
            }
            received += delivery.events().len() as u64;
            if ack {
                seqs.extend_from_slice(delivery.seqs());
            }
            next = subscription.try_next();
        }
        if !seqs.is_empty() {
            subscription.ack(&seqs);
            seqs.clear();
        }
        bar.set_position(received);
        last = Instant::now();
    }
    (received, last)
}

async fn w1(args: &BenchArgs, publisher: &Client, subscriber: &Client) -> anyhow::Result<Row> {
    let count = args.w1_events;
    let topic = Topic::new("bench.events.x")?;
    let mut subscription = subscriber
        .subscribe(Pattern::new("bench.events.*")?, SubscribeOptions::default())
        .await?;
    // The topic must be ephemeral for W1 to mean what it says.
    let probe = publisher
        .publish(Event::new(topic.clone(), Bytes::from_static(b"probe")))
        .await?;
    if probe.seq != 0 {
        bail!(
            "bench.events.x is durable on this server; W1 needs it ephemeral (the default settings make `bench.events.>` ephemeral; or start the server with --ephemeral 'bench.events.>')"
        );
    }
    let _ = tokio::time::timeout(STALL, subscription.next()).await;

    let body = payload(128);
    let pub_bar = progress(count, "W1 publish");
    let sub_bar = progress(count, "W1 receive");
    let start = Instant::now();
    let consumer = tokio::spawn(async move {
        let (received, last) = receive(&mut subscription, count, false, &sub_bar, |_| {}).await;
        sub_bar.finish_and_clear();
        (received, last, subscription.closed_reason())
    });
    let (_, published) = publish_all(publisher, &topic, &body, count, args, &pub_bar).await?;
    pub_bar.finish_and_clear();
    let (received, last, closed) = consumer.await?;
    let secs = |t: Instant| t.duration_since(start).as_secs_f64();
    Ok(Row {
        workload: "W1",
        events: count,
        received,
        publish_per_sec: Some(count as f64 / secs(published)),
        end_to_end_per_sec: Some(received as f64 / secs(last)),
        note: match (received < count, closed) {
            (false, _) => "ephemeral, 128 B".to_owned(),
            (true, Some(reason)) => format!("subscriber closed: {reason}"),
            (true, None) => format!("{} events not received (at most once)", count - received),
        },
        ..Row::default()
    })
}

async fn w2(
    args: &BenchArgs,
    publisher: &Client,
    subscriber: &Client,
    run_id: u64,
) -> anyhow::Result<Row> {
    let count = args.w2_events;
    let topic = Topic::new(&format!("bench.durable.r{run_id}"))?;
    let body = payload(256);
    let bar = progress(count, "W2 publish");
    let start = Instant::now();
    let (first_seq, published) = publish_all(publisher, &topic, &body, count, args, &bar).await?;
    bar.finish_and_clear();
    if first_seq == 0 {
        bail!("{topic} is ephemeral on this server; W2 needs a durable topic");
    }
    let publish_secs = published.duration_since(start).as_secs_f64();

    let options = SubscribeOptions {
        start: StartPosition::Seq(first_seq),
        max_in_flight: 20_000,
        ..SubscribeOptions::default()
    };
    let mut subscription = subscriber
        .subscribe(Pattern::new(topic.as_str())?, options)
        .await?;
    let bar = progress(count, "W2 consume");
    let consume_start = Instant::now();
    let (received, last) = receive(&mut subscription, count, true, &bar, |_| {}).await;
    bar.finish_and_clear();
    Ok(Row {
        workload: "W2",
        events: count,
        received,
        publish_per_sec: Some(count as f64 / publish_secs),
        consume_per_sec: Some(received as f64 / last.duration_since(consume_start).as_secs_f64()),
        note: format!("durable (fsync before ack), 256 B, acked; topic {topic}"),
        ..Row::default()
    })
}

async fn w3(
    args: &BenchArgs,
    publisher: &Client,
    subscriber: &Client,
    topic: &str,
    name: &'static str,
) -> anyhow::Result<Row> {
    let count = args.w3_events;
    let topic = Topic::new(topic)?;
    let mut subscription = subscriber
        .subscribe(Pattern::new(topic.as_str())?, SubscribeOptions::default())
        .await?;
    let base = Instant::now();
    let histogram = Arc::new(std::sync::Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")?,
    ));
    let bar = progress(count, name);
    let recorder = histogram.clone();
    let consumer = tokio::spawn(async move {
        let (received, _) = receive(&mut subscription, count, true, &bar, |event| {
            if event.payload.len() >= 8 {
                let mut sent = [0u8; 8];
                sent.copy_from_slice(&event.payload[..8]);
                let sent = Duration::from_nanos(u64::from_le_bytes(sent));
                let latency = base.elapsed().saturating_sub(sent);
                let micros = u64::try_from(latency.as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1);
                let _ = recorder.lock().map(|mut h| h.saturating_record(micros));
            }
        })
        .await;
        bar.finish_and_clear();
        received
    });

    let start = Instant::now();
    publish_paced(publisher, &topic, count, args.w3_rate, base).await?;
    let received = consumer.await?;
    let h = histogram
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram poisoned"))?;
    Ok(Row {
        workload: name,
        events: count,
        received,
        publish_per_sec: Some(count as f64 / start.elapsed().as_secs_f64()),
        latency_us: Some([
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.max(),
        ]),
        note: format!("{} events/s steady, 128 B, topic {topic}", args.w3_rate),
        ..Row::default()
    })
}

/// Publishes `count` events of 128 B at `rate` per second, one call each, the first 8
/// bytes the time since `base` they were sent (for the receiver's latency).
///
/// Paced on a thread of its own: std's sleep is accurate to tens of microseconds where
/// tokio's timers tick in milliseconds, and it does not spin a core the server needs.
async fn publish_paced(
    publisher: &Client,
    topic: &Topic,
    count: u64,
    rate: u64,
    base: Instant,
) -> anyhow::Result<()> {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let start = Instant::now();
    let runtime = tokio::runtime::Handle::current();
    let (client, topic) = (publisher.clone(), topic.clone());
    let pending = tokio::task::spawn_blocking(move || {
        let mut pending = Vec::with_capacity(count as usize);
        for i in 0..count {
            let due = start + interval.mul_f64(i as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let mut body = Vec::with_capacity(128);
            body.extend_from_slice(&(base.elapsed().as_nanos() as u64).to_le_bytes());
            body.resize(128, b'x');
            let client = client.clone();
            let event = Event::new(topic.clone(), body);
            pending.push(runtime.spawn(async move { client.publish(event).await }));
        }
        pending
    })
    .await?;
    for p in pending {
        p.await?.context("publishing")?;
    }
    Ok(())
}

/// Runs C1 on a single-threaded runtime of its own: one sequential caller whose
/// request, HTTP/2 connection and response tasks share a thread, as an application's
/// current-thread client would, so the round trip it measures is the server's and the
/// network's rather than wake-ups between the bench's own worker threads.
async fn c1_on_its_own_thread(args: &BenchArgs) -> anyhow::Result<Row> {
    let args = args.clone();
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting C1's runtime")?
            .block_on(c1(&args))
    })
    .await
    .context("the C1 thread panicked")?
}

async fn c1(args: &BenchArgs) -> anyhow::Result<Row> {
    use ganglion_proto::v1::{AcquireRequest, ReleaseRequest, lease_update};
    let mut client = crate::commands::coordinator_rpc(&args.client).await?;
    let rounds = args.c1_rounds;
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")?;
    let bar = progress(rounds, "C1 lease");
    let start = Instant::now();
    for _ in 0..rounds {
        let began = Instant::now();
        let mut stream = client
            .acquire(AcquireRequest {
                pool: "bench".into(),
                holder: "ganglion-bench".into(),
                wait_ms: 5_000,
                ..Default::default()
            })
            .await
            .context("acquiring a lease on the `bench` pool")?
            .into_inner();
        let lease = match stream.message().await?.and_then(|u| u.update) {
            Some(lease_update::Update::Granted(lease)) => lease,
            other => bail!("expected a grant, got {other:?}"),
        };
        client
            .release(ReleaseRequest { lease_id: lease.id })
            .await?;
        let micros = u64::try_from(began.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        h.saturating_record(micros);
        // Read the stream to its end (the server closes it after the release) rather
        // than resetting it: h2 servers cut connections that reset streams by the
        // thousand.
        while stream.message().await?.is_some() {}
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(Row {
        workload: "C1 lease",
        events: rounds,
        received: rounds,
        publish_per_sec: Some(rounds as f64 / start.elapsed().as_secs_f64()),
        latency_us: Some([
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.max(),
        ]),
        note: "acquire (stream) + release over gRPC, one at a time".into(),
        ..Row::default()
    })
}
