//! Exact quotas: at most `limit` grants in **every** trailing `window`.
//!
//! # How it is exact
//!
//! A quota keeps the time of each grant still inside the window (a sliding log). A grant
//! at `t` is allowed only if fewer than `limit` grants lie in `(t − window, t]`, so any
//! two grants `limit` apart are at least `window` apart, and no interval of length
//! `window` ever holds `limit + 1` of them. (A fixed-window counter admits `2 × limit`
//! across a boundary; a token bucket of burst `limit` admits up to `2 × limit − 1` in
//! some window.) Decisions take one mutex, so concurrency cannot add grants. Time that
//! goes backwards is treated as standing still.
//!
//! # Waiting, priority, shares and reservations
//!
//! [`Quota::acquire`] waits up to a timeout. When a grant frees up it goes to the waiter
//! that has waited [`QuotaSpec::aging`] (default 10 min) if one has, oldest first; else
//! to the waiter with the highest priority; among equal priorities, to the component
//! furthest below its weighted share of the grants in the window (weights from
//! [`QuotaSpec::shares`], default 1), then first come first served. So shares divide a
//! *saturated* quota (1:2:1 gives 25/50/25 of what is granted while all three want more
//! than they get); they guarantee nothing to a component that was not asking when the
//! others drew.
//!
//! A reservation ([`QuotaSpec::reserve`], `advisor: 40`) is a guarantee: in every
//! trailing window, the component can get its reserved number of grants whoever drew
//! first. Grants to other components stop while granting one more would leave fewer
//! calls in the window than the reservations not yet used: with `100 per 1h` and
//! `advisor: 40`, the others together get at most 60 in any hour in which the advisor
//! has had none, and the advisor's first 40 are never refused for lack of room (only
//! for an upstream suspension). Reservations add up to at most the limit.
//!
//! # Upstream limits and restarts
//!
//! [`Quota::report_upstream_limit`] suspends grants (the provider answered 429 with a
//! retry-after). With a store ([`Quota::with_store`]; [`Quota::open`] is the journal
//! in a directory), every grant and suspension is kept **before** it is returned, and
//! reopening restores them: a restart never forgets a grant that was handed out. In the
//! journal, a torn last line is a grant that was never returned, and is ignored.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ganglion_core::Clock;
use tokio::sync::{oneshot, watch};

use crate::CoordinatorError;

mod spec;
mod store;
mod window;

pub use spec::{Permit, QuotaSpec, QuotaStatus};
pub use store::{FileQuotaStore, QuotaRecord, QuotaState, QuotaStore};

use spec::check_name;
use window::SlidingLog;

#[derive(Debug)]
struct Waiter {
    id: u64,
    /// When it joined the line (the quota's wall-clock micros).
    since: u64,
    priority: i32,
    component: Arc<str>,
    tx: oneshot::Sender<Permit>,
}

#[derive(Debug)]
struct Inner {
    /// The rule now (it can change: [`Quota::reconfigure`]).
    spec: QuotaSpec,
    log: SlidingLog,
    /// The latest time seen: time never runs backwards for a quota.
    last_at: u64,
    suspended_until: u64,
    waiters: Vec<Waiter>,
    next_waiter: u64,
    /// Where grants are kept between runs; `None`: in memory only.
    store: Option<Box<dyn QuotaStore>>,
    /// Why the store cannot be written now (a full disk, say): no grant is made until
    /// it can be rewritten.
    store_error: Option<String>,
}

impl Inner {
    /// Makes `record` durable first when there is a store; after a failed write, the
    /// store is rewritten with what is live before anything new goes in.
    fn keep(&mut self, record: &QuotaRecord) -> Result<(), CoordinatorError> {
        if self.store_error.is_some() {
            self.rewrite()?;
        }
        let Some(store) = self.store.as_mut() else {
            return Ok(());
        };
        store.append(record).inspect_err(|error| {
            self.store_error = Some(error.to_string());
        })
    }

