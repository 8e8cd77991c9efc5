//! `ganglion serve`: settings from the configuration layers (see `ganglion_config`),
//! flags last; live settings follow configuration reloads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ganglion_bus::{Bus, BusOptions, RetentionRule};
use ganglion_config::{self as config, Config, ConfigHandle, Loader};
use ganglion_coordinator::breaker::BreakerSpec;
use ganglion_coordinator::lease::{PoolSpec, PoolsOptions};
use ganglion_coordinator::quota::QuotaSpec;
use ganglion_coordinator::{Coordinator, CoordinatorConfig, QueueSpec};
use ganglion_core::Pattern;
use ganglion_core::bus::StorageClass;
use ganglion_core::{Engine, SystemClock};
use ganglion_server::auth::{AuthHandle, Policy};
use ganglion_server::{ClientCerts, ConnectionLimits, Limits, ServerOptions, TlsOptions};
use ganglion_telemetry::{Format, Logs, OtlpOptions, Traces};
use tokio::net::TcpListener;

#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Where the event log and durable subscriptions live (server.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// gRPC listen address (server.grpc_addr).
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// HTTP listen address (server.http_addr).
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// A topic pattern kept in memory only, delivered at most once (repeatable; replaces
    /// bus.ephemeral, by default `bench.events.>` and `coordinator.>`).
    #[arg(long, value_name = "PATTERN")]
    ephemeral: Vec<String>,
    /// Log filter, as RUST_LOG (telemetry.log_level).
    #[arg(long, env = "GANGLION_LOG")]
    log: Option<String>,
}

/// Where the configuration layers come from (shared by `serve` and `config`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ConfigArgs {
    /// The config directory (holding ganglion.yaml, environments/, components/), or a
    /// file used as its ganglion.yaml.
    #[arg(long, value_name = "PATH", default_value = "config")]
    config: PathBuf,
    /// The environment layer: development, staging, production.
    #[arg(long = "env", env = "GANGLION_ENV", value_name = "ENV")]
    environment: Option<String>,
    /// The component layer (config/components/<NAME>.yaml).
    #[arg(long, env = "GANGLION_COMPONENT", value_name = "NAME")]
    component: Option<String>,
}

impl ConfigArgs {
    /// Every layer but flags, with the checks only the server's types can make.
    pub(crate) fn loader(&self) -> Loader {
        Loader::at(&self.config)
            .environment(self.environment.clone())
            .component(self.component.clone())
            .with_process_env()
            .validate_with(|config| match settings(config, false) {
                Ok(_) => Vec::new(),
                Err(problem) => vec![problem],
            })
    }
}

impl ServeArgs {
    fn loader(&self) -> Loader {
        let mut loader = self.config.loader();
        if let Some(dir) = &self.data_dir {
            loader = loader.flag("server.data_dir", dir.display().to_string(), "--data-dir");
        }
        if let Some(addr) = self.grpc_addr {
            loader = loader.flag("server.grpc_addr", addr.to_string(), "--grpc-addr");
        }
        if let Some(addr) = self.http_addr {
            loader = loader.flag("server.http_addr", addr.to_string(), "--http-addr");
        }
        if !self.ephemeral.is_empty() {
            let list = serde_json::to_string(&self.ephemeral).unwrap_or_default();
            loader = loader.flag("bus.ephemeral", list, "--ephemeral");
        }
        if let Some(filter) = &self.log {
            // JSON quoting keeps a filter such as `info,ganglion_bus=debug` one string.
            let quoted = serde_json::to_string(filter).unwrap_or_default();
            loader = loader.flag("telemetry.log_level", quoted, "--log");
        }
        loader
    }
}

/// A problem with a key path, for [`Loader::validate_with`].
type Problem = (String, String);

