//! What the log answers with: acknowledgements, statistics, health, and the reports of
//! retention and verification.

use std::path::PathBuf;
use std::sync::Arc;

use crate::Finding;

/// The sequence numbers and timestamp an append was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendAck {
    /// Sequence of the batch's first record.
    pub first_seq: u64,
    /// Sequence of the batch's last record.
    pub last_seq: u64,
    /// The timestamp all records of the batch carry.
    pub timestamp_micros: u64,
}

/// What one retention pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub segments_deleted: u64,
    pub records_deleted: u64,
    pub bytes_deleted: u64,
}

/// A snapshot of the log's size and activity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Oldest retained sequence (== `next_seq` when the log holds nothing).
    pub first_seq: u64,
    /// One past the newest committed sequence.
    pub next_seq: u64,
    pub segments: u64,
    /// Records retained (fewer than `next_seq - first_seq` across a gap a repair left).
    pub records: u64,
    /// Bytes of committed data across all segments, headers included.
    pub bytes: u64,
    /// Appends acknowledged since open.
    pub appends: u64,
    /// fdatasyncs since open, and their total duration.
    pub fsyncs: u64,
    pub fsync_micros_total: u64,
}

/// Whether the log accepts appends now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogHealth {
    /// Appends are accepted.
    Ok,
    /// The device is full: appends are refused until space returns (the log checks
    /// every second, and every append tries). Reads work.
    NoSpace { file: PathBuf },
    /// A write or fsync failed: appends are refused until the log is reopened. Reads
    /// work.
    Failed { reason: Arc<str> },
}

/// What [`Log::verify`] found.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// Segments, records and the sequence range, as an open would leave them (after
    /// the repairs listed, for the problems that refuse an open).
    pub segments: u64,
    pub records: u64,
    pub first_seq: u64,
    pub next_seq: u64,
    /// Every problem, oldest segment first.
    pub findings: Vec<Finding>,
}

impl VerifyReport {
    /// `true` if a normal open would refuse this log.
    pub fn refuses_open(&self) -> bool {
        self.findings.iter().any(|f| f.refuses_open)
    }
}