    /// Rewrites the store with what is live (compaction, or a fresh start after a
    /// failed write); on failure no grant is made until it succeeds.
    fn rewrite(&mut self) -> Result<(), CoordinatorError> {
        let live = self.log.to_state(self.suspended_until);
        let Some(store) = self.store.as_mut() else {
            return Ok(());
        };
        match store.replace(&live) {
            Ok(()) => {
                self.store_error = None;
                Ok(())
            }
            Err(error) => {
                self.store_error = Some(error.to_string());
                Err(error)
            }
        }
    }
}

/// A named quota. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Quota {
    name: String,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    near: watch::Sender<bool>,
}

impl Quota {
    /// A quota kept in memory only.
    pub fn new(spec: QuotaSpec, clock: Arc<dyn Clock>) -> Result<Quota, CoordinatorError> {
        spec.validate()?;
        Ok(Quota {
            name: spec.name.clone(),
            clock,
            inner: Mutex::new(Inner {
                log: SlidingLog::new(micros(spec.window)),
                spec,
                last_at: 0,
                suspended_until: 0,
                waiters: Vec::new(),
                next_waiter: 0,
                store: None,
                store_error: None,
            }),
            near: watch::channel(false).0,
        })
    }

    /// A quota whose grants are journaled in `dir/<name>.quota` and restored from it.
    pub fn open(
        spec: QuotaSpec,
        clock: Arc<dyn Clock>,
        dir: &std::path::Path,
    ) -> Result<Quota, CoordinatorError> {
        let store = FileQuotaStore::new(dir, &spec.name);
        Quota::with_store(spec, clock, Box::new(store))
    }

    /// A quota whose grants are kept in `store` (each before its permit is handed out)
    /// and restored from it now.
    pub fn with_store(
        spec: QuotaSpec,
        clock: Arc<dyn Clock>,
        mut store: Box<dyn QuotaStore>,
    ) -> Result<Quota, CoordinatorError> {
        let quota = Quota::new(spec, clock)?;
        let kept = store.load()?;
        {
            let mut inner = quota.lock();
            for (at, component) in kept.grants {
                inner.last_at = inner.last_at.max(at);
                inner.log.push(at, component.into());
            }
            inner.suspended_until = kept.suspended_until_micros;
            let now = quota.now(&mut inner);
            inner.log.expire(now);
            inner.store = Some(store);
            // Starts even when the store cannot be written (a full disk): what it holds
            // is restored, and grants wait until it can be written again.
            if let Err(error) = inner.rewrite() {
                tracing::error!(quota = %quota.name, %error, "cannot write the quota's store: no call is granted until it can be");
            }
            quota.signal(&inner);
        }
        Ok(quota)
    }

    /// The rule in force now.
    pub fn spec(&self) -> QuotaSpec {
        self.lock().spec.clone()
    }

    /// Changes the rule of a running quota (a reloaded config). The grants already made
    /// count against the new rule: lowering the limit refuses calls until enough of them
    /// age out; raising it grants to waiters at once. A wider window counts only the
    /// grants still remembered (those inside the old window).
    pub fn reconfigure(&self, spec: QuotaSpec) -> Result<(), CoordinatorError> {
        spec.validate()?;
        crate::same_name("quota", &spec.name, &self.name)?;
        let mut inner = self.lock();
        if inner.spec == spec {
            return Ok(());
        }
        tracing::info!(quota = %self.name, limit = spec.limit, window = ?spec.window, "quota changed");
        inner.log.set_window(micros(spec.window));
        inner.spec = spec;
        let now = self.now(&mut inner);
        inner.log.expire(now);
        self.pump(&mut inner, now);
        self.signal(&inner);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self, inner: &mut Inner) -> u64 {
        let now = self.clock.now_micros().max(inner.last_at);
        inner.last_at = now;
        now
    }

    /// Each component's grants in the window over its weight, now (0 for one with
    /// none): who is furthest below its share, for the request queue's order.
    pub(crate) fn shares_now(&self) -> impl Fn(&str) -> f64 + use<> {
        let mut inner = self.lock();
        let now = self.now(&mut inner);
        inner.log.expire(now);
        let shares: std::collections::HashMap<String, f64> = inner
            .log
            .per_component()
            .map(|(c, n)| (c.to_owned(), f64::from(n) / window::weight(&inner.spec, c)))
            .collect();
        move |component| shares.get(component).copied().unwrap_or(0.0)
    }

