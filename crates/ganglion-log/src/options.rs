use std::sync::Arc;
use std::time::Duration;

use ganglion_core::{Clock, SystemClock};

use crate::error::{LogError, Result};

/// When an append is acknowledged relative to fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Acknowledge only after the records are fsynced (fdatasync). Concurrent appenders
    /// share one write and one fdatasync (group commit). The default.
    #[default]
    Always,
    /// Acknowledge once the records are written to the operating system, and fsync every
    /// `Duration`. **A power loss or kernel crash can lose up to that much acknowledged
    /// data, and their sequence numbers are given again afterwards.** A process crash
    /// loses nothing. Opt in only for data you can afford to lose.
    Interval(Duration),
}

/// What recovery does with damage it must not mend on its own: records of the active
/// segment after damage, acknowledged records cut off, a damaged sealed segment, missing
/// segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recovery {
    /// Refuse to open, naming the file, the offset and the acknowledged records
    /// missing. The default: records are never dropped without an operator deciding to.
    #[default]
    Strict,
    /// Repair: cut each damaged segment at its damage (moving what is cut to
    /// `quarantine/`), record lost sequences as gaps, and continue numbering above the
    /// highest sequence ever acknowledged; log what was dropped. For an operator who has
    /// read the `Strict` error (or [`Log::verify`](crate::Log::verify)'s report) and
    /// chosen to keep the rest.
    DropDamagedTail,
}

/// How much of the log is checked, record by record, when it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyOnOpen {
    /// Every segment's every record is checked against its CRC. The default.
    #[default]
    AllSegments,
    /// Only the active segment is scanned; sealed segments with a valid index file are
    /// trusted until read (reads always check CRCs). Opens large logs quickly.
    ActiveSegment,
}

/// Retention: which sealed segments are deleted. The active segment is never deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Delete a sealed segment once its newest record is older than this.
    pub max_age: Option<Duration>,
    /// Delete the oldest sealed segments while the log is larger than this.
    pub max_bytes: Option<u64>,
    /// How often the writer checks (it also checks after each segment roll).
    pub check_interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: None,
            max_bytes: None,
            check_interval: Duration::from_secs(60),
        }
    }
}

/// Options of a [`Log`](crate::Log). `LogOptions::default()` is the production setting.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// A segment is sealed and a new one started once it reaches this size. Default 64 MiB.
    pub segment_bytes: u64,
    /// Bytes between two sparse index entries. Default 16 KiB.
    pub index_interval_bytes: u64,
    /// Largest record payload. Default 8 MiB; at most 4 GiB − 1.
    pub max_record_bytes: u64,
    /// When appends are acknowledged. Default [`Durability::Always`].
    pub durability: Durability,
    /// What to delete, and when.
    pub retention: Retention,
    /// What to do with damage followed by valid records in the active segment.
    pub recovery: Recovery,
    /// How much to check on open.
    pub verify_on_open: VerifyOnOpen,
    /// Most payload bytes in one group commit. Default 4 MiB.
    pub max_group_bytes: usize,
    /// A read returns at most this many payload bytes (but always at least one record).
    /// Default 4 MiB.
    pub max_read_bytes: usize,
    /// Append requests that may wait for the writer before appenders wait too.
    /// Default 4096.
    pub queue_depth: usize,
    /// Where record timestamps and retention ages come from.
    pub clock: Arc<dyn Clock>,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: 64 * 1024 * 1024,
            index_interval_bytes: 16 * 1024,
            max_record_bytes: 8 * 1024 * 1024,
            durability: Durability::Always,
            retention: Retention::default(),
            recovery: Recovery::Strict,
            verify_on_open: VerifyOnOpen::AllSegments,
            max_group_bytes: 4 * 1024 * 1024,
            max_read_bytes: 4 * 1024 * 1024,
            queue_depth: 4096,
            clock: Arc::new(SystemClock),
        }
    }
}

impl LogOptions {
    pub(crate) fn validate(&self) -> Result<()> {
        let invalid = |field, reason: &str| {
            Err(LogError::InvalidOption {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.segment_bytes < 64 {
            return invalid("segment_bytes", "must be at least 64");
        }
        if self.index_interval_bytes == 0 {
            return invalid("index_interval_bytes", "must be at least 1");
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > u64::from(u32::MAX) {
            return invalid("max_record_bytes", "must be between 1 and 4294967295");
        }
        if let Durability::Interval(d) = self.durability
            && d.is_zero()
        {
            return invalid("durability", "Interval must be longer than zero");
        }
        if self.retention.check_interval.is_zero() {
            return invalid("retention.check_interval", "must be longer than zero");
        }
        if self.max_group_bytes == 0 {
            return invalid("max_group_bytes", "must be at least 1");
        }
        if self.max_read_bytes == 0 {
            return invalid("max_read_bytes", "must be at least 1");
        }
        if self.queue_depth == 0 {
            return invalid("queue_depth", "must be at least 1");
        }
        Ok(())
    }
}
