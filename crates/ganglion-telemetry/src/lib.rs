//! Ganglion's logs and traces.
//!
//! - JSON lines by default; pretty (coloured) on a terminal. Each line carries the fields
//!   of the spans it is written in, so a handler run in
//!   [`EventContext::scope`](ganglion_core::EventContext) logs its event's
//!   `correlation_id` on every line, and the bus logs it on its own lines about the event
//!   (redelivery, dead-lettering).
//! - The filter (`RUST_LOG` syntax) changes live: [`Logs::set_filter`], which the server
//!   calls when `telemetry.log_level` is reloaded.
//! - Traces ([`trace`]): publish and deliver spans exported over OTLP, installed with
//!   [`Logs::init_traced`].
//! - Metrics ([`metrics`]): the catalogue of every metric family Ganglion exports
//!   (names, kinds, help, labels, in one place) and the Prometheus text writer.
//!
//! Logs and traces are behind the `export` feature (on by default); a crate that only
//! writes metrics uses `default-features = false` and does not build OpenTelemetry.

#[cfg(feature = "export")]
mod logs;
pub mod metrics;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "export")]
pub mod trace;

#[cfg(feature = "export")]
pub use logs::{Format, Logs, TelemetryError};
#[cfg(feature = "export")]
pub use trace::{OtlpOptions, Traces};
