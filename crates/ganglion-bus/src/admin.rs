//! What operators do to a running bus: its batch window, listings and statistics,
//! retention, purges and shutdown.
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::{Bus, RetentionRule, SubscriptionStats, lock, log_error, micros};
use ganglion_core::bus::StorageClass;
use ganglion_core::{BusError, Pattern, Topic};
use ganglion_log::Log;

impl Bus {
    /// Sets the window of batch subscriptions that do not give one; windows opened from
    /// now on use it (one already open closes on its old schedule). A zero window is
    /// refused.
    pub fn set_batch_window(&self, window: Duration) -> Result<(), BusError> {
        if window.is_zero() {
            return Err(BusError::invalid(
                "batch_window",
                "must be longer than zero",
            ));
        }
        self.core
            .batch_window_micros
            .store(micros(window), Ordering::Relaxed);
        tracing::info!(
            window_ms = window.as_millis() as u64,
            "default batch window set"
        );
        Ok(())
    }

    /// The window of batch subscriptions that do not give one.
    pub fn batch_window(&self) -> Duration {
        self.core.batch_window()
    }

    /// Every subscription: the consumers running now (a subscription, a queue group or
    /// a durable name, as one), and the durables with no subscriber now, with what each
    /// counted since this process started, its lag and its dead letters.
    pub fn subscriptions(&self) -> Vec<SubscriptionStats> {
        let next_seq = self.core.log.next_seq();
        let dead = lock(&self.core.dead_letter_counts).clone();
        let dead_letters = |name: &str| dead.get(name).map_or(0, |c| c.live());
        let registry = lock(&self.core.registry);
        let running = registry.consumers.values().map(|e| {
            let mut stats = e.shared.counters.report(
                &e.name,
                e.pattern.to_string(),
                e.queue_group.clone(),
                e.shared.durable,
                e.members.len(),
                next_seq,
            );
            stats.dead_letter_topic = e.dlq_topic.to_string();
            stats.dead_letters = dead_letters(&e.name);
            // Running, it is behind by its own unread events only.
            stats.lag = e.shared.counters.behind.load(Ordering::Relaxed) + e.route.len() as u64;
            stats
        });
        let parked = registry.parked.iter().map(|(name, p)| {
            let mut stats = p
                .counters
                .report(name, p.pattern.clone(), None, true, 0, next_seq);
            stats.dead_letter_topic = p.dlq_topic.clone();
            stats.dead_letters = dead_letters(name);
            stats
        });
        let mut stats: Vec<SubscriptionStats> = running.chain(parked).collect();
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        stats
    }

    /// Dead letters not redriven, by subscription (custom dead-letter topics included).
    pub fn dead_letter_counts(&self) -> Vec<(String, u64)> {
        let mut counts: Vec<(String, u64)> = lock(&self.core.dead_letter_counts)
            .iter()
            .map(|(name, c)| (name.clone(), c.live()))
            .collect();
        counts.sort();
        counts
    }

    /// How old events are at their first delivery (from their timestamp, in whole
    /// milliseconds), sampled once per delivery round of each consumer.
    pub fn delivery_latency(&self) -> ganglion_core::stats::HistogramSnapshot {
        self.core.delivery_latency.snapshot()
    }

    /// The event log under the bus.
    pub fn log(&self) -> &Log {
        &self.core.log
    }

    /// The retention rules in force.
    pub fn retention(&self) -> Vec<RetentionRule> {
        self.core.retention.rules().to_vec()
    }

    /// Replaces the retention rules (a reloaded config): what expires changes at the next
    /// pass ([`apply_retention`](Self::apply_retention)); reads the log through once
    /// to count the rules' events.
    pub async fn set_retention(&self, rules: Vec<RetentionRule>) -> Result<(), BusError> {
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || core.retention.set_rules(rules, &core.log))
            .await
            .map_err(|e| BusError::Internal(e.to_string()))??;
        tracing::info!("retention rules changed");
        self.apply_retention().await.map(drop)
    }

    /// One retention pass now: works out what has expired (by age on the bus's clock,
    /// by count, by bytes, by purge) and deletes the oldest segments whose every record
    /// has; returns the records deleted. [`run_retention`](Self::run_retention) does
    /// this every `every`.
    pub async fn apply_retention(&self) -> Result<u64, BusError> {
        let core = self.core.clone();
        let below = tokio::task::spawn_blocking(move || {
            let now = core.clock.now_micros();
            core.retention.pass(&core.log, now)
        })
        .await
        .map_err(|e| BusError::Internal(e.to_string()))??;
        let Some(below) = below else {
            return Ok(0);
        };
        let report = self
            .core
            .log
            .delete_before(below)
            .await
            .map_err(log_error)?;
        if report.segments_deleted > 0 {
            tracing::info!(
                segments = report.segments_deleted,
                records = report.records_deleted,
                bytes = report.bytes_deleted,
                "retention deleted segments whose every event had expired"
            );
        }
        Ok(report.records_deleted)
    }

    /// Applies retention every `every` until the bus closes.
    pub fn run_retention(
        &self,
        every: Duration,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let bus = Arc::downgrade(&self.core);
        let handle = Arc::downgrade(&self._handle);
        async move {
            loop {
                tokio::time::sleep(every).await;
                let (Some(core), Some(handle)) = (bus.upgrade(), handle.upgrade()) else {
                    return;
                };
                if core.closed.load(Ordering::Acquire) {
                    return;
                }
                let bus = Bus {
                    core,
                    _handle: handle,
                };
                if let Err(error) = bus.apply_retention().await {
                    tracing::warn!(%error, "retention pass failed; will retry");
                }
            }
        }
    }

    /// Purges the topics `pattern` matches: every event published to them so far
    /// expires at once (replays and subscribers no longer see them; the disk space comes
    /// back as retention deletes segments). Returns how many topics matched and how
    /// many events they had been given since the log began (or their last purge).
    pub fn purge(&self, pattern: &Pattern) -> Result<(u64, u64), BusError> {
        let below = self.core.log.next_seq();
        self.core.retention.purge(pattern.clone(), below)?;
        let mut topics = lock(&self.core.topics);
        let (mut matched, mut events) = (0, 0);
        for (topic, stats) in topics.iter_mut() {
            if pattern.matches(topic) && stats.storage == StorageClass::Durable {
                matched += 1;
                events += stats.events;
                stats.events = 0;
                stats.first_seq = 0;
            }
        }
        tracing::info!(%pattern, topics = matched, events, "topics purged");
        Ok((matched, events))
    }

    /// Purges the topics `pattern` matches and forgets them (they are listed again once
    /// something is published to them). Returns the topics deleted and their events.
    pub fn delete_topics(&self, pattern: &Pattern) -> Result<(Vec<Topic>, u64), BusError> {
        let (_, events) = self.purge(pattern)?;
        let mut topics = lock(&self.core.topics);
        let deleted: Vec<Topic> = topics
            .keys()
            .filter(|t| pattern.matches(t))
            .cloned()
            .collect();
        for topic in &deleted {
            topics.remove(topic);
        }
        tracing::info!(%pattern, topics = deleted.len(), "topics deleted");
        Ok((deleted, events))
    }

    /// Stops every consumer (durable ones save their state), refuses further calls, and
    /// syncs the log. Subscribers see their subscriptions end.
    pub async fn shutdown(&self) -> Result<(), BusError> {
        for mut f in self.core.stop_consumers() {
            let _ = f.wait_for(|done| *done).await;
        }
        self.core.log.sync().await.map_err(log_error)
    }
}
