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
//! - **Order**: workers take the highest priority first, oldest first within one.
//! - **Take timeout**: a request taken but not completed within `take_timeout` (default
//!   5 min; the worker crashed, or hangs) goes back in line, at its priority, to be taken
//!   again (with a new quota grant). The first completion answers it, even a late one
//!   from the first worker; any later completion is refused as not taken.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use ganglion_core::Clock;
use tokio::sync::{Notify, watch};

use crate::CoordinatorError;
use crate::quota::Quota;

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The response, or the worker's error message.
    pub response: Result<Bytes, String>,
    /// Answered from the cache.
    pub cached: bool,
    /// Answered from the cache or the fallback because the quota was used up.
    pub degraded: bool,
}

/// A request a worker took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub id: u64,
    pub request: Bytes,
    pub priority: i32,
}

#[derive(Debug, Clone)]
struct Pending {
    id: u64,
    priority: i32,
    key: u64,
    request: Bytes,
    /// Taken before, and not completed within the take timeout.
    retaken: bool,
}

/// A request a worker took and has not completed.
#[derive(Debug)]
struct InProgress {
    priority: i32,
    key: u64,
    request: Bytes,
    /// Back in line at this time (monotonic) unless completed.
    until: Duration,
}

#[derive(Debug)]
struct Cached {
    request: Bytes,
    response: Bytes,
    expires_at: u64,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    pending: Vec<Pending>,
    /// Content key → the id answering for it (queued or in progress).
    in_flight: HashMap<u64, u64>,
    /// Follower id → leader id.
    follows: HashMap<u64, u64>,
    /// id → outcome, once known (a watch per id so `get_response` can wait).
    outcomes: HashMap<u64, watch::Sender<Option<Outcome>>>,
    /// id → the request, while taken.
    taken: HashMap<u64, InProgress>,
    cache: HashMap<u64, Cached>,
    idempotency: HashMap<String, u64>,
    /// When each answered id was answered, oldest first: answers (and their followers
    /// and idempotency keys) are kept for `retention`, then forgotten.
    answered_at: std::collections::VecDeque<(u64, u64)>,
}

/// A named request queue.
#[derive(Debug)]
pub struct RequestQueue {
    name: String,
    quota: Arc<Quota>,
    cache_ttl: Duration,
    take_timeout: Duration,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    work: Notify,
}

/// How long a worker has to complete what it took, unless the queue says otherwise.
pub const DEFAULT_TAKE_TIMEOUT: Duration = Duration::from_secs(300);

fn content_key(request: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    request.hash(&mut h);
    h.finish()
}

impl RequestQueue {
    /// A queue whose workers are paced by `quota`.
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

