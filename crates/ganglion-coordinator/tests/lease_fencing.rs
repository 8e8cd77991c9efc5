//! Leases on a virtual clock: capacity, fencing, order with aging, TTL reclaim, the
//! maximum hold time, restarts, and 10,000 random steps of 8 contenders.

use std::collections::VecDeque;
use std::future::Future as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ganglion_coordinator::lease::{
    AcquireRequest, LeaseEvent, LeaseSnapshot, LeaseStage, LeaseStore, PoolSpec, Pools,
    PoolsOptions,
};
use ganglion_coordinator::{CoordinatorError, FencingToken, LeaseId};
use ganglion_core::ManualClock;

mod common;
use common::until;

fn pools(specs: Vec<PoolSpec>) -> (ManualClock, Arc<Pools>) {
    let clock = ManualClock::at_fixed_instant();
    let pools = Pools::new(specs, PoolsOptions::default(), Arc::new(clock.clone())).unwrap();
    (clock, Arc::new(pools))
}

fn now_request(pool: &str, holder: &str) -> AcquireRequest {
    AcquireRequest::new(pool, holder)
}

/// Every lease event from now on, in order.
fn record(pools: &Pools) -> Arc<Mutex<VecDeque<LeaseEvent>>> {
    let events = Arc::new(Mutex::new(VecDeque::new()));
    let sink = events.clone();
    pools.on_event(Some(Box::new(move |event| {
        sink.lock().unwrap().push_back(event);
    })));
    events
}

fn waiters(pools: &Pools) -> usize {
    pools.status()[0].waiters
}

#[tokio::test]
async fn grants_carry_units_cuda_devices_and_increasing_tokens() {
    let (_clock, pools) = pools(vec![
        PoolSpec::gpus("gpu", &["0", "1"]),
        PoolSpec::counted("redis", 20),
    ]);
    let mut two = now_request("gpu", "trainer");
    two.amount = 2;
    let lease = pools.acquire(two).await.unwrap();
    assert_eq!(lease.units, ["0", "1"]);
    assert_eq!(lease.cuda_visible_devices.as_deref(), Some("0,1"));
    pools.check_fence("gpu", lease.fencing_token).unwrap();
    let err = pools
        .acquire(now_request("gpu", "advisor"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CoordinatorError::DeadlineExceeded(_)),
        "{err:?}"
    );

    pools.release(lease.id).unwrap();
    let next = pools.acquire(now_request("gpu", "advisor")).await.unwrap();
    assert!(next.fencing_token > lease.fencing_token);
    assert!(
        pools.check_fence("gpu", lease.fencing_token).is_err(),
        "a released token is stale"
    );

    let conn = pools
        .acquire(now_request("redis", "analytics"))
        .await
        .unwrap();
    assert_eq!(conn.cuda_visible_devices, None);

    // Bad requests say what is wrong.
    let err = pools.acquire(now_request("tpu", "x")).await.unwrap_err();
    assert!(matches!(err, CoordinatorError::NotFound { .. }), "{err:?}");
    let mut too_many = now_request("gpu", "x");
    too_many.amount = 3;
    let err = pools.acquire(too_many).await.unwrap_err();
    assert!(
        matches!(err, CoordinatorError::InvalidArgument { ref field, .. } if field == "amount"),
        "{err:?}"
    );
    let err = pools
        .acquire(now_request("gpu", "has space"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CoordinatorError::InvalidArgument { ref field, .. } if field == "holder")
    );
    assert!(matches!(
        pools.release(LeaseId(999)),
        Err(CoordinatorError::NotFound { .. })
    ));
}

