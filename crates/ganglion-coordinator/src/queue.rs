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
//! - **Restarts**: with a directory, every submit and completion is journaled
//!   (fdatasynced before it is acknowledged); on restart the requests waiting are back
//!   in line, those that were taken too (a worker's answer to one is still accepted),
//!   and answers, idempotency keys and cache entries are kept for their retention.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use ganglion_core::Clock;
use tokio::sync::{Notify, watch};

use crate::CoordinatorError;
use crate::journal::Journal;
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
    /// The component that submitted it.
    pub component: String,
}

/// A request to submit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Submission {
    pub request: Bytes,
    /// Higher is taken first.
    pub priority: i32,
    /// Who asks: its share (and reservation) of the quota pays for the call. Empty:
    /// `anonymous`.
    pub component: String,
    /// A second submit with the same key gets the first one's id.
    pub idempotency_key: Option<String>,
    /// Answered with this, marked degraded, when the quota is used up.
    pub fallback: Option<Bytes>,
}

impl Submission {
    pub fn new(request: impl Into<Bytes>) -> Submission {
        Submission {
            request: request.into(),
            ..Submission::default()
        }
    }

    pub fn priority(mut self, priority: i32) -> Submission {
        self.priority = priority;
        self
    }

    pub fn component(mut self, component: impl Into<String>) -> Submission {
        self.component = component.into();
        self
    }

    pub fn idempotency_key(mut self, key: impl Into<String>) -> Submission {
        self.idempotency_key = Some(key.into());
        self
    }

    pub fn fallback(mut self, fallback: impl Into<Bytes>) -> Submission {
        self.fallback = Some(fallback.into());
        self
    }
}

/// The component of a submission that names none.
pub const ANONYMOUS: &str = "anonymous";

#[derive(Debug, Clone)]
struct Pending {
    id: u64,
    priority: i32,
    component: Arc<str>,
    key: u64,
    request: Bytes,
    /// Taken before, and not completed within the take timeout.
    retaken: bool,
    /// The worker that took it last (not kept across restarts).
    taken_by: Option<Arc<str>>,
}

/// A request a worker took and has not completed.
#[derive(Debug)]
struct InProgress {
    pending: Pending,
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
    answered_at: VecDeque<(u64, u64)>,
    /// id → the component that submitted it, while its answer is kept.
    submitters: HashMap<u64, Arc<str>>,
    /// Bytes of the requests waiting or in progress.
    bytes: usize,
    journal: Option<Journal>,
}

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
    /// Where the journal is kept, for a queue persisted in a directory.
    journal_path: Option<PathBuf>,
}

/// How long a worker has to complete what it took, unless the queue says otherwise.
pub const DEFAULT_TAKE_TIMEOUT: Duration = Duration::from_secs(300);
/// Requests waiting or in progress, unless the queue says otherwise.
pub const DEFAULT_MAX_PENDING: usize = 10_000;
/// Bytes of requests waiting or in progress, unless the queue says otherwise.
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Answers (and cache entries) kept at most, whatever their retention.
const MAX_ANSWERS: usize = 100_000;

const JOURNAL: &str = "request queue journal";

fn content_key(request: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    request.hash(&mut h);
    h.finish()
}

fn b64(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        "-".to_owned()
    } else {
        BASE64.encode(bytes)
    }
}

fn unb64(text: &str) -> Option<Bytes> {
    if text == "-" {
        return Some(Bytes::new());
    }
    BASE64.decode(text).ok().map(Bytes::from)
}

/// Journal lines, one per change (see [`RequestQueue::persisted_in`]):
///
/// ```text
/// p <id> <priority> <component> <idempotency key|-> <request>      waiting
/// f <id> <leader> <idempotency key|->                               joined a request
/// s <id> <component>                                               who submitted it
/// o <id> <at> <c|d|-> <ok|err> <response or error>                  answered
/// k <expires at> <request> <response>                               cached
/// ```
///
/// Keys and bytes are base64 (`-` when empty); an answer to a waiting id takes it out
/// of line.
impl Inner {
    fn pending_line(p: &Pending, idempotency: Option<&str>) -> String {
        format!(
            "p {} {} {} {} {}\n",
            p.id,
            p.priority,
            p.component,
            b64(idempotency.unwrap_or("").as_bytes()),
            b64(&p.request)
        )
    }

