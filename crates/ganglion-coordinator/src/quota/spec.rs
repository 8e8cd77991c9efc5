//! What a quota is and what it answers: the rule, a permit, a status.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::CoordinatorError;

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

pub(super) fn check_name(field: &str, name: &str) -> Result<(), CoordinatorError> {
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
