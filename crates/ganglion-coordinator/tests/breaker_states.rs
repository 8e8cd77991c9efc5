//! Circuit breakers on a virtual clock.

use std::sync::Arc;
use std::time::Duration;

use ganglion_coordinator::CoordinatorError;
use ganglion_coordinator::breaker::{Breaker, BreakerSpec, BreakerState};
use ganglion_core::ManualClock;

fn breaker(probes: u32) -> (ManualClock, Arc<Breaker>) {
    let clock = ManualClock::at_fixed_instant();
    let spec = BreakerSpec {
        failure_threshold: 3,
        recovery_timeout: Duration::from_secs(30),
        half_open_probes: probes,
        ..BreakerSpec::new("neo4j")
    };
    let breaker = Breaker::new(spec, Arc::new(clock.clone())).unwrap();
    (clock, breaker)
}

#[test]
fn consecutive_failures_open_it_and_a_success_resets_the_count() {
    let (_clock, b) = breaker(1);
    b.allow().unwrap().failed();
    b.allow().unwrap().failed();
    b.allow().unwrap().succeeded();
    b.allow().unwrap().failed();
    b.allow().unwrap().failed();
    assert_eq!(b.state(), BreakerState::Closed);
    b.allow().unwrap().failed();
    assert_eq!(b.state(), BreakerState::Open);
    let Err(CoordinatorError::ResourceExhausted { retry_after, .. }) = b.allow() else {
        panic!("an open breaker refuses");
    };
    assert_eq!(retry_after, Duration::from_secs(30));
}

#[test]
fn half_open_lets_probes_through_then_closes_or_reopens() {
    let (clock, b) = breaker(2);
    for _ in 0..3 {
        b.allow().unwrap().failed();
    }
    clock.advance(Duration::from_secs(29));
    assert_eq!(b.state(), BreakerState::Open);
    clock.advance(Duration::from_secs(1));
    assert_eq!(b.state(), BreakerState::HalfOpen);

    // Two probes at most; a third caller waits.
    let p1 = b.allow().unwrap();
    let p2 = b.allow().unwrap();
    assert!(b.allow().is_err());
    p1.succeeded();
    assert_eq!(b.state(), BreakerState::HalfOpen);
    p2.succeeded();
    assert_eq!(b.state(), BreakerState::Closed);

    // A failed probe reopens it for a full recovery timeout.
    for _ in 0..3 {
        b.allow().unwrap().failed();
    }
    clock.advance(Duration::from_secs(30));
    let probe = b.allow().unwrap();
    probe.failed();
    assert_eq!(b.state(), BreakerState::Open);
    clock.advance(Duration::from_secs(29));
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn a_call_dropped_without_a_verdict_counts_as_failed_and_stale_verdicts_are_ignored() {
    let (clock, b) = breaker(1);
    let slow = b.allow().unwrap();
    for _ in 0..3 {
        drop(b.allow().unwrap());
    }
    assert_eq!(b.state(), BreakerState::Open);
    // A call let in while closed reports success after the breaker opened: ignored.
    slow.succeeded();
    assert_eq!(b.state(), BreakerState::Open);
    clock.advance(Duration::from_secs(30));
    b.allow().unwrap().succeeded();
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn bad_settings_name_the_field() {
    let clock = Arc::new(ManualClock::at_fixed_instant());
    let err = Breaker::new(
        BreakerSpec {
            half_open_probes: 0,
            ..BreakerSpec::new("x")
        },
        clock,
    )
    .unwrap_err();
    assert!(
        matches!(err, CoordinatorError::InvalidArgument { ref field, .. } if field == "half_open_probes")
    );
}
