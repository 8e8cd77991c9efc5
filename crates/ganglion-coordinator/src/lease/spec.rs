//! What pools are and what callers ask of them: pool specs, GPU discovery, lease options,
//! requests, granted leases and a pool's status.

use std::time::Duration;

use crate::{CoordinatorError, FencingToken, LeaseId};

/// What a pool hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolKind {
    /// GPUs: units are device ids, and a lease carries `CUDA_VISIBLE_DEVICES`.
    Gpu,
    /// Anything counted (connections, slots): units are `0..capacity`.
    Counted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: String,
    pub kind: PoolKind,
    pub units: Vec<String>,
}

impl PoolSpec {
    /// A pool of `capacity` interchangeable units.
    pub fn counted(name: impl Into<String>, capacity: usize) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            kind: PoolKind::Counted,
            units: (0..capacity).map(|i| i.to_string()).collect(),
        }
    }

    /// GPUs with these device ids.
    pub fn gpus(name: impl Into<String>, devices: &[&str]) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            kind: PoolKind::Gpu,
            units: devices.iter().map(|d| d.to_string()).collect(),
        }
    }
}

/// The GPUs NVIDIA's driver reports, as device indices (`"0"`, `"1"`, …, what
/// `CUDA_VISIBLE_DEVICES` takes), or why there are none to report: no driver library, no
/// driver loaded, no permission. The driver library is loaded at run time, so a machine
/// without one only gets the reason.
pub fn discover_gpus() -> Result<Vec<String>, String> {
    let nvml = nvml_wrapper::Nvml::init().map_err(|e| format!("NVML is not available: {e}"))?;
    let count = nvml
        .device_count()
        .map_err(|e| format!("NVML cannot count devices: {e}"))?;
    (0..count)
        .map(|i| {
            let device = nvml
                .device_by_index(i)
                .map_err(|e| format!("NVML cannot open device {i}: {e}"))?;
            device
                .index()
                .map(|index| index.to_string())
                .map_err(|e| format!("NVML cannot read device {i}'s index: {e}"))
        })
        .collect()
}

/// Defaults for leases and waiting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolsOptions {
    /// A lease not renewed for this long is reclaimed. Default 30 s.
    pub ttl: Duration,
    /// Longest a lease may be held. Default 300 s.
    pub max_hold: Duration,
    /// After revocation, how long the holder has to release. Default 30 s.
    pub grace: Duration,
    /// A waiter this old goes before all younger ones. Default 10 min.
    pub aging: Duration,
}

impl Default for PoolsOptions {
    fn default() -> Self {
        PoolsOptions {
            ttl: Duration::from_secs(30),
            max_hold: Duration::from_secs(300),
            grace: Duration::from_secs(30),
            aging: Duration::from_secs(600),
        }
    }
}

/// A request for units of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct AcquireRequest {
    pub pool: String,
    pub holder: String,
    pub priority: i32,
    pub amount: u32,
    /// How long to wait in line; zero means "only if free now".
    pub wait_timeout: Duration,
    /// Overrides [`PoolsOptions::max_hold`] (it can only be shorter).
    pub max_hold: Option<Duration>,
}

impl AcquireRequest {
    pub fn new(pool: impl Into<String>, holder: impl Into<String>) -> AcquireRequest {
        AcquireRequest {
            pool: pool.into(),
            holder: holder.into(),
            priority: 0,
            amount: 1,
            wait_timeout: Duration::ZERO,
            max_hold: None,
        }
    }
}

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    pub pool: String,
    pub holder: String,
    /// Unit ids (device ids for GPUs).
    pub units: Vec<String>,
    /// For GPU pools, the value to export as `CUDA_VISIBLE_DEVICES`.
    pub cuda_visible_devices: Option<String>,
    pub fencing_token: FencingToken,
    pub granted_at_micros: u64,
    /// Reclaimed unless renewed before this (wall-clock µs).
    pub expires_at_micros: u64,
    /// Revoked at this time (wall-clock µs).
    pub max_hold_until_micros: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    pub name: String,
    pub capacity: usize,
    pub free: usize,
    pub holders: Vec<Lease>,
    pub waiters: usize,
    pub next_token: FencingToken,
}

pub(super) fn validate_options(options: &PoolsOptions) -> Result<(), CoordinatorError> {
    for (field, value) in [
        ("leases.ttl", options.ttl),
        ("leases.max_hold", options.max_hold),
        ("leases.aging", options.aging),
    ] {
        if value.is_zero() {
            return Err(CoordinatorError::invalid(field, "must be longer than zero"));
        }
    }
    Ok(())
}

pub(super) fn check_name(field: &str, name: &str) -> Result<(), CoordinatorError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(CoordinatorError::invalid(
            field,
            format!(
                "{} must be 1 to 128 letters, digits, '-', '_', '.' or ':'",
                ganglion_core::excerpt(name)
            ),
        ))
    }
}
