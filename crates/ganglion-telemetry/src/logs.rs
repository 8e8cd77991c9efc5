//! The log pipeline: lines to stderr (JSON or pretty) through a filter that changes live.

use std::io::IsTerminal as _;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Layer as _, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::trace::Traces;

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
    #[error("trace exporter for {endpoint:?}: {reason}")]
    Traces { endpoint: String, reason: String },
    #[error("exporting spans: {0}")]
    Export(String),
}

fn parse_filter(filter: &str) -> Result<EnvFilter, TelemetryError> {
    EnvFilter::try_new(filter).map_err(|e| TelemetryError::Filter {
        filter: filter.to_owned(),
        reason: e.to_string(),
    })
}

/// The layer that writes log lines in `format`.
fn lines<S, W>(format: Format, writer: W) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        Format::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .flatten_event(true)
            .with_writer(writer)
            .boxed(),
        Format::Pretty { ansi } => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .boxed(),
    }
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
        Logs::install(filter, format, writer, None)
    }

    /// Like [`init_with_writer`](Self::init_with_writer), and exports Ganglion's spans
    /// (with the log lines written inside them, as span events) through `traces`,
    /// whatever the log filter says.
    pub fn init_traced<W>(
        filter: &str,
        format: Format,
        writer: W,
        traces: &Traces,
    ) -> Result<Logs, TelemetryError>
    where
        W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
    {
        Logs::install(filter, format, writer, Some(traces))
    }

    fn install<W>(
        filter: &str,
        format: Format,
        writer: W,
        traces: Option<&Traces>,
    ) -> Result<Logs, TelemetryError>
    where
        W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
    {
        let (log_filter, handle) = reload::Layer::new(parse_filter(filter)?);
        let installed = match traces {
            // One global filter: callsites it disables (the many `trace!`s in h2 and
            // tokio) are never looked at again. (An absent layer, `None::<Layer>`, would
            // declare interest in every callsite and undo that.)
            None => tracing_subscriber::registry()
                .with(log_filter)
                .with(lines(format, writer))
                .try_init(),
            // Each layer its own filter: the log level applies to log lines only, and
            // Ganglion's spans are exported whatever it says.
            Some(traces) => {
                let spans = tracing_opentelemetry::layer()
                    .with_tracer(traces.tracer())
                    // Busy and idle times cost two clock reads per poll of every span.
                    .with_tracked_inactivity(false)
                    .with_filter(Targets::new().with_target("ganglion", tracing::Level::INFO));
                tracing_subscriber::registry()
                    .with(lines(format, writer).with_filter(log_filter))
                    .with(spans)
                    .try_init()
            }
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
