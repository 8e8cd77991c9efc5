//! What one subscription stream delivered and its client has not settled yet, so that
//! shutdown can wait for the acks already on their way instead of dropping them (a
//! dropped ack is a redelivery after the restart).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

/// At shutdown, a subscription stream stops delivering and waits at most this long for
/// its client to settle what it holds; whatever is still unsettled then is redelivered
/// after the restart, as after a crash.
pub(crate) const SETTLE_GRACE: Duration = Duration::from_secs(2);

/// The sequence numbers delivered on one stream and not yet acked, nacked or termed.
#[derive(Debug)]
pub(crate) struct Unsettled {
    seqs: Mutex<HashSet<u64>>,
    /// How many there are, for [`Unsettled::settled`] to wait on.
    count: watch::Sender<usize>,
}

impl Default for Unsettled {
    fn default() -> Self {
        Unsettled {
            seqs: Mutex::new(HashSet::new()),
            count: watch::Sender::new(0),
        }
    }
}

impl Unsettled {
    /// `seqs` went out to the client (again, for a redelivery).
    pub(crate) fn delivered(&self, seqs: impl IntoIterator<Item = u64>) {
        self.update(|held| held.extend(seqs));
    }

    /// The client acked, nacked or termed `seqs`.
    pub(crate) fn settled_by_client(&self, seqs: &[u64]) {
        self.update(|held| {
            for seq in seqs {
                held.remove(seq);
            }
        });
    }

    /// Resolves once nothing delivered is unsettled.
    pub(crate) async fn settled(&self) {
        let mut count = self.count.subscribe();
        let _ = count.wait_for(|n| *n == 0).await;
    }

    fn update(&self, change: impl FnOnce(&mut HashSet<u64>)) {
        let mut held = self.seqs.lock().unwrap_or_else(|e| e.into_inner());
        let before = held.len();
        change(&mut held);
        if held.len() != before {
            self.count.send_replace(held.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn settled_waits_for_every_delivered_seq() {
        let unsettled = Unsettled::default();
        assert!(
            unsettled.settled().now_or_never().is_some(),
            "nothing delivered yet"
        );
        unsettled.delivered([1, 2, 3]);
        unsettled.delivered([2]); // a redelivery is still one seq to settle
        unsettled.settled_by_client(&[1, 2]);
        unsettled.settled_by_client(&[9]); // not ours: changes nothing
        assert!(unsettled.settled().now_or_never().is_none(), "3 is held");
        let waiting = unsettled.settled();
        unsettled.settled_by_client(&[3]);
        assert!(waiting.now_or_never().is_some(), "the last seq is settled");
    }
}
