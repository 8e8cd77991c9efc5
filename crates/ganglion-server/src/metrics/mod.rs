//! The server's counters, and the two views of them: Prometheus text (`/metrics`) and a
//! JSON summary (`/api/v1/metrics`). Names follow `ganglion_<subsystem>_<name>_<unit>`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ganglion_core::BusError;
use ganglion_core::bus::ErrorCode;
use ganglion_core::stats::Histogram;
use serde_json::json;

use crate::State;

mod families;

use families::{bus_metrics, coordinator_metrics, log_metrics, process_metrics, server_metrics};
use ganglion_telemetry::metrics::{Exposition, PUBLISH_DURATION};

/// Counters updated by the gRPC and HTTP handlers.
#[derive(Debug, Default)]
pub struct Metrics {
    published: AtomicU64,
    /// How long publish calls took, from decoded request to durable acknowledgement.
    publish_duration: Histogram,
    delivered: AtomicU64,
    /// Refusals per error code, at the code's index in [`ErrorCode::ALL`].
    refused: [AtomicU64; ErrorCode::ALL.len()],
    subscriptions_opened: AtomicU64,
    subscriptions_open: AtomicU64,
    sse_clients: AtomicU64,
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn code_index(code: ErrorCode) -> usize {
    code as usize
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

/// Prometheus text exposition format, version 0.0.4.
pub(crate) fn prometheus(state: &State, topics: &[ganglion_core::bus::TopicInfo]) -> String {
    let m = &state.metrics;
    let mut x = Exposition::with_capacity(8192);
    server_metrics(&mut x, state);
    bus_metrics(&mut x, state, topics);
    log_metrics(&mut x, state);
    coordinator_metrics(&mut x, state);
    x.histograms(
        &PUBLISH_DURATION,
        [([] as [&str; 0], &m.publish_duration.snapshot())],
    );
    process_metrics(&mut x);
    x.finish()
}

/// The JSON summary behind `GET /api/v1/metrics`.
pub(crate) fn summary(state: &State) -> serde_json::Value {
    let m = &state.metrics;
    let log = state.bus.storage();
    json!({
        "uptime_seconds": state.started.elapsed().as_secs(),
        "events": {
            "published": load(&m.published),
            "delivered": load(&m.delivered),
        },
        "refused": ErrorCode::ALL.iter().map(|c| (c.as_str().to_owned(), json!(load(&m.refused[code_index(*c)])))).collect::<serde_json::Map<_, _>>(),
        "subscriptions": {
            "open": load(&m.subscriptions_open),
            "opened": load(&m.subscriptions_opened),
            "sse_clients": load(&m.sse_clients),
            "consumers": state
                .bus
                .subscriptions()
                .into_iter()
                .map(crate::http::SubscriptionJson::from)
                .collect::<Vec<_>>(),
        },
        "coordinator": crate::http::coordinator::status_json(state.coordinator.as_ref()),
        "log": {
            "first_seq": log.first_seq,
            "next_seq": log.next_seq,
            "segments": log.segments,
            "bytes": log.bytes,
            "appends": log.appends,
            "fsyncs": log.fsyncs,
            "fsync_micros_total": log.fsync_micros_total,
            "healthy": state.bus.health().is_ok(),
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