fn problem(path: impl Into<String>, message: impl ToString) -> Problem {
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
fn field(e: &ganglion_coordinator::CoordinatorError) -> String {
    match e {
        ganglion_coordinator::CoordinatorError::InvalidArgument { field, .. } => field.clone(),
        _ => String::new(),
    }
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

fn tls_options(t: &config::TlsConfig) -> TlsOptions {
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
fn auth_policy(c: &Config, addrs: &[SocketAddr]) -> Result<Policy, Problem> {
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

fn settings(c: &Config, discover: bool) -> Result<Settings, Problem> {
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

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = ConfigHandle::load(args.loader()).map_err(|problems| {
        anyhow::anyhow!("{problems}").context("the configuration is not valid")
    })?;
    let current = config.get();
    let (logs, traces) = telemetry(&current.telemetry)?;
    let settings = settings(&current, true).map_err(|(path, message)| {
        anyhow::anyhow!("{}: {path}: {message}", config.loaded().origin(&path))
    })?;
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
    let bus = open_engine(current.engine, settings.bus, &data_dir).await?;
    let next_seq = bus.storage().next_seq;

    // Watch before announcing, so a change made right after start-up is not missed.
    let _watcher = match config.watch_files(Duration::from_millis(250)) {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::info!(%error, "not watching the configuration files: changes need a restart");
            None
        }
    };
    if settings.server.auth.get().is_open() {
        tracing::warn!(
            "no auth.identities configured: every caller may do everything (listening on loopback only unless server.allow_anonymous)"
        );
    }
    tracing::info!(
        next_seq,
        "ganglion serving: gRPC on {}, HTTP on {}{}, data in {} ({} engine)",
        grpc.local_addr()?,
        http.local_addr()?,
        if settings.server.tls.is_some() {
            " (TLS)"
        } else {
            ""
        },
        data_dir.display(),
        bus.kind(),
    );
    let coordinator = Arc::new(coordinator);
    apply_live_settings(&config, &bus, &logs, &coordinator);
    reload_auth(
        &config,
        settings.server.auth.clone(),
        current.server.allow_anonymous,
    );
    ganglion_server::serve_with(
        bus,
        coordinator,
        grpc,
        http,
        settings.server,
        shutdown_signal(),
    )
    .await?;
    if let Some(traces) = traces {
        // Blocks until buffered spans are sent (or the export times out).
        tokio::task::spawn_blocking(move || traces.shutdown())
            .await?
            .unwrap_or_else(|error| tracing::warn!(%error, "flushing traces at shutdown"));
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Logs (JSON or pretty, to stderr) and, with an OTLP endpoint, traces.
fn telemetry(telemetry: &config::TelemetryConfig) -> anyhow::Result<(Logs, Option<Traces>)> {
    let format = match telemetry.log_format {
        config::LogFormat::Auto => Format::auto(),
        config::LogFormat::Json => Format::Json,
        config::LogFormat::Pretty => Format::Pretty {
            ansi: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        },
    };
    let traces = match &telemetry.otlp_endpoint {
        Some(endpoint) => Some(Traces::otlp(&OtlpOptions {
            endpoint: endpoint.clone(),
            service_name: telemetry.service_name.clone(),
            token: telemetry.otlp_token.as_ref().map(|t| t.expose().to_owned()),
            timeout: Duration::from_secs(10),
        })?),
        None => None,
    };
    let logs = match &traces {
        Some(traces) => Logs::init_traced(&telemetry.log_level, format, std::io::stderr, traces)?,
        None => Logs::init(&telemetry.log_level, format)?,
    };
    if let Some(endpoint) = &telemetry.otlp_endpoint {
        tracing::info!(endpoint, "exporting traces over OTLP");
    }
    Ok((logs, traces))
}

/// Swaps the access policy when `auth` changes (tokens and permissions); turning
/// authentication on or off is refused, as it needs a restart.
fn reload_auth(config: &ConfigHandle, auth: Arc<AuthHandle>, allow_anonymous: bool) {
    on_change(config, "auth", move |c| {
        let policy = Policy::compile(&c.auth, allow_anonymous)
            .map_err(|(path, message)| format!("{path}: {message}"))?;
        if policy.is_open() != auth.get().is_open() {
            return Err("turning authentication on or off needs a restart".to_owned());
        }
        auth.set(policy);
        tracing::info!("auth reloaded: tokens and permissions in force");
        Ok(())
    });
}

/// Opens the engine `kind` names; the embedded one on `options` (its log in `data_dir`).
async fn open_engine(
    kind: config::EngineKind,
    options: BusOptions,
    data_dir: &std::path::Path,
) -> anyhow::Result<Arc<dyn Engine>> {
    match kind {
        config::EngineKind::Embedded => {
            match tokio::task::spawn_blocking(move || Bus::open(options)).await? {
                Ok(bus) => Ok(Arc::new(bus)),
                Err(error) => {
                    let hint = crate::log_cmd::damage_hint(data_dir);
                    Err(anyhow::Error::new(error).context(format!(
                        "opening the event log in {}{hint}",
                        data_dir.display()
                    )))
                }
            }
        }
    }
}

/// Applies reloaded settings that can change while running ([`config::LIVE_KEYS`]): the
/// default batch window, the log filter, lease options, quota rules and breaker
/// thresholds. What needs a restart is reported by the reload itself.
fn apply_live_settings(
    config: &ConfigHandle,
    bus: &Arc<dyn Engine>,
    logs: &Logs,
    coordinator: &Arc<Coordinator>,
) {
    let batch_bus = bus.clone();
    on_change(config, "bus.batch_window_ms", move |c| {
        batch_bus
            .set_batch_window(Duration::from_millis(c.bus.batch_window_ms))
            .map_err(|e| e.to_string())
    });
    let retention_bus = bus.clone();
    on_change(config, "bus.retention", move |c| {
        let rules =
            retention_rules(&c.bus).map_err(|(path, message)| format!("{path}: {message}"))?;
        let bus = retention_bus.clone();
        // Counting the rules' events reads the log through: not on this task.
        tokio::spawn(async move {
            if let Err(error) = bus.set_retention(rules).await {
                tracing::warn!(%error, "bus.retention not applied");
            }
        });
        Ok(())
    });
    let logs = logs.clone();
    on_change(config, "telemetry.log_level", move |c| {
        logs.set_filter(&c.telemetry.log_level)
            .map_err(|e| e.to_string())
    });
    let coordinator = coordinator.clone();
    on_change(config, "coordinator", move |c| {
        // Pools are not live, so GPUs are not rediscovered.
        let wanted = coordinator_config(&c.coordinator, false)
            .map_err(|(path, message)| format!("{path}: {message}"))?;
        // Added or removed quotas and breakers are reported by the reload as needing
        // a restart; the rest applies here.
        coordinator
            .reconfigure(&wanted)
            .map(drop)
            .map_err(|e| e.to_string())
    });
}

/// Calls `apply` with the new config each time something at or under `path` changes;
/// a failure is logged and the running value stays.
fn on_change(
    config: &ConfigHandle,
    path: &'static str,
    apply: impl Fn(&Config) -> Result<(), String> + Send + 'static,
) {
    let mut changes = config.watch(path);
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let latest = changes.borrow_and_update().clone();
            if let Err(error) = apply(&latest) {
                tracing::warn!(%error, "{path} not applied");
            }
        }
    });
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
