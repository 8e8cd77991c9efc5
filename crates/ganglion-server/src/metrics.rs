//! The server's counters, and the two views of them: Prometheus text (`/metrics`) and a
//! JSON summary (`/api/v1/metrics`). Names follow `ganglion_<subsystem>_<name>_<unit>`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ganglion_core::BusError;
use ganglion_core::bus::ErrorCode;
use serde_json::json;

use crate::State;

/// Counters updated by the gRPC and HTTP handlers.
#[derive(Debug, Default)]
pub struct Metrics {
    published: AtomicU64,
    /// How long publish calls took, from decoded request to durable acknowledgement.
    publish_duration: Histogram,
    delivered: AtomicU64,
    refused: [AtomicU64; 5],
    subscriptions_opened: AtomicU64,
    subscriptions_open: AtomicU64,
    sse_clients: AtomicU64,
}

const CODES: [ErrorCode; 5] = [
    ErrorCode::InvalidArgument,
    ErrorCode::NotFound,
    ErrorCode::ResourceExhausted,
    ErrorCode::Unavailable,
    ErrorCode::Internal,
];

fn code_index(code: ErrorCode) -> usize {
    CODES.iter().position(|c| *c == code).unwrap_or(4)
}

impl Metrics {
    pub(crate) fn published(&self, events: u64, took: Duration) {
        self.published.fetch_add(events, Ordering::Relaxed);
        self.publish_duration.record(took);
    }

    pub(crate) fn delivered(&self, events: u64) {
        self.delivered.fetch_add(events, Ordering::Relaxed);
    }