#[tokio::test]
async fn waiters_go_by_priority_then_arrival_and_one_release_grants_one() {
    let (_clock, pools) = pools(vec![PoolSpec::counted("gpu", 1)]);
    let first = pools.acquire(now_request("gpu", "holder")).await.unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (who, priority) in [("low-a", 0), ("high", 9), ("low-b", 0), ("mid", 5)] {
        let (line, order) = (pools.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let mut request = now_request("gpu", who);
            request.priority = priority;
            request.wait_timeout = Duration::from_secs(3600);
            let lease = line.acquire(request).await.unwrap();
            order.lock().unwrap().push(who);
            lease
        }));
        let n = tasks.len();
        until("the waiter joins the line", || waiters(&pools) == n).await;
    }
    let mut release = first.id;
    for expected in 1..=4 {
        pools.release(release).unwrap();
        until("the granted waiter returns", || {
            order.lock().unwrap().len() >= expected
        })
        .await;
        assert_eq!(
            order.lock().unwrap().len(),
            expected,
            "one release, one grant"
        );
        let holder = pools.status()[0].holders[0].clone();
        release = holder.id;
    }
    assert_eq!(*order.lock().unwrap(), ["high", "mid", "low-a", "low-b"]);
}

#[tokio::test]
async fn a_low_priority_waiter_is_served_within_the_aging_bound_under_constant_high_load() {
    let (clock, pools) = pools(vec![PoolSpec::counted("gpu", 1)]);
    pools.acquire(now_request("gpu", "first")).await.unwrap();
    let low = {
        let pools = pools.clone();
        tokio::spawn(async move {
            let mut request = now_request("gpu", "low");
            request.wait_timeout = Duration::from_secs(3600);
            pools.acquire(request).await.unwrap()
        })
    };
    until("low joins the line", || waiters(&pools) == 1).await;
    // High-priority work arrives faster than it is served: each holds a minute while
    // two more high-priority waiters join.
    let mut waited = Duration::ZERO;
    loop {
        let mut request = now_request("gpu", "high");
        request.priority = 10;
        request.wait_timeout = Duration::from_secs(3600);
        let before = waiters(&pools);
        for _ in 0..2 {
            let (pools, request) = (pools.clone(), request.clone());
            tokio::spawn(async move {
                let lease = pools.acquire(request).await.unwrap();
                lease.id
            });
        }
        until("two high waiters join", || waiters(&pools) == before + 2).await;
        clock.advance(Duration::from_secs(60));
        waited += Duration::from_secs(60);
        let holder = pools.status()[0].holders.first().cloned();
        if let Some(holder) = holder {
            if holder.holder == "low" {
                break;
            }
            pools.release(holder.id).unwrap();
        }
        if pools.status()[0]
            .holders
            .first()
            .is_some_and(|h| h.holder == "low")
        {
            break;
        }
        assert!(
            waited <= Duration::from_secs(12 * 60),
            "the low waiter starved"
        );
    }
    let lease = low.await.unwrap();
    assert_eq!(lease.holder, "low");
    assert!(
        waited >= Duration::from_secs(10 * 60),
        "served only once aged: {waited:?}"
    );
}

#[tokio::test]
async fn an_unrenewed_lease_is_reclaimed_after_its_ttl_and_its_token_fails_the_fence() {
    let (clock, pools) = pools(vec![PoolSpec::counted("gpu", 1)]);
    let events = record(&pools);
    let lease = pools.acquire(now_request("gpu", "crashed")).await.unwrap();
    let waiter = {
        let pools = pools.clone();
        tokio::spawn(async move {
            let mut request = now_request("gpu", "next");
            request.wait_timeout = Duration::from_secs(600);
            pools.acquire(request).await.unwrap()
        })
    };
    until("next joins the line", || waiters(&pools) == 1).await;
    clock.advance(Duration::from_secs(20));
    pools.renew(lease.id).unwrap();
    clock.advance(Duration::from_secs(29));
    pools.tick();
    pools.check_fence("gpu", lease.fencing_token).unwrap();
    clock.advance(Duration::from_secs(1));
    pools.tick();
    let next = waiter.await.unwrap();
    assert!(next.fencing_token > lease.fencing_token);
    assert!(matches!(
        pools.check_fence("gpu", lease.fencing_token),
        Err(CoordinatorError::Stale(_))
    ));
    assert!(matches!(
        pools.renew(lease.id),
        Err(CoordinatorError::Stale(_))
    ));
    let mut reasons = Vec::new();
    while let Some(event) = events.lock().unwrap().pop_front() {
        if let LeaseEvent::Released { reason, .. } = event {
            reasons.push(reason);
        }
    }
    assert_eq!(reasons, ["not renewed within its ttl"]);
}

