//! Quotas on a virtual clock: exact over every trailing window under concurrency, shares,
//! priority, the near-limit signal, upstream limits, and restarts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ganglion_coordinator::CoordinatorError;
use ganglion_coordinator::quota::{Quota, QuotaRecord, QuotaSpec, QuotaState, QuotaStore};
use ganglion_core::{Clock, ManualClock};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const HOUR: Duration = Duration::from_secs(3600);

fn clock() -> ManualClock {
    ManualClock::at_fixed_instant()
}

/// The most grants in any interval `[s, s + window)`, by two pointers over sorted times.
fn max_in_any_window(times: &[u64], window: u64) -> usize {
    let mut times = times.to_vec();
    times.sort_unstable();
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= window {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

/// Something that decides grants at a time.
trait Limiter {
    fn try_grant(&self) -> bool;
}

impl Limiter for Quota {
    fn try_grant(&self) -> bool {
        self.try_acquire("client").is_ok()
    }
}

/// The usual mistake: a counter reset at each window boundary.
struct FixedWindow {
    clock: ManualClock,
    limit: u32,
    window: u64,
    state: std::sync::Mutex<(u64, u32)>,
}

impl Limiter for FixedWindow {
    fn try_grant(&self) -> bool {
        let now = self.clock.now_micros();
        let mut state = self.state.lock().unwrap();
        let bucket = now / self.window;
        if state.0 != bucket {
            *state = (bucket, 0);
        }
        if state.1 < self.limit {
            state.1 += 1;
            true
        } else {
            false
        }
    }
}

/// 100 clients hammer from half an hour into the first window, at random steps of up to
/// a minute, for 2 hours; returns the grant times (µs).
fn hammer(clock: &ManualClock, limiter: &(dyn Limiter + Sync), seed: u64) -> Vec<u64> {
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    clock.advance(
        Duration::from_secs(1800) - Duration::from_micros(clock.now_micros() % 3_600_000_000),
    );
    let end = clock.now_micros() + 2 * 3_600_000_000 - 1;
    let mut grants = Vec::new();
    while clock.now_micros() < end {
        // 100 clients on 4 threads at this instant.
        let granted: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..25)
                            .filter(|_| limiter.try_grant())
                            .map(|_| clock.now_micros())
                            .collect::<Vec<u64>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        grants.extend(granted);
        let step = 1 + next() % 60_000_000;
        clock.advance(Duration::from_micros(
            step.min(end - clock.now_micros()).max(1),
        ));
    }
    grants
}

#[test]
fn a_hundred_clients_for_two_hours_never_get_101_in_any_hour() {
    for seed in [1u64, 7, 42] {
        let clock = clock();
        let quota = Quota::new(
            QuotaSpec::parse("claude", "100 per 1h").unwrap(),
            Arc::new(clock.clone()),
        )
        .unwrap();
        let grants = hammer(&clock, &quota, seed);
        assert_eq!(
            max_in_any_window(&grants, 3_600_000_000),
            100,
            "seed {seed}"
        );
        assert_eq!(grants.len(), 200, "seed {seed}");
    }
}

#[test]
fn the_same_hammer_catches_a_fixed_window_limiter() {
    // A test of the test: the checker must see what a fixed window lets through.
    let clock = clock();
    let fixed = FixedWindow {
        clock: clock.clone(),
        limit: 100,
        window: 3_600_000_000,
        state: std::sync::Mutex::new((0, 0)),
    };
    let grants = hammer(&clock, &fixed, 1);
    assert!(max_in_any_window(&grants, 3_600_000_000) > 100);
}

#[test]
fn concurrent_try_acquire_at_one_instant_grants_exactly_the_limit() {
    let clock = clock();
    let quota = Quota::new(QuotaSpec::new("burst", 1000, HOUR), Arc::new(clock.clone())).unwrap();
    let granted: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| (0..1000).filter(|_| quota.try_acquire("x").is_ok()).count()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(granted, 1000);
    let status = quota.status();
    assert_eq!((status.used, status.remaining), (1000, 0));
}

#[test]
fn a_denial_says_when_the_oldest_grant_leaves_the_window() {
    let clock = clock();
    let quota = Quota::new(
        QuotaSpec::parse("q", "2 per 10s").unwrap(),
        Arc::new(clock.clone()),
    )
    .unwrap();
    quota.try_acquire("a").unwrap();
    clock.advance(Duration::from_secs(3));
    quota.try_acquire("a").unwrap();
    let Err(CoordinatorError::ResourceExhausted { retry_after, .. }) = quota.try_acquire("a")
    else {
        panic!("the third call in 10 s must be denied");
    };
    assert_eq!(retry_after, Duration::from_secs(7));
    clock.advance(Duration::from_secs(7) - Duration::from_micros(1));
    assert!(quota.try_acquire("a").is_err(), "one microsecond early");
    clock.advance(Duration::from_micros(1));
    quota.try_acquire("a").unwrap();
}

#[test]
fn property_no_window_ever_holds_more_than_the_limit() {
    let mut runner = TestRunner::new(Config {
        cases: 64,
        ..Config::default()
    });
    runner
        .run(
            &(
                1u32..20,
                1u64..5_000,
                proptest::collection::vec(0u64..3_000, 1..400),
            ),
            |(limit, window_ms, steps_ms)| {
                let clock = clock();
                let quota = Quota::new(
                    QuotaSpec::new("p", limit, Duration::from_millis(window_ms)),
                    Arc::new(clock.clone()),
                )
                .unwrap();
                let mut grants = Vec::new();
                for step in steps_ms {
                    clock.advance(Duration::from_millis(step));
                    if quota.try_acquire("c").is_ok() {
                        grants.push(clock.now_micros());
                    }
                }
                prop_assert!(max_in_any_window(&grants, window_ms * 1000) <= limit as usize);
                Ok(())
            },
        )
        .unwrap();
}

/// Drives the virtual clock forward in `step`s until `done` or `limit` of virtual time.
async fn drive(
    clock: &ManualClock,
    step: Duration,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) {
    let mut elapsed = Duration::ZERO;
    while !done() && elapsed < limit {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        clock.advance(step);
        elapsed += step;
    }
}

#[tokio::test]
async fn shares_1_2_1_over_a_saturated_hour_give_25_50_25() {
    let clock = clock();
    let mut spec = QuotaSpec::parse("claude", "100 per 1h").unwrap();
    spec.shares = BTreeMap::from([
        ("trainer".into(), 1),
        ("advisor".into(), 2),
        ("analytics".into(), 1),
    ]);
    let quota = Arc::new(Quota::new(spec, Arc::new(clock.clone())).unwrap());
    // Saturate before anything is granted: an upstream limit holds the first second.
    quota.report_upstream_limit(Duration::from_secs(1)).unwrap();
    let counts = Arc::new(std::sync::Mutex::new(BTreeMap::<(u64, String), u32>::new()));
    let start = clock.now_micros() + 1_000_000;
    let mut tasks = Vec::new();
    // Saturated: more requests queued than the hour can serve (each re-queues when
    // granted), so every grant is a choice between components.
    for component in ["trainer", "advisor", "analytics"] {
        for _ in 0..50 {
            let (quota, counts) = (quota.clone(), counts.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    // A wait is at most an hour; one that runs out waits again.
                    let permit = match quota
                        .acquire(component, 0, ganglion_coordinator::MAX_WAIT)
                        .await
                    {
                        Ok(permit) => permit,
                        Err(CoordinatorError::DeadlineExceeded(_)) => continue,
                        Err(other) => panic!("{other}"),
                    };
                    let hour = (permit.granted_at_micros - start) / 3_600_000_000;
                    *counts
                        .lock()
                        .unwrap()
                        .entry((hour, component.to_owned()))
                        .or_default() += 1;
                }
            }));
        }
    }
    drive(
        &clock,
        Duration::from_secs(30),
        Duration::from_secs(2 * 3600),
        || false,
    )
    .await;
    let counts = counts.lock().unwrap().clone();
    for t in tasks {
        t.abort();
    }
    for hour in [0, 1] {
        let near =
            |c: &str, want: i64| (i64::from(counts[&(hour, c.to_owned())]) - want).abs() <= 2;
        assert!(
            near("trainer", 25) && near("advisor", 50) && near("analytics", 25),
            "hour {hour}: {counts:?}"
        );
    }
}