    fn outcome_line(id: u64, at: u64, o: &Outcome) -> String {
        let flags = match (o.cached, o.degraded) {
            (true, true) => "cd",
            (true, false) => "c",
            (false, true) => "d",
            (false, false) => "-",
        };
        let (kind, body) = match &o.response {
            Ok(body) => ("ok", b64(body)),
            Err(error) => ("err", b64(error.as_bytes())),
        };
        format!("o {id} {at} {flags} {kind} {body}\n")
    }

    fn cache_line(c: &Cached) -> String {
        format!(
            "k {} {} {}\n",
            c.expires_at,
            b64(&c.request),
            b64(&c.response)
        )
    }

    /// The live state as journal lines (what a compaction writes).
    fn snapshot(&self) -> (String, usize) {
        let keys: HashMap<u64, &str> = self
            .idempotency
            .iter()
            .map(|(k, id)| (*id, k.as_str()))
            .collect();
        let mut lines = Vec::new();
        let mut pending: Vec<&Pending> = self
            .pending
            .iter()
            .chain(self.taken.values().map(|t| &t.pending))
            .collect();
        pending.sort_by_key(|p| p.id);
        for p in pending {
            lines.push(Inner::pending_line(p, keys.get(&p.id).copied()));
        }
        for (id, component) in &self.submitters {
            lines.push(format!("s {id} {component}\n"));
        }
        for (follower, leader) in &self.follows {
            let key = keys.get(follower).copied().unwrap_or("");
            lines.push(format!("f {follower} {leader} {}\n", b64(key.as_bytes())));
        }
        for &(at, id) in &self.answered_at {
            if let Some(Some(outcome)) = self.outcomes.get(&id).map(|tx| tx.borrow().clone()) {
                lines.push(Inner::outcome_line(id, at, &outcome));
                if let Some(key) = keys.get(&id) {
                    lines.push(format!("i {id} {}\n", b64(key.as_bytes())));
                }
            }
        }
        for cached in self.cache.values() {
            lines.push(Inner::cache_line(cached));
        }
        let n = lines.len();
        (lines.concat(), n)
    }
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
            journal_path: None,
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

    /// Journals the queue in `dir/<name>.queue`, and restores what is there: requests
    /// back in line (taken ones too), answers, idempotency keys and cache entries within
    /// their retention.
    pub fn persisted_in(self, dir: &Path) -> Result<RequestQueue, CoordinatorError> {
        let path = dir.join(format!("{}.queue", self.name));
        {
            let mut inner = self.lock();
            self.restore(&mut inner, &path)?;
            self.prune(&mut inner);
            let (text, lines) = inner.snapshot();
            match Journal::rewrite(JOURNAL, path.clone(), &text, lines) {
                Ok(journal) => inner.journal = Some(journal),
                Err(error) => {
                    // A full disk: what was restored is served; submits are refused
                    // until the journal can be written.
                    tracing::error!(queue = %self.name, %error, "cannot write the request queue's journal: submits are refused until it can be");
                    inner.journal = None;
                }
            }
            if !inner.pending.is_empty() {
                tracing::info!(queue = %self.name, waiting = inner.pending.len(), "requests restored: back in line");
            }
        }
        let mut queue = self;
        queue.journal_path = Some(path);
        Ok(queue)
    }

