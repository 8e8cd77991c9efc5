//! Quotas, lease options and breaker thresholds change on a running coordinator (what a
//! config reload does), on a virtual clock.

use std::sync::Arc;
use std::time::Duration;

use ganglion_coordinator::breaker::{BreakerSpec, BreakerState};
use ganglion_coordinator::lease::{AcquireRequest, PoolSpec, PoolsOptions};
use ganglion_coordinator::quota::QuotaSpec;
use ganglion_coordinator::{Coordinator, CoordinatorConfig, CoordinatorError};
use ganglion_core::ManualClock;

mod common;
use common::until;

const HOUR: Duration = Duration::from_secs(3600);

fn config() -> CoordinatorConfig {
    CoordinatorConfig {
        pools: vec![PoolSpec::counted("gpu", 2)],
        quotas: vec![QuotaSpec::new("claude", 3, HOUR)],
        breakers: vec![BreakerSpec {
            failure_threshold: 5,
            ..BreakerSpec::new("claude-api")
        }],
        ..CoordinatorConfig::default()
    }
}

fn coordinator() -> (ManualClock, Coordinator) {
    let clock = ManualClock::at_fixed_instant();
    let coordinator = Coordinator::open(config(), Arc::new(clock.clone()), None).unwrap();
    (clock, coordinator)
}

#[tokio::test]
async fn a_raised_quota_grants_to_its_waiter_at_once_and_a_lowered_one_counts_past_grants() {
    let (clock, c) = coordinator();
    let quota = c.quota("claude").unwrap().clone();
    for _ in 0..3 {
        quota.try_acquire("advisor").unwrap();
    }
    let waiting = {
        let quota = quota.clone();
        tokio::spawn(async move { quota.acquire("trainer", 0, HOUR).await })
    };
    until("the trainer waits on the clock", || clock.sleepers() >= 1).await;
    assert!(!waiting.is_finished(), "3 per hour is used up");

    let mut raised = config();
    raised.quotas[0].limit = 5;
    assert_eq!(c.reconfigure(&raised).unwrap(), Vec::<String>::new());
    until("the raise grants the waiter", || waiting.is_finished()).await;
    let permit = waiting
        .await
        .unwrap()
        .expect("the waiter is granted by the raise");
    assert_eq!((permit.used, permit.remaining), (4, 1));
    quota.try_acquire("advisor").unwrap();
    assert!(quota.try_acquire("advisor").is_err(), "5 per hour now");

    // Lowered to 2: the 5 grants of this hour still count, so nothing until they age.
    let mut lowered = config();
    lowered.quotas[0].limit = 2;
    c.reconfigure(&lowered).unwrap();
    assert_eq!(quota.status().limit, 2);
    let Err(CoordinatorError::ResourceExhausted { retry_after, .. }) = quota.try_acquire("advisor")
    else {
        panic!("5 grants made this hour exceed the new limit of 2");
    };
    assert_eq!(retry_after, HOUR);
    clock.advance(HOUR);
    quota.try_acquire("advisor").unwrap();
    quota.try_acquire("advisor").unwrap();
    assert!(quota.try_acquire("advisor").is_err());
}

#[tokio::test]
async fn new_leases_get_a_changed_max_hold_and_held_ones_keep_theirs() {
    let (clock, c) = coordinator();
    let pools = c.pools().clone();
    let held = pools
        .acquire(AcquireRequest::new("gpu", "trainer"))
        .await
        .unwrap();
    assert_eq!(
        held.max_hold_until_micros - held.granted_at_micros,
        300_000_000
    );

    let mut changed = config();
    changed.leases = PoolsOptions {
        max_hold: Duration::from_secs(60),
        grace: Duration::from_secs(5),
        ..PoolsOptions::default()
    };
    c.reconfigure(&changed).unwrap();
    let fresh = pools
        .acquire(AcquireRequest::new("gpu", "advisor"))
        .await
        .unwrap();
    assert_eq!(
        fresh.max_hold_until_micros - fresh.granted_at_micros,
        60_000_000
    );

    // The fresh lease is revoked at 60 s; the new 5 s grace then releases it, while the
    // lease granted before the change is still within its 300 s.
    for _ in 0..6 {
        clock.advance(Duration::from_secs(10));
        pools.renew(held.id).unwrap();
        let _ = pools.renew(fresh.id);
        pools.tick();
    }
    clock.advance(Duration::from_secs(5));
    pools.renew(held.id).unwrap();
    pools.tick();
    let status = pools.status();
    let gpu = status.iter().find(|p| p.name == "gpu").unwrap();
    let holders: Vec<&str> = gpu.holders.iter().map(|h| h.holder.as_str()).collect();
    assert_eq!(holders, ["trainer"], "{gpu:?}");
}

#[test]
fn a_lowered_breaker_threshold_counts_the_failures_already_seen() {
    let (_clock, c) = coordinator();
    let breaker = c.breaker("claude-api").unwrap().clone();
    for _ in 0..2 {
        breaker.allow().unwrap().failed();
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
    let mut changed = config();
    changed.breakers[0].failure_threshold = 3;
    c.reconfigure(&changed).unwrap();
    assert_eq!(breaker.spec().failure_threshold, 3);
    breaker.allow().unwrap().failed();
    assert_eq!(breaker.state(), BreakerState::Open);
}

#[test]
fn a_bad_change_is_refused_whole_and_added_or_removed_names_need_a_restart() {
    let (_clock, c) = coordinator();
    let mut bad = config();
    bad.quotas[0].limit = 10;
    bad.breakers[0].half_open_probes = 0;
    let Err(CoordinatorError::InvalidArgument { field, .. }) = c.reconfigure(&bad) else {
        panic!("half_open_probes 0 is refused");
    };
    assert_eq!(field, "breakers.claude-api.half_open_probes");
    assert_eq!(
        c.quota("claude").unwrap().status().limit,
        3,
        "nothing applied"
    );

    // A quota keeps its name.
    let Err(CoordinatorError::InvalidArgument { field, .. }) = c
        .quota("claude")
        .unwrap()
        .reconfigure(QuotaSpec::new("openai", 10, HOUR))
    else {
        panic!("another quota's spec is refused");
    };
    assert_eq!(field, "name");

    let mut renamed = config();
    renamed.quotas.push(QuotaSpec::new("openai", 10, HOUR));
    renamed.breakers.clear();
    assert_eq!(
        c.reconfigure(&renamed).unwrap(),
        ["quotas.openai", "breakers.claude-api"]
    );
}
