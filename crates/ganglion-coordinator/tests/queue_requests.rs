//! The request queue on a virtual clock: the quota paces workers, single flight, the
//! cache TTL, fallbacks, idempotency and priority.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ganglion_coordinator::queue::{
    DEFAULT_TAKE_TIMEOUT, QueueRecord, QueueStore, RequestQueue, Submission,
};
use ganglion_coordinator::quota::{Quota, QuotaSpec};
use ganglion_coordinator::{CoordinatorError, RequestId};
use ganglion_core::ManualClock;

mod common;
use common::until;

fn queue(rule: &str) -> (ManualClock, Arc<RequestQueue>) {
    queue_with_take_timeout(rule, DEFAULT_TAKE_TIMEOUT)
}

#[tokio::test]
async fn fifty_identical_concurrent_misses_make_one_upstream_call() {
    let (_clock, queue) = queue("100 per 1h");
    let ids: Vec<RequestId> = (0..50)
        .map(|_| {
            queue
                .submit(Submission::new(Bytes::from_static(b"what should I play?")))
                .unwrap()
        })
        .collect();
    assert_eq!(queue.depth(), 1);
    let taken = queue.take("worker", Duration::ZERO).await.unwrap().unwrap();
    assert!(
        queue
            .take("worker", Duration::ZERO)
            .await
            .unwrap()
            .is_none(),
        "one call only"
    );
    queue
        .complete(taken.id, Ok(Bytes::from_static(b"flush")))
        .unwrap();
    for id in ids {
        let outcome = queue
            .get_response(id, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcome.response.unwrap(), Bytes::from_static(b"flush"));
    }
}

#[tokio::test]
async fn the_cache_answers_until_its_ttl_and_not_after() {
    let (clock, queue) = queue("100 per 1h");
    let ask = || {
        queue
            .submit(Submission::new(Bytes::from_static(b"same question")))
            .unwrap()
    };
    let first = ask();
    let taken = queue.take("w", Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(taken.id, first);
    queue
        .complete(first, Ok(Bytes::from_static(b"answer")))
        .unwrap();

    clock.advance(Duration::from_secs(3599));
    let hit = ask();
    let outcome = queue
        .get_response(hit, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert!(outcome.cached && outcome.response.is_ok());
    assert_eq!(queue.depth(), 0);

    clock.advance(Duration::from_secs(2)); // 3601 s
    let miss = ask();
    assert_eq!(
        queue.get_response(miss, Duration::ZERO).await.unwrap(),
        None
    );
    assert_eq!(queue.depth(), 1);
}

#[tokio::test]
async fn workers_take_only_what_the_quota_grants_highest_priority_first() {
    let (clock, queue) = queue("2 per 1m");
    let low = queue
        .submit(Submission::new(Bytes::from_static(b"low")))
        .unwrap();
    let high = queue
        .submit(Submission::new(Bytes::from_static(b"high")).priority(5))
        .unwrap();
    let third = queue
        .submit(Submission::new(Bytes::from_static(b"third")))
        .unwrap();
    assert_eq!(
        queue.take("w", Duration::ZERO).await.unwrap().unwrap().id,
        high
    );
    assert_eq!(
        queue.take("w", Duration::ZERO).await.unwrap().unwrap().id,
        low
    );
    // The quota is used up: nothing is taken until a call frees up.
    assert!(queue.take("w", Duration::ZERO).await.unwrap().is_none());
    let waiting = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.take("w", Duration::from_secs(120)).await })
    };
    until("the worker waits on the clock for a call", || {
        clock.sleepers() >= 1
    })
    .await;
    assert!(!waiting.is_finished());
    clock.advance(Duration::from_secs(60));
    until("a call frees up and it is taken", || waiting.is_finished()).await;
    assert_eq!(waiting.await.unwrap().unwrap().unwrap().id, third);
}