    /// Why grants cannot be kept now, if they cannot.
    pub fn write_error(&self) -> Option<String> {
        self.lock().store_error.clone()
    }

    /// Records a grant (kept first when there is a store).
    fn record(
        &self,
        inner: &mut Inner,
        now: u64,
        component: &Arc<str>,
    ) -> Result<Permit, CoordinatorError> {
        inner.keep(&QuotaRecord::Granted {
            at_micros: now,
            component: component.to_string(),
        })?;
        inner.log.push(now, component.clone());
        if inner.store.as_ref().is_some_and(|s| s.wants_compaction())
            && let Err(error) = inner.rewrite()
        {
            // The grant is kept already; the next one tries again.
            tracing::warn!(quota = %self.name, %error, "cannot compact the quota's store");
        }
        let used = inner.log.len();
        Ok(Permit {
            quota: self.name.clone(),
            component: component.to_string(),
            granted_at_micros: now,
            used,
            remaining: inner.spec.limit - used,
        })
    }

    /// Grants to waiters while one can be granted, best waiter first (see the module
    /// docs for the order); a waiter blocked by others' reservations lets the next in
    /// order go.
    fn pump(&self, inner: &mut Inner, now: u64) {
        loop {
            if inner.waiters.is_empty() || inner.suspended_until > now {
                return;
            }
            let aging = micros(inner.spec.aging);
            let mut order: Vec<usize> = (0..inner.waiters.len()).collect();
            order.sort_by(|&a, &b| {
                let (wa, wb) = (&inner.waiters[a], &inner.waiters[b]);
                let aged = |w: &Waiter| now.saturating_sub(w.since) >= aging;
                let share = |w: &Waiter| inner.log.share(&inner.spec, &w.component);
                aged(wb)
                    .cmp(&aged(wa))
                    .then_with(|| {
                        if aged(wa) && aged(wb) {
                            std::cmp::Ordering::Equal
                        } else {
                            wb.priority
                                .cmp(&wa.priority)
                                .then(share(wa).total_cmp(&share(wb)))
                        }
                    })
                    .then(wa.id.cmp(&wb.id))
            });
            let Some(best) = order
                .into_iter()
                .find(|&i| inner.log.free_for(&inner.spec, &inner.waiters[i].component) > 0)
            else {
                return;
            };
            let waiter = inner.waiters.swap_remove(best);
            let permit = match self.record(inner, now, &waiter.component) {
                Ok(permit) => permit,
                Err(error) => {
                    tracing::warn!(quota = %self.name, %error, "cannot keep a grant; waiters are refused until it can be");
                    inner.waiters.push(waiter);
                    return;
                }
            };
            tracing::debug!(quota = %self.name, component = %waiter.component, priority = waiter.priority, used = permit.used, "granted to a waiter");
            if waiter.tx.send(permit).is_err() {
                // Its waiter had gone: a kept record of it stays, and errs on the safe
                // side after a restart.
                inner.log.pop_newest();
            }
        }
    }

    fn signal(&self, inner: &Inner) {
        let near =
            f64::from(inner.log.len()) >= inner.spec.near_limit * f64::from(inner.spec.limit);
        self.near.send_if_modified(|current| {
            let changed = *current != near;
            *current = near;
            changed
        });
    }

    /// Grants a call to `component` now, or says how long until one could be granted.
    pub fn try_acquire(&self, component: &str) -> Result<Permit, CoordinatorError> {
        check_name("component", component)?;
        let mut inner = self.lock();
        let now = self.now(&mut inner);
        inner.log.expire(now);
        self.pump(&mut inner, now);
        // Waiters still in line after the pump cannot be granted now; this call may,
        // if there is room for its component.
        let wait = inner
            .log
            .wait_needed(&inner.spec, inner.suspended_until, now, component);
        let result = match wait {
            None => self.record(&mut inner, now, &Arc::from(component)),
            Some(micros) => {
                let retry_after = Duration::from_micros(micros);
                tracing::debug!(quota = %self.name, component, retry_after_ms = retry_after.as_millis() as u64, "denied");
                Err(CoordinatorError::ResourceExhausted {
                    what: format!(
                        "quota {} is used up ({} per {:?})",
                        self.name, inner.spec.limit, inner.spec.window
                    ),
                    retry_after,
                })
            }
        };
        self.signal(&inner);
        result
    }

