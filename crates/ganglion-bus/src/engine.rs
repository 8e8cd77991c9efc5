//! The embedded bus as a server's [`Engine`]: its log is the storage.

use std::time::Duration;

use ganglion_core::engine::{Engine, EngineHealth, RetentionRule, StorageStats, SubscriptionStats};
use ganglion_core::stats::HistogramSnapshot;
use ganglion_core::{BoxFuture, BusError, Pattern, Topic};
use ganglion_log::LogHealth;

use crate::Bus;

impl Engine for Bus {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn health(&self) -> EngineHealth {
        match self.log().health() {
            LogHealth::Ok => EngineHealth::Ok,
            LogHealth::NoSpace { file } => EngineHealth::NoSpace {
                detail: file.display().to_string(),
            },
            LogHealth::Failed { reason } => EngineHealth::Failed {
                reason: reason.to_string(),
            },
        }
    }

    fn storage(&self) -> StorageStats {
        let log = self.log().stats();
        StorageStats {
            first_seq: log.first_seq,
            next_seq: log.next_seq,
            segments: log.segments,
            bytes: log.bytes,
            appends: log.appends,
            fsyncs: log.fsyncs,
            fsync_micros_total: log.fsync_micros_total,
        }
    }

    fn subscriptions(&self) -> Vec<SubscriptionStats> {
        Bus::subscriptions(self)
    }

    fn delivery_latency(&self) -> HistogramSnapshot {
        Bus::delivery_latency(self)
    }

    fn dead_letter_counts(&self) -> Vec<(String, u64)> {
        Bus::dead_letter_counts(self)
    }

    fn purge(&self, pattern: Pattern) -> BoxFuture<'_, Result<(u64, u64), BusError>> {
        let bus = self.clone();
        Box::pin(blocking(move || Bus::purge(&bus, &pattern)))
    }

    fn delete_topics(
        &self,
        pattern: Pattern,
    ) -> BoxFuture<'_, Result<(Vec<Topic>, u64), BusError>> {
        let bus = self.clone();
        Box::pin(blocking(move || Bus::delete_topics(&bus, &pattern)))
    }

    fn set_retention(&self, rules: Vec<RetentionRule>) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(Bus::set_retention(self, rules))
    }

    fn set_batch_window(&self, window: Duration) -> Result<(), BusError> {
        Bus::set_batch_window(self, window)
    }

    fn upkeep(&self, every: Duration) -> BoxFuture<'static, ()> {
        Box::pin(self.run_retention(every))
    }

    fn shutdown(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(Bus::shutdown(self))
    }
}

/// Runs `f` (which reads or writes the log's files) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BusError> + Send + 'static,
) -> Result<T, BusError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BusError::Internal(e.to_string()))?
}
