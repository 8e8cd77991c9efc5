//! From the configuration to the options of the server, the bus and the coordinator:
//! every setting checked, a bad one named by its path.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ganglion_bus::{BusOptions, RetentionRule};
use ganglion_config::{self as config, Config};
use ganglion_coordinator::breaker::BreakerSpec;
use ganglion_coordinator::lease::{PoolSpec, PoolsOptions};
use ganglion_coordinator::quota::QuotaSpec;
use ganglion_coordinator::{CoordinatorConfig, QueueSpec};
use ganglion_core::Pattern;
use ganglion_core::bus::StorageClass;
use ganglion_server::auth::{AuthHandle, Policy};
use ganglion_server::{ClientCerts, ConnectionLimits, Limits, ServerOptions, TlsOptions};

/// A problem with a key path, for [`Loader::validate_with`].
pub(crate) type Problem = (String, String);

pub(crate) fn problem(path: impl Into<String>, message: impl ToString) -> Problem {
    (path.into(), message.to_string())
}

/// The coordinator's configuration; `discover` looks for GPUs through NVML when no `gpu`
/// pool is configured.
pub(crate) fn coordinator_config(
    c: &config::CoordinatorConfig,
    discover: bool,
) -> Result<CoordinatorConfig, Problem> {
    let mut pools = c.pools.clone();
    // `gpu` unless configured: the devices NVML reports, if there is a driver.
    if discover && !pools.contains_key("gpu") {
        match ganglion_coordinator::lease::discover_gpus() {
            Ok(gpus) if !gpus.is_empty() => {
                tracing::info!(?gpus, "gpu pool discovered through NVML");
                pools.insert(
                    "gpu".to_owned(),
                    config::PoolConfig {
                        capacity: None,
                        gpus: Some(gpus),
                    },
                );
            }
            Ok(_) => tracing::info!("NVML reports no GPUs: no gpu pool"),
            Err(reason) => {
                tracing::info!(%reason, "no gpu pool discovered (set coordinator.pools.gpu.gpus to configure one)")
            }
        }
    }
    // Like `bench.events.>`: a pool `ganglion bench` can lease unless configured otherwise.
    pools
        .entry("bench".to_owned())
        .or_insert(config::PoolConfig {
            capacity: Some(1),
            gpus: None,
        });
    let mut out = CoordinatorConfig::default();
    for (name, pool) in pools {
        out.pools.push(match (pool.capacity, pool.gpus) {
            (Some(capacity), None) => {
                PoolSpec::counted(name, usize::try_from(capacity).unwrap_or(usize::MAX))
            }
            (None, Some(gpus)) => {
                let ids: Vec<&str> = gpus.iter().map(String::as_str).collect();
                PoolSpec::gpus(name, &ids)
            }
            _ => {
                return Err(problem(
                    format!("coordinator.pools.{name}"),
                    "give either capacity or gpus",
                ));
            }
        });
    }
    out.quotas = quota_specs(c)?;
    for (name, queue) in &c.queues {
        if !c.quotas.contains_key(&queue.quota) {
            return Err(problem(
                format!("coordinator.queues.{name}.quota"),
                format!("no quota named {:?}", queue.quota),
            ));
        }
        out.queues.push(QueueSpec {
            cache_ttl: Duration::from_secs(queue.cache_ttl_s),
            take_timeout: Duration::from_secs(queue.take_timeout_s),
            max_pending: usize::try_from(queue.max_pending).unwrap_or(usize::MAX),
            max_bytes: usize::try_from(queue.max_bytes).unwrap_or(usize::MAX),
            ..QueueSpec::new(name.clone(), queue.quota.clone())
        });
    }
    out.breakers = breaker_specs(c)?;
    out.leases = lease_options(&c.leases);
    Ok(out)
}

pub(crate) fn quota_specs(c: &config::CoordinatorConfig) -> Result<Vec<QuotaSpec>, Problem> {
    c.quotas
        .iter()
        .map(|(name, quota)| {
            let mut spec = QuotaSpec::parse(name.clone(), &quota.rule)
                .map_err(|e| problem(format!("coordinator.quotas.{name}.{}", field(&e)), &e))?;
            spec.shares = quota.shares.clone();
            spec.reserve = quota.reserve.clone();
            spec.aging = Duration::from_millis(quota.aging_ms);
            spec.validate()
                .map_err(|e| problem(format!("coordinator.quotas.{name}.{}", field(&e)), &e))?;
            Ok(spec)
        })
        .collect()
}

