//! The request queue on a virtual clock: the quota paces workers, single flight, the
//! cache TTL, fallbacks, idempotency and priority.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ganglion_coordinator::queue::{DEFAULT_TAKE_TIMEOUT, RequestQueue};
use ganglion_coordinator::quota::{Quota, QuotaSpec};
use ganglion_core::ManualClock;

fn queue(rule: &str) -> (ManualClock, Arc<RequestQueue>) {
    queue_with_take_timeout(rule, DEFAULT_TAKE_TIMEOUT)
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn fifty_identical_concurrent_misses_make_one_upstream_call() {
    let (_clock, queue) = queue("100 per 1h");
    let ids: Vec<u64> = (0..50)
        .map(|_| {
            queue
                .submit(Bytes::from_static(b"what should I play?"), 0, None, None)
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
            .submit(Bytes::from_static(b"same question"), 0, None, None)
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
        .submit(Bytes::from_static(b"low"), 0, None, None)
        .unwrap();
    let high = queue
        .submit(Bytes::from_static(b"high"), 5, None, None)
        .unwrap();
    let third = queue
        .submit(Bytes::from_static(b"third"), 0, None, None)
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
    settle().await;
    assert!(!waiting.is_finished());
    clock.advance(Duration::from_secs(60));
    settle().await;
    assert_eq!(waiting.await.unwrap().unwrap().unwrap().id, third);
}

#[tokio::test]
async fn with_the_quota_used_up_a_request_with_a_fallback_is_answered_at_once_degraded() {
    let (_clock, queue) = queue("1 per 1h");
    let first = queue
        .submit(Bytes::from_static(b"q1"), 0, None, None)
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
            Bytes::from_static(b"q2"),
            0,
            None,
            Some(Bytes::from_static(b"play it safe")),
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
        .submit(Bytes::from_static(b"q3"), 0, None, None)
        .unwrap();
    assert_eq!(queue.get_response(id, Duration::ZERO).await.unwrap(), None);
}

#[tokio::test]
async fn idempotency_keys_errors_and_unknown_ids() {
    let (_clock, queue) = queue("10 per 1h");
    let a = queue
        .submit(Bytes::from_static(b"x"), 0, Some("k1"), None)
        .unwrap();
    let b = queue
        .submit(Bytes::from_static(b"different"), 0, Some("k1"), None)
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
        .submit(Bytes::from_static(b"x"), 0, None, None)
        .unwrap();
    assert_eq!(queue.depth(), 1);
    assert!(queue.complete(999, Ok(Bytes::new())).is_err());
    assert!(queue.get_response(999, Duration::ZERO).await.is_err());
}

/// Answers are kept for the retention (an hour here), then forgotten, whether they came
/// from a worker, the cache or a fallback: a busy queue does not grow without bound.
#[tokio::test]
async fn answers_from_workers_are_forgotten_after_the_retention() {
    let (clock, queue) = queue("100000 per 1h");
    let mut ids = Vec::new();
    for n in 0..1100u32 {
        let id = queue
            .submit(Bytes::from(format!("question {n}")), 0, None, None)
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
        .submit(Bytes::from_static(b"one more"), 0, None, None)
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
        .submit(Bytes::from_static(b"plan the next round"), 5, None, None)
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
    settle().await;
    clock.advance(Duration::from_secs(59));
    settle().await;
    assert!(!second.is_finished(), "still the first worker's until 60 s");
    clock.advance(Duration::from_secs(1));
    settle().await;
    assert!(second.is_finished(), "taken again once the timeout passed");
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
        .submit(Bytes::from_static(b"slow question"), 0, None, None)
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
        .submit(Bytes::from_static(b"new question"), 0, None, None)
        .unwrap();
    assert!(queue.complete(fresh, Ok(Bytes::new())).is_err());
}
