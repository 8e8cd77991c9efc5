//! Opening a bus: the log, the durable consumers' saved state, and one scan of the log to
//! rebuild topics and idempotency keys; and stopping consumers at shutdown.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ganglion_core::bus::PublishAck;
use ganglion_core::{BusError, Topic};
use ganglion_log::{Log, LogError, LogOptions};
use tokio::sync::watch;

use crate::consumer::Control;
use crate::dedupe::Dedupe;

use crate::registry::Parked;
use crate::route::route_committed;
use crate::{
    Bus, BusOptions, Core, Handle, codec, dlq, lock, log_error, micros, recent, retention, state,
    stats,
};

impl Bus {
    pub(crate) fn open_inner(
        options: BusOptions,
        storage: Option<Arc<dyn ganglion_log::storage::Storage>>,
    ) -> Result<Bus, BusError> {
        let log_options = LogOptions {
            clock: options.clock.clone(),
            ..options.log.clone()
        };
        let unavailable = |e: LogError| BusError::Unavailable(e.to_string());
        let on_disk = !options.in_memory && storage.is_none();
        let (log, states) = if options.in_memory || storage.is_some() {
            let storage =
                storage.unwrap_or_else(|| Arc::new(ganglion_log::storage::MemStorage::new()));
            let log = Log::open_with_storage(storage, "/ganglion/log", log_options)
                .map_err(unavailable)?;
            (log, state::StateStore::Memory(Mutex::default()))
        } else {
            let consumers_dir = options.data_dir.join("consumers");
            std::fs::create_dir_all(&consumers_dir).map_err(|e| {
                BusError::Unavailable(format!("creating {}: {e}", consumers_dir.display()))
            })?;
            ganglion_core::fs::remove_stale_temporaries(&consumers_dir);
            let log = Log::open(options.data_dir.join("log"), log_options).map_err(unavailable)?;
            (log, state::StateStore::Dir(consumers_dir))
        };
        let batch_window_micros = AtomicU64::new(micros(options.batch_window));
        let purges = on_disk.then(|| options.data_dir.join("purges"));
        let retention = retention::Retention::new(options.retention.clone(), purges)?;
        let core = Core {
            retention,
            dead_letter_counts: Mutex::default(),
            log,
            batch_window_micros,
            delivery_latency: Default::default(),
            clock: options.clock.clone(),
            states,
            options,
            dedupe: Mutex::new(Dedupe::default()),
            topics: Mutex::new(BTreeMap::new()),
            registry: Arc::default(),
            recent: recent::Recent::default(),
            routed_below: Arc::default(),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        };
        core.rebuild()?;
        core.park_saved_durables();
        core.routed_below
            .store(core.log.next_seq(), Ordering::Release);
        // (Before the hook is set: nothing is appended while the bus opens.)
        let core = Arc::new(core);
        // The hook holds the registry and the mark, not the core: the last handle to the
        // core must never be dropped on the log's own writer thread.
        let (registry, routed_below) = (core.registry.clone(), core.routed_below.clone());
        core.log.on_commit(Box::new(move |first_seq, records| {
            route_committed(&registry, &routed_below, first_seq, records);
        }));
        Ok(Bus {
            _handle: Arc::new(Handle(core.clone())),
            core,
        })
    }
}

impl Core {
    /// Refuses further calls and tells every consumer to stop; returns their
    /// completion signals.
    pub(crate) fn stop_consumers(&self) -> Vec<watch::Receiver<bool>> {
        self.closed.store(true, Ordering::Release);
        let mut registry = lock(&self.registry);
        let mut finished: Vec<_> = registry.retiring.drain().map(|(_, f)| f).collect();
        let routed_below = self.routed_below.load(Ordering::Acquire);
        for (_, entry) in registry.consumers.drain() {
            entry.route.close(routed_below);
            let _ = entry.control.send(Control::Stop);
            finished.push(entry.finished);
        }
        registry.members.clear();
        finished
    }

    /// Lists every durable saved on disk as parked, until a subscriber returns.
    pub(crate) fn park_saved_durables(&self) {
        let mut registry = lock(&self.registry);
        for name in self.states.names() {
            match self.states.load(&name) {
                Ok(Some(state)) => {
                    let counters = Arc::new(stats::ConsumerCounters::default());
                    counters.floor.store(state.floor, Ordering::Relaxed);
                    registry.parked.insert(
                        name,
                        Parked {
                            pattern: state.pattern,
                            dlq_topic: state.dlq_topic,
                            counters,
                        },
                    );
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "cannot read a durable's saved state"),
            }
        }
    }

    /// Rebuilds the topic list and the idempotency keys still in the window from the log.
    pub(crate) fn rebuild(&self) -> Result<(), BusError> {
        let window = self.options.dedupe_window.as_micros() as u64;
        let window_start = self.clock.now_micros().saturating_sub(window);
        let mut topics = lock(&self.topics);
        let mut dedupe = lock(&self.dedupe);
        let counting = self.retention.counts();
        let mut next = self.log.first_seq();
        loop {
            let records = self.log.read(next, 4096).map_err(log_error)?;
            let Some(last) = records.last() else { break };
            next = last.seq + 1;
            for record in records {
                let Ok(topic) = codec::peek_topic(&record.payload, record.seq) else {
                    tracing::warn!(seq = record.seq, "skipping undecodable record");
                    continue;
                };
                if counting {
                    self.retention
                        .record([(topic, record.seq, record.payload.len() as u64)]);
                }
                if let Some((event_type, subscription)) =
                    codec::peek_type_and_header(&record.payload, dlq::SUBSCRIPTION)
                    && let Some((subscription, letter)) =
                        dlq::classify_parts(event_type, subscription)
                {
                    lock(&self.dead_letter_counts)
                        .entry(subscription.to_owned())
                        .or_default()
                        .count(letter);
                }
                let Ok(topic) = Topic::new(topic) else {
                    continue;
                };
                let stats = topics.entry(topic).or_default();
                stats.events += 1;
                stats.last_seq = record.seq;
                if stats.first_seq == 0 {
                    stats.first_seq = record.seq;
                }
                if record.timestamp_micros >= window_start
                    && let Ok(event) = codec::decode(&record.payload, record.seq)
                    && let Some(key) = event.idempotency_key()
                {
                    let ack = PublishAck {
                        seq: record.seq,
                        id: event.id.clone(),
                        duplicate: false,
                    };
                    dedupe.remember(key.to_owned(), ack, record.timestamp_micros + window);
                }
            }
        }
        tracing::info!(
            topics = topics.len(),
            next_seq = next,
            "event bus recovered"
        );
        Ok(())
    }
}