#[tokio::test]
async fn with_the_quota_used_up_a_request_with_a_fallback_is_answered_at_once_degraded() {
    let (_clock, queue) = queue("1 per 1h");
    let first = queue
        .submit(Submission::new(Bytes::from_static(b"q1")))
        .unwrap();
    let taken = queue.take("w", Duration::ZERO).await.unwrap().unwrap();
    queue
        .complete(taken.id, Ok(Bytes::from_static(b"a1")))
        .unwrap();
    assert!(
        queue
            .get_response(first, Duration::ZERO)
            .await
            .unwrap()
            .is_some()
    );

    // From the cache, degraded or not, it is immediate; a new question gets its fallback.
    let id = queue
        .submit(
            Submission::new(Bytes::from_static(b"q2"))
                .fallback(Bytes::from_static(b"play it safe")),
        )
        .unwrap();
    let outcome = queue
        .get_response(id, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert!(outcome.degraded);
    assert_eq!(
        outcome.response.unwrap(),
        Bytes::from_static(b"play it safe")
    );
    // Without a fallback it waits in line.
    let id = queue
        .submit(Submission::new(Bytes::from_static(b"q3")))
        .unwrap();
    assert_eq!(queue.get_response(id, Duration::ZERO).await.unwrap(), None);
}

#[tokio::test]
async fn idempotency_keys_errors_and_unknown_ids() {
    let (_clock, queue) = queue("10 per 1h");
    let a = queue
        .submit(Submission::new(Bytes::from_static(b"x")).idempotency_key("k1"))
        .unwrap();
    let b = queue
        .submit(Submission::new(Bytes::from_static(b"different")).idempotency_key("k1"))
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(queue.depth(), 1);
    let taken = queue.take("w", Duration::ZERO).await.unwrap().unwrap();
    queue
        .complete(taken.id, Err("upstream said 500".into()))
        .unwrap();
    let outcome = queue
        .get_response(a, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.response, Err("upstream said 500".into()));
    // A failure is not cached: the same question is asked again.
    queue
        .submit(Submission::new(Bytes::from_static(b"x")))
        .unwrap();
    assert_eq!(queue.depth(), 1);
    assert!(queue.complete(RequestId(999), Ok(Bytes::new())).is_err());
    assert!(
        queue
            .get_response(RequestId(999), Duration::ZERO)
            .await
            .is_err()
    );
}

/// Answers are kept for the retention (an hour here), then forgotten, whether they came
/// from a worker, the cache or a fallback: a busy queue does not grow without bound.
#[tokio::test]
async fn answers_from_workers_are_forgotten_after_the_retention() {
    let (clock, queue) = queue("100000 per 1h");
    let mut ids = Vec::new();
    for n in 0..1100u32 {
        let id = queue
            .submit(Submission::new(Bytes::from(format!("question {n}"))))
            .unwrap();
        let taken = queue.take("worker", Duration::ZERO).await.unwrap().unwrap();
        queue
            .complete(taken.id, Ok(Bytes::from_static(b"answer")))
            .unwrap();
        ids.push(id);
    }
    assert!(
        queue
            .get_response(ids[0], Duration::ZERO)
            .await
            .unwrap()
            .is_some()
    );
    clock.advance(Duration::from_secs(3601));
    // The next submit prunes.
    queue
        .submit(Submission::new(Bytes::from_static(b"one more")))
        .unwrap();
    assert!(
        matches!(
            queue.get_response(ids[0], Duration::ZERO).await,
            Err(ganglion_coordinator::CoordinatorError::NotFound { .. })
        ),
        "an answer past the retention is forgotten"
    );
}

fn queue_with_take_timeout(rule: &str, take_timeout: Duration) -> (ManualClock, Arc<RequestQueue>) {
    let clock = ManualClock::at_fixed_instant();
    let quota = Arc::new(
        Quota::new(
            QuotaSpec::parse("claude", rule).unwrap(),
            Arc::new(clock.clone()),
        )
        .unwrap(),
    );
    let queue = RequestQueue::new(
        "claude",
        quota,
        Duration::from_secs(3600),
        Arc::new(clock.clone()),
    )
    .with_take_timeout(take_timeout);
    (clock, Arc::new(queue))
}

/// A worker that takes a request and goes quiet gives it back after the take timeout:
/// a worker already waiting takes it then, the first completion answers, and the
/// second is refused.
#[tokio::test]
async fn a_request_its_worker_never_completes_is_taken_again_after_the_take_timeout() {
    let (clock, queue) = queue_with_take_timeout("100 per 1h", Duration::from_secs(60));
    let id = queue
        .submit(Submission::new(Bytes::from_static(b"plan the next round")).priority(5))
        .unwrap();
    let first = queue
        .take("crashed", Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.id, id);
    assert_eq!(queue.depth(), 0);

    let second = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.take("healthy", Duration::from_secs(600)).await })
    };
    // The second worker sleeps until the first one's take times out.
    until("the second worker waits on the clock", || {
        clock.sleepers() >= 1
    })
    .await;
    clock.advance(Duration::from_secs(59));
    assert!(!second.is_finished(), "still the first worker's until 60 s");
    assert_eq!(clock.sleepers(), 1, "nothing was due at 59 s");
    clock.advance(Duration::from_secs(1));
    until("taken again once the timeout passed", || {
        second.is_finished()
    })
    .await;
    let retaken = second.await.unwrap().unwrap().unwrap();
    assert_eq!((retaken.id, retaken.priority), (id, 5));
    assert_eq!(&retaken.request[..], b"plan the next round");

    queue.complete(id, Ok(Bytes::from_static(b"fold"))).unwrap();
    assert!(
        matches!(
            queue.complete(id, Ok(Bytes::from_static(b"raise"))),
            Err(ganglion_coordinator::CoordinatorError::NotFound { .. })
        ),
        "one answer per request"
    );
    let outcome = queue
        .get_response(id, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.response, Ok(Bytes::from_static(b"fold")));
}