    fn restore(&self, inner: &mut Inner, path: &Path) -> Result<(), CoordinatorError> {
        let mut max_id = 0;
        for (number, line) in Journal::read(JOURNAL, path)? {
            let bad = || Journal::damaged(JOURNAL, path, number, &line);
            let f: Vec<&str> = line.split(' ').collect();
            let num = |s: &str| s.parse::<u64>().map_err(|_| bad());
            let text = |s: &str| {
                unb64(s)
                    .and_then(|b| String::from_utf8(b.to_vec()).ok())
                    .ok_or_else(bad)
            };
            match f.as_slice() {
                ["p", id, priority, component, key, request] => {
                    let id = num(id)?;
                    let request = unb64(request).ok_or_else(bad)?;
                    let key_text = text(key)?;
                    if !key_text.is_empty() {
                        inner.idempotency.insert(key_text, id);
                    }
                    let content = content_key(&request);
                    inner.in_flight.insert(content, id);
                    inner.outcomes.insert(id, watch::channel(None).0);
                    inner.submitters.insert(id, Arc::from(*component));
                    inner.bytes += request.len();
                    inner.pending.push(Pending {
                        id,
                        priority: priority.parse().map_err(|_| bad())?,
                        component: Arc::from(*component),
                        key: content,
                        request,
                        retaken: true,
                        taken_by: None,
                    });
                    max_id = max_id.max(id);
                }
                ["f", id, leader, key] => {
                    let id = num(id)?;
                    inner.follows.insert(id, num(leader)?);
                    let key_text = text(key)?;
                    if !key_text.is_empty() {
                        inner.idempotency.insert(key_text, id);
                    }
                    max_id = max_id.max(id);
                }
                ["o", id, at, flags, kind, body] => {
                    let (id, at) = (num(id)?, num(at)?);
                    let body = unb64(body).ok_or_else(bad)?;
                    let response = match *kind {
                        "ok" => Ok(body),
                        "err" => Err(String::from_utf8_lossy(&body).into_owned()),
                        _ => return Err(bad()),
                    };
                    if let Some(at) = inner.pending.iter().position(|p| p.id == id) {
                        let p = inner.pending.swap_remove(at);
                        inner.in_flight.remove(&p.key);
                        inner.bytes -= p.request.len();
                    }
                    let outcome = Outcome {
                        response,
                        cached: flags.contains('c'),
                        degraded: flags.contains('d'),
                    };
                    inner.outcomes.insert(id, watch::channel(Some(outcome)).0);
                    inner.answered_at.push_back((at, id));
                    max_id = max_id.max(id);
                }
                ["i", id, key] => {
                    inner.idempotency.insert(text(key)?, num(id)?);
                }
                ["s", id, component] => {
                    inner.submitters.insert(num(id)?, Arc::from(*component));
                }
                ["k", expires_at, request, response] => {
                    let request = unb64(request).ok_or_else(bad)?;
                    inner.cache.insert(
                        content_key(&request),
                        Cached {
                            request,
                            response: unb64(response).ok_or_else(bad)?,
                            expires_at: num(expires_at)?,
                        },
                    );
                }
                _ => return Err(bad()),
            }
        }
        inner.next_id = inner.next_id.max(max_id + 1);
        inner.answered_at.make_contiguous().sort_unstable();
        Ok(())
    }

