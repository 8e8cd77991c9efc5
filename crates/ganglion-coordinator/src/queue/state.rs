//! A request queue's state: who waits, who is taken, answers, idempotency keys and the
//! cache; as records for a store, and rebuilt from them.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::{Outcome, QueueRecord, QueueStore};
use crate::RequestId;

/// Answers (and cache entries) kept at most, whatever their retention.
const MAX_ANSWERS: usize = 100_000;

pub(super) fn content_key(request: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    request.hash(&mut h);
    h.finish()
}

#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub(super) id: RequestId,
    pub(super) priority: i32,
    pub(super) component: Arc<str>,
    pub(super) key: u64,
    pub(super) request: Bytes,
    /// Taken before, and not completed within the take timeout.
    pub(super) retaken: bool,
    /// The worker that took it last (not kept across restarts).
    pub(super) taken_by: Option<Arc<str>>,
}

/// A request a worker took and has not completed.
#[derive(Debug)]
pub(super) struct InProgress {
    pub(super) pending: Pending,
    /// Back in line at this time (monotonic) unless completed.
    pub(super) until: Duration,
}

#[derive(Debug)]
pub(super) struct Cached {
    pub(super) request: Bytes,
    pub(super) response: Bytes,
    pub(super) expires_at: u64,
}

