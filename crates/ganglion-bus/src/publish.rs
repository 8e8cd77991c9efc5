//! Publishing: checking events, deduplicating, appending the durable ones to the log and
//! handing ephemeral ones to the consumers connected now.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use ganglion_core::bus::{PublishAck, StorageClass};
use ganglion_core::{BusError, Event, Topic};

use crate::consumer::Control;
use crate::dedupe::Check;
use crate::{
    Core, EphemeralTarget, MAX_FIELD_BYTES, MAX_HEADERS, TopicStats, codec, lock, log_error,
};

/// The idempotency keys of one publication: those it reserved (key → first event
/// with it) and events that repeat an earlier event's key in the same publication.
#[derive(Debug, Default)]
struct Keys {
    reserved: HashMap<String, usize>,
    same_as: Vec<(usize, usize)>,
}

/// Checks one event to publish and fills in its id and timestamp.
fn prepare(i: usize, event: &mut Event, now_ms: u64, max_bytes: usize) -> Result<(), BusError> {
    let field = |name: &str| format!("events[{i}].{name}");
    for (name, len) in [
        ("id", event.id.len()),
        ("type", event.event_type.len()),
        ("source", event.source.len()),
        ("content_type", event.content_type.len()),
    ] {
        if len > MAX_FIELD_BYTES {
            return Err(BusError::invalid(
                field(name),
                format!("is {len} bytes; at most {MAX_FIELD_BYTES} are allowed"),
            ));
        }
    }
    if event.headers.len() > MAX_HEADERS {
        return Err(BusError::invalid(
            field("headers"),
            format!(
                "has {} headers; at most {MAX_HEADERS} are allowed",
                event.headers.len()
            ),
        ));
    }
    for name in event.headers.keys() {
        if name.is_empty() || name.len() > MAX_FIELD_BYTES {
            return Err(BusError::invalid(
                field("headers"),
                format!(
                    "header names must be 1 to {MAX_FIELD_BYTES} bytes; got {:?}",
                    name
                ),
            ));
        }
    }
    if event.size() > max_bytes {
        return Err(BusError::TooLarge {
            field: field("payload"),
            size: event.size(),
            limit: max_bytes,
        });
    }
    if event.timestamp_ms == 0 {
        event.timestamp_ms = now_ms;
    }
    event.seq = 0;
    Ok(())
}

