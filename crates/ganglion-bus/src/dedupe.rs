//! Publisher idempotency: the same `idempotency_key` within the window returns the first
//! publication's ack and appends nothing.
//!
//! A key is *reserved* while its first publication is being appended, so a concurrent
//! duplicate waits for that append instead of racing it into the log.

use std::collections::{HashMap, VecDeque};

use ganglion_core::bus::PublishAck;
use tokio::sync::watch;

#[derive(Debug)]
enum Slot {
    /// Being appended; its watch turns `true` when it settles.
    Reserved(watch::Sender<bool>),
    Done {
        ack: PublishAck,
        expires_micros: u64,
    },
}

/// What [`Dedupe::check`] says about a key.
#[derive(Debug)]
pub(crate) enum Check {
    /// New: the caller now holds the reservation and must `settle` it.
    Reserved,
    /// Seen within the window: this is its ack.
    Duplicate(PublishAck),
    /// Another publication of this key is in flight: wait until this is `true` (or
    /// closed), then check again.
    Wait(watch::Receiver<bool>),
}

#[derive(Debug, Default)]
pub(crate) struct Dedupe {
    slots: HashMap<String, Slot>,
    /// Settled keys in order of expiry (the window is the same for all).
    expiry: VecDeque<(u64, String)>,
}

impl Dedupe {
    fn evict(&mut self, now_micros: u64) {
        while let Some((expires, _)) = self.expiry.front() {
            if *expires > now_micros {
                break;
            }
            let (expires, key) = self.expiry.pop_front().expect("front exists");
            if matches!(self.slots.get(&key), Some(Slot::Done { expires_micros, .. }) if *expires_micros == expires)
            {
                self.slots.remove(&key);
            }
        }
    }

    pub(crate) fn check(&mut self, key: &str, now_micros: u64) -> Check {
        self.evict(now_micros);
        match self.slots.get(key) {
            Some(Slot::Done { ack, .. }) => Check::Duplicate(PublishAck {
                duplicate: true,
                ..ack.clone()
            }),
            Some(Slot::Reserved(settled)) => Check::Wait(settled.subscribe()),
            None => {
                self.slots
                    .insert(key.to_owned(), Slot::Reserved(watch::Sender::new(false)));
                Check::Reserved
            }
        }
    }

    /// Settles a reservation: remembers the ack until `expires_micros`, or forgets the
    /// key if the publication failed (`None`). Wakes whoever waited for it.
    pub(crate) fn settle(&mut self, key: &str, outcome: Option<(PublishAck, u64)>) {
        let slot = match outcome {
            Some((ack, expires_micros)) => {
                self.expiry.push_back((expires_micros, key.to_owned()));
                self.slots.insert(
                    key.to_owned(),
                    Slot::Done {
                        ack,
                        expires_micros,
                    },
                )
            }
            None => self.slots.remove(key),
        };
        if let Some(Slot::Reserved(settled)) = slot {
            settled.send_replace(true);
        }
    }

    /// Remembers a key found in the log at start-up.
    pub(crate) fn remember(&mut self, key: String, ack: PublishAck, expires_micros: u64) {
        self.expiry.push_back((expires_micros, key.clone()));
        self.slots.insert(
            key,
            Slot::Done {
                ack,
                expires_micros,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(seq: u64) -> PublishAck {
        PublishAck {
            seq,
            id: format!("id-{seq}").into(),
            duplicate: false,
        }
    }

    #[test]
    fn a_key_is_a_duplicate_within_the_window_and_new_after_it() {
        let mut d = Dedupe::default();
        assert!(matches!(d.check("k", 0), Check::Reserved));
        assert!(matches!(d.check("k", 1), Check::Wait(_)));
        d.settle("k", Some((ack(7), 1_000)));
        match d.check("k", 999) {
            Check::Duplicate(a) => assert_eq!((a.seq, a.duplicate), (7, true)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(d.check("k", 1_000), Check::Reserved));
    }

    #[test]
    fn a_failed_publication_releases_its_key() {
        let mut d = Dedupe::default();
        assert!(matches!(d.check("k", 0), Check::Reserved));
        d.settle("k", None);
        assert!(matches!(d.check("k", 0), Check::Reserved));
    }
}