#[tokio::test]
async fn max_hold_warns_at_90_percent_revokes_at_the_limit_and_forces_release_after_grace() {
    let (clock, pools) = pools(vec![PoolSpec::counted("gpu", 1)]);
    let events = record(&pools);
    let lease = pools.acquire(now_request("gpu", "greedy")).await.unwrap();
    let mut stage = pools.watch(lease.id);
    assert_eq!(*stage.borrow_and_update(), LeaseStage::Held);
    let mut seen = Vec::new();
    let renew_and_tick = |secs: u64| {
        for _ in 0..secs / 10 {
            clock.advance(Duration::from_secs(10));
            let _ = pools.renew(lease.id);
            pools.tick();
        }
    };
    renew_and_tick(260);
    renew_and_tick(10); // 270 s: 90% of 300
    while let Some(e) = events.lock().unwrap().pop_front() {
        seen.push(e);
    }
    assert!(
        matches!(seen.last(), Some(LeaseEvent::Warning { revoked_in, .. }) if *revoked_in == Duration::from_secs(30)),
        "{seen:?}"
    );
    assert_eq!(
        *stage.borrow_and_update(),
        LeaseStage::Warned {
            revoked_in: Duration::from_secs(30)
        }
    );
    renew_and_tick(30); // 300 s
    assert_eq!(
        *stage.borrow_and_update(),
        LeaseStage::Revoked {
            release_in: Duration::from_secs(30)
        }
    );
    assert!(
        matches!(events.lock().unwrap().pop_front(), Some(LeaseEvent::Revoked { release_in, .. }) if release_in == Duration::from_secs(30))
    );
    assert!(
        pools.check_fence("gpu", lease.fencing_token).is_err(),
        "revoked tokens are stale"
    );
    assert!(matches!(
        pools.renew(lease.id),
        Err(CoordinatorError::Stale(_))
    ));
    assert_eq!(
        pools.status()[0].free,
        0,
        "units stay reserved during the grace"
    );
    clock.advance(Duration::from_secs(30));
    pools.tick();
    assert!(
        matches!(events.lock().unwrap().pop_front(), Some(LeaseEvent::Released { reason, .. }) if reason.contains("grace"))
    );
    assert_eq!(pools.status()[0].free, 1);
    assert!(
        matches!(&*stage.borrow_and_update(), LeaseStage::Released { reason } if reason.contains("grace"))
    );
    assert!(
        stage.changed().await.is_err(),
        "a released lease changes no more"
    );
}

#[tokio::test]
async fn a_lease_watch_sees_its_own_lease_alone() {
    let (_clock, pools) = pools(vec![PoolSpec::counted("gpu", 2)]);
    let mine = pools.acquire(now_request("gpu", "mine")).await.unwrap();
    let other = pools.acquire(now_request("gpu", "other")).await.unwrap();
    let mut stage = pools.watch(mine.id);
    pools.release(other.id).unwrap();
    assert!(
        !stage.has_changed().unwrap(),
        "another lease's release is not this holder's business"
    );
    pools.release(mine.id).unwrap();
    assert_eq!(
        *stage.borrow_and_update(),
        LeaseStage::Released {
            reason: "released by its holder".into()
        }
    );
    let gone = pools.watch(mine.id);
    assert!(
        matches!(&*gone.borrow(), LeaseStage::Released { reason } if reason.contains("not held")),
        "{:?}",
        *gone.borrow()
    );
}

