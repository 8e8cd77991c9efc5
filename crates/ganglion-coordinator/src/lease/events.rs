//! What happens to leases, for the hook (the server publishes on the bus) and for each
//! holder's watch.

use crate::LeaseId;
use std::time::Duration;

use super::Lease;

/// What [`Pools::on_event`] calls with each lease event.
pub type EventHook = Box<dyn Fn(LeaseEvent) + Send + Sync>;

#[derive(Default)]
pub(super) struct OnEvent(pub(super) std::sync::RwLock<Option<EventHook>>);

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
        lease: LeaseId,
        pool: String,
        holder: String,
        revoked_in: Duration,
    },
    /// The maximum hold time passed: stop using the units; they are taken back after
    /// `release_in`.
    Revoked {
        lease: LeaseId,
        pool: String,
        holder: String,
        release_in: Duration,
    },
    Released {
        lease: LeaseId,
        pool: String,
        holder: String,
        reason: String,
    },
}

impl LeaseEvent {
    /// The stage the lease is in after this event (a grant starts at `Held`).
    pub(super) fn stage(&self) -> Option<LeaseStage> {
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