    /// Counts a refused publish request under `code`.
    pub(crate) fn refused_code(&self, code: ErrorCode) {
        self.refused[code_index(code)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused request; returns the error for the caller to send.
    pub(crate) fn refused(&self, error: BusError) -> BusError {
        self.refused_code(error.code());
        if let BusError::Internal(detail) = &error {
            tracing::error!(%detail, "internal error answering a request");
        }
        error
    }

    pub(crate) fn subscription_opened(&self) {
        self.subscriptions_opened.fetch_add(1, Ordering::Relaxed);
        self.subscriptions_open.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn subscription_closed(&self) {
        self.subscriptions_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a new SSE client unless `limit` are connected already.
    pub(crate) fn try_open_sse(&self, limit: usize) -> bool {
        let before = self.sse_clients.fetch_add(1, Ordering::AcqRel);
        if before >= limit as u64 {
            self.sse_clients.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    pub(crate) fn sse_closed(&self) {
        self.sse_clients.fetch_sub(1, Ordering::Relaxed);
    }

    /// Events published through this server (gRPC and HTTP).
    pub fn published_total(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Events sent to gRPC and SSE subscribers.
    pub fn delivered_total(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the latency histogram buckets, in seconds (100 µs to 2.5 s).
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A fixed-bucket latency histogram, lock-free.
#[derive(Debug, Default)]
struct Histogram {
    /// Observations at or under each bound (not cumulative; summed when rendered).
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn record(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Prometheus text for the histogram `name`.
    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// A label value with `\\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Prometheus text exposition format, version 0.0.4.
pub(crate) fn prometheus(state: &State, topics: &[ganglion_core::bus::TopicInfo]) -> String {
    let m = &state.metrics;
    let log = state.bus.log().stats();
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
    };
    metric(
        "ganglion_server_published_events_total",
        "counter",
        "Events published through the gRPC and HTTP APIs.",
        &[("", load(&m.published))],
    );
    metric(
        "ganglion_server_delivered_events_total",
        "counter",
        "Events sent to gRPC and SSE subscribers.",
        &[("", load(&m.delivered))],
    );
    let refused: Vec<(String, u64)> = CODES
        .iter()
        .map(|c| {
            (
                format!("code=\"{}\"", c.as_str()),
                load(&m.refused[code_index(*c)]),
            )
        })
        .collect();
    let refused: Vec<(&str, u64)> = refused.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    metric(
        "ganglion_server_refused_requests_total",
        "counter",
        "Publish requests refused, by error code.",
        &refused,
    );
    metric(
        "ganglion_server_subscriptions_opened_total",
        "counter",
        "gRPC subscriptions opened.",
        &[("", load(&m.subscriptions_opened))],
    );
    metric(
        "ganglion_server_subscriptions",
        "gauge",
        "gRPC subscriptions open now.",
        &[("", load(&m.subscriptions_open))],
    );
    metric(
        "ganglion_server_sse_clients",
        "gauge",
        "Server-Sent Events streams open now.",
        &[("", load(&m.sse_clients))],
    );
    metric(
        "ganglion_log_appended_records_total",
        "counter",
        "Records appended to the event log since start.",
        &[("", log.appends)],
    );
    metric(
        "ganglion_log_size_bytes",
        "gauge",
        "Bytes of committed data in the event log.",
        &[("", log.bytes)],
    );
    metric(
        "ganglion_log_segments",
        "gauge",
        "Segment files of the event log.",
        &[("", log.segments)],
    );
    metric(
        "ganglion_log_next_sequence",
        "gauge",
        "The sequence number the next logged event gets.",
        &[("", log.next_seq)],
    );
    metric(
        "ganglion_log_fsyncs_total",
        "counter",
        "fdatasync calls on the event log.",
        &[("", log.fsyncs)],
    );
    metric(
        "ganglion_log_healthy",
        "gauge",
        "1 while the event log accepts writes, 0 once it has failed.",
        &[("", u64::from(state.bus.log().failure().is_none()))],
    );
    // The coordinator: labels are configured names (bounded).
    let c = crate::coordinator::status_of(&state.coordinator);
    let labelled = |label: &str, rows: Vec<(String, u64)>| -> Vec<(String, u64)> {
        rows.into_iter()
            .map(|(name, v)| (format!("{label}=\"{name}\""), v))
            .collect()
    };
    let pools = |f: fn(&ganglion_proto::v1::PoolStatus) -> u64| {
        labelled(
            "pool",
            c.pools.iter().map(|p| (p.name.clone(), f(p))).collect(),
        )
    };
    let quotas = |f: fn(&ganglion_proto::v1::QuotaStatus) -> u64| {
        labelled(
            "quota",
            c.quotas.iter().map(|q| (q.name.clone(), f(q))).collect(),
        )
    };
    let mut coordinator_metric = |name: &str, help: &str, rows: Vec<(String, u64)>| {
        let rows: Vec<(&str, u64)> = rows.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        if !rows.is_empty() {
            metric(name, "gauge", help, &rows);
        }
    };
    coordinator_metric(
        "ganglion_coordinator_pool_capacity_units",
        "Units in a resource pool.",
        pools(|p| u64::from(p.capacity)),
    );
    coordinator_metric(
        "ganglion_coordinator_pool_free_units",
        "Units of a pool not leased.",
        pools(|p| u64::from(p.free)),
    );
    coordinator_metric(
        "ganglion_coordinator_pool_holders",
        "Leases held on a pool.",
        pools(|p| p.holders.len() as u64),
    );
    coordinator_metric(
        "ganglion_coordinator_pool_waiters",
        "Requests waiting for a pool.",
        pools(|p| u64::from(p.waiters)),
    );
    coordinator_metric(
        "ganglion_coordinator_quota_limit_calls",
        "Calls a quota allows per window.",
        quotas(|q| u64::from(q.limit)),
    );
    coordinator_metric(
        "ganglion_coordinator_quota_used_calls",
        "Calls granted in the quota's current trailing window.",
        quotas(|q| u64::from(q.used)),
    );
    coordinator_metric(
        "ganglion_coordinator_quota_remaining_calls",
        "Calls a quota can still grant now.",
        quotas(|q| u64::from(q.remaining)),
    );
    coordinator_metric(
        "ganglion_coordinator_quota_near_limit",
        "1 while a quota is at or above its near-limit fraction.",
        quotas(|q| u64::from(q.near_limit)),
    );
    coordinator_metric(
        "ganglion_coordinator_quota_suspended_seconds",
        "How long a quota stays suspended by an upstream limit.",
        quotas(|q| q.suspended_for_ms / 1000),
    );
    coordinator_metric(
        "ganglion_coordinator_breaker_state",
        "1 for the state a circuit breaker is in.",
        c.breakers
            .iter()
            .flat_map(|b| {
                ["closed", "open", "half_open"].into_iter().map(move |s| {
                    (
                        format!("breaker=\"{}\",state=\"{s}\"", b.name),
                        u64::from(b.state == s),
                    )
                })
            })
            .collect(),
    );
    let dead_letters: Vec<(String, u64)> = topics
        .iter()
        .filter_map(|t| {
            let subscription = t.topic.as_str().strip_prefix("dlq.")?;
            Some((
                format!("subscription=\"{}\"", escape(subscription)),
                t.events,
            ))
        })
        .collect();
    let dead_letters: Vec<(&str, u64)> =
        dead_letters.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    metric(
        "ganglion_bus_dead_letter_events",
        "gauge",
        "Events on each subscription's dead-letter topic (dlq.<subscription>).",
        &dead_letters,
    );
    metric(
        "ganglion_server_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
        &[("", state.started.elapsed().as_secs())],
    );
    let mut seconds = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    };
    seconds(
        "ganglion_log_fsync_seconds_total",
        "counter",
        "Time spent in fdatasync on the event log.",
        log.fsync_micros_total as f64 / 1e6,
    );
    m.publish_duration.render(
        &mut out,
        "ganglion_server_publish_duration_seconds",
        "Publish calls (gRPC and HTTP), from decoded request to durable acknowledgement.",
    );
    process_metrics(&mut out);
    out
}

/// The standard `process_*` metrics (as every Prometheus client library names them),
/// read from `/proc/self`; nothing is written where `/proc` is missing.
fn process_metrics(out: &mut String) {
    let page_size = 4096.0;
    let ticks_per_second = 100.0;
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm")
        && let Some(resident) = statm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<f64>().ok())
    {
        let _ = writeln!(
            out,
            "# HELP process_resident_memory_bytes Resident memory size in bytes."
        );
        let _ = writeln!(out, "# TYPE process_resident_memory_bytes gauge");
        let _ = writeln!(
            out,
            "process_resident_memory_bytes {}",
            resident * page_size
        );
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may hold spaces, inside parentheses).
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after `)`.
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
            .sum();
        let _ = writeln!(
            out,
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds."
        );
        let _ = writeln!(out, "# TYPE process_cpu_seconds_total counter");
        let _ = writeln!(
            out,
            "process_cpu_seconds_total {}",
            ticks / ticks_per_second
        );
    }
    if let Some(limit) = memory_limit() {
        let _ = writeln!(
            out,
            "# HELP ganglion_process_memory_limit_bytes The memory this process may use: its cgroup's limit, or the machine's memory."
        );
        let _ = writeln!(out, "# TYPE ganglion_process_memory_limit_bytes gauge");
        let _ = writeln!(out, "ganglion_process_memory_limit_bytes {limit}");
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(
            out,
            "# HELP process_open_fds Number of open file descriptors."
        );
        let _ = writeln!(out, "# TYPE process_open_fds gauge");
        let _ = writeln!(out, "process_open_fds {}", fds.count());
    }
}

/// The JSON summary behind `GET /api/v1/metrics`.
pub(crate) fn summary(state: &State) -> serde_json::Value {
    let m = &state.metrics;
    let log = state.bus.log().stats();
    json!({
        "uptime_seconds": state.started.elapsed().as_secs(),
        "events": {
            "published": load(&m.published),
            "delivered": load(&m.delivered),
        },
        "refused": CODES.iter().map(|c| (c.as_str().to_owned(), json!(load(&m.refused[code_index(*c)])))).collect::<serde_json::Map<_, _>>(),
        "subscriptions": {
            "open": load(&m.subscriptions_open),
            "opened": load(&m.subscriptions_opened),
            "sse_clients": load(&m.sse_clients),
        },
        "coordinator": crate::coordinator::status_json(&state.coordinator),
        "log": {
            "first_seq": log.first_seq,
            "next_seq": log.next_seq,
            "segments": log.segments,
            "bytes": log.bytes,
            "appends": log.appends,
            "fsyncs": log.fsyncs,
            "fsync_micros_total": log.fsync_micros_total,
            "healthy": state.bus.log().failure().is_none(),
        },
    })
}

/// The cgroup v2 memory limit, or else the machine's total memory.
fn memory_limit() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    cgroup.or_else(|| {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    })
}