#[tokio::test]
async fn leases_and_token_counters_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_fixed_instant();
    let open = || {
        Pools::open(
            vec![PoolSpec::gpus("gpu", &["0", "1"])],
            PoolsOptions::default(),
            Arc::new(clock.clone()),
            dir.path(),
        )
        .unwrap()
    };
    let (kept, released) = {
        let pools = open();
        let kept = pools.acquire(now_request("gpu", "trainer")).await.unwrap();
        let released = pools.acquire(now_request("gpu", "advisor")).await.unwrap();
        pools.release(released.id).unwrap();
        (kept, released)
    };
    clock.advance(Duration::from_secs(10));
    let pools = open();
    pools.check_fence("gpu", kept.fencing_token).unwrap();
    assert_eq!(pools.renew(kept.id).unwrap().units, kept.units);
    let next = pools.acquire(now_request("gpu", "advisor")).await.unwrap();
    assert!(
        next.fencing_token > released.fencing_token,
        "tokens are never reused"
    );
    assert!(
        pools.acquire(now_request("gpu", "third")).await.is_err(),
        "both units are held"
    );

    // Past the TTL with nobody renewing, the restarted coordinator reclaims.
    drop(pools);
    clock.advance(Duration::from_secs(31));
    let pools = open();
    pools.tick();
    assert_eq!(pools.status()[0].free, 2);

    std::fs::write(
        dir.path().join("leases.state"),
        "pool gpu 5\nnonsense here\n",
    )
    .unwrap();
    let err = Pools::open(
        vec![PoolSpec::gpus("gpu", &["0"])],
        PoolsOptions::default(),
        Arc::new(clock.clone()),
        dir.path(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
}

/// A store in memory that can be told to fail, as a remote one (NATS KV) can.
#[derive(Debug, Default, Clone)]
struct MemStore {
    saved: Arc<Mutex<Option<LeaseSnapshot>>>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl LeaseStore for MemStore {
    fn load(&self) -> Result<Option<LeaseSnapshot>, CoordinatorError> {
        Ok(self.saved.lock().unwrap().clone())
    }

    fn save(&self, snapshot: &LeaseSnapshot) -> Result<(), CoordinatorError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(CoordinatorError::Unavailable("the store is down".into()));
        }
        *self.saved.lock().unwrap() = Some(snapshot.clone());
        Ok(())
    }
}

#[tokio::test]
async fn any_lease_store_keeps_leases_and_tokens_and_one_that_fails_stops_grants() {
    let clock = ManualClock::at_fixed_instant();
    let store = MemStore::default();
    let open = || {
        Pools::with_store(
            vec![PoolSpec::counted("db", 2)],
            PoolsOptions::default(),
            Arc::new(clock.clone()),
            Box::new(store.clone()),
        )
        .unwrap()
    };
    let first = open();
    let held = first.acquire(now_request("db", "writer")).await.unwrap();
    drop(first); // saves what changed
    let pools = open();
    pools.check_fence("db", held.fencing_token).unwrap();

    store
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = pools.renew(held.id).unwrap();
    assert!(pools.flush().is_err(), "the store is down");
    let refused = pools
        .acquire(now_request("db", "reader"))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, CoordinatorError::Unavailable(m) if m.contains("cannot be written")),
        "{refused}"
    );
    store
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let granted = pools.acquire(now_request("db", "reader")).await.unwrap();
    assert!(granted.fencing_token > held.fencing_token);
    assert_eq!(pools.write_error(), None);
    let saved = store.saved.lock().unwrap().clone().unwrap();
    assert_eq!(
        saved.leases.len(),
        2,
        "the grant was saved before it was handed out"
    );
}

/// What a contender is doing.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Idle,
    /// Holds (it believes) the lease with this id and token, renewing it.
    Holding(LeaseId, FencingToken),
    /// Holds (it believes) but is paused: it neither renews nor writes until resumed.
    Paused(LeaseId, FencingToken),
    /// Killed while holding: it never releases.
    Dead,
}

