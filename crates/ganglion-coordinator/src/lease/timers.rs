//! What time brings to leases: reclaim at the TTL, warning and revocation at the maximum
//! hold, release after the grace, aging waiters; and the task that runs it all and
//! writes changed state in bursts.

use std::sync::Arc;
use std::time::Duration;

use super::{Held, LeaseEvent, Pools, State, micros};
use crate::LeaseId;

/// Lease state changes are written at most this often (and at shutdown).
const WRITE_EVERY: Duration = Duration::from_millis(50);
/// How often a lease state that could not be written is tried again.
const RETRY_WRITE_EVERY: Duration = Duration::from_secs(1);

impl Pools {
    /// Applies what time has brought: reclaims leases past their TTL, warns and revokes
    /// at the maximum hold time, releases revoked leases after the grace, serves waiters
    /// that aged. Returns when it next needs to run (wall-clock µs), if ever.
    pub fn tick(&self) -> Option<u64> {
        let mut state = self.lock();
        let now = self.now(&mut state);
        let options = self.options();
        let grace = micros(options.grace);
        let max_hold_total = |h: &Held| h.lease.max_hold_until_micros - h.lease.granted_at_micros;
        let mut ids: Vec<LeaseId> = state.leases.keys().copied().collect();
        ids.sort_unstable();
        let mut changed = false;
        for id in ids {
            let Some(held) = state.leases.get_mut(&id) else {
                continue;
            };
            let (pool, holder) = (held.lease.pool.clone(), held.lease.holder.clone());
            if let Some(revoked_at) = held.revoked_at {
                if now >= revoked_at.saturating_add(grace) {
                    let _ = self.release_now(
                        &mut state,
                        id,
                        "forced release after the revocation grace",
                        now,
                    );
                    changed = true;
                }
                continue;
            }
            if now >= held.lease.expires_at_micros {
                let _ = self.release_now(&mut state, id, "not renewed within its ttl", now);
                changed = true;
                continue;
            }
            if now >= held.lease.max_hold_until_micros {
                held.revoked_at = Some(now);
                tracing::warn!(%pool, %holder, lease = id.0, "lease revoked at its maximum hold time");
                self.announce(
                    held,
                    LeaseEvent::Revoked {
                        lease: id,
                        pool,
                        holder,
                        release_in: options.grace,
                    },
                );
                changed = true;
                continue;
            }
            let warn_at = held.lease.granted_at_micros + max_hold_total(held) * 9 / 10;
            if !held.warned && now >= warn_at {
                held.warned = true;
                let revoked_in = Duration::from_micros(held.lease.max_hold_until_micros - now);
                self.announce(
                    held,
                    LeaseEvent::Warning {
                        lease: id,
                        pool,
                        holder,
                        revoked_in,
                    },
                );
                changed = true;
            }
        }
        let names: Vec<String> = state.pools.keys().cloned().collect();
        for name in names {
            self.pump(&mut state, &name, now);
        }
        if changed && let Err(error) = self.persist(&state) {
            tracing::error!(%error, "cannot persist lease state");
        }
        self.next_deadline(&state, now)
    }

    pub(super) fn next_deadline(&self, state: &State, now: u64) -> Option<u64> {
        let options = self.options();
        let grace = micros(options.grace);
        let aging = micros(options.aging);
        let leases = state.leases.values().map(|h| match h.revoked_at {
            Some(at) => at.saturating_add(grace),
            None => {
                let warn = h.lease.granted_at_micros
                    + (h.lease.max_hold_until_micros - h.lease.granted_at_micros) * 9 / 10;
                let mut next = h.lease.expires_at_micros.min(h.lease.max_hold_until_micros);
                if !h.warned {
                    next = next.min(warn);
                }
                next
            }
        });
        let aging = state
            .pools
            .values()
            .flat_map(|p| p.waiters.iter())
            .map(|w| w.since.saturating_add(aging))
            .filter(|&t| t > now);
        leases.chain(aging).min()
    }

    /// Runs [`tick`](Self::tick) whenever something is due, until dropped.
    pub async fn run_timers(self: Arc<Self>) {
        let mut last_write = Duration::ZERO;
        loop {
            let next = self.tick();
            let mut wait =
                next.map(|at| Duration::from_micros(at.saturating_sub(self.clock.now_micros())));
            if self.dirty.load(std::sync::atomic::Ordering::Acquire) {
                // Changes are written (and fsynced) at most every WRITE_EVERY, so a burst
                // of grants and releases costs one write.
                let since = self.clock.monotonic().saturating_sub(last_write);
                // After a failed write (a full disk), try again once a second.
                let every = if self.write_error().is_some() {
                    RETRY_WRITE_EVERY
                } else {
                    WRITE_EVERY
                };
                if since >= every {
                    let failing = self.write_error().is_some();
                    if let Err(error) = self.flush()
                        && !failing
                    {
                        tracing::error!(%error, "cannot write lease state: no lease is granted until it can be");
                    }
                    last_write = self.clock.monotonic();
                } else {
                    let left = every - since;
                    wait = Some(wait.map_or(left, |w| w.min(left)));
                }
            }
            let changed = self.changed.notified();
            let deadline = wait.map(|w| self.clock.monotonic() + w);
            self.next_wake.store(
                deadline.map_or(u64::MAX, micros),
                std::sync::atomic::Ordering::Release,
            );
            match deadline {
                Some(deadline) => {
                    tokio::select! {
                        _ = self.clock.sleep_until(deadline) => {}
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
            // Awake: changes made now are seen by the next tick.
            self.next_wake
                .store(0, std::sync::atomic::Ordering::Release);
        }
    }
}