pub(crate) fn breaker_specs(c: &config::CoordinatorConfig) -> Result<Vec<BreakerSpec>, Problem> {
    c.breakers
        .iter()
        .map(|(name, b)| {
            let mut spec = BreakerSpec::new(name.clone());
            spec.failure_threshold = b.failure_threshold;
            spec.recovery_timeout = Duration::from_millis(b.recovery_timeout_ms);
            spec.half_open_probes = b.half_open_probes;
            spec.validate()
                .map_err(|e| problem(format!("coordinator.breakers.{name}.{}", field(&e)), &e))?;
            Ok(spec)
        })
        .collect()
}

/// `bus.retention`, checked: a pattern, and at least one limit, each in range.
pub(crate) fn retention_rules(b: &config::BusConfig) -> Result<Vec<RetentionRule>, Problem> {
    b.retention
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let at = |key: &str| format!("bus.retention.{i}.{key}");
            let pattern = Pattern::new(&r.pattern).map_err(|e| problem(at("pattern"), e))?;
            let max_age = r
                .max_age
                .as_deref()
                .map(|age| {
                    ganglion_core::parse_duration(age)
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| {
                            problem(
                                at("max_age"),
                                format!("{age:?} is not a duration like 90s, 15m, 2h or 7d"),
                            )
                        })
                })
                .transpose()?;
            for (key, value) in [("max_bytes", r.max_bytes), ("max_events", r.max_events)] {
                if value == Some(0) {
                    return Err(problem(at(key), "must be at least 1"));
                }
            }
            if max_age.is_none() && r.max_bytes.is_none() && r.max_events.is_none() {
                return Err(problem(
                    at("pattern"),
                    "a rule needs max_age, max_bytes or max_events",
                ));
            }
            Ok(RetentionRule {
                pattern,
                max_age,
                max_bytes: r.max_bytes,
                max_events: r.max_events,
            })
        })
        .collect()
}

pub(crate) fn lease_options(l: &config::LeaseConfig) -> PoolsOptions {
    PoolsOptions {
        ttl: Duration::from_millis(l.ttl_ms),
        max_hold: Duration::from_millis(l.max_hold_ms),
        grace: Duration::from_millis(l.grace_ms),
        aging: Duration::from_millis(l.aging_ms),
    }
}

/// The field a coordinator error names (`rule`, `shares.x`), or nothing.
pub(crate) fn field(e: &ganglion_coordinator::CoordinatorError) -> String {
    match e {
        ganglion_coordinator::CoordinatorError::InvalidArgument { field, .. } => field.clone(),
        _ => String::new(),
    }
}

/// The server's settings, resolved.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) coordinator: CoordinatorConfig,
    pub(crate) data_dir: PathBuf,
    pub(crate) grpc_addr: SocketAddr,
    pub(crate) http_addr: SocketAddr,
    pub(crate) bus: BusOptions,
    pub(crate) server: ServerOptions,
}

pub(crate) fn tls_options(t: &config::TlsConfig) -> TlsOptions {
    let certs = |c: config::ClientCerts| match c {
        config::ClientCerts::None => ClientCerts::None,
        config::ClientCerts::Optional => ClientCerts::Optional,
        config::ClientCerts::Required => ClientCerts::Required,
    };
    TlsOptions {
        cert_file: t.cert_file.clone(),
        key_file: t.key_file.clone(),
        client_ca_file: t.client_ca_file.clone(),
        grpc_client_certs: certs(t.grpc_client_certs),
        http_client_certs: certs(t.http_client_certs),
    }
}

/// The access policy `auth:` describes, refusing an open server (no identities) on an
/// address beyond loopback unless `server.allow_anonymous` says so.
pub(crate) fn auth_policy(c: &Config, addrs: &[SocketAddr]) -> Result<Policy, Problem> {
    let policy = Policy::compile(&c.auth, c.server.allow_anonymous)?;
    if policy.is_open() && !c.server.allow_anonymous {
        let paths = ["server.grpc_addr", "server.http_addr"];
        if let Some((path, addr)) = paths
            .iter()
            .zip(addrs)
            .find(|(_, addr)| !addr.ip().is_loopback())
        {
            return Err(problem(
                *path,
                format!(
                    "is {addr}, beyond loopback, and no auth.identities are configured: anyone who reaches it could do anything. Configure identities (see `ganglion auth token`), or set server.allow_anonymous: true to accept that"
                ),
            ));
        }
    }
    Ok(policy)
}

