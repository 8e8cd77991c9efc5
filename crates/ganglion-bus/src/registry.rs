//! The consumers a bus knows: running ones by key, durables without a subscriber, members,
//! and the pattern index that routes events to them.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ganglion_core::bus::SubscriptionId;
use ganglion_core::{Event, Pattern, PatternIndex, Topic};
use tokio::sync::{mpsc, watch};

use crate::consumer::{ConsumerShared, Control};
use crate::{Core, lock, route, stats};

/// A consumer known to the bus.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) pattern: Pattern,
    pub(crate) queue_group: Option<String>,
    pub(crate) dlq_topic: Topic,
    pub(crate) control: mpsc::UnboundedSender<Control>,
    pub(crate) ephemeral: mpsc::UnboundedSender<Vec<Arc<Event>>>,
    pub(crate) members: HashSet<SubscriptionId>,
    pub(crate) finished: watch::Receiver<bool>,
    pub(crate) shared: Arc<ConsumerShared>,
    pub(crate) cut_off: bool,
    /// Where logged events matching `pattern` are handed to the consumer.
    pub(crate) route: Arc<route::Route>,
}

/// A durable subscription with no subscriber now: what it is and what it counted, so
/// listings and metrics keep showing it (and its backlog) while it is away.
#[derive(Debug)]
pub(crate) struct Parked {
    pub(crate) pattern: String,
    pub(crate) dlq_topic: String,
    pub(crate) counters: Arc<stats::ConsumerCounters>,
}

#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub(crate) consumers: HashMap<String, Entry>,
    /// Durables without a subscriber, by name.
    pub(crate) parked: HashMap<String, Parked>,
    pub(crate) members: HashMap<SubscriptionId, String>,
    /// Consumer keys by pattern: which consumers an event goes to (ephemeral events as
    /// they are published, logged ones as the log commits them; see `route`).
    pub(crate) index: PatternIndex<String>,
    /// Durable consumers that were stopped and may still be writing their state.
    pub(crate) retiring: HashMap<String, watch::Receiver<bool>>,
}

/// A consumer's key, its ephemeral queue and permits, and the events of one
/// publication for it.
pub(crate) type EphemeralTarget = (
    String,
    mpsc::UnboundedSender<Vec<Arc<Event>>>,
    Arc<ConsumerShared>,
    Vec<Arc<Event>>,
);

impl Core {
    /// Removes a member; the consumer stops when its last member is gone.
    pub(crate) fn leave(&self, id: SubscriptionId) -> bool {
        let mut registry = lock(&self.registry);
        let Some(key) = registry.members.remove(&id) else {
            return false;
        };
        let Some(entry) = registry.consumers.get_mut(&key) else {
            return true;
        };
        entry.members.remove(&id);
        let _ = entry.control.send(Control::Leave(id));
        if entry.members.is_empty() {
            let entry = registry.consumers.remove(&key).expect("entry exists");
            registry.index.remove(&entry.pattern, &key);
            entry.route.close(self.routed_below.load(Ordering::Acquire));
            let _ = entry.control.send(Control::Stop);
            if entry.shared.durable {
                entry.shared.counters.in_flight.store(0, Ordering::Relaxed);
                entry.shared.counters.ready.store(0, Ordering::Relaxed);
                registry.parked.insert(
                    entry.name.clone(),
                    Parked {
                        pattern: entry.pattern.to_string(),
                        dlq_topic: entry.dlq_topic.to_string(),
                        counters: entry.shared.counters.clone(),
                    },
                );
            }
            registry.retiring.insert(key, entry.finished);
        }
        true
    }
}
