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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ganglion_core::Clock;
use tokio::sync::{Notify, oneshot, watch};

use crate::CoordinatorError;

/// What a pool hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolKind {
    /// GPUs: units are device ids, and a lease carries `CUDA_VISIBLE_DEVICES`.
    Gpu,
    /// Anything counted (connections, slots): units are `0..capacity`.
    Counted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: String,
    pub kind: PoolKind,
    pub units: Vec<String>,
}

impl PoolSpec {
    /// A pool of `capacity` interchangeable units.
    pub fn counted(name: impl Into<String>, capacity: usize) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            kind: PoolKind::Counted,
            units: (0..capacity).map(|i| i.to_string()).collect(),
        }
    }

    /// GPUs with these device ids.
    pub fn gpus(name: impl Into<String>, devices: &[&str]) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            kind: PoolKind::Gpu,
            units: devices.iter().map(|d| d.to_string()).collect(),
        }
    }
}

/// The GPUs NVIDIA's driver reports, as device indices (`"0"`, `"1"`, …, what
/// `CUDA_VISIBLE_DEVICES` takes), or why there are none to report: no driver library, no
/// driver loaded, no permission. The driver library is loaded at run time, so a machine
/// without one only gets the reason.
pub fn discover_gpus() -> Result<Vec<String>, String> {
    let nvml = nvml_wrapper::Nvml::init().map_err(|e| format!("NVML is not available: {e}"))?;
    let count = nvml
        .device_count()
        .map_err(|e| format!("NVML cannot count devices: {e}"))?;
    (0..count)
        .map(|i| {
            let device = nvml
                .device_by_index(i)
                .map_err(|e| format!("NVML cannot open device {i}: {e}"))?;
            device
                .index()
                .map(|index| index.to_string())
                .map_err(|e| format!("NVML cannot read device {i}'s index: {e}"))
        })
        .collect()
}

/// Defaults for leases and waiting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolsOptions {
    /// A lease not renewed for this long is reclaimed. Default 30 s.
    pub ttl: Duration,
    /// Longest a lease may be held. Default 300 s.
    pub max_hold: Duration,
    /// After revocation, how long the holder has to release. Default 30 s.
    pub grace: Duration,
    /// A waiter this old goes before all younger ones. Default 10 min.
    pub aging: Duration,
}

impl Default for PoolsOptions {
    fn default() -> Self {
        PoolsOptions {
            ttl: Duration::from_secs(30),
            max_hold: Duration::from_secs(300),
            grace: Duration::from_secs(30),
            aging: Duration::from_secs(600),
        }
    }
}

/// A request for units of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct AcquireRequest {
    pub pool: String,
    pub holder: String,
    pub priority: i32,
    pub amount: u32,
    /// How long to wait in line; zero means "only if free now".
    pub wait_timeout: Duration,
    /// Overrides [`PoolsOptions::max_hold`] (it can only be shorter).
    pub max_hold: Option<Duration>,
}

impl AcquireRequest {
    pub fn new(pool: impl Into<String>, holder: impl Into<String>) -> AcquireRequest {
        AcquireRequest {
            pool: pool.into(),
            holder: holder.into(),
            priority: 0,
            amount: 1,
            wait_timeout: Duration::ZERO,
            max_hold: None,
        }
    }
}

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: u64,
    pub pool: String,
    pub holder: String,
    /// Unit ids (device ids for GPUs).
    pub units: Vec<String>,
    /// For GPU pools, the value to export as `CUDA_VISIBLE_DEVICES`.
    pub cuda_visible_devices: Option<String>,
    pub fencing_token: u64,
    pub granted_at_micros: u64,
    /// Reclaimed unless renewed before this (wall-clock µs).
    pub expires_at_micros: u64,
    /// Revoked at this time (wall-clock µs).
    pub max_hold_until_micros: u64,
}

/// A waiter's place in a pool's line while its `acquire` waits. Dropped unsettled (the
/// caller went away: a cancelled call, a closed connection), it leaves the line and
/// releases a grant that raced the drop, so a dead waiter neither holds units until its
/// TTL nor, at the head of a strict line, blocks the live ones behind it.
struct InLine<'a> {
    pools: &'a Pools,
    pool: &'a str,
    id: u64,
    rx: oneshot::Receiver<Lease>,
    /// `acquire` returned, or is about to: nothing left for `drop` to do.
    settled: bool,
}

