//! Every metric family Ganglion exports, in one place, and the Prometheus text writer.
//!
//! A family is declared once here: its name (`ganglion_<subsystem>_<name>_<unit>`, or the
//! standard `process_*` names every Prometheus client library uses), its kind, its help
//! text and its label names. The server writes samples through [`Exposition`], which takes
//! a [`Family`], so a name is never spelled twice; dashboards, alert rules and tests read
//! [`ALL`].

use std::fmt::{Display, Write as _};

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// The name in a `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family: what a `# HELP` and a `# TYPE` line declare, and its labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    /// The label names of every sample, in order (`le` of histogram buckets not counted).
    pub labels: &'static [&'static str],
}

macro_rules! families {
    ($($id:ident = $name:literal, $kind:ident, [$($label:literal),*], $help:literal;)*) => {
        $(
            #[doc = $help]
            pub const $id: Family = Family {
                name: $name,
                kind: Kind::$kind,
                help: $help,
                labels: &[$($label),*],
            };
        )*
        /// Every family Ganglion exports.
        pub const ALL: &[Family] = &[$($id),*];
    };
}

families! {
    // The server's own counters.
    SERVER_PUBLISHED = "ganglion_server_published_events_total", Counter, [],
        "Events published through the gRPC and HTTP APIs.";
    SERVER_DELIVERED = "ganglion_server_delivered_events_total", Counter, [],
        "Events sent to gRPC and SSE subscribers.";
    SERVER_REFUSED = "ganglion_server_refused_requests_total", Counter, ["code"],
        "Publish requests refused, by error code.";
    AUTH_REFUSED = "ganglion_auth_refused_total", Counter, ["reason"],
        "Requests refused by authentication (no or bad credentials) or by permissions (the identity may not).";
    AUDIT_ADMIN_ACTIONS = "ganglion_audit_admin_actions_total", Counter, [],
        "Admin actions allowed (purge, delete, redrive, another's lease or request), each also an audit log line.";
    SERVER_SUBSCRIPTIONS_OPENED = "ganglion_server_subscriptions_opened_total", Counter, [],
        "gRPC subscriptions opened.";
    SERVER_SUBSCRIPTIONS = "ganglion_server_subscriptions", Gauge, [],
        "gRPC subscriptions open now.";
    SERVER_SSE_CLIENTS = "ganglion_server_sse_clients", Gauge, [],
        "Server-Sent Events streams open now.";
    SERVER_CONNECTIONS = "ganglion_server_connections", Gauge, ["transport"],
        "Connections open now, by listener (those let in over the caps for health checks not counted).";
    SERVER_CONNECTIONS_EVICTED = "ganglion_server_connections_evicted_total", Counter, [],
        "Idle connections closed to make room for a new one at a cap.";
    SERVER_CONNECTIONS_REFUSED = "ganglion_server_connections_refused_total", Counter, [],
        "Connections closed at once: every slot busy, the health reserve too.";
    SERVER_CONNECTIONS_HEALTH_ONLY = "ganglion_server_connections_health_only_total", Counter, [],
        "Connections let in over the caps, served health checks only.";
    SERVER_CONNECTIONS_TIMED_OUT = "ganglion_server_connections_timed_out_total", Counter, [],
        "Connections closed for sitting idle (or making no first request) too long.";
    SERVER_TLS_HANDSHAKES_FAILED = "ganglion_server_tls_handshakes_failed_total", Counter, [],
        "TLS handshakes that failed (a bad or missing client certificate, a plain-text client) or timed out.";
    SERVER_UPTIME = "ganglion_server_uptime_seconds", Gauge, [],
        "Seconds since the server started.";

    // The bus.
    BUS_PUBLISHED = "ganglion_bus_published_events_total", Counter, ["prefix"],
        "Events published (logged since the log began, and ephemeral ones since start), by topic prefix (the first token).";
    BUS_DELIVERED = "ganglion_bus_delivered_events_total", Counter, ["subscription"],
        "Events handed to a subscription's subscribers, redeliveries included.";
    BUS_REDELIVERED = "ganglion_bus_redelivered_events_total", Counter, ["subscription"],
        "Deliveries after a first failed attempt.";
    BUS_ACKED = "ganglion_bus_acked_events_total", Counter, ["subscription"],
        "Logged events acknowledged (by the subscriber, or at delivery under auto ack).";
    BUS_NACKED = "ganglion_bus_nacked_events_total", Counter, ["subscription"],
        "Logged events negatively acknowledged by a subscriber.";
    BUS_ACK_TIMEOUTS = "ganglion_bus_ack_timeouts_total", Counter, ["subscription"],
        "In-flight events whose ack deadline passed.";
    BUS_DEAD_LETTERED = "ganglion_bus_dead_lettered_events_total", Counter, ["subscription"],
        "Events sent to the subscription's dead-letter topic.";
    BUS_READY = "ganglion_bus_subscription_ready_events", Gauge, ["subscription"],
        "Events in memory waiting for a subscriber (the queue depth; a backlog waits in the log).";
    BUS_IN_FLIGHT = "ganglion_bus_subscription_in_flight_events", Gauge, ["subscription"],
        "Logged events out with subscribers and not yet acked.";
    BUS_LAG = "ganglion_bus_subscription_lag_records", Gauge, ["subscription"],
        "Log records the subscription has not read yet (every topic's).";
    BUS_MEMBERS = "ganglion_bus_subscription_members", Gauge, ["subscription"],
        "Subscribers attached to the subscription (more than one in a queue group).";
    BUS_DEAD_LETTERS = "ganglion_bus_dead_letter_events", Gauge, ["subscription"],
        "Dead letters of each subscription not redriven (whatever its dead-letter topic).";
    BUS_EXPIRED = "ganglion_bus_subscription_expired_events_total", Counter, ["subscription"],
        "Events that expired under retention (or a purge) before the subscription read them.";
    BUS_DELIVERY_LATENCY = "ganglion_bus_delivery_latency_seconds", Histogram, [],
        "End to end: from an event's timestamp (set at publication unless the publisher gave one; whole milliseconds) to its first delivery, sampled once per delivery round.";

    // The event log.
    LOG_APPENDED = "ganglion_log_appended_records_total", Counter, [],
        "Records appended to the event log since start.";
    LOG_SIZE = "ganglion_log_size_bytes", Gauge, [],
        "Bytes of committed data in the event log.";
    LOG_SEGMENTS = "ganglion_log_segments", Gauge, [],
        "Segment files of the event log.";
    LOG_NEXT_SEQUENCE = "ganglion_log_next_sequence", Gauge, [],
        "The sequence number the next logged event gets.";
    LOG_FSYNCS = "ganglion_log_fsyncs_total", Counter, [],
        "fdatasync calls on the event log.";
    LOG_FSYNC_SECONDS = "ganglion_log_fsync_seconds_total", Counter, [],
        "Time spent in fdatasync on the event log (divided by ganglion_log_fsyncs_total: the mean fsync latency).";
    LOG_HEALTHY = "ganglion_log_healthy", Gauge, [],
        "1 while the event log accepts appends; 0 while it refuses them (failed, or the device is full).";

    // The resource coordinator (labels are configured names, so bounded).
    POOL_CAPACITY = "ganglion_coordinator_pool_capacity_units", Gauge, ["pool"],
        "Units in a resource pool.";
    POOL_FREE = "ganglion_coordinator_pool_free_units", Gauge, ["pool"],
        "Units of a pool not leased.";
    POOL_HOLDERS = "ganglion_coordinator_pool_holders", Gauge, ["pool"],
        "Leases held on a pool.";
    POOL_WAITERS = "ganglion_coordinator_pool_waiters", Gauge, ["pool"],
        "Requests waiting for a pool.";
    QUOTA_LIMIT = "ganglion_coordinator_quota_limit_calls", Gauge, ["quota"],
        "Calls a quota allows per window.";
    QUOTA_USED = "ganglion_coordinator_quota_used_calls", Gauge, ["quota"],
        "Calls granted in the quota's current trailing window.";
    QUOTA_REMAINING = "ganglion_coordinator_quota_remaining_calls", Gauge, ["quota"],
        "Calls a quota can still grant now.";
    QUOTA_NEAR_LIMIT = "ganglion_coordinator_quota_near_limit", Gauge, ["quota"],
        "1 while a quota is at or above its near-limit fraction.";
    QUOTA_SUSPENDED = "ganglion_coordinator_quota_suspended_seconds", Gauge, ["quota"],
        "How long a quota stays suspended by an upstream limit.";
    BREAKER_STATE = "ganglion_coordinator_breaker_state", Gauge, ["breaker", "state"],
        "1 for the state a circuit breaker is in.";
    LEASE_WAIT = "ganglion_coordinator_lease_wait_seconds", Histogram, ["pool"],
        "How long granted lease requests waited in line (zero when units were free).";
    PUBLISH_DURATION = "ganglion_server_publish_duration_seconds", Histogram, [],
        "Publish calls (gRPC and HTTP), from decoded request to durable acknowledgement.";

    // The process.
    BUILD_INFO = "ganglion_build_info", Gauge, ["version"],
        "Always 1; the version of the running build in its label.";
    PROCESS_VIRTUAL_MEMORY = "process_virtual_memory_bytes", Gauge, [],
        "Virtual memory size in bytes.";
    PROCESS_RESIDENT_MEMORY = "process_resident_memory_bytes", Gauge, [],
        "Resident memory size in bytes.";
    PROCESS_CPU = "process_cpu_seconds_total", Counter, [],
        "Total user and system CPU time spent in seconds.";
    PROCESS_START_TIME = "process_start_time_seconds", Gauge, [],
        "Start time of the process since unix epoch in seconds.";
    PROCESS_MAX_FDS = "process_max_fds", Gauge, [],
        "Maximum number of open file descriptors.";
    PROCESS_MEMORY_LIMIT = "ganglion_process_memory_limit_bytes", Gauge, [],
        "The memory this process may use: its cgroup's limit, or the machine's memory.";
    PROCESS_OPEN_FDS = "process_open_fds", Gauge, [],
        "Number of open file descriptors.";
}

