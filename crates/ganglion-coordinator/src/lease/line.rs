//! The waiting line: who is served next (priority, then arrival, with aging), a
//! waiter's place while its `acquire` waits, and leaving it.

use std::time::Duration;

use tokio::sync::oneshot;

use super::{AcquireRequest, Lease, Pools, State};
use crate::CoordinatorError;

#[derive(Debug)]
pub(super) struct Waiter {
    pub(super) id: u64,
    pub(super) holder: String,
    pub(super) priority: i32,
    pub(super) amount: usize,
    pub(super) since: u64,
    pub(super) max_hold: Duration,
    pub(super) tx: oneshot::Sender<Lease>,
}

/// Which waiter is served next: one that has waited `aging` goes before every one that
/// has not (aged ones among themselves by arrival); otherwise higher priority first,
/// then arrival. `None` for an empty line.
pub(super) fn head_of_line(waiters: &[Waiter], now: u64, aging: u64) -> Option<usize> {
    (0..waiters.len()).min_by(|&a, &b| {
        let (wa, wb) = (&waiters[a], &waiters[b]);
        let aged = |w: &Waiter| now.saturating_sub(w.since) >= aging;
        aged(wb)
            .cmp(&aged(wa))
            .then(if aged(wa) && aged(wb) {
                std::cmp::Ordering::Equal
            } else {
                wb.priority.cmp(&wa.priority)
            })
            .then(wa.id.cmp(&wb.id))
    })
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
        leave(&mut state, self.pool, self.id);
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
                tracing::warn!(lease = lease.id.0, %error, "cannot release a lease nobody took");
            }
        }
    }
}

impl Pools {
    /// Waits in line for `request.amount` units, up to `request.wait_timeout`.
    pub async fn acquire(&self, request: AcquireRequest) -> Result<Lease, CoordinatorError> {
        super::check_name("holder", &request.holder)?;
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
        let id = self.join_line(&request, max_hold, options.aging, tx)?;
        let mut line = InLine {
            pools: self,
            pool: &request.pool,
            id,
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

    /// Puts `request` in its pool's line and serves the line (`tx` gets a grant made at
    /// once); returns the waiter's id.
    fn join_line(
        &self,
        request: &AcquireRequest,
        max_hold: Duration,
        aging: Duration,
        tx: oneshot::Sender<Lease>,
    ) -> Result<u64, CoordinatorError> {
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
        let queued = state.pools[&request.pool]
            .waiters
            .iter()
            .any(|w| w.id == id);
        if !queued {
            return Ok(id);
        }
        if let Some(error) = self.write_error() {
            // A grant could not be made durable: say so rather than keep waiting.
            leave(&mut state, &request.pool, id);
            return Err(CoordinatorError::Unavailable(format!(
                "no lease can be granted while the lease state cannot be written ({error})"
            )));
        }
        // A waiter left in line brings an aging deadline.
        self.wake_timer_before(aging);
        if ahead > 0 {
            tracing::debug!(pool = %request.pool, holder = %request.holder, priority = request.priority, queued_behind = ahead, "waiting for a lease");
        }
        Ok(id)
    }
}

/// Takes waiter `id` out of `pool`'s line.
fn leave(state: &mut State, pool: &str, id: u64) {
    if let Some(pool) = state.pools.get_mut(pool) {
        pool.waiters.retain(|w| w.id != id);
    }
}
