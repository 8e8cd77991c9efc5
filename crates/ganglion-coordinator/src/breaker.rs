//! Circuit breakers: stop calling a dependency that keeps failing, and probe it before
//! trusting it again.
//!
//! - **Closed**: calls go through; `failure_threshold` consecutive failures open it.
//! - **Open**: calls are refused with the time left; after `recovery_timeout` it turns
//!   half-open.
//! - **Half-open**: at most `half_open_probes` calls go through at once; that many
//!   successes close it, any failure opens it again for another `recovery_timeout`.
//!
//! A call asks [`Breaker::allow`] first and reports how it went with
//! [`CallPermit::succeeded`] or [`CallPermit::failed`]; a permit dropped without a
//! verdict counts as a failure (a panicking or cancelled call did not succeed).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ganglion_core::Clock;

use crate::CoordinatorError;

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSpec {
    pub name: String,
    /// Consecutive failures that open a closed breaker. Default 5.
    pub failure_threshold: u32,
    /// How long an open breaker refuses calls. Default 30 s.
    pub recovery_timeout: Duration,
    /// Concurrent trial calls when half-open, and the successes that close it. Default 1.
    pub half_open_probes: u32,
}

impl BreakerSpec {
    pub fn new(name: impl Into<String>) -> BreakerSpec {
        BreakerSpec {
            name: name.into(),
            failure_threshold: 5,
            recovery_timeout: Duration::from_secs(30),
            half_open_probes: 1,
        }
    }

    pub fn validate(&self) -> Result<(), CoordinatorError> {
        if self.failure_threshold == 0 {
            return Err(CoordinatorError::invalid(
                "failure_threshold",
                "must be at least 1",
            ));
        }
        if self.recovery_timeout.is_zero() {
            return Err(CoordinatorError::invalid(
                "recovery_timeout",
                "must be longer than zero",
            ));
        }
        if self.half_open_probes == 0 {
            return Err(CoordinatorError::invalid(
                "half_open_probes",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
struct Inner {
    /// The thresholds now (they can change: [`Breaker::reconfigure`]).
    spec: BreakerSpec,
    state: BreakerState,
    consecutive_failures: u32,
    /// Monotonic time when an open breaker turns half-open.
    reopens_at: Duration,
    probes_in_flight: u32,
    probe_successes: u32,
    /// Bumped on every state change: verdicts from calls let in under an earlier state
    /// are ignored.
    generation: u64,
}

/// A circuit breaker for one dependency. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Breaker {
    name: String,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
}

/// Permission for one call; report its outcome.
#[derive(Debug)]
pub struct CallPermit {
    breaker: Arc<Breaker>,
    generation: u64,
    probe: bool,
    settled: bool,
}

impl CallPermit {
    pub fn succeeded(mut self) {
        self.settled = true;
        self.breaker.settle(self.generation, self.probe, true);
    }

    pub fn failed(mut self) {
        self.settled = true;
        self.breaker.settle(self.generation, self.probe, false);
    }
}

impl Drop for CallPermit {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.settle(self.generation, self.probe, false);
        }
    }
}

impl Breaker {
    pub fn new(spec: BreakerSpec, clock: Arc<dyn Clock>) -> Result<Arc<Breaker>, CoordinatorError> {
        spec.validate()?;
        Ok(Arc::new(Breaker {
            name: spec.name.clone(),
            clock,
            inner: Mutex::new(Inner {
                spec,
                state: BreakerState::Closed,
                consecutive_failures: 0,
                reopens_at: Duration::ZERO,
                probes_in_flight: 0,
                probe_successes: 0,
                generation: 0,
            }),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState) {
        if inner.state != to {
            tracing::info!(breaker = %self.name, from = inner.state.as_str(), to = to.as_str(), "circuit breaker changed state");
        }
        inner.state = to;
        inner.generation += 1;
        inner.probes_in_flight = 0;
        inner.probe_successes = 0;
        inner.consecutive_failures = 0;
        if to == BreakerState::Open {
            inner.reopens_at = self.clock.monotonic() + inner.spec.recovery_timeout;
        }
    }

    /// The thresholds in force now.
    pub fn spec(&self) -> BreakerSpec {
        self.lock().spec.clone()
    }

    /// Changes the thresholds of a running breaker (a reloaded config). Its state and
    /// counts stay: a closed breaker with as many consecutive failures as the new
    /// threshold opens on the next failure; an open one keeps its reopening time.
    pub fn reconfigure(&self, spec: BreakerSpec) -> Result<(), CoordinatorError> {
        spec.validate()?;
        crate::same_name("breaker", &spec.name, &self.name)?;
        let mut inner = self.lock();
        if inner.spec != spec {
            tracing::info!(breaker = %self.name, failure_threshold = spec.failure_threshold, recovery_timeout = ?spec.recovery_timeout, half_open_probes = spec.half_open_probes, "circuit breaker changed");
            inner.spec = spec;
        }
        Ok(())
    }

    /// The state now (an open breaker past its recovery timeout reads half-open).
    pub fn state(&self) -> BreakerState {
        let mut inner = self.lock();
        self.refresh(&mut inner);
        inner.state
    }

    fn refresh(&self, inner: &mut Inner) {
        if inner.state == BreakerState::Open && self.clock.monotonic() >= inner.reopens_at {
            self.transition(inner, BreakerState::HalfOpen);
        }
    }

    /// Lets a call through, or refuses it with how long until the breaker may let one.
    pub fn allow(self: &Arc<Self>) -> Result<CallPermit, CoordinatorError> {
        let mut inner = self.lock();
        self.refresh(&mut inner);
        let probe = match inner.state {
            BreakerState::Closed => false,
            BreakerState::Open => {
                return Err(CoordinatorError::ResourceExhausted {
                    what: format!("circuit breaker {} is open", self.name),
                    retry_after: inner.reopens_at.saturating_sub(self.clock.monotonic()),
                });
            }
            BreakerState::HalfOpen => {
                if inner.probes_in_flight + inner.probe_successes >= inner.spec.half_open_probes {
                    return Err(CoordinatorError::ResourceExhausted {
                        what: format!(
                            "circuit breaker {} is half-open and its probes are out",
                            self.name
                        ),
                        retry_after: Duration::from_millis(100),
                    });
                }
                inner.probes_in_flight += 1;
                true
            }
        };
        Ok(CallPermit {
            breaker: self.clone(),
            generation: inner.generation,
            probe,
            settled: false,
        })
    }

    fn settle(&self, generation: u64, probe: bool, success: bool) {
        let mut inner = self.lock();
        if generation != inner.generation {
            return;
        }
        match (inner.state, success) {
            (BreakerState::Closed, true) => inner.consecutive_failures = 0,
            (BreakerState::Closed, false) => {
                inner.consecutive_failures += 1;
                if inner.consecutive_failures >= inner.spec.failure_threshold {
                    self.transition(&mut inner, BreakerState::Open);
                }
            }
            (BreakerState::HalfOpen, true) if probe => {
                inner.probes_in_flight -= 1;
                inner.probe_successes += 1;
                if inner.probe_successes >= inner.spec.half_open_probes {
                    self.transition(&mut inner, BreakerState::Closed);
                }
            }
            (BreakerState::HalfOpen, false) if probe => {
                self.transition(&mut inner, BreakerState::Open)
            }
            _ => {}
        }
    }
}
