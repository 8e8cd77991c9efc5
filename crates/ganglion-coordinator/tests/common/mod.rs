//! What the coordinator's tests share.

/// Lets the other tasks run until `done` holds: what a test waits for is state it can
/// observe, not a number of turns. Panics naming `what` if it never comes.
pub(crate) async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..100_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never happened: {what}");
}
