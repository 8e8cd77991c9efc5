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
//! retry-after). With a journal directory, every grant and suspension is appended and
//! fdatasynced **before** it is returned, and reopening restores them: a restart never
//! forgets a grant that was handed out. A torn last line is a grant that was never
//! returned, and is ignored.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ganglion_core::Clock;
use tokio::sync::{oneshot, watch};

use crate::CoordinatorError;
use crate::journal::Journal;

/// A quota's definition.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaSpec {
    /// A name of letters, digits, `-` and `_` (`claude`).
    pub name: String,
    /// Most grants in any trailing `window`.
    pub limit: u32,
    pub window: Duration,
    /// Weights of components sharing the quota when it is saturated; others weigh 1.
    pub shares: BTreeMap<String, u32>,
    /// Grants kept for a component in every window, whoever draws first (see the
    /// module docs). They add up to at most `limit`.
    pub reserve: BTreeMap<String, u32>,
    /// A waiter this old goes before every waiter that is not, whatever its priority.
    pub aging: Duration,
    /// The fraction of `limit` in use at which the near-limit signal turns on.
    pub near_limit: f64,
}

impl QuotaSpec {
    /// `name` with `limit` per `window`, equal shares, near-limit at 80%.
    pub fn new(name: impl Into<String>, limit: u32, window: Duration) -> QuotaSpec {
        QuotaSpec {
            name: name.into(),
            limit,
            window,
            shares: BTreeMap::new(),
            reserve: BTreeMap::new(),
            aging: Duration::from_secs(600),
            near_limit: 0.8,
        }
    }

    /// Parses `"100 per 1h"` (units `ms`, `s`, `m`, `h`, `d`).
    pub fn parse(name: impl Into<String>, rule: &str) -> Result<QuotaSpec, CoordinatorError> {
        let bad = || {
            CoordinatorError::invalid(
                "rule",
                format!(
                    "{} is not `<count> per <duration>`, like `100 per 1h`",
                    ganglion_core::excerpt(rule)
                ),
            )
        };
        let mut words = rule.split_whitespace();
        let (Some(count), Some("per"), Some(window), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return Err(bad());
        };
        let limit: u32 = count.parse().map_err(|_| bad())?;
        let window = ganglion_core::parse_duration(window).ok_or_else(bad)?;
        let spec = QuotaSpec::new(name, limit, window);
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), CoordinatorError> {
        check_name("name", &self.name)?;
        if self.limit == 0 {
            return Err(CoordinatorError::invalid("limit", "must be at least 1"));
        }
        if self.window < Duration::from_millis(1) {
            return Err(CoordinatorError::invalid("window", "must be at least 1 ms"));
        }
        if !(self.near_limit > 0.0 && self.near_limit <= 1.0) {
            return Err(CoordinatorError::invalid("near_limit", "must be in (0, 1]"));
        }
        for (component, weight) in &self.shares {
            check_name(&format!("shares.{component}"), component)?;
            if *weight == 0 {
                return Err(CoordinatorError::invalid(
                    format!("shares.{component}"),
                    "a weight must be at least 1",
                ));
            }
        }
        let mut reserved: u64 = 0;
        for (component, n) in &self.reserve {
            check_name(&format!("reserve.{component}"), component)?;
            reserved += u64::from(*n);
        }
        if reserved > u64::from(self.limit) {
            return Err(CoordinatorError::invalid(
                "reserve",
                format!(
                    "reserves {reserved} grants in all; at most the limit ({}) can be",
                    self.limit
                ),
            ));
        }
        if self.aging < Duration::from_millis(1) {
            return Err(CoordinatorError::invalid("aging", "must be at least 1 ms"));
        }
        Ok(())
    }
}

fn check_name(field: &str, name: &str) -> Result<(), CoordinatorError> {
    if ganglion_core::is_valid_name(name) {
        Ok(())
    } else {
        Err(CoordinatorError::invalid(
            field,
            format!(
                "{} must be 1 to 64 letters, digits, '-' or '_'",
                ganglion_core::excerpt(name)
            ),
        ))
    }
}

/// A granted call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    pub quota: String,
    pub component: String,
    /// Wall-clock microseconds since the Unix epoch.
    pub granted_at_micros: u64,
    /// Grants in the window, this one included, and how many remain.
    pub used: u32,
    pub remaining: u32,
}

