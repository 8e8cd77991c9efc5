//! Every metric family the server exports, by part: the server's own counters, the bus,
//! the log, the coordinator and the process. Names, kinds and help are declared once, in
//! [`ganglion_telemetry::metrics`].

use std::collections::BTreeMap;

use ganglion_core::engine::SubscriptionStats;
use ganglion_telemetry::metrics::{self as family, Exposition, Family};

use crate::State;

use ganglion_core::bus::ErrorCode;

use super::{code_index, load, memory_limit};

/// A family with a sample per item of a status list, and how to read the value.
type PerItem<T> = (&'static Family, fn(&T) -> u64);

/// Most distinct topic prefixes given their own series; the rest count as `other`.
pub(super) const MAX_PREFIXES: usize = 64;

pub(super) fn server_metrics(x: &mut Exposition, state: &State) {
    let m = &state.metrics;
    x.one(&family::SERVER_PUBLISHED, load(&m.published));
    x.one(&family::SERVER_DELIVERED, load(&m.delivered));
    x.each(
        &family::SERVER_REFUSED,
        ErrorCode::ALL
            .iter()
            .map(|c| ([c.as_str()], load(&m.refused[code_index(*c)]))),
    );
    let audit = &state.audit;
    x.each(
        &family::AUTH_REFUSED,
        [
            (["unauthenticated"], load(&audit.unauthenticated)),
            (["permission_denied"], load(&audit.refused)),
        ],
    );
    x.one(&family::AUDIT_ADMIN_ACTIONS, load(&audit.admin));
    x.one(
        &family::SERVER_SUBSCRIPTIONS_OPENED,
        load(&m.subscriptions_opened),
    );
    x.one(&family::SERVER_SUBSCRIPTIONS, load(&m.subscriptions_open));
    x.one(&family::SERVER_SSE_CLIENTS, load(&m.sse_clients));
    let connections = state
        .connections
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(c) = connections {
        x.each(
            &family::SERVER_CONNECTIONS,
            c.open().into_iter().map(|(t, n)| ([t.as_str()], n)),
        );
        let counters = [
            (&family::SERVER_CONNECTIONS_EVICTED, &c.counters.evicted),
            (&family::SERVER_CONNECTIONS_REFUSED, &c.counters.refused),
            (
                &family::SERVER_CONNECTIONS_HEALTH_ONLY,
                &c.counters.health_only,
            ),
            (&family::SERVER_CONNECTIONS_TIMED_OUT, &c.counters.timed_out),
            (
                &family::SERVER_TLS_HANDSHAKES_FAILED,
                &c.counters.tls_failed,
            ),
        ];
        for (f, counter) in counters {
            x.one(f, load(counter));
        }
    }
    x.one(&family::SERVER_UPTIME, state.started.elapsed().as_secs());
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
        &family::BUS_PUBLISHED,
        prefixes.into_iter().map(|(p, n)| ([p], n)),
    );
    let subs = state.bus.subscriptions();
    let per_subscription: [PerItem<SubscriptionStats>; 11] = [
        (&family::BUS_DELIVERED, |s| s.delivered),
        (&family::BUS_REDELIVERED, |s| s.redelivered),
        (&family::BUS_ACKED, |s| s.acked),
        (&family::BUS_NACKED, |s| s.nacked),
        (&family::BUS_ACK_TIMEOUTS, |s| s.ack_timeouts),
        (&family::BUS_DEAD_LETTERED, |s| s.dead_lettered),
        (&family::BUS_READY, |s| s.ready),
        (&family::BUS_IN_FLIGHT, |s| s.in_flight),
        (&family::BUS_LAG, |s| s.lag),
        (&family::BUS_MEMBERS, |s| s.members as u64),
        (&family::BUS_EXPIRED, |s| s.expired),
    ];
    for (f, read) in per_subscription {
        x.each(f, subs.iter().map(|s| ([s.name.as_str()], read(s))));
    }
    x.each(
        &family::BUS_DEAD_LETTERS,
        state
            .bus
            .dead_letter_counts()
            .into_iter()
            .map(|(subscription, n)| ([subscription], n)),
    );
    x.histograms(
        &family::BUS_DELIVERY_LATENCY,
        [([] as [&str; 0], &state.bus.delivery_latency())],
    );
}