/// A late answer from the first worker, before anyone took the request again, stands.
#[tokio::test]
async fn a_late_answer_before_the_request_is_taken_again_stands() {
    let (clock, queue) = queue_with_take_timeout("100 per 1h", Duration::from_secs(60));
    let id = queue
        .submit(Submission::new(Bytes::from_static(b"slow question")))
        .unwrap();
    queue.take("slow", Duration::ZERO).await.unwrap().unwrap();
    clock.advance(Duration::from_secs(61));
    assert_eq!(queue.depth(), 1, "back in line");
    queue
        .complete(id, Ok(Bytes::from_static(b"slow answer")))
        .unwrap();
    assert_eq!(queue.depth(), 0);
    assert!(queue.take("other", Duration::ZERO).await.unwrap().is_none());
    let outcome = queue
        .get_response(id, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.response, Ok(Bytes::from_static(b"slow answer")));
    // A request never taken cannot be completed.
    let fresh = queue
        .submit(Submission::new(Bytes::from_static(b"new question")))
        .unwrap();
    assert!(queue.complete(fresh, Ok(Bytes::new())).is_err());
}

fn persisted_queue(dir: &std::path::Path, clock: &ManualClock) -> Arc<RequestQueue> {
    let quota = Arc::new(
        Quota::new(
            QuotaSpec::parse("claude", "100 per 1h").unwrap(),
            Arc::new(clock.clone()),
        )
        .unwrap(),
    );
    let queue = RequestQueue::new(
        "claude",
        quota,
        Duration::from_secs(3600),
        Arc::new(clock.clone()),
    )
    .persisted_in(dir)
    .unwrap();
    Arc::new(queue)
}

#[tokio::test]
async fn the_queue_survives_a_restart_waiting_taken_answered_and_cached() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_fixed_instant();
    let (waiting, taken, answered, keyed);
    {
        let queue = persisted_queue(dir.path(), &clock);
        answered = queue.submit(Submission::new(&b"q1"[..])).unwrap();
        let t = queue.take("w", Duration::ZERO).await.unwrap().unwrap();
        queue.complete(t.id, Ok(Bytes::from_static(b"a1"))).unwrap();
        assert_eq!(queue.taken_by(t.id), None, "answered: no longer taken");
        taken = queue
            .submit(Submission::new(&b"q2"[..]).component("advisor"))
            .unwrap();
        assert_eq!(
            queue.take("w", Duration::ZERO).await.unwrap().unwrap().id,
            taken
        );
        waiting = queue
            .submit(Submission::new(&b"q3"[..]).priority(5))
            .unwrap();
        keyed = queue
            .submit(Submission::new(&b"q4"[..]).idempotency_key("once"))
            .unwrap();
        // The process dies here: nothing is closed.
    }
    let queue = persisted_queue(dir.path(), &clock);
    assert_eq!(
        queue.depth(),
        3,
        "waiting, taken and keyed are back in line"
    );
    // Who submitted each is remembered (an answer is its submitter's to read).
    assert_eq!(queue.submitter(answered).as_deref(), Some("anonymous"));
    assert_eq!(queue.submitter(taken).as_deref(), Some("advisor"));
    let outcome = queue
        .get_response(answered, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.response, Ok(Bytes::from_static(b"a1")));
    let again = queue
        .submit(Submission::new(&b"q4 again"[..]).idempotency_key("once"))
        .unwrap();
    assert_eq!(again, keyed, "the idempotency key is remembered");
    let hit = queue.submit(Submission::new(&b"q1"[..])).unwrap();
    assert!(
        queue
            .get_response(hit, Duration::ZERO)
            .await
            .unwrap()
            .unwrap()
            .cached
    );
    // The worker that took q2 before the restart may still answer it.
    queue
        .complete(taken, Ok(Bytes::from_static(b"a2")))
        .unwrap();
    let next = queue.take("w", Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(next.id, waiting, "the highest priority first");
    let fresh = queue.submit(Submission::new(&b"q5"[..])).unwrap();
    assert!(fresh > keyed && fresh > hit);
}

