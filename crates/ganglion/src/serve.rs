//! `ganglion serve`: settings from built-in defaults, then `--config FILE`, then flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, bail};
use ganglion_bus::{Bus, BusOptions};
use ganglion_coordinator::breaker::BreakerSpec;
use ganglion_coordinator::lease::PoolSpec;
use ganglion_coordinator::quota::QuotaSpec;
use ganglion_coordinator::{Coordinator, CoordinatorConfig, QueueSpec};
use ganglion_core::Pattern;
use ganglion_core::SystemClock;
use ganglion_core::bus::StorageClass;
use ganglion_server::{Limits, ServerOptions};
use serde::Deserialize;
use tokio::net::TcpListener;

/// Topics kept in memory only unless configured otherwise: the `ganglion bench`
/// throughput and ephemeral-latency workloads publish on `bench.events.>`; the
/// coordinator's lease events are advisories (as NATS's are), the lease state itself is
/// persisted by the coordinator.
const DEFAULT_EPHEMERAL: &[&str] = &["bench.events.>", "coordinator.>"];

#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Where the event log and durable subscriptions live [default: ./ganglion-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// HTTP listen address [default: 127.0.0.1:8080].
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// A YAML file of settings; flags given here override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A topic pattern kept in memory only, delivered at most once (repeatable; replaces
    /// the defaults `bench.events.>` and `coordinator.>`).
    #[arg(long, value_name = "PATTERN")]
    ephemeral: Vec<String>,
    /// Log filter, as RUST_LOG [default: info].
    #[arg(long, env = "GANGLION_LOG")]
    log: Option<String>,
}

/// The settings file. Every key is optional; unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    grpc_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    /// Topic patterns kept in memory only.
    ephemeral: Option<Vec<String>>,
    bus: BusConfig,
    limits: LimitsConfig,
    coordinator: CoordinatorFileConfig,
}

