//! Ganglion's telemetry.