#[tokio::test]
async fn higher_priority_waiters_go_first_and_a_timeout_is_clean() {
    let clock = clock();
    let quota = Arc::new(
        Quota::new(
            QuotaSpec::parse("q", "1 per 1m").unwrap(),
            Arc::new(clock.clone()),
        )
        .unwrap(),
    );
    quota.try_acquire("holder").unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (who, priority) in [("low", 0), ("high", 10), ("mid", 5)] {
        let (quota, order) = (quota.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let permit = quota
                .acquire(who, priority, Duration::from_secs(600))
                .await
                .unwrap();
            order.lock().unwrap().push((who, permit.granted_at_micros));
        }));
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }
    // A try_acquire never overtakes the queue.
    assert_eq!(quota.status().waiters, 3);
    drive(
        &clock,
        Duration::from_secs(10),
        Duration::from_secs(400),
        || order.lock().unwrap().len() == 3,
    )
    .await;
    let order = order.lock().unwrap().clone();
    assert_eq!(
        order.iter().map(|(w, _)| *w).collect::<Vec<_>>(),
        ["high", "mid", "low"]
    );
    assert!(
        order.windows(2).all(|w| w[1].1 - w[0].1 >= 60_000_000),
        "{order:?}"
    );

    // A waiter that times out leaves no trace and takes no grant.
    quota.try_acquire("x").unwrap_err();
    let waiter = {
        let quota = quota.clone();
        tokio::spawn(async move { quota.acquire("late", 0, Duration::from_secs(5)).await })
    };
    drive(
        &clock,
        Duration::from_secs(1),
        Duration::from_secs(10),
        || waiter.is_finished(),
    )
    .await;
    assert!(matches!(
        waiter.await.unwrap(),
        Err(CoordinatorError::DeadlineExceeded(_))
    ));
    assert_eq!(quota.status().waiters, 0);
    assert_eq!(quota.status().used, 1);
}

