//! A rate-limited request queue (the seeds' Claude queue): components submit requests
//! and collect responses later; workers take a request only when the queue's quota
//! grants a call.
//!
//! - **Cache**: a successful response is cached by the request's content for
//!   `cache_ttl` (default 1 h); a submit that hits it is answered at once.
//! - **Single flight**: a request identical to one queued or in progress joins it, so
//!   50 identical concurrent misses make one upstream call.
//! - **Idempotency**: a submit repeating an `idempotency_key` gets the first one's id.
//! - **Fallback**: when the quota is used up, a request that carries a fallback is
//!   answered at once from the cache or with its fallback, marked `degraded`, rather
//!   than waiting.
//! - **Order and shares**: workers take the highest priority first; among equal
//!   priorities, the request whose *submitting* component is furthest below its share
//!   of the quota (so a component that submits a thousand requests does not starve one
//!   that submits ten), then the oldest. The quota's grant for the call is the
//!   submitting component's, so shares and reservations apply to who asked, not to who
//!   does the work.
//! - **Take timeout**: a request taken but not completed within `take_timeout` (default
//!   5 min; the worker crashed, or hangs) goes back in line, at its priority, to be taken
//!   again (with a new quota grant). The first completion answers it, even a late one
//!   from the first worker; any later completion is refused as not taken.
//! - **Bounded**: at most `max_pending` requests and `max_bytes` of them wait or are in
//!   progress; a submit beyond is refused (RESOURCE_EXHAUSTED) with a retry-after.
//! - **Restarts**: with a store ([`RequestQueue::with_store`]; [`RequestQueue::persisted_in`]
//!   is the journal in a directory), every submit and completion is kept before it is
//!   acknowledged; on restart the requests waiting are back
//!   in line, those that were taken too (a worker's answer to one is still accepted),
//!   and answers, idempotency keys and cache entries are kept for their retention.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use ganglion_core::Clock;
use tokio::sync::{Notify, watch};

use crate::quota::Quota;
use crate::{CoordinatorError, RequestId};

mod state;
mod store;
mod take;
mod types;

pub use store::{FileQueueStore, QueueRecord, QueueStore};
pub use types::{
    ANONYMOUS, DEFAULT_MAX_BYTES, DEFAULT_MAX_PENDING, DEFAULT_TAKE_TIMEOUT, Outcome, Submission,
    Taken,
};

use state::{Cached, Inner, Pending, content_key};

/// A named request queue.
#[derive(Debug)]
pub struct RequestQueue {
    name: String,
    quota: Arc<Quota>,
    cache_ttl: Duration,
    take_timeout: Duration,
    max_pending: usize,
    max_bytes: usize,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    work: Notify,
}

impl RequestQueue {
    /// A queue whose workers are paced by `quota`, kept in memory.
    pub fn new(
        name: impl Into<String>,
        quota: Arc<Quota>,
        cache_ttl: Duration,
        clock: Arc<dyn Clock>,
    ) -> RequestQueue {
        RequestQueue {
            name: name.into(),
            quota,
            cache_ttl,
            take_timeout: DEFAULT_TAKE_TIMEOUT,
            max_pending: DEFAULT_MAX_PENDING,
            max_bytes: DEFAULT_MAX_BYTES,
            clock,
            inner: Mutex::new(Inner {
                next_id: 1,
                ..Inner::default()
            }),
            work: Notify::new(),
        }
    }

    /// A taken request goes back in line after `take_timeout` without a completion.
    pub fn with_take_timeout(mut self, take_timeout: Duration) -> RequestQueue {
        self.take_timeout = take_timeout;
        self
    }

    /// At most `max_pending` requests, and `max_bytes` of them, wait or are in progress.
    pub fn with_limits(mut self, max_pending: usize, max_bytes: usize) -> RequestQueue {
        self.max_pending = max_pending.max(1);
        self.max_bytes = max_bytes.max(1);
        self
    }