    /// Writes `lines` to the journal (if there is one) before the change is made;
    /// compacts it when it has grown.
    fn journal(&self, inner: &mut Inner, lines: &str) -> Result<(), CoordinatorError> {
        let Some(path) = &self.journal_path else {
            return Ok(());
        };
        if inner.journal.is_none() {
            // The last write failed: start a fresh journal with what is live.
            let (text, n) = inner.snapshot();
            inner.journal = Some(Journal::rewrite(JOURNAL, path.clone(), &text, n)?);
        }
        let journal = inner.journal.as_mut().expect("opened above");
        if let Err(error) = journal.append(lines) {
            inner.journal = None;
            return Err(error);
        }
        if journal.wants_compaction() {
            let (text, n) = inner.snapshot();
            match Journal::rewrite(JOURNAL, path.clone(), &text, n) {
                Ok(compacted) => inner.journal = Some(compacted),
                Err(error) => {
                    tracing::warn!(queue = %self.name, %error, "cannot compact the request queue's journal")
                }
            }
        }
        Ok(())
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
                retaken: true,
                ..t.pending
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

    /// Records an answer to `id` (journaled first).
    fn answer(
        &self,
        inner: &mut Inner,
        id: u64,
        outcome: Outcome,
        before: &str,
    ) -> Result<(), CoordinatorError> {
        let at = self.clock.now_micros();
        let line = format!("{before}{}", Inner::outcome_line(id, at, &outcome));
        self.journal(inner, &line)?;
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
        while let Some(&(at, id)) = inner.answered_at.front() {
            if at > horizon && inner.answered_at.len() <= MAX_ANSWERS {
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
            submitters,
            ..
        } = inner;
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

    /// Queues `submission`; returns its id. See the module docs for what is answered at
    /// once (cache, single flight, idempotency, fallback) and what is refused.
    pub fn submit(&self, submission: Submission) -> Result<u64, CoordinatorError> {
        let Submission {
            request,
            priority,
            component,
            idempotency_key,
            fallback,
        } = submission;
        let component: Arc<str> = if component.is_empty() {
            Arc::from(ANONYMOUS)
        } else if ganglion_core::is_valid_name(&component) {
            Arc::from(component.as_str())
        } else {
            return Err(CoordinatorError::invalid(
                "component",
                format!(
                    "{} must be 1 to 64 letters, digits, '-' or '_'",
                    ganglion_core::excerpt(&component)
                ),
            ));
        };
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
        let id = inner.next_id;
        let key = content_key(&request);
        let key_line = format!(
            "s {id} {component}\n{}",
            idempotency_key.map_or(String::new(), |k| format!("i {id} {}\n", b64(k.as_bytes())))
        );
        if let Some(response) = self.cached(&mut inner, key, &request) {
            tracing::debug!(queue = %self.name, id, "answered from the cache");
            let outcome = Outcome {
                response: Ok(response),
                cached: true,
                degraded: false,
            };
            self.answer(&mut inner, id, outcome, &key_line)?;
        } else if let Some(fallback) = fallback.filter(|_| {
            let status = self.quota.status();
            status.remaining == 0 || !status.suspended_for.is_zero()
        }) {
            tracing::info!(queue = %self.name, id, "quota used up: answered with the fallback, degraded");
            let outcome = Outcome {
                response: Ok(fallback),
                cached: false,
                degraded: true,
            };
            self.answer(&mut inner, id, outcome, &key_line)?;
        } else if let Some(&leader) = inner.in_flight.get(&key) {
            tracing::debug!(queue = %self.name, id, leader, "joined an identical request in flight");
            let line = format!(
                "s {id} {component}\nf {id} {leader} {}\n",
                b64(idempotency_key.unwrap_or("").as_bytes())
            );
            self.journal(&mut inner, &line)?;
            inner.follows.insert(id, leader);
        } else {
            let waiting = inner.pending.len() + inner.taken.len();
            if waiting >= self.max_pending || inner.bytes + request.len() > self.max_bytes {
                return Err(CoordinatorError::ResourceExhausted {
                    what: format!(
                        "queue {} is full ({waiting} requests, {} bytes waiting)",
                        self.name, inner.bytes
                    ),
                    retry_after: Duration::from_secs(1),
                });
            }
            let pending = Pending {
                id,
                priority,
                component: component.clone(),
                key,
                request,
                retaken: false,
                taken_by: None,
            };
            self.journal(&mut inner, &Inner::pending_line(&pending, idempotency_key))?;
            inner.bytes += pending.request.len();
            inner.in_flight.insert(key, id);
            inner.outcomes.insert(id, watch::channel(None).0);
            inner.pending.push(pending);
            self.work.notify_one();
        }
        inner.next_id += 1;
        inner.submitters.insert(id, component);
        if let Some(k) = idempotency_key {
            inner.idempotency.insert(k.to_owned(), id);
        }
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

    /// The index in `pending` of the request to take next: highest priority, then the
    /// submitting component furthest below its share, then the oldest.
    fn best(&self, inner: &Inner) -> Option<usize> {
        let shares = self.quota.shares_now();
        let share = |p: &Pending| shares(&p.component);
        (0..inner.pending.len()).min_by(|&a, &b| {
            let (pa, pb) = (&inner.pending[a], &inner.pending[b]);
            pb.priority
                .cmp(&pa.priority)
                .then(share(pa).total_cmp(&share(pb)))
                .then(pa.id.cmp(&pb.id))
        })
    }

    /// Takes the next request once the quota grants its submitting component a call,
    /// waiting up to `timeout`; `Ok(None)` if nothing could be taken in time. Complete
    /// it within the queue's take timeout, or it goes back in line for another worker.
    pub async fn take(
        &self,
        worker: &str,
        timeout: Duration,
    ) -> Result<Option<Taken>, CoordinatorError> {
        crate::check_wait(timeout)?;
        if worker.is_empty() || worker.len() > 256 {
            return Err(CoordinatorError::invalid(
                "worker",
                "is required: the taking worker's name, at most 256 bytes",
            ));
        }
        let deadline = self.clock.monotonic() + timeout;
        loop {
            let notified = self.work.notified();
            let (best, next_overdue) = {
                let mut inner = self.lock();
                let next_overdue = self.requeue_overdue(&mut inner);
                let best = self.best(&inner).map(|i| {
                    (
                        inner.pending[i].id,
                        inner.pending[i].priority,
                        inner.pending[i].component.clone(),
                    )
                });
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
                Some((id, priority, component)) => {
                    // A call from the quota first (the submitter's, in the request's
                    // priority), then the request: one grant, one upstream call.
                    match self.quota.acquire(&component, priority, remaining).await {
                        Ok(_permit) => {
                            let mut inner = self.lock();
                            // The request chosen, or (if another worker took it
                            // meanwhile) the best one of the same component.
                            let at = inner.pending.iter().position(|p| p.id == id).or_else(|| {
                                (0..inner.pending.len())
                                    .filter(|&i| inner.pending[i].component == component)
                                    .min_by_key(|&i| {
                                        (-inner.pending[i].priority, inner.pending[i].id)
                                    })
                            });
                            let Some(at) = at else {
                                // Nothing of that component left; the grant is spent.
                                continue;
                            };
                            let mut p = inner.pending.swap_remove(at);
                            p.taken_by = Some(Arc::from(worker));
                            let until = self.clock.monotonic().saturating_add(self.take_timeout);
                            tracing::debug!(queue = %self.name, id = p.id, worker, component = %p.component, retaken = p.retaken, "taken");
                            let taken = Taken {
                                id: p.id,
                                request: p.request.clone(),
                                priority: p.priority,
                                component: p.component.to_string(),
                            };
                            inner.taken.insert(p.id, InProgress { pending: p, until });
                            return Ok(Some(taken));
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
        let cache_line = cached.as_ref().map_or(String::new(), Inner::cache_line);
        let outcome = Outcome {
            response,
            cached: false,
            degraded: false,
        };
        self.answer(&mut inner, id, outcome, &cache_line)?;
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
    pub fn submitter(&self, id: u64) -> Option<String> {
        self.lock().submitters.get(&id).map(|c| c.to_string())
    }

    /// The worker that took request `id` last, if it is taken, or back in line after a
    /// take that timed out (whose answer is still accepted).
    pub fn taken_by(&self, id: u64) -> Option<String> {
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

    /// Why submits cannot be journaled now (a full disk, say), if they cannot.
    pub fn write_error(&self) -> Option<String> {
        let inner = self.lock();
        (self.journal_path.is_some() && inner.journal.is_none()).then(|| {
            format!(
                "the journal of request queue {} cannot be written",
                self.name
            )
        })
    }
}