#[test]
fn the_near_limit_signal_turns_on_at_80_percent_and_off_as_grants_age() {
    let clock = clock();
    let quota = Quota::new(
        QuotaSpec::parse("q", "10 per 1m").unwrap(),
        Arc::new(clock.clone()),
    )
    .unwrap();
    let near = quota.near_limit();
    for _ in 0..7 {
        quota.try_acquire("c").unwrap();
    }
    assert!(!*near.borrow());
    quota.try_acquire("c").unwrap();
    assert!(*near.borrow() && quota.status().near_limit);
    clock.advance(Duration::from_secs(60));
    assert!(!quota.status().near_limit);
    assert!(!*near.borrow());
}

#[test]
fn an_upstream_limit_suspends_grants_for_its_retry_after() {
    let clock = clock();
    let quota = Quota::new(
        QuotaSpec::parse("q", "100 per 1h").unwrap(),
        Arc::new(clock.clone()),
    )
    .unwrap();
    quota
        .report_upstream_limit(Duration::from_secs(30))
        .unwrap();
    let Err(CoordinatorError::ResourceExhausted { retry_after, .. }) = quota.try_acquire("c")
    else {
        panic!("suspended");
    };
    assert_eq!(retry_after, Duration::from_secs(30));
    clock.advance(Duration::from_secs(30));
    quota.try_acquire("c").unwrap();
}

