//! Every metric family the server exports, by part: the server's own counters, the bus,
//! the log, the coordinator and the process.

use std::collections::BTreeMap;

use ganglion_core::engine::SubscriptionStats;

use crate::State;

use super::exposition::{Exposition, label, load};
use super::{CODES, code_index, memory_limit};

/// A per-subscription family: name, help, and the value it reads.
pub(super) type PerSubscription = (&'static str, &'static str, fn(&SubscriptionStats) -> u64);

/// A family's name, help and labelled samples.
pub(super) type Family = (&'static str, &'static str, Vec<(String, u64)>);

/// Most distinct topic prefixes given their own series; the rest count as `other`.
pub(super) const MAX_PREFIXES: usize = 64;

pub(super) fn server_metrics(x: &mut Exposition, state: &State) {
    let m = &state.metrics;
    x.one(
        "ganglion_server_published_events_total",
        "counter",
        "Events published through the gRPC and HTTP APIs.",
        load(&m.published),
    );
    x.one(
        "ganglion_server_delivered_events_total",
        "counter",
        "Events sent to gRPC and SSE subscribers.",
        load(&m.delivered),
    );
    x.each(
        "ganglion_server_refused_requests_total",
        "counter",
        "Publish requests refused, by error code.",
        CODES
            .iter()
            .map(|c| (label("code", c.as_str()), load(&m.refused[code_index(*c)]))),
    );
    let audit = &state.audit;
    x.each(
        "ganglion_auth_refused_total",
        "counter",
        "Requests refused by authentication (no or bad credentials) or by permissions (the identity may not).",
        [
            (label("reason", "unauthenticated"), load(&audit.unauthenticated)),
            (label("reason", "permission_denied"), load(&audit.refused)),
        ],
    );
    x.one(
        "ganglion_audit_admin_actions_total",
        "counter",
        "Admin actions allowed (purge, delete, redrive, another's lease or request), each also an audit log line.",
        load(&audit.admin),
    );
    x.one(
        "ganglion_server_subscriptions_opened_total",
        "counter",
        "gRPC subscriptions opened.",
        load(&m.subscriptions_opened),
    );
    x.one(
        "ganglion_server_subscriptions",
        "gauge",
        "gRPC subscriptions open now.",
        load(&m.subscriptions_open),
    );
    x.one(
        "ganglion_server_sse_clients",
        "gauge",
        "Server-Sent Events streams open now.",
        load(&m.sse_clients),
    );
    let connections = state
        .connections
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(c) = connections {
        x.each(
            "ganglion_server_connections",
            "gauge",
            "Connections open now, by listener (those let in over the caps for health checks not counted).",
            c.open()
                .into_iter()
                .map(|(t, n)| (label("transport", t.as_str()), n)),
        );
        let counters = [
            (
                "ganglion_server_connections_evicted_total",
                "Idle connections closed to make room for a new one at a cap.",
                &c.counters.evicted,
            ),
            (
                "ganglion_server_connections_refused_total",
                "Connections closed at once: every slot busy, the health reserve too.",
                &c.counters.refused,
            ),
            (
                "ganglion_server_connections_health_only_total",
                "Connections let in over the caps, served health checks only.",
                &c.counters.health_only,
            ),
            (
                "ganglion_server_connections_timed_out_total",
                "Connections closed for sitting idle (or making no first request) too long.",
                &c.counters.timed_out,
            ),
            (
                "ganglion_server_tls_handshakes_failed_total",
                "TLS handshakes that failed (a bad or missing client certificate, a plain-text client) or timed out.",
                &c.counters.tls_failed,
            ),
        ];
        for (name, help, counter) in counters {
            x.one(name, "counter", help, load(counter));
        }
    }
    x.one(
        "ganglion_server_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
        state.started.elapsed().as_secs(),
    );
}