/// The family named `name`, if Ganglion exports one.
pub fn family(name: &str) -> Option<&'static Family> {
    ALL.iter().find(|f| f.name == name)
}

/// A label value with `\\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text (exposition format 0.0.4), written one family at a time.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn with_capacity(bytes: usize) -> Exposition {
        Exposition {
            out: String::with_capacity(bytes),
        }
    }

    /// The text written so far.
    pub fn finish(self) -> String {
        self.out
    }

    fn header(&mut self, family: &Family) {
        let (name, help) = (family.name, family.help);
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", family.kind.as_str());
    }

    /// A family with one unlabelled sample.
    pub fn one(&mut self, family: &Family, value: impl Display) {
        debug_assert!(family.labels.is_empty() && family.kind != Kind::Histogram);
        self.header(family);
        let _ = writeln!(self.out, "{} {value}", family.name);
    }

    /// A family with a sample per set of label values (in the order of
    /// [`Family::labels`]). The family is declared even with no samples yet, so every
    /// name the server can export is in every scrape.
    pub fn each<L, V>(&mut self, family: &Family, samples: impl IntoIterator<Item = (L, V)>)
    where
        L: IntoIterator,
        L::Item: AsRef<str>,
        V: Display,
    {
        debug_assert!(family.kind != Kind::Histogram);
        self.header(family);
        for (values, value) in samples {
            let labels = render(family, values);
            let _ = writeln!(self.out, "{}{{{labels}}} {value}", family.name);
        }
    }

    /// A histogram family, a series per set of label values (none for an unlabelled one).
    pub fn histograms<'a, L>(
        &mut self,
        family: &Family,
        series: impl IntoIterator<Item = (L, &'a ganglion_core::stats::HistogramSnapshot)>,
    ) where
        L: IntoIterator,
        L::Item: AsRef<str>,
    {
        debug_assert!(family.kind == Kind::Histogram);
        self.header(family);
        let name = family.name;
        for (values, h) in series {
            let labels = render(family, values);
            let sep = if labels.is_empty() { "" } else { "," };
            for (bound, count) in &h.buckets {
                let _ = writeln!(
                    self.out,
                    "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                self.out,
                "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
                h.count
            );
            let braces = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            };
            let _ = writeln!(self.out, "{name}_sum{braces} {}", h.sum_seconds);
            let _ = writeln!(self.out, "{name}_count{braces} {}", h.count);
        }
    }
}

