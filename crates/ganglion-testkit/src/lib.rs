//! One conformance suite for every implementation of the bus, and one for every
//! implementation of the coordinator ([`coordinator_scenarios`] against each
//! [`Coordination`](coordination::Coordination), run by [`coordinator_conformance!`]).
//!
//! The bus's: The scenarios in
//! [`scenarios`] are written once against [`EventBus`](ganglion_core::EventBus) and run
//! against each [`Harness`]: the embedded engine on disk, `TestBus`, and the remote
//! client talking to a server (over a `TestBus`, so that virtual time reaches through
//! the network). An engine added later joins by adding a harness and one
//! [`conformance!`] line.
//!
//! Time is virtual everywhere: a scenario advances the harness's clock, after waiting
//! on observable state (a subscription's counters) for the engine to have seen what the
//! step depends on. Only "nothing arrives" checks wait in real time, briefly: they can
//! pass wrongly on a slow machine, never fail wrongly.

pub mod coordination;
pub mod coordinator_scenarios;
pub mod harness;
pub mod scenarios;

pub use harness::Harness;

/// How long a scenario's step may take in real time before the scenario fails.
const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `f`, or a panic naming `what` once it has taken [`WAIT`].
pub(crate) async fn soon<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Expands to one `#[tokio::test]` per scenario, each on a fresh harness made by
/// `$make` (an async fn returning a [`Harness`]).
#[macro_export]
macro_rules! conformance {
    ($make:path) => {
        $crate::conformance!(@each $make;
            routes_by_wildcards,
            acks_and_nacks_with_a_delay,
            redelivers_after_the_ack_deadline,
            backs_off_then_dead_letters_and_redrives,
            shares_a_queue_group,
            resumes_a_durable,
            keeps_the_last_per_key_in_a_batch_window,
            replays_by_sequence_and_time,
            filters_by_type_and_header,
            dedupes_idempotency_keys,
            holds_back_past_max_in_flight,
            refuses_bad_input_naming_the_field
        );
    };
    (@each $make:path; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let harness = $make().await;
                $crate::scenarios::$name(&harness).await;
            }
        )*
    };
}

/// Expands to one `#[tokio::test]` per coordinator scenario, each on a fresh
/// coordinator made by `$make` (an async fn returning a
/// [`Coordination`](coordination::Coordination)).
#[macro_export]
macro_rules! coordinator_conformance {
    ($make:path) => {
        $crate::coordinator_conformance!(@each $make;
            leases_go_by_priority_with_rising_fencing_tokens,
            a_wait_in_line_ends_when_its_time_is_up,
            a_multi_unit_lease_gets_distinct_units,
            a_quota_never_grants_more_than_its_limit_in_any_window,
            a_waiting_permit_is_granted_when_the_window_frees,
            a_request_queue_answers_by_priority,
            a_request_with_a_fallback_is_answered_when_the_quota_is_used_up,
            refuses_unknown_names_and_bad_input_naming_the_field
        );
    };
    (@each $make:path; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let coordinator = std::sync::Arc::new($make().await);
                $crate::coordinator_scenarios::$name(coordinator).await;
            }
        )*
    };
}