#[tokio::test]
async fn shares_of_the_quota_go_by_the_component_that_submitted() {
    let clock = ManualClock::at_fixed_instant();
    let mut spec = QuotaSpec::parse("claude", "3 per 1h").unwrap();
    spec.shares = [("advisor".to_owned(), 2)].into();
    let quota = Arc::new(Quota::new(spec, Arc::new(clock.clone())).unwrap());
    let queue = RequestQueue::new(
        "claude",
        quota.clone(),
        Duration::from_secs(3600),
        Arc::new(clock.clone()),
    );
    // Analytics submits first and more: the advisor still gets its share.
    for n in 0..10 {
        queue
            .submit(Submission::new(format!("analytics {n}")).component("analytics"))
            .unwrap();
    }
    for n in 0..10 {
        queue
            .submit(Submission::new(format!("advisor {n}")).component("advisor"))
            .unwrap();
    }
    let mut taken = Vec::new();
    while let Some(t) = queue.take("one-worker", Duration::ZERO).await.unwrap() {
        taken.push(t.component);
    }
    assert_eq!(taken, ["analytics", "advisor", "advisor"]);
    let status = quota.status();
    assert_eq!(status.by_component.get("advisor"), Some(&2), "{status:?}");
    assert_eq!(
        status.by_component.get("one-worker"),
        None,
        "the worker is not charged"
    );
}

#[tokio::test]
async fn a_full_queue_refuses_submits_with_a_retry_after() {
    let (_clock, queue) = queue("100 per 1h");
    let queue = Arc::into_inner(queue).unwrap().with_limits(2, 1 << 20);
    queue.submit(Submission::new(&b"a"[..])).unwrap();
    queue.submit(Submission::new(&b"b"[..])).unwrap();
    let refused = queue.submit(Submission::new(&b"c"[..])).unwrap_err();
    assert!(matches!(
        refused,
        ganglion_coordinator::CoordinatorError::ResourceExhausted { .. }
    ));
    // Joining an identical request waiting costs nothing.
    queue.submit(Submission::new(&b"a"[..])).unwrap();
}

/// A store in memory that can be told to fail, as a remote one (NATS KV) can.
#[derive(Debug, Default, Clone)]
struct MemStore {
    records: Arc<std::sync::Mutex<Vec<QueueRecord>>>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl MemStore {
    fn check(&self) -> Result<(), CoordinatorError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(CoordinatorError::Unavailable("the store is down".into()));
        }
        Ok(())
    }
}

impl QueueStore for MemStore {
    fn load(&mut self) -> Result<Vec<QueueRecord>, CoordinatorError> {
        Ok(self.records.lock().unwrap().clone())
    }

    fn append(&mut self, records: &[QueueRecord]) -> Result<(), CoordinatorError> {
        self.check()?;
        self.records.lock().unwrap().extend_from_slice(records);
        Ok(())
    }

    fn replace(&mut self, live: &[QueueRecord]) -> Result<(), CoordinatorError> {
        self.check()?;
        *self.records.lock().unwrap() = live.to_vec();
        Ok(())
    }

    fn wants_compaction(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn any_queue_store_restores_the_line_and_one_that_fails_refuses_submits() {
    let clock = ManualClock::at_fixed_instant();
    let store = MemStore::default();
    let open = || {
        let quota = Quota::new(
            QuotaSpec::parse("claude", "100 per 1h").unwrap(),
            Arc::new(clock.clone()),
        )
        .unwrap();
        RequestQueue::new(
            "claude",
            Arc::new(quota),
            Duration::from_secs(60),
            Arc::new(clock.clone()),
        )
        .with_store(Box::new(store.clone()))
        .unwrap()
    };
    let queue = open();
    let kept = queue
        .submit(Submission::new(Bytes::from_static(b"kept")).idempotency_key("k"))
        .unwrap();
    store
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let refused = queue
        .submit(Submission::new(Bytes::from_static(b"lost")))
        .unwrap_err();
    assert!(
        matches!(refused, CoordinatorError::Unavailable(_)),
        "{refused}"
    );
    assert!(queue.write_error().is_some());
    assert_eq!(queue.depth(), 1, "a refused submit does not wait in line");
    store
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let second = queue
        .submit(Submission::new(Bytes::from_static(b"second")))
        .unwrap();
    assert_eq!(queue.write_error(), None, "rewritten, then appended");

    drop(queue);
    let queue = open();
    assert_eq!(queue.depth(), 2, "both kept submits are back in line");
    assert_eq!(
        queue
            .submit(Submission::new(Bytes::from_static(b"again")).idempotency_key("k"))
            .unwrap(),
        kept,
        "the idempotency key came back too"
    );
    let taken = queue.take("worker", Duration::ZERO).await.unwrap().unwrap();
    assert!([kept, second].contains(&taken.id));
}