/// `name="value",…` for a family's labels, values escaped.
fn render<L>(family: &Family, values: L) -> String
where
    L: IntoIterator,
    L::Item: AsRef<str>,
{
    let mut out = String::new();
    let mut given = 0;
    for (name, value) in family.labels.iter().zip(values) {
        if given > 0 {
            out.push(',');
        }
        let _ = write!(out, "{name}=\"{}\"", escape(value.as_ref()));
        given += 1;
    }
    debug_assert_eq!(given, family.labels.len(), "labels of {}", family.name);
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn names_are_unique_and_follow_the_conventions() {
        let mut seen = HashSet::new();
        for f in ALL {
            assert!(seen.insert(f.name), "{} declared twice", f.name);
            assert!(
                f.name.starts_with("ganglion_") || f.name.starts_with("process_"),
                "{}",
                f.name
            );
            assert!(
                f.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                f.name
            );
            // Prometheus: counters end in _total; nothing else does.
            assert_eq!(
                f.kind == Kind::Counter,
                f.name.ends_with("_total"),
                "{}",
                f.name
            );
            assert!(!f.help.is_empty() && !f.help.contains('\n'), "{}", f.name);
            assert!(!f.labels.contains(&"le"), "{}", f.name);
        }
        assert_eq!(family("ganglion_log_healthy"), Some(&LOG_HEALTHY));
        assert_eq!(family("ganglion_log_unheard_of"), None);
    }

    #[test]
    fn samples_carry_the_family_labels_escaped() {
        let mut x = Exposition::default();
        x.each(&BREAKER_STATE, [(["llm \"a\"", "open"], 1)]);
        x.one(&LOG_HEALTHY, 1);
        let h = ganglion_core::stats::Histogram::default();
        h.record(std::time::Duration::from_millis(3));
        x.histograms(&LEASE_WAIT, [(["gpu"], &h.snapshot())]);
        x.histograms(&PUBLISH_DURATION, [([] as [&str; 0], &h.snapshot())]);
        let text = x.finish();
        assert!(text.contains("# TYPE ganglion_coordinator_breaker_state gauge\n"));
        assert!(
            text.contains(
                "ganglion_coordinator_breaker_state{breaker=\"llm \\\"a\\\"\",state=\"open\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("\nganglion_log_healthy 1\n"), "{text}");
        assert!(text.contains("ganglion_coordinator_lease_wait_seconds_count{pool=\"gpu\"} 1\n"));
        assert!(text.contains(
            "ganglion_coordinator_lease_wait_seconds_bucket{pool=\"gpu\",le=\"+Inf\"} 1\n"
        ));
        assert!(text.contains("ganglion_server_publish_duration_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(
            text.contains("ganglion_server_publish_duration_seconds_count 1\n"),
            "{text}"
        );
    }
}