#[test]
fn eight_contenders_10000_random_steps_never_two_holders_and_stale_writes_refused() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for seed in [3u64, 11, 2024] {
        let (clock, pools) = pools(vec![PoolSpec::counted("gpu", 1)]);
        let mut rng = seed;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut roles = [Role::Idle; 8];
        let mut last_accepted_token = FencingToken(0);
        let mut last_granted_token = FencingToken(0);
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..10_000 {
            let who = next(8) as usize;
            match (roles[who], next(6)) {
                // A killed process comes back later as a new one, knowing nothing.
                (Role::Dead, 0) => roles[who] = Role::Idle,
                (Role::Dead, _) => {}
                (Role::Idle, _) => {
                    let request = now_request("gpu", &format!("c{who}"));
                    if let Ok(lease) = runtime.block_on(pools.acquire(request)) {
                        assert!(lease.fencing_token > last_granted_token);
                        last_granted_token = lease.fencing_token;
                        roles[who] = Role::Holding(lease.id, lease.fencing_token);
                    }
                }
                (Role::Holding(id, _), 0) => {
                    let _ = pools.release(id);
                    roles[who] = Role::Idle;
                }
                (Role::Holding(id, token), 1) => roles[who] = Role::Paused(id, token),
                (Role::Holding(..), 2) => roles[who] = Role::Dead,
                (Role::Holding(id, token) | Role::Paused(id, token), step) => {
                    if matches!(roles[who], Role::Paused(..)) && step < 4 {
                        continue; // still paused
                    }
                    roles[who] = Role::Holding(id, token);
                    if pools.renew(id).is_err() {
                        // It learns it lost the lease; a write it attempts anyway must fail.
                        roles[who] = Role::Idle;
                    }
                    // The protected sink: accept only what passes the fence.
                    if pools.check_fence("gpu", token).is_ok() {
                        assert!(
                            token >= last_accepted_token,
                            "a stale token was accepted after a newer one"
                        );
                        last_accepted_token = token;
                        accepted += 1;
                    } else {
                        refused += 1;
                    }
                }
            }
            if next(4) == 0 {
                clock.advance(Duration::from_secs(next(25)));
                pools.tick();
            }
            // Never two live holders: at most one believer passes the fence.
            let live = roles
                .iter()
                .filter(|r| matches!(r, Role::Holding(_, t) | Role::Paused(_, t) if pools.check_fence("gpu", *t).is_ok()))
                .count();
            assert!(live <= 1, "two live holders: {roles:?}");
            let status = &pools.status()[0];
            assert!(status.holders.len() <= 1);
        }
        assert!(
            accepted > 100 && refused > 10,
            "seed {seed}: accepted {accepted}, refused {refused}"
        );
    }
}

#[tokio::test]
async fn the_timer_task_reclaims_on_its_own_and_sleeps_between_deadlines() {
    let (clock, pools) = pools(vec![PoolSpec::counted("gpu", 1)]);
    let timers = tokio::spawn(pools.clone().run_timers());
    let lease = pools.acquire(now_request("gpu", "crashed")).await.unwrap();
    // Idle between deadlines: the task waits on the clock instead of spinning (a spinning
    // task would starve this single-threaded runtime and the test would never return).
    until("the timer task sleeps on the clock", || {
        clock.sleepers() >= 1
    })
    .await;
    clock.advance(Duration::from_secs(31));
    until("the lease is reclaimed without a manual tick", || {
        pools.status()[0].free == 1
    })
    .await;
    assert!(pools.check_fence("gpu", lease.fencing_token).is_err());
    timers.abort();
}

