//! The sliding log: the grants inside the trailing window, and what can be decided from
//! them alone (room left, reservations, how long until the next grant). No waiting, no
//! storage.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::QuotaSpec;
use super::store::QuotaState;

#[derive(Debug)]
struct Grant {
    at: u64,
    component: Arc<str>,
}

/// The grants of the last `window` (µs), oldest first, counted per component.
#[derive(Debug)]
pub(super) struct SlidingLog {
    window: u64,
    grants: VecDeque<Grant>,
    per_component: HashMap<Arc<str>, u32>,
}

impl SlidingLog {
    pub(super) fn new(window: u64) -> SlidingLog {
        SlidingLog {
            window,
            grants: VecDeque::new(),
            per_component: HashMap::new(),
        }
    }

    /// A new window length; the grants already remembered count against it.
    pub(super) fn set_window(&mut self, window: u64) {
        self.window = window;
    }

    /// Grants in the window.
    pub(super) fn len(&self) -> u32 {
        self.grants.len() as u32
    }

    /// Grants in the window per component.
    pub(super) fn per_component(&self) -> impl Iterator<Item = (&str, u32)> {
        self.per_component.iter().map(|(c, n)| (&**c, *n))
    }

    fn used_by(&self, component: &str) -> u32 {
        self.per_component.get(component).copied().unwrap_or(0)
    }

    /// `component`'s grants in the window over its weight: who is furthest below its
    /// share goes first.
    pub(super) fn share(&self, spec: &QuotaSpec, component: &str) -> f64 {
        f64::from(self.used_by(component)) / weight(spec, component)
    }

    /// Forgets the grants that left the window by `now`.
    pub(super) fn expire(&mut self, now: u64) {
        while let Some(front) = self.grants.front() {
            if front.at.saturating_add(self.window) > now {
                break;
            }
            let gone = self.grants.pop_front().expect("front exists");
            self.uncount(&gone.component);
        }
    }

    pub(super) fn push(&mut self, at: u64, component: Arc<str>) {
        *self.per_component.entry(component.clone()).or_default() += 1;
        self.grants.push_back(Grant { at, component });
    }

    /// Takes the newest grant back (its waiter had gone).
    pub(super) fn pop_newest(&mut self) {
        if let Some(gone) = self.grants.pop_back() {
            self.uncount(&gone.component);
        }
    }

    fn uncount(&mut self, component: &Arc<str>) {
        if let Some(count) = self.per_component.get_mut(component) {
            *count -= 1;
            if *count == 0 {
                self.per_component.remove(component);
            }
        }
    }

    /// Grants `component` still has reserved in the window.
    fn unmet(&self, spec: &QuotaSpec, component: &str) -> u64 {
        let reserved = spec.reserve.get(component).copied().unwrap_or(0);
        u64::from(reserved.saturating_sub(self.used_by(component)))
    }

    /// Grants `component` could be made now: the room left once the other components'
    /// unused reservations are set aside.
    pub(super) fn free_for(&self, spec: &QuotaSpec, component: &str) -> u64 {
        let others: u64 = spec
            .reserve
            .keys()
            .filter(|c| c.as_str() != component)
            .map(|c| self.unmet(spec, c))
            .sum();
        u64::from(spec.limit)
            .saturating_sub(self.grants.len() as u64)
            .saturating_sub(others)
    }

    /// How long (µs) until a grant to `component` could be made, or `None` if one can
    /// be now.
    pub(super) fn wait_needed(
        &self,
        spec: &QuotaSpec,
        suspended_until: u64,
        now: u64,
        component: &str,
    ) -> Option<u64> {
        if suspended_until > now {
            return Some(suspended_until - now);
        }
        if self.free_for(spec, component) > 0 {
            return None;
        }
        let oldest = self.grants.front().map_or(now, |g| g.at);
        Some(
            oldest
                .saturating_add(self.window)
                .saturating_sub(now)
                .max(1),
        )
    }

    /// What a store keeps of this log.
    pub(super) fn to_state(&self, suspended_until: u64) -> QuotaState {
        QuotaState {
            grants: self
                .grants
                .iter()
                .map(|g| (g.at, g.component.to_string()))
                .collect(),
            suspended_until_micros: suspended_until,
        }
    }
}

pub(super) fn weight(spec: &QuotaSpec, component: &str) -> f64 {
    f64::from(spec.shares.get(component).copied().unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_grant_leaves_the_window_exactly_one_window_later() {
        let spec = QuotaSpec::new("q", 2, Duration::from_micros(100));
        let mut log = SlidingLog::new(100);
        log.push(10, "a".into());
        log.push(20, "b".into());
        assert_eq!(
            log.wait_needed(&spec, 0, 20, "a"),
            Some(90),
            "full until 110"
        );
        log.expire(109);
        assert_eq!(log.len(), 2);
        log.expire(110);
        assert_eq!(log.len(), 1, "(10 − 100, 110] no longer holds the first");
        assert_eq!(log.wait_needed(&spec, 0, 110, "a"), None);
        assert_eq!(log.wait_needed(&spec, 150, 110, "a"), Some(40), "suspended");
    }

    #[test]
    fn others_unused_reservations_are_set_aside() {
        let mut spec = QuotaSpec::new("q", 10, Duration::from_secs(1));
        spec.reserve.insert("advisor".into(), 4);
        let mut log = SlidingLog::new(1_000_000);
        for at in 0..6 {
            log.push(at, "trainer".into());
        }
        assert_eq!(
            log.free_for(&spec, "trainer"),
            0,
            "4 of 10 are the advisor's"
        );
        assert_eq!(log.free_for(&spec, "advisor"), 4);
        log.push(6, "advisor".into());
        log.pop_newest();
        assert_eq!(log.free_for(&spec, "advisor"), 4, "taken back");
    }
}
