//! Ganglion's logs.
//!
//! - JSON lines by default; pretty (coloured) on a terminal. Each line carries the fields
//!   of the spans it is written in, so a handler run in
//!   [`EventContext::scope`](ganglion_core::EventContext) logs its event's
//!   `correlation_id` on every line, and the bus logs it on its own lines about the event
//!   (redelivery, dead-lettering).
//! - The filter (`RUST_LOG` syntax) changes live: [`Logs::set_filter`], which the server
//!   calls when `telemetry.log_level` is reloaded.

use std::io::IsTerminal as _;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line, with the fields of the enclosing spans.
    Json,
    /// Human-readable, coloured when `ansi`.
    Pretty { ansi: bool },
}

impl Format {
    /// Pretty on a terminal, JSON otherwise (for log shippers).
    pub fn auto() -> Format {
        if std::io::stderr().is_terminal() {
            Format::Pretty { ansi: true }
        } else {
            Format::Json
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("log filter {filter:?}: {reason}")]
    Filter { filter: String, reason: String },
    #[error("installing the log subscriber: {0}")]
    Install(String),
}

fn parse_filter(filter: &str) -> Result<EnvFilter, TelemetryError> {
    EnvFilter::try_new(filter).map_err(|e| TelemetryError::Filter {
        filter: filter.to_owned(),
        reason: e.to_string(),
    })
}

/// The installed log pipeline.
#[derive(Debug, Clone)]
pub struct Logs {
    filter: reload::Handle<EnvFilter, Registry>,
}

impl Logs {
    /// Installs the global subscriber: logs to stderr in `format`, through `filter`.
    pub fn init(filter: &str, format: Format) -> Result<Logs, TelemetryError> {
        Logs::init_with_writer(filter, format, std::io::stderr)
    }

    /// Like [`init`](Self::init), writing to `writer` (tests capture lines this way).
    pub fn init_with_writer<W>(
        filter: &str,
        format: Format,
        writer: W,
    ) -> Result<Logs, TelemetryError>
    where
        W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
    {
        let (filter_layer, handle) = reload::Layer::new(parse_filter(filter)?);
        let registry = tracing_subscriber::registry().with(filter_layer);
        let installed = match format {
            Format::Json => registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .with_current_span(false)
                        .with_span_list(true)
                        .flatten_event(true)
                        .with_writer(writer),
                )
                .try_init(),
            Format::Pretty { ansi } => registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(ansi)
                        .with_writer(writer),
                )
                .try_init(),
        };
        installed.map_err(|e| TelemetryError::Install(e.to_string()))?;
        Ok(Logs { filter: handle })
    }

    /// Replaces the filter; lines already enabled or disabled follow at once. A filter
    /// that does not parse is refused and the old one stays.
    pub fn set_filter(&self, filter: &str) -> Result<(), TelemetryError> {
        let parsed = parse_filter(filter)?;
        self.filter
            .reload(parsed)
            .map_err(|e| TelemetryError::Install(e.to_string()))?;
        tracing::info!(filter, "log filter changed");
        Ok(())
    }
}