    /// Puts back in line what was taken and not completed in time; returns when the
    /// next one taken now is due (monotonic).
    fn requeue_overdue(&self, inner: &mut Inner) -> Option<Duration> {
        let now = self.clock.monotonic();
        let overdue: Vec<u64> = inner
            .taken
            .iter()
            .filter(|(_, t)| t.until <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in overdue {
            let Some(t) = inner.taken.remove(&id) else {
                continue;
            };
            tracing::warn!(queue = %self.name, id, timeout_ms = self.take_timeout.as_millis() as u64, "a taken request was not completed in time: back in line");
            inner.pending.push(Pending {
                id,
                priority: t.priority,
                key: t.key,
                request: t.request,
                retaken: true,
            });
            self.work.notify_one();
        }
        inner.taken.values().map(|t| t.until).min()
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

    fn answered(&self, inner: &mut Inner, id: u64, outcome: Outcome) {
        inner.outcomes.insert(id, watch::channel(Some(outcome)).0);
        inner.answered_at.push_back((self.clock.now_micros(), id));
    }

    /// Forgets answers older than the retention (the cache TTL, at least an hour), and
    /// expired cache entries.
    fn prune(&self, inner: &mut Inner) {
        let retention = self.cache_ttl.max(Duration::from_secs(3600));
        let now = self.clock.now_micros();
        let horizon = now.saturating_sub(u64::try_from(retention.as_micros()).unwrap_or(u64::MAX));
        while let Some(&(at, id)) = inner.answered_at.front() {
            if at > horizon {
                break;
            }
            inner.answered_at.pop_front();
            inner.outcomes.remove(&id);
        }
        let Inner {
            outcomes,
            follows,
            idempotency,
            cache,
            ..
        } = inner;
        follows.retain(|_, leader| outcomes.contains_key(leader));
        idempotency.retain(|_, id| outcomes.contains_key(id) || follows.contains_key(id));
        cache.retain(|_, c| c.expires_at > now);
    }

    /// Queues `request`; returns its id. See the module docs for what is answered at
    /// once (cache, single flight, idempotency, fallback).
    pub fn submit(
        &self,
        request: Bytes,
        priority: i32,
        idempotency_key: Option<&str>,
        fallback: Option<Bytes>,
    ) -> Result<u64, CoordinatorError> {
        let mut inner = self.lock();
        if inner.answered_at.len() > 1024 || inner.cache.len() > 4096 {
            self.prune(&mut inner);
        }
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
        let id = inner.next_id;
        inner.next_id += 1;
        if let Some(key) = idempotency_key {
            inner.idempotency.insert(key.to_owned(), id);
        }
        let key = content_key(&request);
        if let Some(response) = self.cached(&mut inner, key, &request) {
            tracing::debug!(queue = %self.name, id, "answered from the cache");
            self.answered(
                &mut inner,
                id,
                Outcome {
                    response: Ok(response),
                    cached: true,
                    degraded: false,
                },
            );
            return Ok(id);
        }
        if let Some(fallback) = fallback {
            let status = self.quota.status();
            if status.remaining == 0 || !status.suspended_for.is_zero() {
                tracing::info!(queue = %self.name, id, "quota used up: answered with the fallback, degraded");
                self.answered(
                    &mut inner,
                    id,
                    Outcome {
                        response: Ok(fallback),
                        cached: false,
                        degraded: true,
                    },
                );
                return Ok(id);
            }
        }
        if let Some(&leader) = inner.in_flight.get(&key) {
            tracing::debug!(queue = %self.name, id, leader, "joined an identical request in flight");
            inner.follows.insert(id, leader);
            return Ok(id);
        }
        inner.in_flight.insert(key, id);
        inner.outcomes.insert(id, watch::channel(None).0);
        inner.pending.push(Pending {
            id,
            priority,
            key,
            request,
            retaken: false,
        });
        drop(inner);
        self.work.notify_one();
        Ok(id)
    }

    /// The outcome of request `id`, waiting up to `wait`; `Ok(None)` if still pending.
    pub async fn get_response(
        &self,
        id: u64,
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

    /// Takes the next request once the quota grants `worker` a call, waiting up to
    /// `timeout`; `Ok(None)` if nothing could be taken in time. Complete it within the
    /// queue's take timeout, or it goes back in line for another worker.
    pub async fn take(
        &self,
        worker: &str,
        timeout: Duration,
    ) -> Result<Option<Taken>, CoordinatorError> {
        crate::check_wait(timeout)?;
        let deadline = self.clock.monotonic() + timeout;
        loop {
            let notified = self.work.notified();
            let (best, next_overdue) = {
                let mut inner = self.lock();
                let next_overdue = self.requeue_overdue(&mut inner);
                let best = inner
                    .pending
                    .iter()
                    .min_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)))
                    .map(|p| p.priority);
                (best, next_overdue)
            };
            let remaining = deadline.saturating_sub(self.clock.monotonic());
            match best {
                None => {
                    if remaining.is_zero() {
                        return Ok(None);
                    }
                    // Wake for new work, or when a taken request falls due again.
                    let wake = next_overdue.map_or(deadline, |due| due.min(deadline));
                    tokio::select! {
                        _ = notified => {}
                        _ = self.clock.sleep_until(wake) => {}
                    }
                }
                Some(priority) => {
                    // A call from the quota first (in the request's priority), then the
                    // request: one grant, one upstream call.
                    match self.quota.acquire(worker, priority, remaining).await {
                        Ok(_permit) => {
                            let mut inner = self.lock();
                            let Some(at) = (0..inner.pending.len()).min_by(|&a, &b| {
                                let (pa, pb) = (&inner.pending[a], &inner.pending[b]);
                                pb.priority.cmp(&pa.priority).then(pa.id.cmp(&pb.id))
                            }) else {
                                // Another worker took it meanwhile; the grant is spent.
                                continue;
                            };
                            let p = inner.pending.swap_remove(at);
                            let until = self.clock.monotonic().saturating_add(self.take_timeout);
                            inner.taken.insert(
                                p.id,
                                InProgress {
                                    priority: p.priority,
                                    key: p.key,
                                    request: p.request.clone(),
                                    until,
                                },
                            );
                            tracing::debug!(queue = %self.name, id = p.id, worker, retaken = p.retaken, "taken");
                            return Ok(Some(Taken {
                                id: p.id,
                                request: p.request,
                                priority: p.priority,
                            }));
                        }
                        Err(CoordinatorError::DeadlineExceeded(_)) => return Ok(None),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// Answers a taken request (and every identical one that joined it). The first
    /// completion answers; one for a request not taken, or already answered, is
    /// `NotFound`.
    pub fn complete(
        &self,
        id: u64,
        response: Result<Bytes, String>,
    ) -> Result<(), CoordinatorError> {
        let mut inner = self.lock();
        let (key, request) = if let Some(t) = inner.taken.remove(&id) {
            (t.key, t.request)
        } else if let Some(at) = inner.pending.iter().position(|p| p.id == id && p.retaken) {
            // Back in line after its take timed out, and answered before anyone took it
            // again: the answer stands.
            let p = inner.pending.swap_remove(at);
            (p.key, p.request)
        } else {
            return Err(CoordinatorError::NotFound {
                what: format!("taken request {id} in queue {}", self.name),
            });
        };
        inner.in_flight.remove(&key);
        if let Ok(body) = &response {
            let expires_at = self
                .clock
                .now_micros()
                .saturating_add(u64::try_from(self.cache_ttl.as_micros()).unwrap_or(u64::MAX));
            inner.cache.insert(
                key,
                Cached {
                    request,
                    response: body.clone(),
                    expires_at,
                },
            );
        }
        let outcome = Outcome {
            response,
            cached: false,
            degraded: false,
        };
        if let Some(tx) = inner.outcomes.get(&id) {
            tx.send_replace(Some(outcome));
        }
        // Kept for the retention, then pruned like every other answer.
        let now = self.clock.now_micros();
        inner.answered_at.push_back((now, id));
        Ok(())
    }

    /// Requests waiting for a worker.
    pub fn depth(&self) -> usize {
        let mut inner = self.lock();
        self.requeue_overdue(&mut inner);
        inner.pending.len()
    }
}
