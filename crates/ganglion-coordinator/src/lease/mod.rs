//! Resource pools handed out as fenced leases.
//!
//! # Guarantees
//!
//! - **Capacity**: a pool's units are never held by more leases than it has units; a
//!   unit belongs to at most one live lease.
//! - **Fencing**: every grant carries a token, strictly increasing per pool and never
//!   reused (the counter is persisted before a grant is returned). [`Pools::check_fence`]
//!   accepts only tokens of leases that are live now, so a holder that paused past its
//!   TTL, or was revoked, is refused by a sink that checks.
//! - **Order**: waiters are served by priority (higher first), first come first served
//!   within a priority; a waiter that has waited [`PoolsOptions::aging`] (default
//!   10 min) goes before every waiter that has not, so the lowest priority is served
//!   within that bound plus the time holders take to release. A waiter at the head is
//!   never overtaken by a smaller request behind it. Each release grants to the waiters
//!   it can satisfy, in that order, and wakes only them.
//! - **Liveness**: a lease not renewed within its TTL is reclaimed. One held past its
//!   `max_hold` gets a warning at 90%, is revoked at the limit (its token stops passing
//!   `check_fence`), and is released after `grace` if its holder has not let go.
//! - **Restarts**: with a state directory, live leases and token counters are written
//!   (fsynced, atomically renamed) within 50 ms of a change, at shutdown and when the
//!   pools are dropped, and restored on open, so a lease survives a restart within its
//!   TTL. Tokens are reserved in blocks whose ceiling is fsynced before any token of the
//!   block is handed out. After a crash, what changed in the last 50 ms may be lost, and
//!   fencing keeps that safe: a lost grant's token is not live after the restart (refused), a
//!   lost release only delays the units until the TTL, and tokens are never reused
//!   (counting restarts from the reserved ceiling). Durable grants would cost an fsync
//!   per acquire and per release (~1 ms per round trip measured here).
//!
//! Time-driven steps (reclaim, warnings, revocation) happen in [`Pools::tick`]; a server
//! runs [`Pools::run_timers`], tests call `tick` after moving a virtual clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ganglion_core::Clock;
use tokio::sync::{Notify, watch};

use crate::{CoordinatorError, FencingToken, LeaseId};

mod events;
mod grant;
mod line;
mod persist;
mod spec;
mod store;
mod timers;

pub use events::{EventHook, LeaseEvent, LeaseStage};
pub use spec::{
    AcquireRequest, Lease, PoolKind, PoolSpec, PoolStatus, PoolsOptions, discover_gpus,
};
pub use store::{FileLeaseStore, LeaseSnapshot, LeaseStore, StoredLease};

use events::OnEvent;
use line::Waiter;
use spec::{check_name, validate_options};

#[derive(Debug)]
struct Held {
    lease: Lease,
    units: Vec<usize>,
    warned: bool,
    revoked_at: Option<u64>,
    /// This lease's own stage, for its holder alone: a change wakes one watcher, not
    /// every holder in the process.
    stage: watch::Sender<LeaseStage>,
}

impl Held {
    fn new(lease: Lease, units: Vec<usize>, warned: bool, revoked_at: Option<u64>) -> Held {
        Held {
            lease,
            units,
            warned,
            revoked_at,
            stage: watch::Sender::new(LeaseStage::Held),
        }
    }
}

#[derive(Debug)]
struct Pool {
    spec: PoolSpec,
    /// How long granted requests waited in line.
    waited: ganglion_core::stats::Histogram,
    free: BTreeSet<usize>,
    next_token: u64,
    /// Tokens below this are covered by the ceiling on disk.
    reserved: u64,
    waiters: Vec<Waiter>,
}

#[derive(Debug, Default)]
struct State {
    pools: BTreeMap<String, Pool>,
    leases: HashMap<LeaseId, Held>,
    next_lease: u64,
    next_waiter: u64,
    last_now: u64,
}

/// The coordinator's pools.
#[derive(Debug)]
pub struct Pools {
    /// Changes live: [`Pools::reconfigure`].
    options: Mutex<PoolsOptions>,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    /// Handed every event as it happens: [`Pools::on_event`].
    on_event: OnEvent,
    changed: Notify,
    /// Where lease state is kept between runs; `None`: in memory only.
    store: Option<Box<dyn LeaseStore>>,
    /// Written but not yet fsynced.
    dirty: std::sync::atomic::AtomicBool,
    /// One state-file write at a time, taken while holding the state lock.
    writing: Mutex<()>,
    /// Why the last state-file write failed, until one succeeds: no grant is made
    /// while the state cannot be written.
    write_error: Mutex<Option<String>>,
    /// When the timer task next wakes on its own (monotonic µs; `u64::MAX`: never).
    next_wake: std::sync::atomic::AtomicU64,
}

