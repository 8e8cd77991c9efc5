//! One conformance suite for every implementation of the bus. The scenarios in
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

pub mod harness;
pub mod scenarios;

pub use harness::Harness;

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
