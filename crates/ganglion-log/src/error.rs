use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// What is wrong with the bytes at a damaged position of a segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    /// The segment header (magic, version, base sequence or its checksum) is wrong.
    #[error("bad segment header: {0}")]
    BadHeader(&'static str),
    /// A record runs past the end of the file.
    #[error("record needs {needed} bytes but only {available} remain in the file")]
    Truncated { needed: u64, available: u64 },
    /// The record's CRC32C does not match its bytes.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch { stored: u32, computed: u32 },
    /// The record is intact but not the one that must come next.
    #[error("expected sequence {expected}, found {found}")]
    SequenceMismatch { expected: u64, found: u64 },
    /// The length field is larger than any record this log may hold.
    #[error("record length {len} exceeds max_record_bytes {max}")]
    LengthTooLarge { len: u64, max: u64 },
    /// Segments do not follow each other without a gap.
    #[error("segment ends at sequence {end} but the next segment starts at {next_base}")]
    Gap { end: u64, next_base: u64 },
    /// The file holds nothing but zeros past where its header should be.
    #[error("the segment is {len} bytes of zeros")]
    ZeroFilled { len: u64 },
    /// Segment files that `log.meta` says exist are gone (deleted by hand, not by
    /// retention).
    #[error("the segments holding sequences {from} to {} are missing", .to - 1)]
    MissingSegments { from: u64, to: u64 },
}

/// Errors of the event log. Each has a stable [`code`](LogError::code).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// Another process (or another `Log` in this one) has the directory open.
    #[error("log directory {dir} is locked by another open log")]
    Locked { dir: PathBuf },

    /// Damage that recovery must not repair on its own: a sealed segment, the active
    /// segment with valid records after the damage, or any damage that cuts off records
    /// that were acknowledged. `ganglion log verify` lists every such problem; `ganglion
    /// log repair --drop-damaged-tail` cuts what is damaged (keeping a copy) and goes on
    /// numbering after the highest sequence ever acknowledged.
    #[error(
        "{file}: damaged at byte offset {offset}: {damage}{}{}",
        if *.acknowledged_missing > 0 {
            format!("; {} acknowledged records are missing", .acknowledged_missing)
        } else {
            String::new()
        },
        if *.valid_records_after > 0 {
            format!(" ({} valid records follow; refusing to drop them)", .valid_records_after)
        } else {
            String::new()
        }
    )]
    Corrupt {
        file: PathBuf,
        offset: u64,
        damage: Damage,
        valid_records_after: u64,
        /// Records the log acknowledged that the damage took (at least this many).
        acknowledged_missing: u64,
    },

    /// `log.meta` is not readable.
    #[error("{file}:{line}: {reason}")]
    BadMeta {
        file: PathBuf,
        line: usize,
        reason: String,
    },

    /// The device is full. Nothing of the refused batch was kept; appends work again
    /// once space returns.
    #[error("no space left on device writing {file}; the batch was not appended")]
    NoSpace { file: PathBuf },

    /// A write or fsync failed; the log refuses all further writes until it is reopened
    /// (fsync is never retried: after a failed fsync the page cache can no longer be
    /// trusted). Reads keep working.
    #[error("log has failed and refuses writes: {reason}")]
    Failed { reason: Arc<str> },

    /// A record is larger than `max_record_bytes`.
    #[error("record {index} of the batch is {size} bytes; max_record_bytes is {max}")]
    RecordTooLarge { index: usize, size: usize, max: u64 },

    /// An append with no records.
    #[error("batch is empty: an append needs at least one record")]
    EmptyBatch,

    /// An option is out of range.
    #[error("invalid log option {field}: {reason}")]
    InvalidOption { field: &'static str, reason: String },

    /// An I/O error outside the append path (opening, reading, retention).
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },

    /// The log was closed.
    #[error("log is closed")]
    Closed,
}

impl LogError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            LogError::Locked { .. } => "LOG_LOCKED",
            LogError::Corrupt { .. } | LogError::BadMeta { .. } => "LOG_CORRUPT",
            LogError::NoSpace { .. } => "LOG_NO_SPACE",
            LogError::Failed { .. } => "LOG_FAILED",
            LogError::RecordTooLarge { .. } => "LOG_RECORD_TOO_LARGE",
            LogError::EmptyBatch => "LOG_EMPTY_BATCH",
            LogError::InvalidOption { .. } => "LOG_INVALID_OPTION",
            LogError::Io { .. } => "LOG_IO",
            LogError::Closed => "LOG_CLOSED",
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        LogError::Io {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }
}

/// `true` when the error means the device or quota is full.
pub(crate) fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;
