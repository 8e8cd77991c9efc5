//! Who may use the coordinator's names: a lease's holder, a quota's component, a queue's
//! worker and submitter.

use ganglion_coordinator::{LeaseId, RequestId};
use ganglion_core::BusError;

use crate::State;
use crate::auth::{Action, Caller};

/// Who may use the coordinator's names (see [`crate::auth`]): each check runs before the
/// name is looked up, so a refusal never tells whether a pool, quota or queue exists.
impl State {
    /// The name a caller acts under once `action` is allowed: see [`State::claim`].
    pub(crate) fn acting_as(
        &self,
        caller: &Caller,
        action: Action<'_>,
        field: &str,
        name: &str,
    ) -> Result<String, BusError> {
        self.may(caller, action)?;
        self.claim(caller, field, name)
    }

    /// `field` (a lease's `holder`, a quota's or a submission's `component`, a queue's
    /// `worker`) as given, if the caller owns it, or the caller's own name if it is
    /// empty.
    pub(crate) fn claim(
        &self,
        caller: &Caller,
        field: &str,
        name: &str,
    ) -> Result<String, BusError> {
        Ok(caller.claim(&self.audit, field, name)?)
    }

    /// Allows renewing or releasing lease `id`: its holder, or an admin. A lease not
    /// held is the coordinator's to report to an admin; to anyone else it is refused
    /// like another's, so ids cannot be probed.
    pub(crate) fn may_touch_lease(
        &self,
        caller: &Caller,
        id: LeaseId,
        verb: &str,
    ) -> Result<(), BusError> {
        match self.coordinator.lease_holder(id) {
            None if caller.is_admin() => Ok(()),
            holder => Ok(caller.may_act_for(
                &self.audit,
                verb,
                &format!("lease {id}"),
                &holder.unwrap_or_default(),
            )?),
        }
    }

    /// Allows reading the response to request `id` of `queue`: the component that
    /// submitted it, or an admin.
    pub(crate) fn may_read_response(
        &self,
        caller: &Caller,
        queue: &str,
        id: RequestId,
    ) -> Result<(), BusError> {
        self.may(caller, Action::Submit(queue))?;
        let submitter = self.coordinator.submitter(queue, id).ok().flatten();
        match submitter {
            // Unknown: never submitted, or journalled before submitters were recorded.
            None => Ok(()),
            Some(submitter) => Ok(caller.may_act_for(
                &self.audit,
                "read the response to",
                &format!("request {id} of queue {queue}"),
                &submitter,
            )?),
        }
    }

    /// Allows answering request `id` of `queue`: the worker that took it, or an admin.
    pub(crate) fn may_complete(
        &self,
        caller: &Caller,
        queue: &str,
        id: RequestId,
    ) -> Result<(), BusError> {
        self.may(caller, Action::Work(queue))?;
        let taker = self
            .coordinator
            .taken_by(queue, id)
            .ok()
            .flatten()
            .unwrap_or_default();
        Ok(caller.may_act_for(
            &self.audit,
            "answer",
            &format!("request {id} of queue {queue}"),
            &taker,
        )?)
    }
}