#[tokio::test]
async fn the_timer_task_writes_changes_within_50_ms() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_fixed_instant();
    let pools = Arc::new(
        Pools::open(
            vec![PoolSpec::counted("gpu", 1)],
            PoolsOptions::default(),
            Arc::new(clock.clone()),
            dir.path(),
        )
        .unwrap(),
    );
    let timers = tokio::spawn(pools.clone().run_timers());
    let path = dir.path().join("leases.state");
    let read = || std::fs::read_to_string(&path).unwrap();
    let lease = pools.acquire(now_request("gpu", "trainer")).await.unwrap();
    let held = format!("lease {} gpu trainer", lease.id);
    // The first grant opens a block of fencing tokens: written before it is returned.
    assert!(read().contains(&held));
    pools.release(lease.id).unwrap();
    assert!(read().contains(&held), "a release waits for the timer task");
    clock.advance(Duration::from_millis(50));
    until("the release is written within 50 ms", || {
        !read().contains("\nlease ")
    })
    .await;
    timers.abort();
}

#[test]
fn gpu_discovery_reports_devices_or_a_reason_without_failing() {
    // Machines with a driver list device indices; without one, the reason is reported
    // (this is what CI and the development machine see).
    match ganglion_coordinator::lease::discover_gpus() {
        Ok(gpus) => assert!(gpus.iter().all(|g| g.parse::<u32>().is_ok()), "{gpus:?}"),
        Err(reason) => assert!(reason.starts_with("NVML"), "{reason}"),
    }
}

/// Two GPUs, one held. `big` (2 units) waits at the head of the line and, the line
/// being strict, `small` (1 unit) waits behind it although a unit is free. When `big`
/// gives up (its call dropped, or out of time), `small` is served at once.
#[tokio::test]
async fn a_waiter_that_leaves_the_head_of_the_line_lets_the_next_one_through() {
    for dropped in [true, false] {
        let (clock, pools) = pools(vec![PoolSpec::counted("gpu", 2)]);
        let held = pools.acquire(now_request("gpu", "trainer")).await.unwrap();
        let big = {
            let pools = pools.clone();
            tokio::spawn(async move {
                let mut request = now_request("gpu", "big");
                request.amount = 2;
                request.wait_timeout = Duration::from_secs(60);
                pools.acquire(request).await
            })
        };
        until("big joins the line", || waiters(&pools) == 1).await;
        let small = {
            let pools = pools.clone();
            tokio::spawn(async move {
                let mut request = now_request("gpu", "small");
                request.wait_timeout = Duration::from_secs(600);
                pools.acquire(request).await
            })
        };
        until("small waits behind big", || waiters(&pools) == 2).await;
        assert_eq!(pools.status()[0].free, 1, "a unit is free, yet small waits");

        if dropped {
            big.abort();
            assert!(big.await.unwrap_err().is_cancelled());
        } else {
            clock.advance(Duration::from_secs(60));
            let err = big.await.unwrap().unwrap_err();
            assert!(
                matches!(err, CoordinatorError::DeadlineExceeded(_)),
                "{err:?}"
            );
        }
        until("small is served once big is gone", || small.is_finished()).await;
        let lease = small.await.unwrap().unwrap();
        assert_eq!(lease.holder, "small");
        assert_eq!(pools.status()[0].waiters, 0);
        pools.release(held.id).unwrap();
    }
}

/// A grant that reaches a waiter whose call was dropped in the same instant is released,
/// not left to its TTL.
#[tokio::test]
async fn a_grant_to_a_waiter_that_went_away_is_released() {
    let (_clock, pools) = pools(vec![PoolSpec::counted("gpu", 1)]);
    let events = record(&pools);
    let held = pools.acquire(now_request("gpu", "trainer")).await.unwrap();
    let mut request = now_request("gpu", "gone");
    request.wait_timeout = Duration::from_secs(60);
    let mut waiting = Box::pin(pools.acquire(request));
    // Poll once: the waiter is in line.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(waiting.as_mut().poll(&mut cx).is_pending());
    // The grant is made, then the call is dropped before it reads it.
    pools.release(held.id).unwrap();
    drop(waiting);
    assert_eq!(pools.status()[0].free, 1, "the unit is back");
    let reasons: Vec<String> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            LeaseEvent::Released { holder, reason, .. } if holder == "gone" => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, ["its requester went away"]);
}