pub(crate) fn settings(c: &Config, discover: bool) -> Result<Settings, Problem> {
    let addr = |path: &str, value: &str| {
        value.parse::<SocketAddr>().map_err(|_| {
            problem(
                path,
                format!("{value:?} is not a socket address like 127.0.0.1:8080"),
            )
        })
    };
    let grpc_addr = addr("server.grpc_addr", &c.server.grpc_addr)?;
    let http_addr = addr("server.http_addr", &c.server.http_addr)?;
    let data_dir = c.server.data_dir.clone();
    let mut bus = BusOptions::new(&data_dir);
    for (i, pattern) in c.bus.ephemeral.iter().enumerate() {
        let pattern =
            Pattern::new(pattern).map_err(|e| problem(format!("bus.ephemeral.{i}"), e))?;
        bus.storage_classes.push((pattern, StorageClass::Ephemeral));
    }
    bus.max_event_bytes = usize::try_from(c.bus.max_event_bytes).unwrap_or(usize::MAX);
    bus.dedupe_window = Duration::from_millis(c.bus.dedupe_window_ms);
    bus.batch_window = Duration::from_millis(c.bus.batch_window_ms);
    bus.subscriber_buffer_bytes =
        usize::try_from(c.bus.subscriber_buffer_bytes).unwrap_or(usize::MAX);
    bus.retention = retention_rules(&c.bus)?;

    let l = &c.limits;
    let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    if c.bus.max_event_bytes > l.max_grpc_message_bytes / 2 {
        return Err(problem(
            "bus.max_event_bytes",
            format!(
                "is {}; an event must fit in half a gRPC message (limits.max_grpc_message_bytes is {})",
                c.bus.max_event_bytes, l.max_grpc_message_bytes
            ),
        ));
    }
    let server = ServerOptions {
        limits: Limits {
            max_grpc_message_bytes: size(l.max_grpc_message_bytes),
            max_http_body_bytes: size(l.max_http_body_bytes),
            max_concurrent_streams: l.max_concurrent_streams,
            max_subscriptions_per_connection: size(l.max_subscriptions_per_connection),
            max_replay_events: size(l.max_replay_events),
            max_sse_clients: size(l.max_sse_clients),
        },
        connections: ConnectionLimits {
            max_connections: size(l.max_connections),
            max_connections_per_peer: size(l.max_connections_per_peer),
            header_read_timeout: Duration::from_millis(c.server.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(c.server.idle_timeout_ms),
            keepalive_interval: Duration::from_millis(c.server.grpc_keepalive_interval_ms),
            keepalive_timeout: Duration::from_millis(c.server.grpc_keepalive_timeout_ms),
        },
        drain_timeout: Duration::from_millis(c.server.drain_timeout_ms),
        grpc_threads: c.server.grpc_threads,
        auth: AuthHandle::new(auth_policy(c, &[grpc_addr, http_addr])?),
        tls: c.server.tls.as_ref().map(tls_options),
    };
    let keepalive = c.server.grpc_keepalive_interval_ms + c.server.grpc_keepalive_timeout_ms;
    if keepalive > c.coordinator.leases.ttl_ms {
        return Err(problem(
            "coordinator.leases.ttl_ms",
            format!(
                "is {} ms; it must be at least server.grpc_keepalive_interval_ms + grpc_keepalive_timeout_ms ({keepalive} ms), or a stream holder that stops answering would keep its lease past the TTL",
                c.coordinator.leases.ttl_ms
            ),
        ));
    }
    Ok(Settings {
        coordinator: coordinator_config(&c.coordinator, discover)?,
        data_dir,
        grpc_addr,
        http_addr,
        bus,
        server,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config model states every default again (for `config show` and the
    /// committed `config/ganglion.yaml`); they must be the libraries' own.
    #[test]
    fn the_config_defaults_are_the_library_defaults() {
        let s = settings(&Config::default(), false).unwrap();
        let default = ServerOptions::default();
        assert_eq!(s.server.limits, default.limits);
        assert_eq!(s.server.connections, default.connections);
        assert_eq!(s.server.drain_timeout, default.drain_timeout);
        let bus = BusOptions::new(&s.data_dir);
        assert_eq!(
            (
                s.bus.max_event_bytes,
                s.bus.dedupe_window,
                s.bus.batch_window,
                s.bus.subscriber_buffer_bytes
            ),
            (
                bus.max_event_bytes,
                bus.dedupe_window,
                bus.batch_window,
                bus.subscriber_buffer_bytes
            )
        );
        assert_eq!(s.coordinator.leases, PoolsOptions::default());
        let mut with_breaker = Config::default();
        with_breaker
            .coordinator
            .breakers
            .insert("api".into(), config::BreakerConfig::default());
        assert_eq!(
            breaker_specs(&with_breaker.coordinator).unwrap(),
            [BreakerSpec::new("api")]
        );
    }
}