impl InLine<'_> {
    /// Leaves the line and serves whoever it was holding up; returns a grant that came
    /// first.
    fn leave(&mut self) -> Option<Lease> {
        let mut state = self.pools.lock();
        let now = self.pools.now(&mut state);
        if let Some(pool) = state.pools.get_mut(self.pool) {
            pool.waiters.retain(|w| w.id != self.id);
        }
        self.pools.pump(&mut state, self.pool, now);
        self.rx.try_recv().ok()
    }
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if let Some(lease) = self.leave() {
            let mut state = self.pools.lock();
            let now = self.pools.now(&mut state);
            if let Err(error) =
                self.pools
                    .release_now(&mut state, lease.id, "its requester went away", now)
            {
                tracing::warn!(lease = lease.id, %error, "cannot release a lease nobody took");
            }
        }
    }
}

/// What [`Pools::on_event`] calls with each lease event.
pub type EventHook = Box<dyn Fn(LeaseEvent) + Send + Sync>;

#[derive(Default)]
struct OnEvent(std::sync::RwLock<Option<EventHook>>);

impl std::fmt::Debug for OnEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.0.read().is_ok_and(|hook| hook.is_some());
        f.write_str(if set { "OnEvent(set)" } else { "OnEvent(none)" })
    }
}

/// What happens to leases, for whoever watches (the server publishes these on the bus
/// as `coordinator.lease.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    Granted(Lease),
    /// 90% of the maximum hold time has passed.
    Warning {
        lease: u64,
        pool: String,
        holder: String,
        revoked_in: Duration,
    },
    /// The maximum hold time passed: stop using the units; they are taken back after
    /// `release_in`.
    Revoked {
        lease: u64,
        pool: String,
        holder: String,
        release_in: Duration,
    },
    Released {
        lease: u64,
        pool: String,
        holder: String,
        reason: String,
    },
}

impl LeaseEvent {
    /// The stage the lease is in after this event (a grant starts at `Held`).
    fn stage(&self) -> Option<LeaseStage> {
        match self {
            LeaseEvent::Granted(_) => None,
            LeaseEvent::Warning { revoked_in, .. } => Some(LeaseStage::Warned {
                revoked_in: *revoked_in,
            }),
            LeaseEvent::Revoked { release_in, .. } => Some(LeaseStage::Revoked {
                release_in: *release_in,
            }),
            LeaseEvent::Released { reason, .. } => Some(LeaseStage::Released {
                reason: reason.clone(),
            }),
        }
    }
}