    /// Waits up to `timeout` for a grant, in priority order (higher first).
    pub async fn acquire(
        &self,
        component: &str,
        priority: i32,
        timeout: Duration,
    ) -> Result<Permit, CoordinatorError> {
        check_name("component", component)?;
        crate::check_wait(timeout)?;
        let deadline = self.clock.monotonic() + timeout;
        let (tx, mut rx) = oneshot::channel();
        let id = {
            let mut inner = self.lock();
            let id = inner.next_waiter;
            inner.next_waiter += 1;
            let since = self.now(&mut inner);
            inner.waiters.push(Waiter {
                id,
                since,
                priority,
                component: Arc::from(component),
                tx,
            });
            tracing::debug!(quota = %self.name, component, priority, queued_behind = inner.waiters.len() - 1, "waiting");
            id
        };
        let _leave = Leave { quota: self, id };
        loop {
            let (wait, unwritable) = {
                let mut inner = self.lock();
                let now = self.now(&mut inner);
                inner.log.expire(now);
                self.pump(&mut inner, now);
                self.signal(&inner);
                (
                    inner
                        .log
                        .wait_needed(&inner.spec, inner.suspended_until, now, component)
                        .unwrap_or(1),
                    inner.store_error.clone(),
                )
            };
            if let Ok(permit) = rx.try_recv() {
                return Ok(permit);
            }
            if let Some(error) = unwritable {
                return Err(CoordinatorError::Unavailable(format!(
                    "no call can be granted while the quota's store cannot be written ({error})"
                )));
            }
            let mono = self.clock.monotonic();
            if mono >= deadline {
                return Err(CoordinatorError::DeadlineExceeded(format!(
                    "no grant from quota {} within {} ms",
                    self.name,
                    timeout.as_millis()
                )));
            }
            let wake = (mono + Duration::from_micros(wait)).min(deadline);
            tokio::select! {
                permit = &mut rx => if let Ok(permit) = permit { return Ok(permit) },
                _ = self.clock.sleep_until(wake) => {}
            }
        }
    }

    /// The provider said "too many requests": grant nothing for `retry_after`.
    pub fn report_upstream_limit(&self, retry_after: Duration) -> Result<(), CoordinatorError> {
        let mut inner = self.lock();
        let now = self.now(&mut inner);
        let until = now.saturating_add(u64::try_from(retry_after.as_micros()).unwrap_or(u64::MAX));
        if until > inner.suspended_until {
            inner.keep(&QuotaRecord::Suspended {
                until_micros: until,
            })?;
            inner.suspended_until = until;
            tracing::warn!(quota = %self.name, retry_after_ms = retry_after.as_millis() as u64, "upstream limit: grants suspended");
        }
        Ok(())
    }

    /// `true` while at least `near_limit` of the quota is in use.
    pub fn near_limit(&self) -> watch::Receiver<bool> {
        self.near.subscribe()
    }

    pub fn status(&self) -> QuotaStatus {
        let mut inner = self.lock();
        let now = self.now(&mut inner);
        inner.log.expire(now);
        self.pump(&mut inner, now);
        self.signal(&inner);
        let used = inner.log.len();
        QuotaStatus {
            name: self.name.clone(),
            limit: inner.spec.limit,
            window: inner.spec.window,
            used,
            remaining: inner.spec.limit.saturating_sub(used),
            near_limit: *self.near.borrow(),
            suspended_for: Duration::from_micros(inner.suspended_until.saturating_sub(now)),
            waiters: inner.waiters.len(),
            by_component: inner
                .log
                .per_component()
                .map(|(c, n)| (c.to_owned(), n))
                .collect(),
        }
    }
}

/// Removes a waiter that stopped waiting (timed out or dropped).
struct Leave<'a> {
    quota: &'a Quota,
    id: u64,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut inner = self.quota.lock();
        inner.waiters.retain(|w| w.id != self.id);
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
