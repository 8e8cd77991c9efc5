//! Subscribing: finding or starting a subscription's consumer, joining it as a member, and
//! leaving it.
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ganglion_core::bus::{
    QueuedBytes, SubscribeOptions, Subscription, SubscriptionControl, SubscriptionId,
};
use ganglion_core::{BusError, Pattern, Topic};
use tokio::sync::{mpsc, watch};

use crate::consumer::{Consumer, ConsumerShared, ConsumerSpec, Control, Member};
use crate::registry::{Entry, Registry};
use crate::{Bus, Core, consumer, dlq, lock, route, state};

/// What one try at subscribing came to.
pub(crate) enum Attempt {
    Subscribed(Subscription),
    /// The consumer of this name is still stopping: wait for it, then try again.
    Retiring(watch::Receiver<bool>),
}

/// Unsubscribes when the subscription is dropped.
#[derive(Debug)]
pub(crate) struct LeaveOnDrop {
    core: std::sync::Weak<Core>,
    id: SubscriptionId,
}

impl Drop for LeaveOnDrop {
    fn drop(&mut self) {
        if let Some(core) = self.core.upgrade() {
            core.leave(self.id);
        }
    }
}

/// The handle a subscriber's acks go through.
#[derive(Debug)]
pub(crate) struct MemberControl {
    control: mpsc::UnboundedSender<Control>,
    shared: Arc<ConsumerShared>,
}

impl SubscriptionControl for MemberControl {
    fn ack(&self, seqs: &[u64]) {
        if !seqs.is_empty() {
            let _ = self.control.send(Control::Ack(seqs.to_vec()));
        }
    }

    fn nack(&self, seqs: &[u64], delay: Option<Duration>, error: &str) {
        if !seqs.is_empty() {
            let _ = self.control.send(Control::Nack {
                seqs: seqs.to_vec(),
                delay,
                error: error.to_owned(),
            });
        }
    }

    fn term(&self, seqs: &[u64], reason: &str) {
        if !seqs.is_empty() {
            let _ = self.control.send(Control::Term {
                seqs: seqs.to_vec(),
                reason: reason.to_owned(),
            });
        }
    }

    fn closed_reason(&self) -> Option<String> {
        lock(&self.shared.closed_reason).clone()
    }
}

/// A durable joined with a pattern other than its own. The error does not say which
/// pattern it has: that is for those who may list subscriptions.
pub(crate) fn durable_pattern_mismatch(name: &str) -> BusError {
    BusError::invalid(
        "pattern",
        format!(
            "durable {name:?} exists with another pattern; subscribe with the pattern it was created with"
        ),
    )
}

impl Bus {
    pub(crate) fn subscribe_now(
        &self,
        pattern: Pattern,
        options: SubscribeOptions,
    ) -> Result<Attempt, BusError> {
        let core = &self.core;
        let id = SubscriptionId(core.next_id.fetch_add(1, Ordering::Relaxed));
        let (key, name) = match (&options.durable, &options.queue_group) {
            (Some(durable), _) => (format!("d:{durable}"), durable.clone()),
            (None, Some(group)) => (format!("q:{group}:{pattern}"), group.clone()),
            (None, None) => (format!("s:{id}"), id.to_string()),
        };
        let mut registry = lock(&core.registry);
        // A durable consumer stopped a moment ago may still be saving its state: wait for
        // it before loading that state.
        if let Some(finished) = registry.retiring.get(&key) {
            if !*finished.borrow() {
                return Ok(Attempt::Retiring(finished.clone()));
            }
            registry.retiring.remove(&key);
        }
        let (tx, rx) = mpsc::channel(consumer::member_channel(options.max_in_flight).1);
        let queued = QueuedBytes::new(core.options.subscriber_buffer_bytes);
        if let Some(entry) = registry.consumers.get_mut(&key) {
            let joining = Joining {
                id,
                tx,
                queued: queued.clone(),
            };
            let control = join(entry, &name, &pattern, &options, joining)?;
            registry.members.insert(id, key);
            drop(registry);
            return Ok(Attempt::Subscribed(
                self.subscription(id, name, rx, control, queued),
            ));
        }

        // A new consumer. A durable one resumes from its saved state.
        let joining = Joining {
            id,
            tx,
            queued: queued.clone(),
        };
        let control = start_consumer(core, &mut registry, &key, &name, pattern, &options, joining)?;
        registry.members.insert(id, key);
        drop(registry);
        Ok(Attempt::Subscribed(
            self.subscription(id, name, rx, control, queued),
        ))
    }

    pub(crate) fn subscription(
        &self,
        id: SubscriptionId,
        name: String,
        rx: mpsc::Receiver<ganglion_core::bus::Chunk>,
        control: Arc<dyn SubscriptionControl>,
        queued: Arc<QueuedBytes>,
    ) -> Subscription {
        let guard = LeaveOnDrop {
            core: Arc::downgrade(&self.core),
            id,
        };
        Subscription::new(id, name, rx, control)
            .with_queued_bytes(queued)
            .with_guard(guard)
    }
}

/// Joins subscriber `id` to the running consumer `entry` (a queue group's, or a
/// durable's), if it may; returns the handle its acks go through.
fn join(
    entry: &mut Entry,
    name: &str,
    pattern: &Pattern,
    options: &SubscribeOptions,
    joining: Joining,
) -> Result<Arc<dyn SubscriptionControl>, BusError> {
    if entry.pattern != *pattern {
        return Err(durable_pattern_mismatch(name));
    }
    if entry.queue_group.is_none() || entry.queue_group != options.queue_group {
        return Err(BusError::invalid(
            "durable",
            format!(
                "{name:?} already has a subscriber; give every subscriber the same queue_group to share it"
            ),
        ));
    }
    if entry.cut_off {
        return Err(BusError::Unavailable(format!(
            "{name:?} was closed as a slow consumer"
        )));
    }
    let control: Arc<dyn SubscriptionControl> = Arc::new(MemberControl {
        control: entry.control.clone(),
        shared: entry.shared.clone(),
    });
    entry.members.insert(joining.id);
    let _ = entry
        .control
        .send(Control::Join(joining.member(control.clone())));
    Ok(control)
}