/// `coordinator:` — pools, quotas, request queues, breakers and lease timings.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct CoordinatorFileConfig {
    /// `name: { capacity: N }` or `name: { gpus: ["0", "1"] }`.
    pools: BTreeMap<String, PoolConfig>,
    /// `name: { rule: "100 per 1h", shares: { component: weight } }`.
    quotas: BTreeMap<String, QuotaConfig>,
    /// `name: { quota: NAME, cache_ttl_s: 3600 }`.
    queues: BTreeMap<String, QueueConfig>,
    /// `name: { failure_threshold: 5, recovery_timeout_ms: 30000, half_open_probes: 1 }`.
    breakers: BTreeMap<String, BreakerConfig>,
    lease_ttl_ms: Option<u64>,
    lease_max_hold_ms: Option<u64>,
    lease_grace_ms: Option<u64>,
    lease_aging_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolConfig {
    capacity: Option<usize>,
    gpus: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaConfig {
    rule: String,
    #[serde(default)]
    shares: BTreeMap<String, u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueConfig {
    quota: String,
    cache_ttl_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct BreakerConfig {
    failure_threshold: Option<u32>,
    recovery_timeout_ms: Option<u64>,
    half_open_probes: Option<u32>,
}

fn coordinator_config(mut file: CoordinatorFileConfig) -> anyhow::Result<CoordinatorConfig> {
    let mut config = CoordinatorConfig::default();
    // `gpu` unless configured: the devices NVML reports, if there is a driver.
    if !file.pools.contains_key("gpu") {
        match ganglion_coordinator::lease::discover_gpus() {
            Ok(gpus) if !gpus.is_empty() => {
                tracing::info!(?gpus, "gpu pool discovered through NVML");
                file.pools.insert(
                    "gpu".to_owned(),
                    PoolConfig {
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
    file.pools.entry("bench".to_owned()).or_insert(PoolConfig {
        capacity: Some(1),
        gpus: None,
    });
    for (name, pool) in file.pools {
        config.pools.push(match (pool.capacity, pool.gpus) {
            (Some(capacity), None) => PoolSpec::counted(name, capacity),
            (None, Some(gpus)) => {
                let ids: Vec<&str> = gpus.iter().map(String::as_str).collect();
                PoolSpec::gpus(name, &ids)
            }
            _ => bail!("coordinator.pools.{name}: give either capacity or gpus"),
        });
    }
    for (name, quota) in file.quotas {
        let mut spec = QuotaSpec::parse(name.clone(), &quota.rule)
            .map_err(|e| anyhow::anyhow!("coordinator.quotas.{name}.{e}"))?;
        spec.shares = quota.shares;
        config.quotas.push(spec);
    }
    for (name, queue) in file.queues {
        config.queues.push(QueueSpec {
            name,
            quota: queue.quota,
            cache_ttl: Duration::from_secs(queue.cache_ttl_s.unwrap_or(3600)),
        });
    }
    for (name, b) in file.breakers {
        let mut spec = BreakerSpec::new(name);
        if let Some(v) = b.failure_threshold {
            spec.failure_threshold = v;
        }
        if let Some(v) = b.recovery_timeout_ms {
            spec.recovery_timeout = Duration::from_millis(v);
        }
        if let Some(v) = b.half_open_probes {
            spec.half_open_probes = v;
        }
        config.breakers.push(spec);
    }
    let l = &mut config.leases;
    for (value, field) in [
        (file.lease_ttl_ms, &mut l.ttl),
        (file.lease_max_hold_ms, &mut l.max_hold),
        (file.lease_grace_ms, &mut l.grace),
        (file.lease_aging_ms, &mut l.aging),
    ] {
        if let Some(ms) = value {
            *field = Duration::from_millis(ms);
        }
    }
    Ok(config)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct BusConfig {
    max_event_bytes: Option<usize>,
    dedupe_window_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct LimitsConfig {
    max_grpc_message_bytes: Option<usize>,
    max_http_body_bytes: Option<usize>,
    max_concurrent_streams: Option<u32>,
    max_subscriptions_per_connection: Option<usize>,
    max_replay_events: Option<usize>,
    max_sse_clients: Option<usize>,
    drain_timeout_ms: Option<u64>,
}

fn load(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    serde_saphyr::from_str(&text).with_context(|| format!("in the config file {}", path.display()))
}

/// The server's settings, resolved.
#[derive(Debug)]
struct Settings {
    coordinator: CoordinatorConfig,
    data_dir: PathBuf,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    bus: BusOptions,
    server: ServerOptions,
}

fn settings(args: &ServeArgs) -> anyhow::Result<Settings> {
    let file = match &args.config {
        Some(path) => load(path)?,
        None => FileConfig::default(),
    };
    let data_dir = args
        .data_dir
        .clone()
        .or(file.data_dir)
        .unwrap_or_else(crate::default_data_dir);
    let grpc_addr = args
        .grpc_addr
        .or(file.grpc_addr)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 50051)));
    let http_addr = args
        .http_addr
        .or(file.http_addr)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let ephemeral: Vec<String> = if !args.ephemeral.is_empty() {
        args.ephemeral.clone()
    } else {
        file.ephemeral
            .unwrap_or_else(|| DEFAULT_EPHEMERAL.iter().map(|s| s.to_string()).collect())
    };

    let mut bus = BusOptions::new(&data_dir);
    for pattern in &ephemeral {
        let pattern =
            Pattern::new(pattern).with_context(|| format!("ephemeral pattern {pattern:?}"))?;
        bus.storage_classes.push((pattern, StorageClass::Ephemeral));
    }
    if let Some(max) = file.bus.max_event_bytes {
        if max == 0 {
            bail!("bus.max_event_bytes: must be at least 1");
        }
        bus.max_event_bytes = max;
    }
    if let Some(ms) = file.bus.dedupe_window_ms {
        bus.dedupe_window = Duration::from_millis(ms);
    }

    let mut limits = Limits::default();
    let l = file.limits;
    let positive = |name: &str, v: usize| {
        if v == 0 {
            bail!("limits.{name}: must be at least 1")
        } else {
            Ok(v)
        }
    };
    if let Some(v) = l.max_grpc_message_bytes {
        limits.max_grpc_message_bytes = positive("max_grpc_message_bytes", v)?;
    }
    if let Some(v) = l.max_http_body_bytes {
        limits.max_http_body_bytes = positive("max_http_body_bytes", v)?;
    }
    if let Some(v) = l.max_concurrent_streams {
        limits.max_concurrent_streams = positive("max_concurrent_streams", v as usize)? as u32;
    }
    if let Some(v) = l.max_subscriptions_per_connection {
        limits.max_subscriptions_per_connection = positive("max_subscriptions_per_connection", v)?;
    }
    if let Some(v) = l.max_replay_events {
        limits.max_replay_events = positive("max_replay_events", v)?;
    }
    if let Some(v) = l.max_sse_clients {
        limits.max_sse_clients = positive("max_sse_clients", v)?;
    }
    let mut server = ServerOptions {
        limits,
        ..ServerOptions::default()
    };
    if let Some(ms) = l.drain_timeout_ms {
        server.drain_timeout = Duration::from_millis(ms);
    }
    Ok(Settings {
        coordinator: coordinator_config(file.coordinator)?,
        data_dir,
        grpc_addr,
        http_addr,
        bus,
        server,
    })
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let filter = args.log.clone().unwrap_or_else(|| "info".to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .with_context(|| format!("--log {filter:?}"))?,
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let settings = settings(&args)?;
    let grpc = TcpListener::bind(settings.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC to {}", settings.grpc_addr))?;
    let http = TcpListener::bind(settings.http_addr)
        .await
        .with_context(|| format!("binding HTTP to {}", settings.http_addr))?;
    let data_dir = settings.data_dir.clone();
    let coordinator = Coordinator::open(
        settings.coordinator,
        Arc::new(SystemClock),
        Some(&data_dir.join("coordinator")),
    )
    .context("starting the coordinator")?;
    let bus = tokio::task::spawn_blocking(move || Bus::open(settings.bus))
        .await?
        .with_context(|| format!("opening the event log in {}", data_dir.display()))?;
    let next_seq = bus.log().next_seq();

    tracing::info!(
        next_seq,
        "ganglion serving: gRPC on {}, HTTP on {}, data in {} (embedded engine)",
        grpc.local_addr()?,
        http.local_addr()?,
        data_dir.display(),
    );
    ganglion_server::serve_with(
        bus,
        Arc::new(coordinator),
        grpc,
        http,
        settings.server,
        shutdown_signal(),
    )
    .await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ganglion.yaml");
        std::fs::write(
            &path,
            "grpc_addr: 127.0.0.1:6000\nhttp_addr: 127.0.0.1:6001\nephemeral: [\"telemetry.>\"]\nlimits:\n  max_replay_events: 10\n",
        )
        .unwrap();
        let args = ServeArgs {
            data_dir: None,
            grpc_addr: Some("127.0.0.1:7000".parse().unwrap()),
            http_addr: None,
            config: Some(path.clone()),
            ephemeral: Vec::new(),
            log: None,
        };
        let s = settings(&args).unwrap();
        assert_eq!(s.grpc_addr.port(), 7000);
        assert_eq!(s.http_addr.port(), 6001);
        assert_eq!(s.server.limits.max_replay_events, 10);
        assert_eq!(s.bus.storage_classes.len(), 1);
        assert_eq!(s.bus.storage_classes[0].0.as_str(), "telemetry.>");

        std::fs::write(&path, "limits:\n  max_replay_event: 10\n").unwrap();
        let err = format!("{:#}", settings(&args).unwrap_err());
        assert!(err.contains("max_replay_event"), "{err}");

        std::fs::write(&path, "limits:\n  max_replay_events: 0\n").unwrap();
        let err = format!("{:#}", settings(&args).unwrap_err());
        assert!(err.contains("limits.max_replay_events"), "{err}");
    }
}