/// A quota's state at a glance.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaStatus {
    pub name: String,
    pub limit: u32,
    pub window: Duration,
    pub used: u32,
    pub remaining: u32,
    pub near_limit: bool,
    /// How long grants stay suspended by an upstream limit.
    pub suspended_for: Duration,
    pub waiters: usize,
    /// Grants in the window per component.
    pub by_component: BTreeMap<String, u32>,
}

#[derive(Debug)]
struct Grant {
    at: u64,
    component: Arc<str>,
}

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
    window_micros: u64,
    grants: VecDeque<Grant>,
    per_component: HashMap<Arc<str>, u32>,
    /// The latest time seen: time never runs backwards for a quota.
    last_at: u64,
    suspended_until: u64,
    waiters: Vec<Waiter>,
    next_waiter: u64,
    /// Where grants are journaled (quotas opened on a directory).
    journal_path: Option<PathBuf>,
    journal: Option<Journal>,
    /// Why the journal cannot be written now (a full disk, say): no grant is made until
    /// it can be rewritten.
    journal_error: Option<String>,
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
                window_micros: micros(spec.window),
                spec,
                grants: VecDeque::new(),
                per_component: HashMap::new(),
                last_at: 0,
                suspended_until: 0,
                waiters: Vec::new(),
                next_waiter: 0,
                journal_path: None,
                journal: None,
                journal_error: None,
            }),
            near: watch::channel(false).0,
        })
    }

    /// A quota whose grants are journaled in `dir/<name>.quota` and restored from it.
    pub fn open(
        spec: QuotaSpec,
        clock: Arc<dyn Clock>,
        dir: &Path,
    ) -> Result<Quota, CoordinatorError> {
        let quota = Quota::new(spec, clock)?;
        let path = dir.join(format!("{}.quota", quota.name));
        // A compaction a crash (or a full disk) interrupted.
        let _ = std::fs::remove_file(path.with_extension("quota.tmp"));
        let (grants, suspended_until) = read_journal(&path)?;
        {
            let mut inner = quota.lock();
            for (at, component) in grants {
                let component: Arc<str> = component.into();
                *inner.per_component.entry(component.clone()).or_default() += 1;
                inner.last_at = inner.last_at.max(at);
                inner.grants.push_back(Grant { at, component });
            }
            inner.suspended_until = suspended_until;
            let now = quota.now(&mut inner);
            quota.expire(&mut inner, now);
            inner.journal_path = Some(path);
            // Starts even when the journal cannot be written (a full disk): what it
            // holds is restored, and grants wait until it can be written again.
            if let Err(error) = Quota::reopen_journal(&mut inner) {
                tracing::error!(quota = %quota.name, %error, "cannot write the quota journal: no call is granted until it can be");
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
        inner.window_micros = micros(spec.window);
        inner.spec = spec;
        let now = self.now(&mut inner);
        self.expire(&mut inner, now);
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

    fn expire(&self, inner: &mut Inner, now: u64) {
        while let Some(front) = inner.grants.front() {
            if front.at.saturating_add(inner.window_micros) > now {
                break;
            }
            let gone = inner.grants.pop_front().expect("front exists");
            if let Some(count) = inner.per_component.get_mut(&gone.component) {
                *count -= 1;
                if *count == 0 {
                    inner.per_component.remove(&gone.component);
                }
            }
        }
    }

    /// Grants `component` still has reserved in the window.
    fn unmet(inner: &Inner, component: &str) -> u64 {
        let reserved = inner.spec.reserve.get(component).copied().unwrap_or(0);
        let used = inner.per_component.get(component).copied().unwrap_or(0);
        u64::from(reserved.saturating_sub(used))
    }

    /// Grants `component` could be made now: the room left once the other components'
    /// unused reservations are set aside.
    fn free_for(inner: &Inner, component: &str) -> u64 {
        let others: u64 = inner
            .spec
            .reserve
            .keys()
            .filter(|c| c.as_str() != component)
            .map(|c| Quota::unmet(inner, c))
            .sum();
        u64::from(inner.spec.limit)
            .saturating_sub(inner.grants.len() as u64)
            .saturating_sub(others)
    }

    /// How long until a grant to `component` could be made, or `None` if one can be
    /// now.
    fn wait_needed(&self, inner: &Inner, now: u64, component: &str) -> Option<u64> {
        if inner.suspended_until > now {
            return Some(inner.suspended_until - now);
        }
        if Quota::free_for(inner, component) > 0 {
            return None;
        }
        let oldest = inner.grants.front().map_or(now, |g| g.at);
        Some(
            oldest
                .saturating_add(inner.window_micros)
                .saturating_sub(now)
                .max(1),
        )
    }

    fn weight(inner: &Inner, component: &str) -> f64 {
        f64::from(inner.spec.shares.get(component).copied().unwrap_or(1))
    }

    /// Rewrites the journal with what is live (compaction, or a fresh start after a
    /// failed write); on failure no grant is made until it succeeds.
    fn reopen_journal(inner: &mut Inner) -> Result<(), CoordinatorError> {
        let Some(path) = inner.journal_path.clone() else {
            return Ok(());
        };
        match rewrite_journal(path, inner) {
            Ok(journal) => {
                inner.journal = Some(journal);
                inner.journal_error = None;
                Ok(())
            }
            Err(error) => {
                inner.journal = None;
                inner.journal_error = Some(error.to_string());
                Err(error)
            }
        }
    }

    /// Each component's grants in the window over its weight, now (0 for one with
    /// none): who is furthest below its share, for the request queue's order.
    pub(crate) fn shares_now(&self) -> impl Fn(&str) -> f64 + use<> {
        let mut inner = self.lock();
        let now = self.now(&mut inner);
        self.expire(&mut inner, now);
        let shares: HashMap<String, f64> = inner
            .per_component
            .iter()
            .map(|(c, n)| (c.to_string(), f64::from(*n) / Quota::weight(&inner, c)))
            .collect();
        move |component| shares.get(component).copied().unwrap_or(0.0)
    }

    /// Why grants cannot be journaled now, if they cannot.
    pub fn write_error(&self) -> Option<String> {
        self.lock().journal_error.clone()
    }

    /// Records a grant (journaled first when there is a journal).
    fn record(
        &self,
        inner: &mut Inner,
        now: u64,
        component: &Arc<str>,
    ) -> Result<Permit, CoordinatorError> {
        if inner.journal_error.is_some() {
            Quota::reopen_journal(inner)?;
        }
        if let Some(journal) = inner.journal.as_mut()
            && let Err(error) = journal.append(&format!("g {now} {component}\n"))
        {
            inner.journal = None;
            inner.journal_error = Some(error.to_string());
            return Err(error);
        }
        inner.grants.push_back(Grant {
            at: now,
            component: component.clone(),
        });
        *inner.per_component.entry(component.clone()).or_default() += 1;
        if inner
            .journal
            .as_ref()
            .is_some_and(Journal::wants_compaction)
            && let Err(error) = Quota::reopen_journal(inner)
        {
            // The grant is journaled already; the next one tries again.
            tracing::warn!(quota = %self.name, %error, "cannot compact the quota journal");
        }
        let used = inner.grants.len() as u32;
        Ok(Permit {
            quota: self.name.clone(),
            component: component.to_string(),
            granted_at_micros: now,
            used,
            remaining: inner.spec.limit - used,
        })
    }

    fn unrecord(&self, inner: &mut Inner) {
        // Only the newest grant is ever taken back (its waiter had gone); a journaled
        // record of it stays and errs on the safe side after a restart.
        if let Some(gone) = inner.grants.pop_back()
            && let Some(count) = inner.per_component.get_mut(&gone.component)
        {
            *count -= 1;
            if *count == 0 {
                inner.per_component.remove(&gone.component);
            }
        }
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
                let share = |w: &Waiter| {
                    f64::from(inner.per_component.get(&w.component).copied().unwrap_or(0))
                        / Quota::weight(inner, &w.component)
                };
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
                .find(|&i| Quota::free_for(inner, &inner.waiters[i].component) > 0)
            else {
                return;
            };
            let waiter = inner.waiters.swap_remove(best);
            let permit = match self.record(inner, now, &waiter.component) {
                Ok(permit) => permit,
                Err(error) => {
                    tracing::warn!(quota = %self.name, %error, "cannot journal a grant; waiters are refused until it can be");
                    inner.waiters.push(waiter);
                    return;
                }
            };
            tracing::debug!(quota = %self.name, component = %waiter.component, priority = waiter.priority, used = permit.used, "granted to a waiter");
            if waiter.tx.send(permit).is_err() {
                self.unrecord(inner);
            }
        }
    }

    fn signal(&self, inner: &Inner) {
        let near = inner.grants.len() as f64 >= inner.spec.near_limit * f64::from(inner.spec.limit);
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
        self.expire(&mut inner, now);
        self.pump(&mut inner, now);
        // Waiters still in line after the pump cannot be granted now; this call may,
        // if there is room for its component.
        let wait = self.wait_needed(&inner, now, component);
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
                self.expire(&mut inner, now);
                self.pump(&mut inner, now);
                self.signal(&inner);
                (
                    self.wait_needed(&inner, now, component).unwrap_or(1),
                    inner.journal_error.clone(),
                )
            };
            if let Ok(permit) = rx.try_recv() {
                return Ok(permit);
            }
            if let Some(error) = unwritable {
                return Err(CoordinatorError::Unavailable(format!(
                    "no call can be granted while the quota journal cannot be written ({error})"
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
            if inner.journal_error.is_some() {
                Quota::reopen_journal(&mut inner)?;
            }
            if let Some(journal) = inner.journal.as_mut()
                && let Err(error) = journal.append(&format!("s {until}\n"))
            {
                inner.journal = None;
                inner.journal_error = Some(error.to_string());
                return Err(error);
            }
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
        self.expire(&mut inner, now);
        self.pump(&mut inner, now);
        self.signal(&inner);
        let used = inner.grants.len() as u32;
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
                .per_component
                .iter()
                .map(|(c, n)| (c.to_string(), *n))
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

/// The journal: `g <micros> <component>` per grant, `s <micros>` per suspension, each
/// fdatasynced before the grant is returned (see [`crate::journal`]).
const JOURNAL: &str = "quota journal";

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The grants and the suspension a journal holds.
fn read_journal(path: &Path) -> Result<(Vec<(u64, String)>, u64), CoordinatorError> {
    let mut grants = Vec::new();
    let mut suspended = 0;
    for (number, line) in Journal::read(JOURNAL, path)? {
        let mut parts = line.split(' ');
        match (
            parts.next(),
            parts.next().map(str::parse::<u64>),
            parts.next(),
        ) {
            (Some("g"), Some(Ok(at)), Some(component)) => grants.push((at, component.to_owned())),
            (Some("s"), Some(Ok(until)), None) => suspended = until,
            _ => return Err(Journal::damaged(JOURNAL, path, number, &line)),
        }
    }
    grants.sort_by_key(|(at, _)| *at);
    Ok((grants, suspended))
}

/// Rewrites the journal with the live grants and suspension.
fn rewrite_journal(path: PathBuf, inner: &Inner) -> Result<Journal, CoordinatorError> {
    let mut text = String::new();
    for grant in &inner.grants {
        text.push_str(&format!("g {} {}\n", grant.at, grant.component));
    }
    if inner.suspended_until > 0 {
        text.push_str(&format!("s {}\n", inner.suspended_until));
    }
    Journal::rewrite(JOURNAL, path, &text, inner.grants.len() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_bad_ones_say_why() {
        let spec = QuotaSpec::parse("claude", "100 per 1h").unwrap();
        assert_eq!((spec.limit, spec.window), (100, Duration::from_secs(3600)));
        assert_eq!(
            QuotaSpec::parse("x", "5 per 250ms").unwrap().window,
            Duration::from_millis(250)
        );
        for bad in [
            "100/h",
            "100 per",
            "per 1h",
            "0 per 1h",
            "10 per 1w",
            "10 per h",
            "10 per 1h extra",
        ] {
            let err = QuotaSpec::parse("x", bad).unwrap_err();
            assert!(
                matches!(err, CoordinatorError::InvalidArgument { .. }),
                "{bad}: {err:?}"
            );
        }
        let err = QuotaSpec::parse("has space", "1 per 1s").unwrap_err();
        assert!(
            matches!(err, CoordinatorError::InvalidArgument { ref field, .. } if field == "name")
        );
    }
}
