//! OpenTelemetry traces: publish and deliver spans, W3C `traceparent` in event headers,
//! exported over OTLP/gRPC.
//!
//! [`Traces::otlp`] builds the exporter and installs Ganglion's [`Tracer`] in the bus
//! (see [`ganglion_core::trace`]); [`Logs::init_traced`](crate::Logs::init_traced) adds the
//! layer that turns `tracing` spans into OpenTelemetry spans. Only spans of Ganglion's own
//! crates (and the `tracing` events inside them) are exported; the log filter does not
//! apply to them, so `telemetry.log_level: warn` keeps the traces.
//!
//! Spans follow OpenTelemetry's messaging conventions: `publish` (kind producer) and
//! `deliver` (kind consumer), with `messaging.system = ganglion`,
//! `messaging.destination.name` (the topic), `messaging.message.id`, and on delivery
//! `messaging.consumer.group.name` (the subscription) and `ganglion.attempt`.

use std::collections::HashMap;
use std::time::Duration;

use ganglion_core::Event;
use ganglion_core::headers;
use ganglion_core::trace::{Traced, Tracer};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::TelemetryError;

/// The W3C `tracestate` header, carried beside `traceparent`.
const TRACESTATE: &str = "tracestate";

/// Where and how to export spans. Its `Debug` hides the token.
#[derive(Clone)]
pub struct OtlpOptions {
    /// The collector's OTLP/gRPC endpoint (`http://localhost:4317`).
    pub endpoint: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// Sent as `authorization: Bearer <token>` when set.
    pub token: Option<String>,
    /// How long one export may take.
    pub timeout: Duration,
}

impl std::fmt::Debug for OtlpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpOptions")
            .field("endpoint", &self.endpoint)
            .field("service_name", &self.service_name)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The installed trace pipeline. [`shutdown`](Self::shutdown) flushes what is buffered;
/// call it before the process exits.
#[derive(Debug, Clone)]
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Builds the OTLP exporter and a batching tracer provider, and installs Ganglion's
    /// publish and deliver spans in the bus. Call from within a Tokio runtime (the
    /// gRPC channel runs on it); the endpoint is connected lazily, so a collector that is
    /// down costs dropped spans, never a failed start.
    pub fn otlp(options: &OtlpOptions) -> Result<Traces, TelemetryError> {
        let endpoint_error = |reason: String| TelemetryError::Traces {
            endpoint: options.endpoint.clone(),
            reason,
        };
        let mut metadata = tonic::metadata::MetadataMap::new();
        if let Some(token) = &options.token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| endpoint_error("the token is not a valid header value".into()))?;
            metadata.insert("authorization", value);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(options.endpoint.clone())
            .with_timeout(options.timeout)
            .with_metadata(metadata)
            .build()
            .map_err(|e| endpoint_error(e.to_string()))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(options.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        // A second pipeline in one process keeps the first tracer; its spans still go
        // through whichever layer is installed.
        let _ = ganglion_core::trace::install(Box::new(BusTracer));
        Ok(Traces { provider })
    }

    /// The tracer the `tracing` layer exports through.
    pub(crate) fn tracer(&self) -> opentelemetry_sdk::trace::SdkTracer {
        self.provider.tracer("ganglion")
    }

    /// Exports every finished span now. Blocks: call it off the async runtime's
    /// threads (`spawn_blocking`).
    pub fn flush(&self) -> Result<(), TelemetryError> {
        self.provider
            .force_flush()
            .map_err(|e| TelemetryError::Export(e.to_string()))
    }

    /// Flushes and stops the exporter. Blocks like [`flush`](Self::flush).
    pub fn shutdown(&self) -> Result<(), TelemetryError> {
        self.provider
            .shutdown()
            .map_err(|e| TelemetryError::Export(e.to_string()))
    }
}

/// The event's headers as a propagation carrier.
struct Headers<'a>(&'a Event);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.header(key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.headers.keys().map(String::as_str).collect()
    }
}

/// Makes `span` a child of the trace in `event`'s headers, when they carry one.
fn adopt_parent(span: &tracing::Span, event: &Event) {
    if event.header(headers::TRACEPARENT).is_some() {
        let parent = TraceContextPropagator::new().extract(&Headers(event));
        // Fails only when the span is disabled or already started: nothing to adopt.
        let _ = span.set_parent(parent);
    }
}

/// `span`'s context as W3C headers (`traceparent`, and `tracestate` when not empty).
fn context_headers(span: &tracing::Span) -> HashMap<String, String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier
}

/// Ganglion's spans, made in the bus through [`ganglion_core::trace`].
struct BusTracer;

impl Tracer for BusTracer {
    fn publish(&self, event: &mut Event) -> tracing::Span {
        let span = tracing::info_span!(
            "publish",
            otel.kind = "producer",
            messaging.system = "ganglion",
            messaging.operation.type = "send",
            messaging.destination.name = %event.topic,
            messaging.message.id = %event.id,
        );
        adopt_parent(&span, event);
        let mut context = context_headers(&span);
        if let Some(traceparent) = context.remove(headers::TRACEPARENT) {
            event
                .headers
                .insert(headers::TRACEPARENT.to_owned(), traceparent);
            match context.remove(TRACESTATE) {
                Some(state) => event.headers.insert(TRACESTATE.to_owned(), state),
                None => event.headers.remove(TRACESTATE),
            };
        }
        span
    }

    fn deliver(&self, event: &Event, subscription: &str, attempt: u32) -> Traced {
        let span = tracing::info_span!(
            "deliver",
            otel.kind = "consumer",
            messaging.system = "ganglion",
            messaging.operation.type = "receive",
            messaging.destination.name = %event.topic,
            messaging.message.id = %event.id,
            messaging.consumer.group.name = subscription,
            ganglion.attempt = attempt,
        );
        adopt_parent(&span, event);
        let traceparent = context_headers(&span).remove(headers::TRACEPARENT);
        Traced { span, traceparent }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_never_prints() {
        let options = OtlpOptions {
            endpoint: "http://127.0.0.1:4317".into(),
            service_name: "ganglion".into(),
            token: Some("s3cret".into()),
            timeout: Duration::from_secs(1),
        };
        let printed = format!("{options:?}");
        assert!(
            !printed.contains("s3cret") && printed.contains("<redacted>"),
            "{printed}"
        );
    }
}