/// Where one lease is in its life, as [`Pools::watch`] shows it to its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseStage {
    Held,
    /// 90% of the maximum hold time has passed.
    Warned {
        revoked_in: Duration,
    },
    /// The maximum hold time passed: stop using the units; they are taken back after
    /// `release_in`.
    Revoked {
        release_in: Duration,
    },
    /// The lease ended; `reason` says how.
    Released {
        reason: String,
    },
}

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
struct Waiter {
    id: u64,
    holder: String,
    priority: i32,
    amount: usize,
    since: u64,
    max_hold: Duration,
    tx: oneshot::Sender<Lease>,
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
    leases: HashMap<u64, Held>,
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
    store: Option<PathBuf>,
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

/// Fencing tokens reserved (fsynced as a ceiling) at a time.
const TOKEN_BLOCK: u64 = 1024;

/// Lease state changes are written at most this often (and at shutdown).
const WRITE_EVERY: Duration = Duration::from_millis(50);
/// How often a lease state that could not be written is tried again.
const RETRY_WRITE_EVERY: Duration = Duration::from_secs(1);

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

fn validate_options(options: &PoolsOptions) -> Result<(), CoordinatorError> {
    for (field, value) in [
        ("leases.ttl", options.ttl),
        ("leases.max_hold", options.max_hold),
        ("leases.aging", options.aging),
    ] {
        if value.is_zero() {
            return Err(CoordinatorError::invalid(field, "must be longer than zero"));
        }
    }
    Ok(())
}

fn check_name(field: &str, name: &str) -> Result<(), CoordinatorError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(CoordinatorError::invalid(
            field,
            format!(
                "{} must be 1 to 128 letters, digits, '-', '_', '.' or ':'",
                ganglion_core::excerpt(name)
            ),
        ))
    }
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
        let mut pools = Pools::new(specs, options, clock)?;
        let path = dir.join("leases.state");
        // A write a crash (or a full disk) interrupted.
        let _ = std::fs::remove_file(path.with_extension("state.tmp"));
        pools.restore(&path)?;
        pools.store = Some(path);
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
    pub fn watch(&self, lease: u64) -> watch::Receiver<LeaseStage> {
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

    /// Waits in line for `request.amount` units, up to `request.wait_timeout`.
    pub async fn acquire(&self, request: AcquireRequest) -> Result<Lease, CoordinatorError> {
        check_name("holder", &request.holder)?;
        crate::check_wait(request.wait_timeout)?;
        let options = self.options();
        let max_hold = request
            .max_hold
            .unwrap_or(options.max_hold)
            .min(options.max_hold);
        if max_hold.is_zero() {
            return Err(CoordinatorError::invalid(
                "max_hold",
                "must be longer than zero",
            ));
        }
        let (tx, rx) = oneshot::channel();
        let waiter_id = {
            let mut state = self.lock();
            let now = self.now(&mut state);
            let Some(pool) = state.pools.get(&request.pool) else {
                return Err(CoordinatorError::NotFound {
                    what: format!("pool {}", ganglion_core::excerpt(&request.pool)),
                });
            };
            let capacity = pool.spec.units.len();
            if request.amount == 0 || request.amount as usize > capacity {
                return Err(CoordinatorError::invalid(
                    "amount",
                    format!(
                        "must be 1 to {capacity} (the pool's size); got {}",
                        request.amount
                    ),
                ));
            }
            let id = state.next_waiter;
            state.next_waiter += 1;
            let pool = state.pools.get_mut(&request.pool).expect("checked above");
            let ahead = pool.waiters.len();
            pool.waiters.push(Waiter {
                id,
                holder: request.holder.clone(),
                priority: request.priority,
                amount: request.amount as usize,
                since: now,
                max_hold,
                tx,
            });
            self.pump(&mut state, &request.pool, now);
            // A waiter left in line brings an aging deadline.
            let queued = state.pools[&request.pool]
                .waiters
                .iter()
                .any(|w| w.id == id);
            if queued && let Some(error) = self.write_error() {
                // A grant could not be made durable: say so rather than keep waiting.
                let pool = state.pools.get_mut(&request.pool).expect("checked above");
                pool.waiters.retain(|w| w.id != id);
                return Err(CoordinatorError::Unavailable(format!(
                    "no lease can be granted while the lease state cannot be written ({error})"
                )));
            }
            if queued {
                self.wake_timer_before(options.aging);
            }
            if ahead > 0 {
                tracing::debug!(pool = %request.pool, holder = %request.holder, priority = request.priority, queued_behind = ahead, "waiting for a lease");
            }
            id
        };
        let mut line = InLine {
            pools: self,
            pool: &request.pool,
            id: waiter_id,
            rx,
            settled: false,
        };
        if let Ok(lease) = line.rx.try_recv() {
            line.settled = true;
            return Ok(lease);
        }
        let deadline = self.clock.monotonic() + request.wait_timeout;
        let granted = tokio::select! {
            lease = &mut line.rx => lease.ok(),
            _ = self.clock.sleep_until(deadline) => None,
        };
        line.settled = true;
        if let Some(lease) = granted {
            return Ok(lease);
        }
        // Out of time: leave the line, unless a grant raced the timeout.
        if let Some(lease) = line.leave() {
            return Ok(lease);
        }
        tracing::debug!(pool = %request.pool, holder = %request.holder, wait_ms = request.wait_timeout.as_millis() as u64, "denied: no units free within the wait");
        Err(CoordinatorError::DeadlineExceeded(format!(
            "no {} unit(s) of pool {} free within {} ms",
            request.amount,
            request.pool,
            request.wait_timeout.as_millis()
        )))
    }

    /// Grants to the head of `pool`'s line while its request fits.
    fn pump(&self, state: &mut State, pool_name: &str, now: u64) {
        let options = self.options();
        let aging = micros(options.aging);
        let mut granted = Vec::new();
        loop {
            let Some(pool) = state.pools.get_mut(pool_name) else {
                return;
            };
            let Some(best) = (0..pool.waiters.len()).min_by(|&a, &b| {
                let (wa, wb) = (&pool.waiters[a], &pool.waiters[b]);
                let aged = |w: &Waiter| now.saturating_sub(w.since) >= aging;
                aged(wb)
                    .cmp(&aged(wa))
                    .then(if aged(wa) && aged(wb) {
                        std::cmp::Ordering::Equal
                    } else {
                        wb.priority.cmp(&wa.priority)
                    })
                    .then(wa.id.cmp(&wb.id))
            }) else {
                break;
            };
            if pool.waiters[best].amount > pool.free.len() {
                break; // the head waits for room; nobody overtakes it
            }
            let waiter = pool.waiters.swap_remove(best);
            pool.waited
                .record(Duration::from_micros(now.saturating_sub(waiter.since)));
            let units: Vec<usize> = pool.free.iter().copied().take(waiter.amount).collect();
            for u in &units {
                pool.free.remove(u);
            }
            let token = pool.next_token;
            pool.next_token += 1;
            let durable = token >= pool.reserved;
            if durable {
                pool.reserved = token + TOKEN_BLOCK;
            }
            let unit_names: Vec<String> =
                units.iter().map(|&u| pool.spec.units[u].clone()).collect();
            let lease = Lease {
                id: state.next_lease,
                pool: pool_name.to_owned(),
                holder: waiter.holder.clone(),
                cuda_visible_devices: (pool.spec.kind == PoolKind::Gpu)
                    .then(|| unit_names.join(",")),
                units: unit_names,
                fencing_token: token,
                granted_at_micros: now,
                expires_at_micros: now.saturating_add(micros(options.ttl)),
                max_hold_until_micros: now.saturating_add(micros(waiter.max_hold)),
            };
            state.next_lease += 1;
            let held = Held::new(lease.clone(), units.clone(), false, None);
            state.leases.insert(lease.id, held);
            // The token counter must be on disk before anyone sees the token, and no
            // grant is made while the state cannot be written.
            let persisted = if durable || self.write_error().is_some() {
                self.write_now(state)
            } else {
                self.persist(state)
            };
            if let Err(error) = persisted {
                tracing::error!(%error, "cannot persist a grant; it is withdrawn");
                self.take_back(state, lease.id);
                let pool = state.pools.get_mut(pool_name).expect("exists");
                pool.waiters.push(waiter);
                break;
            }
            if waiter.tx.send(lease.clone()).is_err() {
                // The waiter gave up as we granted: the units go back, the token is spent.
                self.take_back(state, lease.id);
                continue;
            }
            tracing::info!(pool = pool_name, holder = %lease.holder, lease = lease.id, token = token, units = ?lease.units, "lease granted");
            granted.push(lease);
        }
        if let Some(first) = granted
            .iter()
            .map(|l| {
                let hold = l.max_hold_until_micros - l.granted_at_micros;
                (l.expires_at_micros - l.granted_at_micros).min(hold * 9 / 10)
            })
            .min()
        {
            // New leases bring new deadlines.
            self.wake_timer_before(Duration::from_micros(first));
        }
        for lease in granted {
            self.emit(LeaseEvent::Granted(lease));
        }
    }

    /// Frees a lease's units (no event, no pump).
    fn take_back(&self, state: &mut State, id: u64) -> Option<Held> {
        let held = state.leases.remove(&id)?;
        if let Some(pool) = state.pools.get_mut(&held.lease.pool) {
            pool.free.extend(held.units.iter().copied());
        }
        Some(held)
    }

    fn release_now(
        &self,
        state: &mut State,
        id: u64,
        reason: &str,
        now: u64,
    ) -> Result<(), CoordinatorError> {
        let Some(held) = self.take_back(state, id) else {
            return Err(CoordinatorError::NotFound {
                what: format!("lease {id}"),
            });
        };
        tracing::info!(pool = %held.lease.pool, holder = %held.lease.holder, lease = id, reason, "lease released");
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
    pub fn release(&self, lease: u64) -> Result<(), CoordinatorError> {
        let mut state = self.lock();
        let now = self.now(&mut state);
        self.release_now(&mut state, lease, "released by its holder", now)
    }

    /// Who holds lease `lease`, while it is held.
    pub fn holder(&self, lease: u64) -> Option<String> {
        self.lock()
            .leases
            .get(&lease)
            .map(|held| held.lease.holder.clone())
    }

    /// Extends a lease's TTL from now; refused for a revoked or unknown lease.
    pub fn renew(&self, lease: u64) -> Result<Lease, CoordinatorError> {
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
    pub fn check_fence(&self, pool: &str, token: u64) -> Result<(), CoordinatorError> {
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

    /// Applies what time has brought: reclaims leases past their TTL, warns and revokes
    /// at the maximum hold time, releases revoked leases after the grace, serves waiters
    /// that aged. Returns when it next needs to run (wall-clock µs), if ever.
    pub fn tick(&self) -> Option<u64> {
        let mut state = self.lock();
        let now = self.now(&mut state);
        let options = self.options();
        let grace = micros(options.grace);
        let max_hold_total = |h: &Held| h.lease.max_hold_until_micros - h.lease.granted_at_micros;
        let mut ids: Vec<u64> = state.leases.keys().copied().collect();
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
                tracing::warn!(%pool, %holder, lease = id, "lease revoked at its maximum hold time");
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

    fn next_deadline(&self, state: &State, now: u64) -> Option<u64> {
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
                next_token: p.next_token,
            })
            .collect()
    }

    // ---- persistence ----

    /// Notes a change; [`run_timers`](Self::run_timers) writes it within
    /// `WRITE_EVERY` (see the module docs), and [`flush`](Self::flush) at once.
    fn persist(&self, _state: &State) -> Result<(), CoordinatorError> {
        if self.store.is_some() && !self.dirty.swap(true, std::sync::atomic::Ordering::AcqRel) {
            self.changed.notify_one();
        }
        Ok(())
    }

    /// Writes and fsyncs the state now if anything changed since the last write (the
    /// server calls it at shutdown; dropping the pools calls it too).
    ///
    /// The snapshot is taken under the state lock, the write and fsync happen after it is
    /// let go: acquires and releases do not wait for the disk.
    pub fn flush(&self) -> Result<(), CoordinatorError> {
        if !self.dirty.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let Some(path) = &self.store else {
            return Ok(());
        };
        let state = self.lock();
        let text = self.snapshot(&state);
        // Taken before the state lock is let go (the order write_now uses too), so no
        // newer snapshot reaches the disk before this one.
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        drop(state);
        self.write_text(path, &text)
    }

    /// Writes and fsyncs a snapshot of `state` now, under the state lock (a grant whose
    /// fencing token must be durable before anyone sees it).
    fn write_now(&self, state: &State) -> Result<(), CoordinatorError> {
        let Some(path) = &self.store else {
            return Ok(());
        };
        let text = self.snapshot(state);
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        self.write_text(path, &text)
    }

    /// The state file's text: the lease counter, each pool's token ceiling, the leases.
    fn snapshot(&self, state: &State) -> String {
        let mut text = format!("next_lease {}\n", state.next_lease);
        for pool in state.pools.values() {
            // The reserved ceiling: a restart resumes counting there.
            text.push_str(&format!(
                "pool {} {}\n",
                pool.spec.name,
                pool.reserved.max(pool.next_token)
            ));
        }
        let mut ids: Vec<&u64> = state.leases.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let h = &state.leases[id];
            let l = &h.lease;
            text.push_str(&format!(
                "lease {} {} {} {} {} {} {} {} {} {}\n",
                l.id,
                l.pool,
                l.holder,
                l.fencing_token,
                h.units
                    .iter()
                    .map(|u| u.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                l.granted_at_micros,
                l.expires_at_micros,
                l.max_hold_until_micros,
                h.revoked_at.unwrap_or(0),
                u8::from(h.warned),
            ));
        }
        // Everything up to this state is on disk once the write that follows succeeds.
        self.dirty
            .store(false, std::sync::atomic::Ordering::Release);
        text
    }

    fn write_text(&self, path: &Path, text: &str) -> Result<(), CoordinatorError> {
        let result = ganglion_core::fs::write_atomically(path, text.as_bytes()).map_err(|e| {
            // Not on disk: write it again next time.
            self.dirty.store(true, std::sync::atomic::Ordering::Release);
            format!("lease state {}: {e}", path.display())
        });
        let mut error = self.write_error.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                if error.take().is_some() {
                    tracing::info!("the lease state can be written again: grants resume");
                }
                Ok(())
            }
            Err(message) => {
                *error = Some(message.clone());
                Err(CoordinatorError::Unavailable(message))
            }
        }
    }

    fn restore(&mut self, path: &Path) -> Result<(), CoordinatorError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(CoordinatorError::Unavailable(format!(
                    "lease state {}: {e}",
                    path.display()
                )));
            }
        };
        let damaged = |n: usize, line: &str| {
            CoordinatorError::Unavailable(format!(
                "lease state {} line {n} is damaged: {line:?}",
                path.display()
            ))
        };
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let f: Vec<&str> = line.split(' ').collect();
            let num = |s: &str| s.parse::<u64>().map_err(|_| damaged(n, line));
            match f.as_slice() {
                ["next_lease", next] => state.next_lease = state.next_lease.max(num(next)?),
                ["pool", name, next] => {
                    // A pool no longer configured keeps nothing; one still here keeps its
                    // counter, so tokens are never reused.
                    if let Some(pool) = state.pools.get_mut(*name) {
                        pool.next_token = pool.next_token.max(num(next)?);
                        pool.reserved = pool.next_token;
                    }
                }
                [
                    "lease",
                    id,
                    pool,
                    holder,
                    token,
                    units,
                    granted,
                    expires,
                    max_hold,
                    revoked,
                    warned,
                ] => {
                    let Some(p) = state.pools.get_mut(*pool) else {
                        tracing::warn!(
                            pool,
                            lease = id,
                            "dropping a lease of a pool no longer configured"
                        );
                        continue;
                    };
                    let units: Vec<usize> = units
                        .split(',')
                        .map(|u| u.parse::<usize>().map_err(|_| damaged(n, line)))
                        .collect::<Result<_, _>>()?;
                    if units.iter().any(|u| !p.free.contains(u)) {
                        tracing::warn!(
                            pool,
                            lease = id,
                            "dropping a lease whose units no longer exist or overlap"
                        );
                        continue;
                    }
                    for u in &units {
                        p.free.remove(u);
                    }
                    let unit_names: Vec<String> =
                        units.iter().map(|&u| p.spec.units[u].clone()).collect();
                    let lease = Lease {
                        id: num(id)?,
                        pool: (*pool).to_owned(),
                        holder: (*holder).to_owned(),
                        cuda_visible_devices: (p.spec.kind == PoolKind::Gpu)
                            .then(|| unit_names.join(",")),
                        units: unit_names,
                        fencing_token: num(token)?,
                        granted_at_micros: num(granted)?,
                        expires_at_micros: num(expires)?,
                        max_hold_until_micros: num(max_hold)?,
                    };
                    let revoked = num(revoked)?;
                    state.leases.insert(
                        lease.id,
                        Held::new(
                            lease,
                            units,
                            *warned == "1",
                            (revoked > 0).then_some(revoked),
                        ),
                    );
                }
                _ => return Err(damaged(n, line)),
            }
        }
        Ok(())
    }
}

/// One pool at a glance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    pub name: String,
    pub capacity: usize,
    pub free: usize,
    pub holders: Vec<Lease>,
    pub waiters: usize,
    pub next_token: u64,
}
