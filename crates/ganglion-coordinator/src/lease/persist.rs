//! Between the pools' state and their [`LeaseStore`]: marking changes, taking snapshots,
//! saving them (in bursts, or at once for a new token block), restoring on open.

use std::sync::atomic::Ordering;

use super::{Held, Lease, LeaseSnapshot, PoolKind, Pools, State, StoredLease};
use crate::{CoordinatorError, LeaseId};

impl Pools {
    /// Notes a change; [`run_timers`](Self::run_timers) saves it within 50 ms (see the
    /// module docs), and [`flush`](Self::flush) at once.
    pub(super) fn persist(&self, _state: &State) -> Result<(), CoordinatorError> {
        if self.store.is_some() && !self.dirty.swap(true, Ordering::AcqRel) {
            self.changed.notify_one();
        }
        Ok(())
    }

    /// Saves the state now if anything changed since the last save (the server calls
    /// it at shutdown; dropping the pools calls it too).
    ///
    /// The snapshot is taken under the state lock, the save happens after it is let
    /// go: acquires and releases do not wait for the disk.
    pub fn flush(&self) -> Result<(), CoordinatorError> {
        if !self.dirty.load(Ordering::Acquire) || self.store.is_none() {
            return Ok(());
        }
        let state = self.lock();
        let snapshot = self.snapshot(&state);
        // Taken before the state lock is let go (the order write_now uses too), so no
        // newer snapshot is saved before this one.
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        drop(state);
        self.save(&snapshot)
    }

    /// Saves a snapshot of `state` now, under the state lock (a grant whose fencing
    /// token must be durable before anyone sees it).
    pub(super) fn write_now(&self, state: &State) -> Result<(), CoordinatorError> {
        if self.store.is_none() {
            return Ok(());
        }
        let snapshot = self.snapshot(state);
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        self.save(&snapshot)
    }

    /// The lease counter, each pool's token ceiling and the leases; everything up to
    /// this state is saved once the save that follows succeeds.
    fn snapshot(&self, state: &State) -> LeaseSnapshot {
        let mut ids: Vec<&LeaseId> = state.leases.keys().collect();
        ids.sort_unstable();
        let leases = ids
            .into_iter()
            .map(|id| {
                let (h, l) = (&state.leases[id], &state.leases[id].lease);
                StoredLease {
                    id: l.id,
                    pool: l.pool.clone(),
                    holder: l.holder.clone(),
                    fencing_token: l.fencing_token,
                    units: h.units.clone(),
                    granted_at_micros: l.granted_at_micros,
                    expires_at_micros: l.expires_at_micros,
                    max_hold_until_micros: l.max_hold_until_micros,
                    revoked_at_micros: h.revoked_at,
                    warned: h.warned,
                }
            })
            .collect();
        self.dirty.store(false, Ordering::Release);
        LeaseSnapshot {
            next_lease: state.next_lease,
            // The reserved ceiling: a restart resumes counting there.
            token_ceilings: state
                .pools
                .values()
                .map(|p| (p.spec.name.clone(), p.reserved.max(p.next_token)))
                .collect(),
            leases,
        }
    }

    fn save(&self, snapshot: &LeaseSnapshot) -> Result<(), CoordinatorError> {
        let store = self.store.as_ref().expect("the callers checked");
        let result = store.save(snapshot).inspect_err(|_| {
            // Not saved: save it again next time.
            self.dirty.store(true, Ordering::Release);
        });
        let mut error = self.write_error.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                if error.take().is_some() {
                    tracing::info!("the lease state can be written again: grants resume");
                }
                Ok(())
            }
            Err(e) => {
                *error = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Takes in what a store kept: counters move up to it (tokens are never reused);
    /// leases of pools no longer configured, or whose units no longer exist or overlap,
    /// are dropped.
    pub(super) fn restore(&mut self, snapshot: LeaseSnapshot) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        state.next_lease = state.next_lease.max(snapshot.next_lease);
        for (name, ceiling) in snapshot.token_ceilings {
            if let Some(pool) = state.pools.get_mut(&name) {
                pool.next_token = pool.next_token.max(ceiling);
                pool.reserved = pool.next_token;
            }
        }
        for stored in snapshot.leases {
            let Some(p) = state.pools.get_mut(&stored.pool) else {
                tracing::warn!(
                    pool = stored.pool,
                    lease = stored.id.0,
                    "dropping a lease of a pool no longer configured"
                );
                continue;
            };
            if stored.units.iter().any(|u| !p.free.contains(u)) {
                tracing::warn!(
                    pool = stored.pool,
                    lease = stored.id.0,
                    "dropping a lease whose units no longer exist or overlap"
                );
                continue;
            }
            for u in &stored.units {
                p.free.remove(u);
            }
            let unit_names: Vec<String> = stored
                .units
                .iter()
                .map(|&u| p.spec.units[u].clone())
                .collect();
            let lease = Lease {
                id: stored.id,
                pool: stored.pool,
                holder: stored.holder,
                cuda_visible_devices: (p.spec.kind == PoolKind::Gpu).then(|| unit_names.join(",")),
                units: unit_names,
                fencing_token: stored.fencing_token,
                granted_at_micros: stored.granted_at_micros,
                expires_at_micros: stored.expires_at_micros,
                max_hold_until_micros: stored.max_hold_until_micros,
            };
            let held = Held::new(lease, stored.units, stored.warned, stored.revoked_at_micros);
            state.leases.insert(held.lease.id, held);
        }
    }
}
