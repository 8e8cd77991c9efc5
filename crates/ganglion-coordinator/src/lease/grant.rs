//! Granting: serving a pool's line while the head's request fits, with its fencing
//! token made durable before anyone sees it.

use std::time::Duration;

use super::line::{Waiter, head_of_line};
use super::{Held, Lease, LeaseEvent, PoolKind, Pools, State, micros};
use crate::{FencingToken, LeaseId};

/// Fencing tokens reserved (saved as a ceiling) at a time.
pub(super) const TOKEN_BLOCK: u64 = 1024;

impl Pools {
    /// Grants to the head of `pool`'s line while its request fits.
    pub(super) fn pump(&self, state: &mut State, pool_name: &str, now: u64) {
        let options = self.options();
        let aging = micros(options.aging);
        let mut granted = Vec::new();
        loop {
            let Some(pool) = state.pools.get_mut(pool_name) else {
                return;
            };
            let Some(best) = head_of_line(&pool.waiters, now, aging) else {
                break;
            };
            if pool.waiters[best].amount > pool.free.len() {
                break; // the head waits for room; nobody overtakes it
            }
            let waiter = pool.waiters.swap_remove(best);
            let (lease, durable) = grant(state, pool_name, &waiter, now, micros(options.ttl));
            // The token counter must be saved before anyone sees the token, and no
            // grant is made while the state cannot be saved.
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
            tracing::info!(pool = pool_name, holder = %lease.holder, lease = lease.id.0, token = lease.fencing_token.0, units = ?lease.units, "lease granted");
            granted.push(lease);
        }
        if let Some(first) = granted.iter().map(first_deadline).min() {
            // New leases bring new deadlines.
            self.wake_timer_before(Duration::from_micros(first));
        }
        for lease in granted {
            self.emit(LeaseEvent::Granted(lease));
        }
    }
}

/// Hands `waiter` the first free units of `pool_name` with the next token, and records
/// the lease as held; also says whether the token opened a new block (the ceiling must
/// be saved before the lease is handed out).
fn grant(state: &mut State, pool_name: &str, waiter: &Waiter, now: u64, ttl: u64) -> (Lease, bool) {
    let pool = state.pools.get_mut(pool_name).expect("the caller found it");
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
    let unit_names: Vec<String> = units.iter().map(|&u| pool.spec.units[u].clone()).collect();
    let lease = Lease {
        id: LeaseId(state.next_lease),
        pool: pool_name.to_owned(),
        holder: waiter.holder.clone(),
        cuda_visible_devices: (pool.spec.kind == PoolKind::Gpu).then(|| unit_names.join(",")),
        units: unit_names,
        fencing_token: FencingToken(token),
        granted_at_micros: now,
        expires_at_micros: now.saturating_add(ttl),
        max_hold_until_micros: now.saturating_add(micros(waiter.max_hold)),
    };
    state.next_lease += 1;
    let held = Held::new(lease.clone(), units, false, None);
    state.leases.insert(lease.id, held);
    (lease, durable)
}

/// How long after its grant a lease first needs the timers: its TTL, or the warning at
/// 90% of its maximum hold.
fn first_deadline(lease: &Lease) -> u64 {
    let hold = lease.max_hold_until_micros - lease.granted_at_micros;
    (lease.expires_at_micros - lease.granted_at_micros).min(hold * 9 / 10)
}