pub(super) fn bus_metrics(
    x: &mut Exposition,
    state: &State,
    topics: &[ganglion_core::bus::TopicInfo],
) {
    // Published, by the first token of the topic (bounded: an application's topic
    // prefixes are few; past MAX_PREFIXES the rest count as `other`).
    let mut prefixes: BTreeMap<&str, u64> = BTreeMap::new();
    for t in topics {
        let prefix = t.topic.as_str().split('.').next().unwrap_or_default();
        let key = if prefixes.len() < MAX_PREFIXES || prefixes.contains_key(prefix) {
            prefix
        } else {
            "other"
        };
        *prefixes.entry(key).or_default() += t.events;
    }
    x.each(
        "ganglion_bus_published_events_total",
        "counter",
        "Events published (logged since the log began, and ephemeral ones since start), by topic prefix (the first token).",
        prefixes.into_iter().map(|(p, n)| (label("prefix", p), n)),
    );
    let subs = state.bus.subscriptions();
    let per_sub = |f: fn(&SubscriptionStats) -> u64| {
        subs.iter()
            .map(move |s| (label("subscription", &s.name), f(s)))
            .collect::<Vec<_>>()
    };
    let counters: [PerSubscription; 6] = [
        (
            "ganglion_bus_delivered_events_total",
            "Events handed to a subscription's subscribers, redeliveries included.",
            |s| s.delivered,
        ),
        (
            "ganglion_bus_redelivered_events_total",
            "Deliveries after a first failed attempt.",
            |s| s.redelivered,
        ),
        (
            "ganglion_bus_acked_events_total",
            "Logged events acknowledged (by the subscriber, or at delivery under auto ack).",
            |s| s.acked,
        ),
        (
            "ganglion_bus_nacked_events_total",
            "Logged events negatively acknowledged by a subscriber.",
            |s| s.nacked,
        ),
        (
            "ganglion_bus_ack_timeouts_total",
            "In-flight events whose ack deadline passed.",
            |s| s.ack_timeouts,
        ),
        (
            "ganglion_bus_dead_lettered_events_total",
            "Events sent to the subscription's dead-letter topic.",
            |s| s.dead_lettered,
        ),
    ];
    for (name, help, f) in counters {
        x.each(name, "counter", help, per_sub(f));
    }
    let gauges: [PerSubscription; 4] = [
        (
            "ganglion_bus_subscription_ready_events",
            "Events in memory waiting for a subscriber (the queue depth; a backlog waits in the log).",
            |s| s.ready,
        ),
        (
            "ganglion_bus_subscription_in_flight_events",
            "Logged events out with subscribers and not yet acked.",
            |s| s.in_flight,
        ),
        (
            "ganglion_bus_subscription_lag_records",
            "Log records the subscription has not read yet (every topic's).",
            |s| s.lag,
        ),
        (
            "ganglion_bus_subscription_members",
            "Subscribers attached to the subscription (more than one in a queue group).",
            |s| s.members as u64,
        ),
    ];
    for (name, help, f) in gauges {
        x.each(name, "gauge", help, per_sub(f));
    }
    x.each(
        "ganglion_bus_dead_letter_events",
        "gauge",
        "Dead letters of each subscription not redriven (whatever its dead-letter topic).",
        state
            .bus
            .dead_letter_counts()
            .into_iter()
            .map(|(subscription, n)| (label("subscription", &subscription), n)),
    );
    x.each(
        "ganglion_bus_subscription_expired_events_total",
        "counter",
        "Events that expired under retention (or a purge) before the subscription read them.",
        per_sub(|s| s.expired),
    );
    x.histograms(
        "ganglion_bus_delivery_latency_seconds",
        "End to end: from an event's timestamp (set at publication unless the publisher gave one; whole milliseconds) to its first delivery, sampled once per delivery round.",
        [(String::new(), &state.bus.delivery_latency())],
    );
}

pub(super) fn log_metrics(x: &mut Exposition, state: &State) {
    let log = state.bus.storage();
    x.one(
        "ganglion_log_appended_records_total",
        "counter",
        "Records appended to the event log since start.",
        log.appends,
    );
    x.one(
        "ganglion_log_size_bytes",
        "gauge",
        "Bytes of committed data in the event log.",
        log.bytes,
    );
    x.one(
        "ganglion_log_segments",
        "gauge",
        "Segment files of the event log.",
        log.segments,
    );
    x.one(
        "ganglion_log_next_sequence",
        "gauge",
        "The sequence number the next logged event gets.",
        log.next_seq,
    );
    x.one(
        "ganglion_log_fsyncs_total",
        "counter",
        "fdatasync calls on the event log.",
        log.fsyncs,
    );
    x.one(
        "ganglion_log_fsync_seconds_total",
        "counter",
        "Time spent in fdatasync on the event log (divided by ganglion_log_fsyncs_total: the mean fsync latency).",
        log.fsync_micros_total as f64 / 1e6,
    );
    x.one(
        "ganglion_log_healthy",
        "gauge",
        "1 while the event log accepts appends; 0 while it refuses them (failed, or the device is full).",
        u64::from(state.bus.health().is_ok()),
    );
}

