//! Taking: the next request by priority and share, once the quota grants its submitter
//! a call; and putting back in line what was taken and not completed in time.

use std::sync::Arc;
use std::time::Duration;

use super::state::{InProgress, Inner, Pending};
use super::{RequestQueue, Taken};
use crate::{CoordinatorError, RequestId};

impl RequestQueue {
    /// Puts back in line what was taken and not completed in time; returns when the
    /// next one taken now is due (monotonic).
    pub(super) fn requeue_overdue(&self, inner: &mut Inner) -> Option<Duration> {
        let now = self.clock.monotonic();
        let overdue: Vec<RequestId> = inner
            .taken
            .iter()
            .filter(|(_, t)| t.until <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in overdue {
            let Some(t) = inner.taken.remove(&id) else {
                continue;
            };
            tracing::warn!(queue = %self.name, %id, timeout_ms = self.take_timeout.as_millis() as u64, "a taken request was not completed in time: back in line");
            inner.pending.push(Pending {
                retaken: true,
                ..t.pending
            });
            self.work.notify_one();
        }
        inner.taken.values().map(|t| t.until).min()
    }

    /// The index in `pending` of the request to take next: highest priority, then the
    /// submitting component furthest below its share, then the oldest.
    fn best(&self, inner: &Inner) -> Option<usize> {
        let shares = self.quota.shares_now();
        let share = |p: &Pending| shares(&p.component);
        (0..inner.pending.len()).min_by(|&a, &b| {
            let (pa, pb) = (&inner.pending[a], &inner.pending[b]);
            pb.priority
                .cmp(&pa.priority)
                .then(share(pa).total_cmp(&share(pb)))
                .then(pa.id.cmp(&pb.id))
        })
    }

    /// Takes the next request once the quota grants its submitting component a call,
    /// waiting up to `timeout`; `Ok(None)` if nothing could be taken in time. Complete
    /// it within the queue's take timeout, or it goes back in line for another worker.
    pub async fn take(
        &self,
        worker: &str,
        timeout: Duration,
    ) -> Result<Option<Taken>, CoordinatorError> {
        crate::check_wait(timeout)?;
        if worker.is_empty() || worker.len() > 256 {
            return Err(CoordinatorError::invalid(
                "worker",
                "is required: the taking worker's name, at most 256 bytes",
            ));
        }
        let deadline = self.clock.monotonic() + timeout;
        loop {
            let notified = self.work.notified();
            let (best, next_overdue) = {
                let mut inner = self.lock();
                let next_overdue = self.requeue_overdue(&mut inner);
                let best = self.best(&inner).map(|i| {
                    (
                        inner.pending[i].id,
                        inner.pending[i].priority,
                        inner.pending[i].component.clone(),
                    )
                });
                (best, next_overdue)
            };
            let remaining = deadline.saturating_sub(self.clock.monotonic());
            match best {
                None => {
                    if remaining.is_zero() {
                        return Ok(None);
                    }
                    // Wake for new work, or when a taken request falls due again.
                    let wake = next_overdue.map_or(deadline, |due| due.min(deadline));
                    tokio::select! {
                        _ = notified => {}
                        _ = self.clock.sleep_until(wake) => {}
                    }
                }
                Some((id, priority, component)) => {
                    // A call from the quota first (the submitter's, in the request's
                    // priority), then the request: one grant, one upstream call.
                    match self.quota.acquire(&component, priority, remaining).await {
                        Ok(_permit) => {
                            let mut inner = self.lock();
                            // The request chosen, or (if another worker took it
                            // meanwhile) the best one of the same component.
                            let at = inner.pending.iter().position(|p| p.id == id).or_else(|| {
                                (0..inner.pending.len())
                                    .filter(|&i| inner.pending[i].component == component)
                                    .min_by_key(|&i| {
                                        (-inner.pending[i].priority, inner.pending[i].id)
                                    })
                            });
                            let Some(at) = at else {
                                // Nothing of that component left; the grant is spent.
                                continue;
                            };
                            let mut p = inner.pending.swap_remove(at);
                            p.taken_by = Some(Arc::from(worker));
                            let until = self.clock.monotonic().saturating_add(self.take_timeout);
                            tracing::debug!(queue = %self.name, id = p.id.0, worker, component = %p.component, retaken = p.retaken, "taken");
                            let taken = Taken {
                                id: p.id,
                                request: p.request.clone(),
                                priority: p.priority,
                                component: p.component.to_string(),
                            };
                            inner.taken.insert(p.id, InProgress { pending: p, until });
                            return Ok(Some(taken));
                        }
                        Err(CoordinatorError::DeadlineExceeded(_)) => return Ok(None),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
}
