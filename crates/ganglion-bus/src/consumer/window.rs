//! Batch windows: what goes into the open window (what is ready, as the in-flight limits
//! allow) and handing the closed one to a subscriber. What a window is, when it is full
//! and how it coalesces are engine-neutral: [`ganglion_core::bus::window`].

use ganglion_core::bus::window::Window;

use super::Consumer;

impl Consumer {
    pub(super) fn fill_window(&mut self) {
        let Some(batch) = self.options.batch.clone() else {
            return;
        };
        loop {
            if self.window.as_ref().is_some_and(|w| w.is_full(&batch)) {
                self.flush_window();
                if self.window.is_some() {
                    return; // no room with any subscriber
                }
                continue;
            }
            let (event, attempt) = if let Some(event) = self.ephemeral_ready.pop_front() {
                self.return_permits(self.shared.ephemeral_cost(&event));
                (event, 1)
            } else if self.may_send_durable()
                && let Some(ready) = self.pop_ready()
            {
                // Counted as in flight while it waits in the window.
                self.in_flight_bytes += ready.event.size();
                (ready.event, ready.attempt)
            } else {
                return;
            };
            let closes_at = self.now() + batch.window.unwrap_or_else(|| self.core.batch_window());
            let window = self.window.get_or_insert_with(|| Window::open(closes_at));
            window.push(event, attempt);
        }
    }

    /// Delivers the open window, coalesced per the subscription's aggregation.
    pub(super) fn flush_window(&mut self) {
        let (Some(window), Some(batch)) = (self.window.take(), self.options.batch.clone()) else {
            return;
        };
        let made = window.batch(&batch);
        let first = made
            .events
            .first()
            .filter(|e| e.attempt == 1)
            .map(|e| e.event.clone());
        match self.send(made.events, made.counts, made.seqs) {
            Some(member) => {
                let redelivered = window.items().iter().filter(|(_, a)| *a > 1).count();
                let covered = window.len() as u64;
                self.count_delivered(covered, redelivered as u64, first.as_deref());
                for (event, attempt) in window.into_items() {
                    if event.seq != 0 {
                        // Out of the window; in flight again if it waits for an ack.
                        self.in_flight_bytes -= event.size();
                        self.delivered(event.seq, event, attempt, member);
                    }
                }
            }
            None => self.window = Some(window),
        }
    }
}
