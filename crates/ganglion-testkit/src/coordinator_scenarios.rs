//! The coordinator scenarios, run against every [`Coordination`] (see
//! [`coordination`](crate::coordination) for the configuration they assume). A step that
//! depends on a waiter being in line waits for the coordinator's status to show it before
//! the scenario moves the clock.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ganglion_coordinator::queue::Submission;
use ganglion_core::ErrorCode;

use crate::coordination::{Coordination, Granted, Refusal};
use crate::soon;

/// Longer than any scenario runs in virtual time: a wait that only a grant ends.
const FOREVER: Duration = Duration::from_secs(3000);

async fn until_pool_waiters(h: &dyn Coordination, pool: &str, n: usize) {
    soon(&format!("{n} waiter(s) in pool {pool}"), async {
        while h.pool_waiters(pool).await != n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

async fn until_quota_waiters(h: &dyn Coordination, quota: &str, n: usize) {
    soon(&format!("{n} waiter(s) for quota {quota}"), async {
        while h.quota_waiters(quota).await != n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

/// Starts waiting in `pool`'s line (as its own task) for one unit.
fn wait_in_line(
    h: &Arc<dyn Coordination>,
    pool: &'static str,
    holder: &'static str,
    priority: i32,
) -> tokio::task::JoinHandle<Granted> {
    let h = h.clone();
    tokio::spawn(async move {
        let granted = h.acquire(pool, holder, priority, 1, FOREVER).await;
        granted.unwrap_or_else(|e| panic!("{holder} is granted {pool}: {e:?}"))
    })
}

fn code<T: std::fmt::Debug>(r: Result<T, Refusal>) -> ErrorCode {
    r.unwrap_err().code
}

async fn granted(task: tokio::task::JoinHandle<Granted>) -> Granted {
    soon("a grant", task).await.expect("the waiter's task")
}

/// A full pool refuses a caller that will not wait; waiters are served by priority when
/// units free up, each lease with a higher fencing token, and an earlier holder's token
/// is stale from then on.
pub async fn leases_go_by_priority_with_rising_fencing_tokens(h: Arc<dyn Coordination>) {
    let first = h
        .acquire("solo", "first", 0, 1, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(first.holder, "first");
    let busy = h.acquire("solo", "impatient", 9, 1, Duration::ZERO).await;
    assert_eq!(busy.unwrap_err().code, ErrorCode::DeadlineExceeded);

    let low = wait_in_line(&h, "solo", "low", 0);
    until_pool_waiters(h.as_ref(), "solo", 1).await;
    let high = wait_in_line(&h, "solo", "high", 5);
    until_pool_waiters(h.as_ref(), "solo", 2).await;
    assert!(h.fence_valid("solo", first.fencing_token).await.unwrap());

    h.release(first.id).await.unwrap();
    let high = granted(high).await;
    assert_eq!(high.holder, "high", "the higher priority goes first");
    assert!(high.fencing_token > first.fencing_token);
    assert!(!h.fence_valid("solo", first.fencing_token).await.unwrap());
    assert!(h.fence_valid("solo", high.fencing_token).await.unwrap());
    until_pool_waiters(h.as_ref(), "solo", 1).await;

    h.release(high.id).await.unwrap();
    let low = granted(low).await;
    assert_eq!(low.holder, "low");
    assert!(low.fencing_token > high.fencing_token);
    assert!(!h.fence_valid("solo", high.fencing_token).await.unwrap());
    h.release(low.id).await.unwrap();
    let again = h.release(low.id).await.unwrap_err();
    assert_ne!(again.code, ErrorCode::Internal, "{again:?}");
}

/// A wait runs on the coordinator's clock: it ends refused when its time passes, and
/// the waiter is out of the line.
pub async fn a_wait_in_line_ends_when_its_time_is_up(h: Arc<dyn Coordination>) {
    let held = h
        .acquire("solo", "holder", 0, 1, Duration::ZERO)
        .await
        .unwrap();
    let waiter = {
        let h = h.clone();
        tokio::spawn(async move {
            h.acquire("solo", "waiter", 0, 1, Duration::from_secs(10))
                .await
        })
    };
    until_pool_waiters(h.as_ref(), "solo", 1).await;
    h.clock().advance(Duration::from_secs(9));
    assert!(!waiter.is_finished(), "9 s of a 10 s wait");
    h.clock().advance(Duration::from_secs(1));
    let refused = soon("the wait to end", waiter).await.unwrap().unwrap_err();
    assert_eq!(refused.code, ErrorCode::DeadlineExceeded, "{refused:?}");
    until_pool_waiters(h.as_ref(), "solo", 0).await;
    h.release(held.id).await.unwrap();
}

/// A lease of several GPUs gets distinct devices; asking for more than the pool has is
/// refused naming `amount`, not queued forever.
pub async fn a_multi_unit_lease_gets_distinct_units(h: Arc<dyn Coordination>) {
    let two = h
        .acquire("gpu", "trainer", 0, 2, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(two.units.len(), 2);
    assert_ne!(two.units[0], two.units[1]);
    let one = h
        .acquire("gpu", "eval", 0, 1, Duration::ZERO)
        .await
        .unwrap();
    assert!(!two.units.contains(&one.units[0]), "{two:?} {one:?}");
    let more = h.acquire("gpu", "greedy", 0, 1, Duration::ZERO).await;
    assert_eq!(more.unwrap_err().code, ErrorCode::DeadlineExceeded);
    let too_many = h
        .acquire("gpu", "greedy", 0, 4, Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(
        (too_many.code, too_many.field.as_deref()),
        (ErrorCode::InvalidArgument, Some("amount")),
        "{too_many:?}"
    );
    h.release(two.id).await.unwrap();
    let after = h
        .acquire("gpu", "greedy", 0, 2, Duration::ZERO)
        .await
        .unwrap();
    h.release(after.id).await.unwrap();
    h.release(one.id).await.unwrap();
}

/// 3 per minute means at most 3 in any 60 s: the fourth is refused with when to retry,
/// and a slot comes back only as the oldest grant leaves the trailing window.
pub async fn a_quota_never_grants_more_than_its_limit_in_any_window(h: Arc<dyn Coordination>) {
    let clock = h.clock();
    assert_eq!(h.permit("llm", "advisor", Duration::ZERO).await.unwrap(), 2);
    clock.advance(Duration::from_secs(20));
    assert_eq!(h.permit("llm", "advisor", Duration::ZERO).await.unwrap(), 1);
    clock.advance(Duration::from_secs(20));
    assert_eq!(h.permit("llm", "advisor", Duration::ZERO).await.unwrap(), 0);

    let refused = h
        .permit("llm", "advisor", Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::ResourceExhausted, "{refused:?}");
    let retry = refused.retry_after.expect("a retry-after");
    assert!(
        retry > Duration::from_secs(19) && retry <= Duration::from_secs(20),
        "the first grant leaves the window in 20 s: {retry:?}"
    );
    clock.advance(Duration::from_secs(19));
    let still = h.permit("llm", "advisor", Duration::ZERO).await;
    assert_eq!(still.unwrap_err().code, ErrorCode::ResourceExhausted);
    clock.advance(Duration::from_secs(1));
    assert_eq!(h.permit("llm", "advisor", Duration::ZERO).await.unwrap(), 0);
    let refused = h.permit("llm", "advisor", Duration::ZERO).await;
    assert_eq!(refused.unwrap_err().code, ErrorCode::ResourceExhausted);
}

/// A caller waiting for a permit is granted when the window frees a slot, not before.
pub async fn a_waiting_permit_is_granted_when_the_window_frees(h: Arc<dyn Coordination>) {
    for _ in 0..3 {
        h.permit("llm", "analytics", Duration::ZERO).await.unwrap();
    }
    let waiter = {
        let h = h.clone();
        tokio::spawn(async move { h.permit("llm", "advisor", FOREVER).await })
    };
    until_quota_waiters(h.as_ref(), "llm", 1).await;
    h.clock().advance(Duration::from_secs(59));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiter.is_finished(), "no slot frees before 60 s");
    h.clock().advance(Duration::from_secs(1));
    let remaining = soon("the permit", waiter).await.unwrap().unwrap();
    assert_eq!(
        remaining, 2,
        "the three grants at 0 s left the window together"
    );
    until_quota_waiters(h.as_ref(), "llm", 0).await;
}

/// Workers take the highest priority first; each request is answered once, with a
/// response or the worker's error; a repeated idempotency key gets the first id.
pub async fn a_request_queue_answers_by_priority(h: Arc<dyn Coordination>) {
    let submit = |body: &'static str, priority: i32, key: Option<&str>| Submission {
        priority,
        component: "game".into(),
        idempotency_key: key.map(str::to_owned),
        ..Submission::new(Bytes::from_static(body.as_bytes()))
    };
    let low = h
        .submit("advice", submit("low", 0, Some("k-low")))
        .await
        .unwrap();
    let high = h.submit("advice", submit("high", 5, None)).await.unwrap();
    let again = h
        .submit("advice", submit("low again", 0, Some("k-low")))
        .await;
    assert_eq!(
        again.unwrap(),
        low,
        "the same idempotency key, the same request"
    );
    assert_eq!(h.response("advice", high).await.unwrap(), None);

    let (id, body) = h
        .take("advice", "w1", FOREVER)
        .await
        .unwrap()
        .expect("taken");
    assert_eq!((id, &body[..]), (high, &b"high"[..]));
    h.complete("advice", high, Ok(Bytes::from_static(b"{\"move\":\"e4\"}")))
        .await
        .unwrap();
    let answered = h.response("advice", high).await.unwrap().expect("answered");
    assert_eq!(
        answered,
        (Ok(Bytes::from_static(b"{\"move\":\"e4\"}")), false)
    );
    let twice = h
        .complete("advice", high, Ok(Bytes::new()))
        .await
        .unwrap_err();
    assert_ne!(twice.code, ErrorCode::Internal, "{twice:?}");

    let (id, _) = h
        .take("advice", "w2", FOREVER)
        .await
        .unwrap()
        .expect("taken");
    assert_eq!(id, low);
    h.complete("advice", low, Err("upstream said no".into()))
        .await
        .unwrap();
    let answered = h.response("advice", low).await.unwrap().expect("answered");
    assert_eq!(answered.0, Err("upstream said no".to_owned()));
    let nothing = h.take("advice", "w1", Duration::ZERO).await.unwrap();
    assert_eq!(nothing, None, "the queue is empty");
}

/// With the quota used up, a request that carries a fallback is answered with it at
/// once, marked degraded.
pub async fn a_request_with_a_fallback_is_answered_when_the_quota_is_used_up(
    h: Arc<dyn Coordination>,
) {
    for _ in 0..3 {
        h.permit("llm", "other", Duration::ZERO).await.unwrap();
    }
    let id = h
        .submit(
            "advice",
            Submission {
                fallback: Some(Bytes::from_static(b"\"hold\"")),
                component: "game".into(),
                ..Submission::new(Bytes::from_static(b"what now?"))
            },
        )
        .await
        .unwrap();
    let answered = h
        .response("advice", id)
        .await
        .unwrap()
        .expect("answered at once");
    assert_eq!(answered, (Ok(Bytes::from_static(b"\"hold\"")), true));
}

/// Names that are not configured are NOT_FOUND; a bad argument is refused naming it.
pub async fn refuses_unknown_names_and_bad_input_naming_the_field(h: Arc<dyn Coordination>) {
    assert_eq!(
        code(h.acquire("nope", "a", 0, 1, Duration::ZERO).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(h.permit("nope", "a", Duration::ZERO).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(
            h.submit("nope", Submission::new(Bytes::from_static(b"x")))
                .await
        ),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(h.take("nope", "w", Duration::ZERO).await),
        ErrorCode::NotFound
    );
    let too_long = h
        .acquire("solo", "a", 0, 1, Duration::from_secs(24 * 3600))
        .await
        .unwrap_err();
    assert_eq!(
        (too_long.code, too_long.field.as_deref()),
        (ErrorCode::InvalidArgument, Some("wait_ms")),
        "{too_long:?}"
    );
    assert_eq!(
        code(h.release(ganglion_coordinator::LeaseId(987_654)).await),
        ErrorCode::NotFound
    );
}