impl Core {
    /// Publishes prepared events; the bus's own publications (dead letters, redrives)
    /// come through here too.
    pub(crate) async fn publish_internal(
        &self,
        mut events: Vec<Event>,
    ) -> Result<Vec<PublishAck>, BusError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        if events.is_empty() {
            return Err(BusError::invalid(
                "events",
                "at least one event is required",
            ));
        }
        let now_ms = self.clock.now_micros() / 1000;
        // Published while handling another event: carry its correlation and trace on
        // (before the checks: the headers added count against the limits). The publish
        // spans (when traced) end once the events are durable and routed.
        let _spans = ganglion_core::trace::publishing(&mut events);
        for (i, event) in events.iter_mut().enumerate() {
            prepare(i, event, now_ms, self.options.max_event_bytes)?;
        }
        let classes = self.classify(&events);
        let mut acks: Vec<Option<PublishAck>> = vec![None; events.len()];
        let keys = self.reserve_keys(&events, &classes, &mut acks).await;
        let duplicates: HashSet<usize> = keys.same_as.iter().map(|(i, _)| *i).collect();
        let to_log: Vec<usize> = (0..events.len())
            .filter(|&i| {
                classes[i] == StorageClass::Durable && acks[i].is_none() && !duplicates.contains(&i)
            })
            .collect();
        if !to_log.is_empty() {
            self.append(&mut events, &to_log, &keys.reserved, &mut acks)
                .await?;
        }
        for (i, first) in keys.same_as {
            acks[i] = acks[first].clone().map(|a| PublishAck {
                duplicate: true,
                ..a
            });
        }
        let mut logged = Vec::with_capacity(to_log.len());
        let mut ephemeral = Vec::new();
        for (i, event) in events.into_iter().enumerate() {
            if classes[i] == StorageClass::Ephemeral {
                acks[i] = Some(PublishAck {
                    seq: 0,
                    id: event.id.clone(),
                    duplicate: false,
                });
                ephemeral.push(Arc::new(event));
            } else if event.seq != 0 {
                logged.push(Arc::new(event));
            }
        }
        if !logged.is_empty() {
            self.count_dead_letters(logged.iter().map(|e| &**e));
            self.recent.add(logged);
        }
        if !ephemeral.is_empty() {
            self.route_ephemeral(ephemeral).await;
        }
        Ok(acks
            .into_iter()
            .map(|a| a.expect("every event was acknowledged"))
            .collect())
    }

    /// Each event's storage class (events of one topic usually come in runs: each run
    /// is classified once).
    fn classify(&self, events: &[Event]) -> Vec<StorageClass> {
        let mut run: Option<(&Topic, StorageClass)> = None;
        events
            .iter()
            .map(|e| match run {
                Some((topic, class)) if *topic == e.topic => class,
                _ => {
                    let class = self.options.storage_class(&e.topic);
                    run = Some((&e.topic, class));
                    class
                }
            })
            .collect()
    }

    /// Idempotency keys of the durable events: reserves new ones, answers duplicates of
    /// earlier publications in `acks`, and waits out keys another publication has in
    /// flight (holding no reservation meanwhile).
    async fn reserve_keys(
        &self,
        events: &[Event],
        classes: &[StorageClass],
        acks: &mut [Option<PublishAck>],
    ) -> Keys {
        let mut keys = Keys::default();
        loop {
            let mut waits = Vec::new();
            {
                let now = self.clock.now_micros();
                let mut dedupe = lock(&self.dedupe);
                for (i, event) in events.iter().enumerate() {
                    if classes[i] != StorageClass::Durable || acks[i].is_some() {
                        continue;
                    }
                    let Some(key) = event.idempotency_key() else {
                        continue;
                    };
                    if let Some(&first) = keys.reserved.get(key) {
                        if first != i && !keys.same_as.contains(&(i, first)) {
                            keys.same_as.push((i, first));
                        }
                        continue;
                    }
                    match dedupe.check(key, now) {
                        Check::Reserved => {
                            keys.reserved.insert(key.to_owned(), i);
                        }
                        Check::Duplicate(ack) => acks[i] = Some(ack),
                        Check::Wait(settled) => waits.push(settled),
                    }
                }
                if !waits.is_empty() {
                    // Never hold reservations while waiting for someone else's.
                    for key in keys.reserved.keys() {
                        dedupe.settle(key, None);
                    }
                    keys = Keys::default();
                }
            }
            if waits.is_empty() {
                return keys;
            }
            for mut settled in waits {
                let _ = settled.wait_for(|done| *done).await;
            }
        }
    }

    /// Appends `events[to_log]` to the log in one append; fills in their sequences and
    /// acks, settles their reserved keys (released if the append fails) and counts them
    /// per topic.
    async fn append(
        &self,
        events: &mut [Event],
        to_log: &[usize],
        reserved: &HashMap<String, usize>,
        acks: &mut [Option<PublishAck>],
    ) -> Result<(), BusError> {
        let records: Vec<Bytes> = to_log.iter().map(|&i| codec::encode(&events[i])).collect();
        let lens: Vec<u64> = if self.retention.counts() {
            records.iter().map(|r| r.len() as u64).collect()
        } else {
            Vec::new()
        };
        let result = self.log.append(records).await;
        let mut dedupe = lock(&self.dedupe);
        let ack = match result {
            Ok(ack) => ack,
            Err(e) => {
                for key in reserved.keys() {
                    dedupe.settle(key, None);
                }
                return Err(log_error(e));
            }
        };
        if !lens.is_empty() {
            self.retention.record(
                to_log.iter().zip(&lens).enumerate().map(|(n, (&i, &len))| {
                    (events[i].topic.as_str(), ack.first_seq + n as u64, len)
                }),
            );
        }
        let expires = ack.timestamp_micros + self.options.dedupe_window.as_micros() as u64;
        let mut topics = lock(&self.topics);
        for (n, &i) in to_log.iter().enumerate() {
            let seq = ack.first_seq + n as u64;
            let published = PublishAck {
                seq,
                id: events[i].id.clone(),
                duplicate: false,
            };
            if let Some(key) = events[i].idempotency_key() {
                dedupe.settle(key, Some((published.clone(), expires)));
            }
            acks[i] = Some(published);
            events[i].seq = seq;
            let stats = topics.entry(events[i].topic.clone()).or_default();
            stats.events += 1;
            stats.last_seq = seq;
            if stats.first_seq == 0 {
                stats.first_seq = seq;
            }
        }
        Ok(())
    }

    /// Hands ephemeral events to the consumers whose pattern matches. A consumer whose
    /// queue is full slows the publisher down for up to `slow_consumer_grace`; if it
    /// still has no room, its subscribers are closed as too slow.
    pub(crate) async fn route_ephemeral(&self, events: Vec<Arc<Event>>) {
        let targets = self.ephemeral_targets(events);
        for (key, tx, shared, mut events) in targets {
            while !events.is_empty() {
                // As many events as the consumer's buffer takes at once (at least one).
                let (mut take, mut cost) = (0, 0);
                for event in &events {
                    let c = shared.ephemeral_cost(event);
                    if take > 0 && cost + c > shared.ephemeral_budget {
                        break;
                    }
                    take += 1;
                    cost += c;
                }
                let rest = events.split_off(take);
                let units = u32::try_from(cost).unwrap_or(u32::MAX);
                let permits = &shared.ephemeral_permits;
                let granted = match permits.try_acquire_many(units) {
                    Ok(permit) => Some(permit),
                    Err(tokio::sync::TryAcquireError::Closed) => None,
                    Err(tokio::sync::TryAcquireError::NoPermits) => {
                        let deadline = self.clock.monotonic() + self.options.slow_consumer_grace;
                        tokio::select! {
                            permit = permits.acquire_many(units) => permit.ok(),
                            _ = self.clock.sleep_until(deadline) => {
                                self.cut_off_slow(&key);
                                None
                            }
                        }
                    }
                };
                let Some(permit) = granted else { break };
                // The consumer returns the permits as the events leave it.
                permit.forget();
                if tx.send(events).is_err() {
                    break;
                }
                events = rest;
            }
        }
    }

    /// The consumers `events` go to, each with its events in order (under the topic and
    /// registry locks: counts the topics, matches each run of one topic once).
    fn ephemeral_targets(&self, events: Vec<Arc<Event>>) -> Vec<EphemeralTarget> {
        let mut targets: Vec<EphemeralTarget> = Vec::new();
        let mut topics = lock(&self.topics);
        let registry = lock(&self.registry);
        // Events of one topic usually come in runs: match each run once.
        let mut last_topic: Option<Topic> = None;
        let mut stats: Option<&mut TopicStats> = None;
        let mut matched: Vec<usize> = Vec::new();
        for event in events {
            if last_topic.as_ref() != Some(&event.topic) {
                let s = topics.entry(event.topic.clone()).or_default();
                s.storage = StorageClass::Ephemeral;
                stats = Some(s);
                last_topic = Some(event.topic.clone());
                matched.clear();
                registry.index.for_each_match(&event.topic, |key| {
                    if let Some(i) = targets.iter().position(|t| t.0 == *key) {
                        matched.push(i);
                    } else if let Some(entry) = registry.consumers.get(key).filter(|e| !e.cut_off) {
                        let target = (
                            key.clone(),
                            entry.ephemeral.clone(),
                            entry.shared.clone(),
                            Vec::new(),
                        );
                        targets.push(target);
                        matched.push(targets.len() - 1);
                    }
                });
            }
            if let Some(s) = stats.as_deref_mut() {
                s.events += 1;
            }
            // The last consumer takes the event itself: a lone subscriber costs no
            // reference count.
            if let Some((&last, others)) = matched.split_last() {
                for &i in others {
                    targets[i].3.push(event.clone());
                }
                targets[last].3.push(event);
            }
        }
        targets
    }

    pub(crate) fn cut_off_slow(&self, key: &str) {
        let mut registry = lock(&self.registry);
        if let Some(entry) = registry.consumers.get_mut(key)
            && !entry.cut_off
        {
            entry.cut_off = true;
            let reason = format!(
                "slow consumer: its buffer of ephemeral events ({} events or {} bytes) stayed full for more than {} ms",
                self.options.ephemeral_buffer,
                self.options.subscriber_buffer_bytes,
                self.options.slow_consumer_grace.as_millis()
            );
            let _ = entry.control.send(Control::CutOff(reason));
        }
    }
}