pub(super) fn coordinator_metrics(x: &mut Exposition, state: &State) {
    // Labels are configured names (bounded).
    let c = crate::grpc::coordinator::status_of(&state.coordinator);
    let pools = |f: fn(&ganglion_proto::v1::PoolStatus) -> u64| {
        c.pools
            .iter()
            .map(move |p| (label("pool", &p.name), f(p)))
            .collect::<Vec<_>>()
    };
    let quotas = |f: fn(&ganglion_proto::v1::QuotaStatus) -> u64| {
        c.quotas
            .iter()
            .map(move |q| (label("quota", &q.name), f(q)))
            .collect::<Vec<_>>()
    };
    let gauges: [Family; 9] = [
        (
            "ganglion_coordinator_pool_capacity_units",
            "Units in a resource pool.",
            pools(|p| u64::from(p.capacity)),
        ),
        (
            "ganglion_coordinator_pool_free_units",
            "Units of a pool not leased.",
            pools(|p| u64::from(p.free)),
        ),
        (
            "ganglion_coordinator_pool_holders",
            "Leases held on a pool.",
            pools(|p| p.holders.len() as u64),
        ),
        (
            "ganglion_coordinator_pool_waiters",
            "Requests waiting for a pool.",
            pools(|p| u64::from(p.waiters)),
        ),
        (
            "ganglion_coordinator_quota_limit_calls",
            "Calls a quota allows per window.",
            quotas(|q| u64::from(q.limit)),
        ),
        (
            "ganglion_coordinator_quota_used_calls",
            "Calls granted in the quota's current trailing window.",
            quotas(|q| u64::from(q.used)),
        ),
        (
            "ganglion_coordinator_quota_remaining_calls",
            "Calls a quota can still grant now.",
            quotas(|q| u64::from(q.remaining)),
        ),
        (
            "ganglion_coordinator_quota_near_limit",
            "1 while a quota is at or above its near-limit fraction.",
            quotas(|q| u64::from(q.near_limit)),
        ),
        (
            "ganglion_coordinator_quota_suspended_seconds",
            "How long a quota stays suspended by an upstream limit.",
            quotas(|q| q.suspended_for_ms / 1000),
        ),
    ];
    for (name, help, samples) in gauges {
        x.each(name, "gauge", help, samples);
    }
    x.each(
        "ganglion_coordinator_breaker_state",
        "gauge",
        "1 for the state a circuit breaker is in.",
        c.breakers.iter().flat_map(|b| {
            ["closed", "open", "half_open"].into_iter().map(move |s| {
                let labels = format!("{},{}", label("breaker", &b.name), label("state", s));
                (labels, u64::from(b.state == s))
            })
        }),
    );
    let waits = state.coordinator.pools().wait_times();
    x.histograms(
        "ganglion_coordinator_lease_wait_seconds",
        "How long granted lease requests waited in line (zero when units were free).",
        waits.iter().map(|(pool, h)| (label("pool", pool), h)),
    );
}

/// The standard `process_*` metrics (as every Prometheus client library names them),
/// read from `/proc/self`; nothing is written where `/proc` is missing. And
/// `ganglion_build_info`.
pub(super) fn process_metrics(x: &mut Exposition) {
    x.each(
        "ganglion_build_info",
        "gauge",
        "Always 1; the version of the running build in its label.",
        [(label("version", env!("CARGO_PKG_VERSION")), 1)],
    );
    let page_size = 4096.0;
    let ticks_per_second = 100.0;
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        let pages: Vec<f64> = statm
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if let [virtual_pages, resident_pages, ..] = pages[..] {
            x.one(
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                virtual_pages * page_size,
            );
            x.one(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                resident_pages * page_size,
            );
        }
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
        x.one(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            ticks / ticks_per_second,
        );
        // starttime is field 22: ticks after boot; boot time is in /proc/stat.
        let started = fields.get(19).and_then(|v| v.parse::<f64>().ok());
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        if let (Some(started), Some(boot)) = (started, boot) {
            x.one(
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                boot + started / ticks_per_second,
            );
        }
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits")
        && let Some(max) = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<u64>().ok())
    {
        x.one(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max,
        );
    }
    if let Some(limit) = memory_limit() {
        x.one(
            "ganglion_process_memory_limit_bytes",
            "gauge",
            "The memory this process may use: its cgroup's limit, or the machine's memory.",
            limit,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        x.one(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds.count(),
        );
    }
}