pub(super) fn log_metrics(x: &mut Exposition, state: &State) {
    let log = state.bus.storage();
    x.one(&family::LOG_APPENDED, log.appends);
    x.one(&family::LOG_SIZE, log.bytes);
    x.one(&family::LOG_SEGMENTS, log.segments);
    x.one(&family::LOG_NEXT_SEQUENCE, log.next_seq);
    x.one(&family::LOG_FSYNCS, log.fsyncs);
    x.one(
        &family::LOG_FSYNC_SECONDS,
        log.fsync_micros_total as f64 / 1e6,
    );
    x.one(&family::LOG_HEALTHY, u64::from(state.bus.health().is_ok()));
}

pub(super) fn coordinator_metrics(x: &mut Exposition, state: &State) {
    use ganglion_coordinator::lease::PoolStatus;
    use ganglion_coordinator::quota::QuotaStatus;
    let c = state.coordinator.status();
    let pools: [PerItem<PoolStatus>; 4] = [
        (&family::POOL_CAPACITY, |p| p.capacity as u64),
        (&family::POOL_FREE, |p| p.free as u64),
        (&family::POOL_HOLDERS, |p| p.holders.len() as u64),
        (&family::POOL_WAITERS, |p| p.waiters as u64),
    ];
    for (f, read) in pools {
        x.each(f, c.pools.iter().map(|p| ([p.name.as_str()], read(p))));
    }
    let quotas: [PerItem<QuotaStatus>; 5] = [
        (&family::QUOTA_LIMIT, |q| u64::from(q.limit)),
        (&family::QUOTA_USED, |q| u64::from(q.used)),
        (&family::QUOTA_REMAINING, |q| u64::from(q.remaining)),
        (&family::QUOTA_NEAR_LIMIT, |q| u64::from(q.near_limit)),
        (&family::QUOTA_SUSPENDED, |q| q.suspended_for.as_secs()),
    ];
    for (f, read) in quotas {
        x.each(f, c.quotas.iter().map(|q| ([q.name.as_str()], read(q))));
    }
    x.each(
        &family::BREAKER_STATE,
        c.breakers.iter().flat_map(|b| {
            ["closed", "open", "half_open"]
                .into_iter()
                .map(move |s| ([b.name.as_str(), s], u64::from(b.state == s)))
        }),
    );
    let waits = state.coordinator.lease_wait_times();
    x.histograms(
        &family::LEASE_WAIT,
        waits.iter().map(|(pool, h)| ([pool.as_str()], h)),
    );
}

/// The standard `process_*` metrics (as every Prometheus client library names them),
/// read from `/proc/self`; nothing is written where `/proc` is missing. And
/// `ganglion_build_info`.
pub(super) fn process_metrics(x: &mut Exposition) {
    x.each(&family::BUILD_INFO, [([env!("CARGO_PKG_VERSION")], 1)]);
    let page_size = 4096.0;
    let ticks_per_second = 100.0;
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        let pages: Vec<f64> = statm
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if let [virtual_pages, resident_pages, ..] = pages[..] {
            x.one(&family::PROCESS_VIRTUAL_MEMORY, virtual_pages * page_size);
            x.one(&family::PROCESS_RESIDENT_MEMORY, resident_pages * page_size);
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
        x.one(&family::PROCESS_CPU, ticks / ticks_per_second);
        // starttime is field 22: ticks after boot; boot time is in /proc/stat.
        let started = fields.get(19).and_then(|v| v.parse::<f64>().ok());
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        if let (Some(started), Some(boot)) = (started, boot) {
            x.one(
                &family::PROCESS_START_TIME,
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
        x.one(&family::PROCESS_MAX_FDS, max);
    }
    if let Some(limit) = memory_limit() {
        x.one(&family::PROCESS_MEMORY_LIMIT, limit);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        x.one(&family::PROCESS_OPEN_FDS, fds.count());
    }
}