    /// Journals the queue in `dir/<name>.queue`, and restores what is there (see
    /// [`RequestQueue::with_store`]).
    pub fn persisted_in(self, dir: &Path) -> Result<RequestQueue, CoordinatorError> {
        let store = FileQueueStore::new(dir, &self.name);
        self.with_store(Box::new(store))
    }

    /// Keeps the queue in `store`, and restores what is there: requests back in line
    /// (taken ones too), answers, idempotency keys and cache entries within their
    /// retention.
    pub fn with_store(
        self,
        mut store: Box<dyn QueueStore>,
    ) -> Result<RequestQueue, CoordinatorError> {
        let records = store.load()?;
        {
            let mut inner = self.lock();
            let max_id = records
                .into_iter()
                .filter_map(|record| inner.apply(record))
                .max()
                .map_or(0, |id| id.0);
            inner.next_id = inner.next_id.max(max_id + 1);
            inner.answered_at.make_contiguous().sort_unstable();
            self.prune(&mut inner);
            inner.store = Some(store);
            if let Err(error) = inner.rewrite() {
                // A full disk: what was restored is served; submits are refused until
                // the store can be written.
                tracing::error!(queue = %self.name, %error, "cannot write the request queue's store: submits are refused until it can be");
            }
            if !inner.pending.is_empty() {
                tracing::info!(queue = %self.name, waiting = inner.pending.len(), "requests restored: back in line");
            }
        }
        Ok(self)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cached(&self, inner: &mut Inner, key: u64, request: &[u8]) -> Option<Bytes> {
        let now = self.clock.now_micros();
        match inner.cache.get(&key) {
            Some(c) if c.expires_at > now && c.request == request => Some(c.response.clone()),
            Some(c) if c.expires_at <= now => {
                inner.cache.remove(&key);
                None
            }
            _ => None,
        }
    }

    /// Records an answer to `id` (kept first, after the records in `before`).
    fn answer(
        &self,
        inner: &mut Inner,
        id: RequestId,
        outcome: Outcome,
        mut before: Vec<QueueRecord>,
    ) -> Result<(), CoordinatorError> {
        let at = self.clock.now_micros();
        before.push(QueueRecord::Answered {
            id,
            at_micros: at,
            outcome: outcome.clone(),
        });
        inner.keep(&self.name, &before)?;
        match inner.outcomes.get(&id) {
            Some(tx) => {
                tx.send_replace(Some(outcome));
            }
            None => {
                inner.outcomes.insert(id, watch::channel(Some(outcome)).0);
            }
        }
        inner.answered_at.push_back((at, id));
        Ok(())
    }

    /// Forgets answers older than the retention (the cache TTL, at least an hour), and
    /// expired cache entries; keeps at most [`MAX_ANSWERS`] of each.
    fn prune(&self, inner: &mut Inner) {
        let retention = self.cache_ttl.max(Duration::from_secs(3600));
        let now = self.clock.now_micros();
        let horizon = now.saturating_sub(u64::try_from(retention.as_micros()).unwrap_or(u64::MAX));
        inner.prune(horizon, now);
    }

    /// Queues `submission`; returns its id. See the module docs for what is answered at
    /// once (cache, single flight, idempotency, fallback) and what is refused.
    pub fn submit(&self, submission: Submission) -> Result<RequestId, CoordinatorError> {
        let Submission {
            request,
            priority,
            component,
            idempotency_key,
            fallback,
        } = submission;
        let component = component_named(&component)?;
        let mut inner = self.lock();
        if inner.answered_at.len() > 1024 || inner.cache.len() > 4096 {
            self.prune(&mut inner);
        }
        let idempotency_key = idempotency_key.as_deref();
        if let Some(key) = idempotency_key {
            if key.is_empty() || key.len() > 256 {
                return Err(CoordinatorError::invalid(
                    "idempotency_key",
                    "must be 1 to 256 bytes",
                ));
            }
            if let Some(&id) = inner.idempotency.get(key) {
                return Ok(id);
            }
        }
        let id = RequestId(inner.next_id);
        let key = content_key(&request);
        let mut key_records = vec![QueueRecord::Submitted {
            id,
            component: component.to_string(),
        }];
        key_records.extend(idempotency_key.map(|k| QueueRecord::Key {
            id,
            idempotency_key: k.to_owned(),
        }));
        if let Some(response) = self.cached(&mut inner, key, &request) {
            tracing::debug!(queue = %self.name, %id, "answered from the cache");
            let outcome = Outcome {
                response: Ok(response),
                cached: true,
                degraded: false,
            };
            self.answer(&mut inner, id, outcome, key_records)?;
        } else if let Some(fallback) = fallback.filter(|_| {
            let status = self.quota.status();
            status.remaining == 0 || !status.suspended_for.is_zero()
        }) {
            tracing::info!(queue = %self.name, %id, "quota used up: answered with the fallback, degraded");
            let outcome = Outcome {
                response: Ok(fallback),
                cached: false,
                degraded: true,
            };
            self.answer(&mut inner, id, outcome, key_records)?;
        } else {
            let pending = Pending {
                id,
                priority,
                component: component.clone(),
                key,
                request,
                retaken: false,
                taken_by: None,
            };
            self.enqueue(&mut inner, pending, idempotency_key)?;
        }
        inner.next_id += 1;
        inner.submitters.insert(id, component);
        if let Some(k) = idempotency_key {
            inner.idempotency.insert(k.to_owned(), id);
        }
        Ok(id)
    }

    /// Joins `pending` to an identical request in flight, or puts it in line if there
    /// is room.
    fn enqueue(
        &self,
        inner: &mut Inner,
        pending: Pending,
        idempotency_key: Option<&str>,
    ) -> Result<(), CoordinatorError> {
        let (id, key) = (pending.id, pending.key);
        if let Some(&leader) = inner.in_flight.get(&key) {
            tracing::debug!(queue = %self.name, %id, %leader, "joined an identical request in flight");
            let records = [
                QueueRecord::Submitted {
                    id,
                    component: pending.component.to_string(),
                },
                QueueRecord::Joined {
                    id,
                    leader,
                    idempotency_key: idempotency_key.map(str::to_owned),
                },
            ];
            inner.keep(&self.name, &records)?;
            inner.follows.insert(id, leader);
            return Ok(());
        }
        let waiting = inner.pending.len() + inner.taken.len();
        if waiting >= self.max_pending || inner.bytes + pending.request.len() > self.max_bytes {
            return Err(CoordinatorError::ResourceExhausted {
                what: format!(
                    "queue {} is full ({waiting} requests, {} bytes waiting)",
                    self.name, inner.bytes
                ),
                retry_after: Duration::from_secs(1),
            });
        }
        let record = state::waiting(&pending, idempotency_key.map(str::to_owned));
        inner.keep(&self.name, &[record])?;
        inner.bytes += pending.request.len();
        inner.in_flight.insert(key, id);
        inner.outcomes.insert(id, watch::channel(None).0);
        inner.pending.push(pending);
        self.work.notify_one();
        Ok(())
    }

    /// The outcome of request `id`, waiting up to `wait`; `Ok(None)` if still pending.
    pub async fn get_response(
        &self,
        id: RequestId,
        wait: Duration,
    ) -> Result<Option<Outcome>, CoordinatorError> {
        crate::check_wait(wait)?;
        let mut rx = {
            let inner = self.lock();
            let leader = inner.follows.get(&id).copied().unwrap_or(id);
            match inner.outcomes.get(&leader) {
                Some(tx) => tx.subscribe(),
                None => {
                    return Err(CoordinatorError::NotFound {
                        what: format!("request {id} in queue {}", self.name),
                    });
                }
            }
        };
        if let Some(outcome) = rx.borrow().clone() {
            return Ok(Some(outcome));
        }
        let deadline = self.clock.monotonic() + wait;
        tokio::select! {
            changed = rx.wait_for(Option::is_some) => Ok(changed.ok().and_then(|o| o.clone())),
            _ = self.clock.sleep_until(deadline) => Ok(None),
        }
    }

    /// Answers a taken request (and every identical one that joined it). The first
    /// completion answers; one for a request not taken, or already answered, is
    /// `NotFound`.
    pub fn complete(
        &self,
        id: RequestId,
        response: Result<Bytes, String>,
    ) -> Result<(), CoordinatorError> {
        let mut inner = self.lock();
        let in_line = inner.pending.iter().position(|p| p.id == id && p.retaken);
        let request = match (inner.taken.get(&id), in_line) {
            (Some(t), _) => t.pending.clone(),
            // Back in line after its take timed out (or a restart), and answered before
            // anyone took it again: the answer stands.
            (None, Some(at)) => inner.pending[at].clone(),
            (None, None) => {
                return Err(CoordinatorError::NotFound {
                    what: format!("taken request {id} in queue {}", self.name),
                });
            }
        };
        let cached = response.as_ref().ok().map(|body| Cached {
            request: request.request.clone(),
            response: body.clone(),
            expires_at: self
                .clock
                .now_micros()
                .saturating_add(u64::try_from(self.cache_ttl.as_micros()).unwrap_or(u64::MAX)),
        });
        let cache_record = cached.iter().map(Cached::record).collect();
        let outcome = Outcome {
            response,
            cached: false,
            degraded: false,
        };
        self.answer(&mut inner, id, outcome, cache_record)?;
        if inner.taken.remove(&id).is_none()
            && let Some(at) = inner.pending.iter().position(|p| p.id == id)
        {
            inner.pending.swap_remove(at);
        }
        inner.bytes -= request.request.len();
        inner.in_flight.remove(&request.key);
        if let Some(cached) = cached {
            inner.cache.insert(request.key, cached);
        }
        Ok(())
    }

    /// The component that submitted request `id`, while its answer is kept (unknown for
    /// requests journalled before submitters were recorded).
    pub fn submitter(&self, id: RequestId) -> Option<String> {
        self.lock().submitters.get(&id).map(|c| c.to_string())
    }

    /// The worker that took request `id` last, if it is taken, or back in line after a
    /// take that timed out (whose answer is still accepted).
    pub fn taken_by(&self, id: RequestId) -> Option<String> {
        let inner = self.lock();
        let pending = inner
            .taken
            .get(&id)
            .map(|t| &t.pending)
            .or_else(|| inner.pending.iter().find(|p| p.id == id));
        pending.and_then(|p| p.taken_by.as_deref().map(str::to_owned))
    }

    /// Requests waiting for a worker.
    pub fn depth(&self) -> usize {
        let mut inner = self.lock();
        self.requeue_overdue(&mut inner);
        inner.pending.len()
    }

    /// Why submits cannot be kept now (a full disk, say), if they cannot.
    pub fn write_error(&self) -> Option<String> {
        let inner = self.lock();
        (inner.store.is_some() && inner.store_failed)
            .then(|| format!("the store of request queue {} cannot be written", self.name))
    }
}

/// The submitting component `name` names (`anonymous` for none), or why it cannot be one.
fn component_named(name: &str) -> Result<Arc<str>, CoordinatorError> {
    if name.is_empty() {
        Ok(Arc::from(ANONYMOUS))
    } else if ganglion_core::is_valid_name(name) {
        Ok(Arc::from(name))
    } else {
        Err(CoordinatorError::invalid(
            "component",
            format!(
                "{} must be 1 to 64 letters, digits, '-' or '_'",
                ganglion_core::excerpt(name)
            ),
        ))
    }
}