impl Drop for Pools {
    fn drop(&mut self) {
        if let Err(error) = self.flush() {
            tracing::error!(%error, "cannot write lease state at shutdown");
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Pools {
    /// Pools kept in memory only.
    pub fn new(
        specs: Vec<PoolSpec>,
        options: PoolsOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Pools, CoordinatorError> {
        validate_options(&options)?;
        let mut state = State {
            next_lease: 1,
            ..State::default()
        };
        for spec in specs {
            check_name("pools.name", &spec.name)?;
            if spec.units.is_empty() {
                return Err(CoordinatorError::invalid(
                    format!("pools.{}.units", spec.name),
                    "a pool needs at least one unit",
                ));
            }
            if state.pools.contains_key(&spec.name) {
                return Err(CoordinatorError::invalid(
                    format!("pools.{}", spec.name),
                    "is defined twice",
                ));
            }
            let free = (0..spec.units.len()).collect();
            state.pools.insert(
                spec.name.clone(),
                Pool {
                    spec,
                    waited: Default::default(),
                    free,
                    next_token: 1,
                    reserved: 1,
                    waiters: Vec::new(),
                },
            );
        }
        Ok(Pools {
            options: Mutex::new(options),
            clock,
            state: Mutex::new(state),
            on_event: OnEvent::default(),
            changed: Notify::new(),
            store: None,
            dirty: std::sync::atomic::AtomicBool::new(false),
            writing: Mutex::new(()),
            write_error: Mutex::new(None),
            next_wake: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Pools whose token counters and live leases are kept in `dir/leases.state`.
    pub fn open(
        specs: Vec<PoolSpec>,
        options: PoolsOptions,
        clock: Arc<dyn Clock>,
        dir: &Path,
    ) -> Result<Pools, CoordinatorError> {
        Pools::with_store(specs, options, clock, Box::new(FileLeaseStore::new(dir)))
    }

    /// Pools whose state is kept in `store`: restored from it now, saved to it within
    /// 50 ms of each change (at once for a new block of fencing tokens).
    pub fn with_store(
        specs: Vec<PoolSpec>,
        options: PoolsOptions,
        clock: Arc<dyn Clock>,
        store: Box<dyn LeaseStore>,
    ) -> Result<Pools, CoordinatorError> {
        let mut pools = Pools::new(specs, options, clock)?;
        if let Some(snapshot) = store.load()? {
            pools.restore(snapshot);
        }
        pools.store = Some(store);
        {
            let state = pools.lock();
            if let Err(error) = pools.write_now(&state) {
                // Start anyway: leases can be read and released; grants wait for the
                // state to be writable again.
                tracing::error!(%error, "cannot write the lease state: no lease is granted until it can be");
            }
        }
        Ok(pools)
    }

    /// Why lease state cannot be written now (a full disk, say), if it cannot: grants
    /// are refused meanwhile.
    pub fn write_error(&self) -> Option<String> {
        self.write_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self, state: &mut State) -> u64 {
        let now = self.clock.now_micros().max(state.last_now);
        state.last_now = now;
        now
    }

    /// Wakes the timer task if it plans to sleep longer than `within` from now.
    /// Per pool, how long granted requests waited in line (zero when units were free).
    pub fn wait_times(&self) -> Vec<(String, ganglion_core::stats::HistogramSnapshot)> {
        let state = self.lock();
        state
            .pools
            .iter()
            .map(|(name, pool)| (name.clone(), pool.waited.snapshot()))
            .collect()
    }

    /// The lease options in force now.
    pub fn options(&self) -> PoolsOptions {
        *self.options.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the lease options of running pools (a reloaded config). A lease keeps
    /// the TTL and maximum hold it was granted with (its holder was told them); leases
    /// granted or renewed from now on get the new ones. The grace and the aging apply
    /// at once, to leases already revoked and waiters already waiting.
    pub fn reconfigure(&self, options: PoolsOptions) -> Result<(), CoordinatorError> {
        validate_options(&options)?;
        let mut current = self.options.lock().unwrap_or_else(|e| e.into_inner());
        if *current != options {
            tracing::info!(ttl = ?options.ttl, max_hold = ?options.max_hold, grace = ?options.grace, aging = ?options.aging, "lease options changed");
            *current = options;
            // Deadlines may have moved closer: let the timer task recompute them.
            self.changed.notify_one();
        }
        Ok(())
    }

    fn wake_timer_before(&self, within: Duration) {
        let planned = self.next_wake.load(std::sync::atomic::Ordering::Acquire);
        let due = micros(self.clock.monotonic().saturating_add(within));
        if due < planned {
            self.changed.notify_one();
        }
    }

    /// Hands every lease event to `hook` as it happens, in order, in place of the
    /// previous hook (`None`: to no one). The hook runs under the coordinator's lock, on
    /// the thread that made the event: it must hand the event on and return (the server
    /// queues it for the bus).
    pub fn on_event(&self, hook: Option<EventHook>) {
        *self.on_event.0.write().unwrap_or_else(|e| e.into_inner()) = hook;
    }

    /// One lease's stage, changes included, for its holder (the gRPC `Acquire` stream
    /// relays it). A lease no longer held is `Released` at once; one restored after a
    /// restart reads `Held` until its next change.
    pub fn watch(&self, lease: LeaseId) -> watch::Receiver<LeaseStage> {
        match self.lock().leases.get(&lease) {
            Some(held) => held.stage.subscribe(),
            None => {
                watch::channel(LeaseStage::Released {
                    reason: format!(
                        "lease {lease} is not held (released, reclaimed or never granted)"
                    ),
                })
                .1
            }
        }
    }

    /// Moves `held`'s stage on for its holder, and hands the event to the hook.
    fn announce(&self, held: &Held, event: LeaseEvent) {
        if let Some(stage) = event.stage() {
            held.stage.send_replace(stage);
        }
        self.emit(event);
    }

    fn emit(&self, event: LeaseEvent) {
        if let Some(hook) = &*self.on_event.0.read().unwrap_or_else(|e| e.into_inner()) {
            hook(event);
        }
    }

    fn take_back(&self, state: &mut State, id: LeaseId) -> Option<Held> {
        let held = state.leases.remove(&id)?;
        if let Some(pool) = state.pools.get_mut(&held.lease.pool) {
            pool.free.extend(held.units.iter().copied());
        }
        Some(held)
    }

    fn release_now(
        &self,
        state: &mut State,
        id: LeaseId,
        reason: &str,
        now: u64,
    ) -> Result<(), CoordinatorError> {
        let Some(held) = self.take_back(state, id) else {
            return Err(CoordinatorError::NotFound {
                what: format!("lease {id}"),
            });
        };
        tracing::info!(pool = %held.lease.pool, holder = %held.lease.holder, lease = id.0, reason, "lease released");
        self.announce(
            &held,
            LeaseEvent::Released {
                lease: id,
                pool: held.lease.pool.clone(),
                holder: held.lease.holder.clone(),
                reason: reason.to_owned(),
            },
        );
        self.pump(state, &held.lease.pool, now);
        self.persist(state)
    }

    /// Gives a lease back.
    pub fn release(&self, lease: LeaseId) -> Result<(), CoordinatorError> {
        let mut state = self.lock();
        let now = self.now(&mut state);
        self.release_now(&mut state, lease, "released by its holder", now)
    }

    /// Who holds lease `lease`, while it is held.
    pub fn holder(&self, lease: LeaseId) -> Option<String> {
        self.lock()
            .leases
            .get(&lease)
            .map(|held| held.lease.holder.clone())
    }

    /// Extends a lease's TTL from now; refused for a revoked or unknown lease.
    pub fn renew(&self, lease: LeaseId) -> Result<Lease, CoordinatorError> {
        let mut state = self.lock();
        let now = self.now(&mut state);
        let ttl = micros(self.options().ttl);
        let Some(held) = state.leases.get_mut(&lease) else {
            return Err(CoordinatorError::Stale(format!(
                "lease {lease} is not held (released, reclaimed or never granted)"
            )));
        };
        if held.revoked_at.is_some() {
            return Err(CoordinatorError::Stale(format!(
                "lease {lease} was revoked at its maximum hold time"
            )));
        }
        if now >= held.lease.expires_at_micros {
            return Err(CoordinatorError::Stale(format!(
                "lease {lease} expired before renewal"
            )));
        }
        held.lease.expires_at_micros = now.saturating_add(ttl);
        let renewed = held.lease.clone();
        self.persist(&state)?;
        Ok(renewed)
    }

    /// Whether `token` belongs to a lease of `pool` that is live now (granted, not
    /// expired, not revoked). A protected sink refuses writes that fail this.
    pub fn check_fence(&self, pool: &str, token: FencingToken) -> Result<(), CoordinatorError> {
        let mut state = self.lock();
        let now = self.now(&mut state);
        if !state.pools.contains_key(pool) {
            return Err(CoordinatorError::NotFound {
                what: format!("pool {}", ganglion_core::excerpt(pool)),
            });
        }
        let live = state.leases.values().any(|h| {
            h.lease.pool == pool
                && h.lease.fencing_token == token
                && h.revoked_at.is_none()
                && now < h.lease.expires_at_micros
        });
        if live {
            Ok(())
        } else {
            Err(CoordinatorError::Stale(format!(
                "fencing token {token} of pool {pool} is not held by a live lease"
            )))
        }
    }

    /// Holders and waiters per pool.
    pub fn status(&self) -> Vec<PoolStatus> {
        let state = self.lock();
        state
            .pools
            .values()
            .map(|p| PoolStatus {
                name: p.spec.name.clone(),
                capacity: p.spec.units.len(),
                free: p.free.len(),
                holders: {
                    let mut held: Vec<Lease> = state
                        .leases
                        .values()
                        .filter(|h| h.lease.pool == p.spec.name)
                        .map(|h| h.lease.clone())
                        .collect();
                    held.sort_by_key(|l| l.id);
                    held
                },
                waiters: p.waiters.len(),
                next_token: FencingToken(p.next_token),
            })
            .collect()
    }

    // ---- persistence ----
}