/// Where a new consumer starts: a durable's saved state, or its start position.
struct Start {
    dlq_topic: Topic,
    resumed: bool,
    cursor: u64,
    done: BTreeSet<u64>,
    attempts: BTreeMap<u64, u32>,
}

impl Core {
    /// Where a new consumer named `name` starts. A durable with saved state resumes
    /// from it (with the pattern it was created with); a new durable is saved at once,
    /// so a restart before its first ack resumes from its start, not from "new".
    fn starting_point(
        &self,
        name: &str,
        pattern: &Pattern,
        options: &SubscribeOptions,
    ) -> Result<Start, BusError> {
        let saved = if options.durable.is_some() {
            self.states.load(name).map_err(BusError::Internal)?
        } else {
            None
        };
        if let Some(saved) = &saved
            && saved.pattern != pattern.as_str()
        {
            return Err(durable_pattern_mismatch(name));
        }
        let dlq_topic = match (&options.dead_letter_topic, &saved) {
            (Some(topic), _) => topic.clone(),
            (None, Some(saved)) => Topic::new(&saved.dlq_topic)
                .map_err(|e| BusError::Internal(format!("saved dead-letter topic {e}")))?,
            (None, None) => dlq::default_topic(name).ok_or_else(|| {
                BusError::invalid("subscription", "name does not make a valid topic")
            })?,
        };
        if let Some(saved) = saved {
            return Ok(Start {
                dlq_topic,
                resumed: true,
                cursor: saved.floor,
                done: saved.done,
                attempts: saved.attempts,
            });
        }
        let cursor = self.start_seq(options.start)?;
        if options.durable.is_some() {
            let state = state::DurableState {
                pattern: pattern.to_string(),
                dlq_topic: dlq_topic.to_string(),
                floor: cursor,
                done: Default::default(),
                attempts: Default::default(),
            };
            self.states
                .save(name, &state)
                .map_err(|e| BusError::Unavailable(format!("saving durable {name:?}: {e}")))?;
        }
        Ok(Start {
            dlq_topic,
            resumed: false,
            cursor,
            done: Default::default(),
            attempts: Default::default(),
        })
    }
}

/// A subscriber about to join a consumer: its id, where its deliveries go, and what
/// they hold in bytes.
struct Joining {
    id: SubscriptionId,
    tx: mpsc::Sender<ganglion_core::bus::Chunk>,
    queued: Arc<QueuedBytes>,
}

impl Joining {
    fn member(self, control: Arc<dyn SubscriptionControl>) -> Member {
        Member {
            id: self.id,
            tx: self.tx,
            control,
            queued: self.queued,
        }
    }
}

/// Starts the consumer `key` (registered under the registry's lock, as routing runs:
/// what was routed before now, below `routed_below`, it reads from the log; the rest
/// comes to it through its route) with `joining` as its first member.
fn start_consumer(
    core: &Arc<Core>,
    registry: &mut Registry,
    key: &str,
    name: &str,
    pattern: Pattern,
    options: &SubscribeOptions,
    joining: Joining,
) -> Result<Arc<dyn SubscriptionControl>, BusError> {
    let id = joining.id;
    let Start {
        dlq_topic,
        resumed,
        cursor,
        done,
        attempts,
    } = core.starting_point(name, &pattern, options)?;
    // A durable that was away picks its counters up again.
    let counters = options
        .durable
        .as_ref()
        .and_then(|name| registry.parked.remove(name))
        .map(|parked| parked.counters)
        .unwrap_or_default();
    let consumer_shared = Arc::new(ConsumerShared::new(
        core.options.ephemeral_buffer,
        core.options.subscriber_buffer_bytes,
        options.durable.is_some(),
        counters,
    ));
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (ephemeral_tx, ephemeral_rx) = mpsc::unbounded_channel();
    let control: Arc<dyn SubscriptionControl> = Arc::new(MemberControl {
        control: control_tx.clone(),
        shared: consumer_shared.clone(),
    });
    // Registered under the registry's lock, as routing runs: what was routed before
    // now (below `routed_below`) the consumer reads from the log; the rest comes to
    // it through its route.
    let route = Arc::new(route::Route::new(core.options.routed_queue));
    let spec = ConsumerSpec {
        name: name.to_owned(),
        pattern: pattern.clone(),
        options: options.clone(),
        dlq_topic: dlq_topic.clone(),
        durable: options.durable.is_some(),
        route: route.clone(),
        routed_below: core.routed_below.load(Ordering::Acquire),
        cursor,
        resumed,
        done,
        attempts,
        first_member: joining.member(control.clone()),
    };
    let (finished_tx, finished) = watch::channel(false);
    let consumer = Consumer::new(core.clone(), spec, consumer_shared.clone());
    tokio::spawn(async move {
        consumer.run(control_rx, ephemeral_rx).await;
        finished_tx.send_replace(true);
    });
    registry.index.insert(&pattern, key.to_owned());
    registry.consumers.insert(
        key.to_owned(),
        Entry {
            name: name.to_owned(),
            pattern,
            queue_group: options.queue_group.clone(),
            dlq_topic,
            control: control_tx,
            ephemeral: ephemeral_tx,
            members: HashSet::from([id]),
            finished,
            shared: consumer_shared,
            cut_off: false,
            route,
        },
    );
    Ok(control)
}
