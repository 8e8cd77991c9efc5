//! Batch windows: gathering what is ready for a window's length (or its byte limit), then
//! delivering it as one batch, kept whole or aggregated (keep-last, count).

use std::collections::HashMap;

use ganglion_core::bus::{Aggregation, DeliveredEvent, KeyCount};

use super::{Consumer, Window};

impl Consumer {
    pub(super) fn fill_window(&mut self) {
        let Some(batch) = self.options.batch.clone() else {
            return;
        };
        loop {
            let window_len = self.window.as_ref().map_or(0, |w| w.items.len());
            if window_len >= batch.max_events {
                self.flush_window();
                if self.window.is_some() {
                    return; // no room with any subscriber
                }
                continue;
            }
            let window_bytes = self.window.as_ref().map_or(0, |w| w.bytes);
            if window_len > 0 && window_bytes >= batch.max_bytes {
                self.flush_window();
                if self.window.is_some() {
                    return;
                }
                continue;
            }
            let item = if let Some(event) = self.ephemeral_ready.pop_front() {
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
            let window = self.window.get_or_insert_with(|| Window {
                closes_at,
                items: Vec::new(),
                bytes: 0,
            });
            window.bytes += item.0.size();
            window.items.push(item);
        }
    }

    /// Delivers the open window, coalesced per the subscription's aggregation.
    pub(super) fn flush_window(&mut self) {
        let (Some(window), Some(batch)) = (self.window.take(), self.options.batch.clone()) else {
            return;
        };
        let seqs: Vec<u64> = window
            .items
            .iter()
            .map(|(e, _)| e.seq)
            .filter(|&s| s != 0)
            .collect();
        let (events, counts) = match batch.aggregation {
            Aggregation::None => {
                let events = window
                    .items
                    .iter()
                    .map(|(event, attempt)| DeliveredEvent {
                        event: event.clone(),
                        attempt: *attempt,
                        coalesced: 1,
                    })
                    .collect();
                (events, Vec::new())
            }
            Aggregation::KeepLast => {
                let mut last: HashMap<String, (usize, u64)> = HashMap::new();
                for (i, (event, _)) in window.items.iter().enumerate() {
                    let entry = last.entry(batch.key.of(event)).or_insert((i, 0));
                    *entry = (i, entry.1 + 1);
                }
                let mut kept: Vec<(usize, u64)> = last.into_values().collect();
                kept.sort_unstable();
                let events = kept
                    .into_iter()
                    .map(|(i, coalesced)| DeliveredEvent {
                        event: window.items[i].0.clone(),
                        attempt: window.items[i].1,
                        coalesced,
                    })
                    .collect();
                (events, Vec::new())
            }
            Aggregation::Count => {
                let mut counts: Vec<KeyCount> = Vec::new();
                let mut index: HashMap<String, usize> = HashMap::new();
                for (event, _) in &window.items {
                    let key = batch.key.of(event);
                    match index.get(&key) {
                        Some(&i) => counts[i].count += 1,
                        None => {
                            index.insert(key.clone(), counts.len());
                            counts.push(KeyCount { key, count: 1 });
                        }
                    }
                }
                (Vec::new(), counts)
            }
        };
        let first = events
            .first()
            .filter(|e| e.attempt == 1)
            .map(|e| e.event.clone());
        match self.send(events, counts, seqs) {
            Some(member) => {
                let redelivered = window.items.iter().filter(|(_, a)| *a > 1).count();
                let covered = window.items.len() as u64;
                self.count_delivered(covered, redelivered as u64, first.as_deref());
                for (event, attempt) in window.items {
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