#[test]
fn grants_and_suspensions_survive_a_restart_and_a_torn_line_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let spec = QuotaSpec::parse("claude", "3 per 1h").unwrap();
    {
        let quota = Quota::open(spec.clone(), Arc::new(clock.clone()), dir.path()).unwrap();
        for _ in 0..3 {
            quota.try_acquire("advisor").unwrap();
        }
    }
    // A grant being written when the process died: never returned, so not counted.
    let path = dir.path().join("claude.quota");
    let mut journal = std::fs::read_to_string(&path).unwrap();
    journal.push_str("g 12345");
    std::fs::write(&path, journal).unwrap();

    clock.advance(Duration::from_secs(600));
    let quota = Quota::open(spec.clone(), Arc::new(clock.clone()), dir.path()).unwrap();
    let Err(CoordinatorError::ResourceExhausted { retry_after, .. }) = quota.try_acquire("advisor")
    else {
        panic!("the restarted quota must remember its 3 grants");
    };
    assert_eq!(retry_after, Duration::from_secs(3000));
    assert_eq!(quota.status().by_component["advisor"], 3);
    clock.advance(Duration::from_secs(3000));
    quota.try_acquire("advisor").unwrap();
    quota
        .report_upstream_limit(Duration::from_secs(90))
        .unwrap();
    drop(quota);

    let quota = Quota::open(spec, Arc::new(clock.clone()), dir.path()).unwrap();
    assert_eq!(quota.status().suspended_for, Duration::from_secs(90));
    assert_eq!(quota.status().used, 1);

    // A damaged line in the middle is refused, naming the line.
    std::fs::write(&path, "g 1 a\nbogus\ng 2 a\n").unwrap();
    let err = Quota::open(
        QuotaSpec::parse("claude", "3 per 1h").unwrap(),
        Arc::new(clock.clone()),
        dir.path(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
}

#[tokio::test]
async fn a_reservation_is_kept_for_its_component_whoever_draws_first() {
    let clock = clock();
    let mut spec = QuotaSpec::parse("claude", "100 per 1h").unwrap();
    spec.reserve = BTreeMap::from([("advisor".into(), 40)]);
    let quota = Quota::new(spec, Arc::new(clock.clone())).unwrap();
    // The trainer draws first, as fast as it can: it gets the unreserved 60.
    let mut trainer = 0;
    while quota.try_acquire("trainer").is_ok() {
        trainer += 1;
        clock.advance(Duration::from_secs(1));
    }
    assert_eq!(trainer, 60);
    let refused = quota.try_acquire("analytics").unwrap_err();
    assert!(matches!(
        refused,
        CoordinatorError::ResourceExhausted { .. }
    ));
    // The advisor still gets its 40 in the same hour, and no more.
    for _ in 0..40 {
        quota.try_acquire("advisor").unwrap();
    }
    assert!(
        quota.try_acquire("advisor").is_err(),
        "the limit still holds"
    );
    assert_eq!(quota.status().used, 100);

    // A reservation used up is room like any other: the advisor may draw past it
    // when the others leave room.
    clock.advance(Duration::from_secs(3601));
    for _ in 0..70 {
        quota.try_acquire("advisor").unwrap();
    }
    let mut others = 0;
    while quota.try_acquire("trainer").is_ok() {
        others += 1;
    }
    assert_eq!(others, 30);

    // Reservations cannot promise more than the limit.
    let mut bad = QuotaSpec::parse("x", "10 per 1h").unwrap();
    bad.reserve = BTreeMap::from([("a".into(), 6), ("b".into(), 5)]);
    let err = bad.validate().unwrap_err();
    assert!(
        matches!(err, CoordinatorError::InvalidArgument { ref field, .. } if field == "reserve")
    );
}

#[tokio::test]
async fn a_waiter_blocked_by_a_reservation_lets_the_reserved_component_go_first() {
    let clock = clock();
    let mut spec = QuotaSpec::parse("q", "2 per 1m").unwrap();
    spec.reserve = BTreeMap::from([("advisor".into(), 1)]);
    let quota = Arc::new(Quota::new(spec, Arc::new(clock.clone())).unwrap());
    quota.try_acquire("trainer").unwrap();
    // The trainer waits (the last call is the advisor's); the advisor gets it at once.
    let waiting = {
        let quota = quota.clone();
        tokio::spawn(async move { quota.acquire("trainer", 10, Duration::from_secs(600)).await })
    };
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert!(!waiting.is_finished());
    quota.acquire("advisor", 0, Duration::ZERO).await.unwrap();
    drive(
        &clock,
        Duration::from_secs(5),
        Duration::from_secs(120),
        || waiting.is_finished(),
    )
    .await;
    let permit = waiting.await.unwrap().unwrap();
    assert!(permit.granted_at_micros >= clock.now_micros() - 120_000_000);
}

#[tokio::test]
async fn a_low_priority_waiter_ages_past_a_stream_of_high_priority_ones() {
    let clock = clock();
    let mut spec = QuotaSpec::parse("q", "1 per 1m").unwrap();
    spec.aging = Duration::from_secs(300);
    let quota = Arc::new(Quota::new(spec, Arc::new(clock.clone())).unwrap());
    quota.try_acquire("first").unwrap();
    let low = {
        let quota = quota.clone();
        tokio::spawn(async move { quota.acquire("low", 0, Duration::from_secs(3600)).await })
    };
    // Always two high-priority waiters ready: without aging the low one starves.
    let mut high = Vec::new();
    let mut elapsed = Duration::ZERO;
    while !low.is_finished() && elapsed < Duration::from_secs(3600) {
        high.retain(|t: &tokio::task::JoinHandle<_>| !t.is_finished());
        while high.len() < 2 {
            let quota = quota.clone();
            high.push(tokio::spawn(async move {
                quota.acquire("high", 10, Duration::from_secs(3600)).await
            }));
        }
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        clock.advance(Duration::from_secs(10));
        elapsed += Duration::from_secs(10);
    }
    assert!(
        low.is_finished(),
        "the low-priority waiter starved for an hour"
    );
    let permit = low.await.unwrap().unwrap();
    let waited = Duration::from_micros(
        permit.granted_at_micros - (clock.now_micros() - elapsed.as_micros() as u64),
    );
    assert!(
        waited >= Duration::from_secs(300) && waited <= Duration::from_secs(300 + 70),
        "served after aging (5 min) plus at most one window: {waited:?}"
    );
    for t in high {
        t.abort();
    }
}

/// A store in memory that can be told to fail, as a remote one (NATS KV) can; it keeps
/// every record appended, as a journal would.
#[derive(Debug, Default, Clone)]
struct MemStore {
    kept: Arc<std::sync::Mutex<QuotaState>>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl QuotaStore for MemStore {
    fn load(&mut self) -> Result<QuotaState, CoordinatorError> {
        Ok(self.kept.lock().unwrap().clone())
    }

    fn append(&mut self, record: &QuotaRecord) -> Result<(), CoordinatorError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(CoordinatorError::Unavailable("the store is down".into()));
        }
        let mut kept = self.kept.lock().unwrap();
        match record {
            QuotaRecord::Granted {
                at_micros,
                component,
            } => kept.grants.push((*at_micros, component.clone())),
            QuotaRecord::Suspended { until_micros } => kept.suspended_until_micros = *until_micros,
        }
        Ok(())
    }

    fn replace(&mut self, live: &QuotaState) -> Result<(), CoordinatorError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(CoordinatorError::Unavailable("the store is down".into()));
        }
        *self.kept.lock().unwrap() = live.clone();
        Ok(())
    }

    fn wants_compaction(&self) -> bool {
        false
    }
}

#[test]
fn any_quota_store_keeps_grants_across_a_restart_and_one_that_fails_grants_nothing() {
    let clock = clock();
    let store = MemStore::default();
    let open = || {
        Quota::with_store(
            QuotaSpec::new("claude", 2, HOUR),
            Arc::new(clock.clone()),
            Box::new(store.clone()),
        )
        .unwrap()
    };
    let quota = open();
    quota.try_acquire("advisor").unwrap();
    store
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let refused = quota.try_acquire("advisor").unwrap_err();
    assert!(
        matches!(refused, CoordinatorError::Unavailable(_)),
        "{refused}"
    );
    assert!(quota.write_error().is_some());
    store
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    quota.try_acquire("advisor").unwrap();
    assert_eq!(quota.write_error(), None, "rewritten, then appended");

    // A restart through the same store remembers both grants: the window is full.
    clock.advance(Duration::from_secs(60));
    let quota = open();
    assert_eq!(quota.status().used, 2);
    assert!(matches!(
        quota.try_acquire("advisor"),
        Err(CoordinatorError::ResourceExhausted { .. })
    ));
}