impl Cached {
    pub(super) fn record(&self) -> QueueRecord {
        QueueRecord::Cached {
            expires_at_micros: self.expires_at,
            request: self.request.clone(),
            response: self.response.clone(),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Inner {
    pub(super) next_id: u64,
    pub(super) pending: Vec<Pending>,
    /// Content key → the id answering for it (queued or in progress).
    pub(super) in_flight: HashMap<u64, RequestId>,
    /// Follower id → leader id.
    pub(super) follows: HashMap<RequestId, RequestId>,
    /// id → outcome, once known (a watch per id so `get_response` can wait).
    pub(super) outcomes: HashMap<RequestId, watch::Sender<Option<Outcome>>>,
    /// id → the request, while taken.
    pub(super) taken: HashMap<RequestId, InProgress>,
    pub(super) cache: HashMap<u64, Cached>,
    pub(super) idempotency: HashMap<String, RequestId>,
    /// When each answered id was answered, oldest first: answers (and their followers
    /// and idempotency keys) are kept for `retention`, then forgotten.
    pub(super) answered_at: VecDeque<(u64, RequestId)>,
    /// id → the component that submitted it, while its answer is kept.
    pub(super) submitters: HashMap<RequestId, Arc<str>>,
    /// Bytes of the requests waiting or in progress.
    pub(super) bytes: usize,
    /// Where changes are kept between runs; `None`: in memory only.
    pub(super) store: Option<Box<dyn QueueStore>>,
    /// The last write to the store failed: it is rewritten before anything new goes in.
    pub(super) store_failed: bool,
}

impl Inner {
    /// Makes `records` durable first when there is a store; compacts it when it has
    /// grown (a failed compaction is only logged: the records are kept already).
    pub(super) fn keep(
        &mut self,
        queue: &str,
        records: &[QueueRecord],
    ) -> Result<(), crate::CoordinatorError> {
        if self.store.is_none() {
            return Ok(());
        }
        if self.store_failed {
            self.rewrite()?;
        }
        let store = self.store.as_mut().expect("checked above");
        if let Err(error) = store.append(records) {
            self.store_failed = true;
            return Err(error);
        }
        if store.wants_compaction()
            && let Err(error) = self.rewrite()
        {
            tracing::warn!(queue, %error, "cannot compact the request queue's store");
        }
        Ok(())
    }

    /// Replaces what the store holds with the live state.
    pub(super) fn rewrite(&mut self) -> Result<(), crate::CoordinatorError> {
        let live = self.snapshot();
        let Some(store) = self.store.as_mut() else {
            return Ok(());
        };
        let result = store.replace(&live);
        self.store_failed = result.is_err();
        result
    }

    /// The live state as records (what a compaction writes).
    fn snapshot(&self) -> Vec<QueueRecord> {
        let keys: HashMap<RequestId, &str> = self
            .idempotency
            .iter()
            .map(|(k, id)| (*id, k.as_str()))
            .collect();
        let key = |id: &RequestId| keys.get(id).map(|k| (*k).to_owned());
        let mut records = Vec::new();
        let mut pending: Vec<&Pending> = self
            .pending
            .iter()
            .chain(self.taken.values().map(|t| &t.pending))
            .collect();
        pending.sort_by_key(|p| p.id);
        for p in pending {
            records.push(waiting(p, key(&p.id)));
        }
        for (id, component) in &self.submitters {
            records.push(QueueRecord::Submitted {
                id: *id,
                component: component.to_string(),
            });
        }
        for (follower, leader) in &self.follows {
            records.push(QueueRecord::Joined {
                id: *follower,
                leader: *leader,
                idempotency_key: key(follower),
            });
        }
        for &(at, id) in &self.answered_at {
            if let Some(Some(outcome)) = self.outcomes.get(&id).map(|tx| tx.borrow().clone()) {
                records.push(QueueRecord::Answered {
                    id,
                    at_micros: at,
                    outcome,
                });
                if let Some(idempotency_key) = key(&id) {
                    records.push(QueueRecord::Key {
                        id,
                        idempotency_key,
                    });
                }
            }
        }
        records.extend(self.cache.values().map(Cached::record));
        records
    }

    /// Takes in one record a store kept, in order; returns the id it names, if any.
    pub(super) fn apply(&mut self, record: QueueRecord) -> Option<RequestId> {
        match record {
            QueueRecord::Waiting {
                id,
                priority,
                component,
                idempotency_key,
                request,
            } => {
                if let Some(key) = idempotency_key {
                    self.idempotency.insert(key, id);
                }
                self.wait(id, priority, component.into(), request);
                Some(id)
            }
            QueueRecord::Joined {
                id,
                leader,
                idempotency_key,
            } => {
                self.follows.insert(id, leader);
                if let Some(key) = idempotency_key {
                    self.idempotency.insert(key, id);
                }
                Some(id)
            }
            QueueRecord::Answered {
                id,
                at_micros,
                outcome,
            } => {
                if let Some(at) = self.pending.iter().position(|p| p.id == id) {
                    let p = self.pending.swap_remove(at);
                    self.in_flight.remove(&p.key);
                    self.bytes -= p.request.len();
                }
                self.outcomes.insert(id, watch::channel(Some(outcome)).0);
                self.answered_at.push_back((at_micros, id));
                Some(id)
            }
            QueueRecord::Key {
                id,
                idempotency_key,
            } => {
                self.idempotency.insert(idempotency_key, id);
                None
            }
            QueueRecord::Submitted { id, component } => {
                self.submitters.insert(id, component.into());
                None
            }
            QueueRecord::Cached {
                expires_at_micros,
                request,
                response,
            } => {
                self.cache.insert(
                    content_key(&request),
                    Cached {
                        request,
                        response,
                        expires_at: expires_at_micros,
                    },
                );
                None
            }
        }
    }

    /// Puts a journalled request back in line (taken or not, it is taken again).
    fn wait(&mut self, id: RequestId, priority: i32, component: Arc<str>, request: Bytes) {
        let content = content_key(&request);
        self.in_flight.insert(content, id);
        self.outcomes.insert(id, watch::channel(None).0);
        self.submitters.insert(id, component.clone());
        self.bytes += request.len();
        self.pending.push(Pending {
            id,
            priority,
            component,
            key: content,
            request,
            retaken: true,
            taken_by: None,
        });
    }

    /// Forgets answers answered before `horizon` (and expired cache entries, as of
    /// `now`); keeps at most [`MAX_ANSWERS`] of each.
    pub(super) fn prune(&mut self, horizon: u64, now: u64) {
        while let Some(&(at, id)) = self.answered_at.front() {
            if at > horizon && self.answered_at.len() <= MAX_ANSWERS {
                break;
            }
            self.answered_at.pop_front();
            self.outcomes.remove(&id);
        }
        let Inner {
            outcomes,
            follows,
            idempotency,
            cache,
            submitters,
            ..
        } = self;
        follows.retain(|_, leader| outcomes.contains_key(leader));
        submitters.retain(|id, _| outcomes.contains_key(id) || follows.contains_key(id));
        idempotency.retain(|_, id| outcomes.contains_key(id) || follows.contains_key(id));
        cache.retain(|_, c| c.expires_at > now);
        if cache.len() > MAX_ANSWERS {
            let mut expiries: Vec<u64> = cache.values().map(|c| c.expires_at).collect();
            expiries.sort_unstable();
            let keep_from = expiries[cache.len() - MAX_ANSWERS];
            cache.retain(|_, c| c.expires_at >= keep_from);
        }
    }
}

/// The record of `p` waiting in line.
pub(super) fn waiting(p: &Pending, idempotency_key: Option<String>) -> QueueRecord {
    QueueRecord::Waiting {
        id: p.id,
        priority: p.priority,
        component: p.component.to_string(),
        idempotency_key,
        request: p.request.clone(),
    }
}
