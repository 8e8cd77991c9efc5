//! `ganglion serve`: settings from the configuration layers (see `ganglion_config`),
//! flags last; live settings follow configuration reloads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ganglion_bus::{Bus, BusOptions};
use ganglion_config::{self as config, Config, ConfigHandle, Loader};
use ganglion_coordinator::Coordinator;
use ganglion_core::{Engine, SystemClock};
use ganglion_server::auth::{AuthHandle, Policy};
use ganglion_telemetry::{Format, Logs, OtlpOptions, Traces};
use tokio::net::TcpListener;

use crate::settings::{coordinator_config, retention_rules, settings};

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
