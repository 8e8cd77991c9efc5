//! Ganglion's durable event log: segmented, append-only, checksummed, group-committed.
//!
//! ```
//! use bytes::Bytes;
//! use ganglion_log::{Log, LogOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let log = Log::open(dir.path(), LogOptions::default())?;
//! let ack = log.append_blocking(vec![Bytes::from("a"), Bytes::from("b")])?;
//! assert_eq!((ack.first_seq, ack.last_seq), (1, 2));
//! let records = log.read(1, 10)?;
//! assert_eq!(records[1].payload, "b");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What is guaranteed
//!
//! - **An acknowledged append is durable.** Under [`Durability::Always`] (the default),
//!   [`Log::append`] returns only after the records are written *and* fdatasynced.
//!   Concurrent appenders share one write and one fdatasync (group commit), so durability
//!   costs one fsync per group, not per append. Under [`Durability::Interval`] an append
//!   is acknowledged after the write, and a power loss can lose up to the interval of
//!   acknowledged data; a crash of the process alone loses nothing.
//! - **Order.** Every record gets the next sequence number (the first is 1); a batch gets
//!   consecutive ones and is never interleaved with another. Timestamps never decrease.
//! - **Readers see only committed records**: what has been acknowledged, never a record
//!   still waiting for its fsync.
//! - **Damage is found, never served.** Every record carries a CRC32C that every read
//!   and every recovery scan checks. A torn tail of the active segment is cut off on
//!   open (and the bytes dropped are logged); any other damage refuses to open, naming
//!   the file and byte offset.
//! - **Failure is sticky.** A failed write or fsync puts the log in a failed state that
//!   refuses writes until it is reopened (an fsync is never retried: after it fails the
//!   kernel may have dropped the dirty pages, so a retry could report success for lost
//!   data). Reads keep working. A full device (`ENOSPC`) is different: the append is
//!   refused, its partial bytes are cut off, and appends work again once space returns.
//!
//! # On-disk format (version 1, little-endian)
//!
//! A log is a directory of segment files, each named by the zero-padded sequence number
//! of its first record (`00000000000000000001.log`), a sparse index beside each sealed
//! segment (`….index`), and a `LOCK` file held while the log is open.
//!
//! ```text
//! segment header (24 bytes)
//!   0  magic  "GNGLSEG1"
//!   8  u32    format version (1)
//!  12  u64    base sequence: the first record's sequence, as in the file name
//!  20  u32    CRC32C of bytes 0..20
//! record (24-byte header + payload), repeated
//!   0  u32    CRC32C of bytes 4..24+len (length, sequence, timestamp and payload)
//!   4  u32    len: payload length
//!   8  u64    sequence
//!  16  u64    timestamp, microseconds since the Unix epoch
//!  24  [len]  payload
//! ```
//!
//! Invariants: in each segment the records' sequences run from the base sequence without
//! gaps, and each segment starts where the previous one ended. Only the last (active)
//! segment is ever written; a segment is sealed once it reaches `segment_bytes`, after
//! which it never changes until retention deletes it whole. A new segment's header is
//! fsynced, and then its directory, before any record goes into it.
//!
//! The index file of a sealed segment holds the segment's extent (next sequence, length,
//! first and last timestamps) and one entry (sequence, offset, timestamp) per
//! `index_interval_bytes` of records, with a CRC32C over the whole file. It is a cache:
//! written at seal time without fsync, checked on open, and rebuilt from the segment when
//! missing or damaged. The active segment's index lives in memory.
//!
//! # Recovery
//!
//! On open, every segment is scanned (or, with [`VerifyOnOpen::ActiveSegment`], only the
//! active one; sealed ones with a valid index are then checked as they are read):
//!
//! - **Active segment.** Scanning stops at the first position that is not the next
//!   valid record: cut short, a CRC mismatch, an impossible length or the wrong
//!   sequence. If no intact record of this segment follows that position, it is a torn
//!   tail: the file is truncated there and the bytes dropped are logged. If intact
//!   records follow, it is damage, and open fails naming the file and offset (unless the
//!   operator chose [`Recovery::DropDamagedTail`]). A torn segment header (a crash while
//!   the segment was being created) is rewritten by the same rule.
//! - **Sealed segments.** Any damage, and any gap or overlap between segments, fails the
//!   open with the file and offset. Nothing is skipped.
//!
//! # Reading
//!
//! [`Log::read`] returns committed records from a sequence number; [`Log::seq_at_time`]
//! finds the first record at or after a time; [`Log::tail`] follows the log, waiting for
//! new records. Reads are positional reads, usually served by the page cache; payloads
//! are slices of the read buffer, not copies. A read that starts before the oldest
//! retained record starts at the oldest retained record.

mod error;
mod format;
mod options;
mod recover;
mod segment;
pub mod storage;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

pub use error::{Damage, LogError, Result};
pub use format::Record;
pub use options::{Durability, LogOptions, Recovery, Retention, VerifyOnOpen};
use segment::Segment;
use storage::{DirLock, FsStorage, Storage};
use writer::{Command, Writer};

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
    /// Bytes of committed data across all segments, headers included.
    pub bytes: u64,
    /// Appends acknowledged since open.
    pub appends: u64,
    /// fdatasyncs since open, and their total duration.
    pub fsyncs: u64,
    pub fsync_micros_total: u64,
}

/// How far the log has committed, and whether it still accepts readers' waits.
#[derive(Debug, Clone, Copy)]
struct Progress {
    next_seq: u64,
    open: bool,
}

/// State shared by the log handle, its readers and the writer thread.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    options: LogOptions,
    segments: RwLock<Vec<Arc<Segment>>>,
    progress: watch::Sender<Progress>,
    failure: OnceLock<Arc<str>>,
    appends: AtomicU64,
    fsyncs: AtomicU64,
    fsync_micros: AtomicU64,
}

impl Shared {
    fn segments(&self) -> Vec<Arc<Segment>> {
        self.segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn active(&self) -> Arc<Segment> {
        let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
        segments
            .last()
            .expect("a log always has an active segment")
            .clone()
    }

    fn push_segment(&self, segment: Arc<Segment>) {
        self.segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(segment);
    }

    fn drop_oldest_segments(&self, n: usize) -> Vec<Arc<Segment>> {
        let mut segments = self.segments.write().unwrap_or_else(|e| e.into_inner());
        let n = n.min(segments.len() - 1);
        segments.drain(..n).collect()
    }

    /// The segment holding `seq` (or the oldest, if `seq` is older than all of them).
    fn segment_for(&self, seq: u64) -> Arc<Segment> {
        let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
        let i = segments.partition_point(|s| s.base_seq <= seq);
        segments[i.saturating_sub(1)].clone()
    }

    fn first_seq(&self) -> u64 {
        let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
        segments[0].base_seq
    }

    fn failure(&self) -> Option<Arc<str>> {
        self.failure.get().cloned()
    }

    fn set_failure(&self, reason: String) {
        let _ = self.failure.set(reason.into());
    }

    fn publish(&self, next_seq: u64, appends: usize) {
        self.appends.fetch_add(appends as u64, Ordering::Relaxed);
        self.progress.send_modify(|p| p.next_seq = next_seq);
    }

    fn close_progress(&self) {
        self.progress.send_modify(|p| p.open = false);
    }

    fn record_fsync(&self, took: Duration) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn read(&self, from_seq: u64, max_records: usize) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut next = from_seq.max(self.first_seq());
        while out.len() < max_records {
            let segment = self.segment_for(next);
            segment.read_into(
                next,
                max_records,
                self.options.max_read_bytes,
                self.options.max_record_bytes,
                &mut out,
                &mut bytes,
            )?;
            let end = segment.extent().next_seq;
            if bytes >= self.options.max_read_bytes
                || end <= next
                || !self.has_segment_after(&segment)
            {
                break;
            }
            next = end;
        }
        Ok(out)
    }

    fn has_segment_after(&self, segment: &Segment) -> bool {
        let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
        segments
            .last()
            .is_some_and(|last| last.base_seq > segment.base_seq)
    }
}

/// A durable, segmented, append-only log. See the [crate docs](crate) for its guarantees
/// and format.
///
/// Dropping the log (or [`close`](Log::close)) stops the writer after it has answered
/// every append already sent, and syncs anything unsynced.
#[derive(Debug)]
pub struct Log {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Command>>,
    writer: Option<JoinHandle<Result<()>>>,
    _lock: Box<dyn DirLock>,
}

impl Log {
    /// Opens (or creates) the log in `dir` on the real filesystem.
    pub fn open(dir: impl AsRef<Path>, options: LogOptions) -> Result<Log> {
        Self::open_with_storage(Arc::new(FsStorage), dir, options)
    }

    /// Opens (or creates) the log in `dir` on `storage`.
    pub fn open_with_storage(
        storage: Arc<dyn Storage>,
        dir: impl AsRef<Path>,
        options: LogOptions,
    ) -> Result<Log> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        storage
            .create_dir_all(&dir)
            .map_err(|e| LogError::io("create directory", &dir, e))?;
        let lock = storage
            .lock_dir(&dir)
            .map_err(|e| LogError::io("lock", &dir, e))?
            .ok_or_else(|| LogError::Locked { dir: dir.clone() })?;
        let recovered = recover::recover(&*storage, &dir, &options)?;
        let next_seq = recovered
            .segments
            .last()
            .expect("recovery yields an active segment")
            .extent()
            .next_seq;
        let (progress, _) = watch::channel(Progress {
            next_seq,
            open: true,
        });
        let (tx, rx) = mpsc::channel(options.queue_depth);
        let shared = Arc::new(Shared {
            dir,
            storage,
            options,
            segments: RwLock::new(recovered.segments),
            progress,
            failure: OnceLock::new(),
            appends: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            fsync_micros: AtomicU64::new(0),
        });
        let writer = Writer::new(shared.clone(), rx, recovered.last_index_offset);
        let handle = std::thread::Builder::new()
            .name("ganglion-log-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| LogError::io("spawn writer thread for", &shared.dir, e))?;
        tracing::info!(dir = %shared.dir.display(), first_seq = shared.first_seq(), next_seq, "event log open");
        Ok(Log {
            shared,
            tx: Some(tx),
            writer: Some(handle),
            _lock: lock,
        })
    }

    /// Checks a batch and turns it into a command for the writer.
    fn append_command(
        &self,
        records: Vec<Bytes>,
    ) -> Result<(Command, oneshot::Receiver<Result<AppendAck>>)> {
        if records.is_empty() {
            return Err(LogError::EmptyBatch);
        }
        let max = self.shared.options.max_record_bytes;
        let mut bytes = 0;
        for (index, r) in records.iter().enumerate() {
            if r.len() as u64 > max {
                return Err(LogError::RecordTooLarge {
                    index,
                    size: r.len(),
                    max,
                });
            }
            bytes += r.len();
        }
        if let Some(reason) = self.shared.failure() {
            return Err(LogError::Failed { reason });
        }
        let (reply, answer) = oneshot::channel();
        let command = Command::Append {
            records,
            bytes,
            reply,
        };
        Ok((command, answer))
    }

    /// Sends `command` to the writer and waits for its answer.
    async fn ask<T>(&self, command: Command, answer: oneshot::Receiver<Result<T>>) -> Result<T> {
        let tx = self.tx.as_ref().ok_or(LogError::Closed)?;
        tx.send(command).await.map_err(|_| LogError::Closed)?;
        answer.await.map_err(|_| LogError::Closed)?
    }

    /// Appends a batch and returns its sequence numbers once it is durable under the
    /// log's [`Durability`].
    pub async fn append(&self, records: Vec<Bytes>) -> Result<AppendAck> {
        let (command, answer) = self.append_command(records)?;
        self.ask(command, answer).await
    }

    /// [`append`](Log::append) for threads outside an async runtime. Panics if called
    /// from within one.
    pub fn append_blocking(&self, records: Vec<Bytes>) -> Result<AppendAck> {
        let (command, answer) = self.append_command(records)?;
        let tx = self.tx.as_ref().ok_or(LogError::Closed)?;
        tx.blocking_send(command).map_err(|_| LogError::Closed)?;
        answer.blocking_recv().map_err(|_| LogError::Closed)?
    }

    /// Committed records from `from_seq` on: at most `max_records`, and at most
    /// `max_read_bytes` of payload (but at least one record if there is one).
    pub fn read(&self, from_seq: u64, max_records: usize) -> Result<Vec<Record>> {
        self.shared.read(from_seq, max_records)
    }

    /// The sequence of the first committed record appended at or after `time`.
    pub fn seq_at_time(&self, time: SystemTime) -> Result<Option<u64>> {
        let micros = ganglion_core::unix_micros(time);
        for segment in self.shared.segments() {
            if let Some(seq) = segment.seq_at_time(micros, self.shared.options.max_record_bytes)? {
                return Ok(Some(seq));
            }
        }
        Ok(None)
    }

    /// Committed records appended at or after `time`, as [`read`](Log::read) returns them.
    pub fn read_from_time(&self, time: SystemTime, max_records: usize) -> Result<Vec<Record>> {
        match self.seq_at_time(time)? {
            Some(seq) => self.read(seq, max_records),
            None => Ok(Vec::new()),
        }
    }

    /// A reader that follows the log from `from_seq`, waiting for new records.
    pub fn tail(&self, from_seq: u64) -> Tail {
        Tail {
            shared: self.shared.clone(),
            progress: self.shared.progress.subscribe(),
            next: from_seq,
        }
    }

    /// Completes once a record with a sequence of at least `seq` is committed, or fails
    /// with [`LogError::Closed`] when the log closes first.
    pub fn wait_for_seq(
        &self,
        seq: u64,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let mut progress = self.shared.progress.subscribe();
        async move {
            let p = progress
                .wait_for(|p| p.next_seq > seq || !p.open)
                .await
                .map_err(|_| LogError::Closed)?;
            if p.next_seq > seq {
                Ok(())
            } else {
                Err(LogError::Closed)
            }
        }
    }

    /// Makes every acknowledged record durable now (useful under `Durability::Interval`;
    /// under `Always` they already are).
    pub async fn sync(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.ask(Command::Sync { reply }, answer).await
    }

    /// Applies retention now (the writer also applies it every
    /// `retention.check_interval` and after each segment roll).
    pub async fn apply_retention(&self) -> Result<RetentionReport> {
        let (reply, answer) = oneshot::channel();
        self.ask(Command::Retention { reply }, answer).await
    }

    /// Oldest retained sequence.
    pub fn first_seq(&self) -> u64 {
        self.shared.first_seq()
    }

    /// One past the newest committed sequence: the sequence the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.shared.progress.borrow().next_seq
    }

    /// `Some(reason)` once the log has failed and refuses writes.
    pub fn failure(&self) -> Option<Arc<str>> {
        self.shared.failure()
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Size and activity counters.
    pub fn stats(&self) -> LogStats {
        let segments = self.shared.segments();
        LogStats {
            first_seq: segments[0].base_seq,
            next_seq: self.next_seq(),
            segments: segments.len() as u64,
            bytes: segments.iter().map(|s| s.extent().len).sum(),
            appends: self.shared.appends.load(Ordering::Relaxed),
            fsyncs: self.shared.fsyncs.load(Ordering::Relaxed),
            fsync_micros_total: self.shared.fsync_micros.load(Ordering::Relaxed),
        }
    }

    /// Stops the writer once it has answered every append already sent, syncs what is
    /// unsynced, and reports whether that last sync worked.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        drop(self.tx.take());
        match self.writer.take() {
            Some(handle) => handle.join().unwrap_or_else(|_| {
                Err(LogError::Failed {
                    reason: "log writer thread panicked".into(),
                })
            }),
            None => Ok(()),
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(dir = %self.shared.dir.display(), error = %e, "closing the event log failed");
        }
    }
}

/// Follows the log from a sequence number, waiting for records that are not there yet.
#[derive(Debug)]
pub struct Tail {
    shared: Arc<Shared>,
    progress: watch::Receiver<Progress>,
    next: u64,
}

impl Tail {
    /// The next committed records (at most `max_records`), waiting until there is at
    /// least one. Fails with [`LogError::Closed`] once the log is closed and read out.
    pub async fn next_batch(&mut self, max_records: usize) -> Result<Vec<Record>> {
        loop {
            let records = self.shared.read(self.next, max_records)?;
            if let Some(last) = records.last() {
                self.next = last.seq + 1;
                return Ok(records);
            }
            self.next = self.next.max(self.shared.first_seq());
            let wanted = self.next;
            let progress = self
                .progress
                .wait_for(|p| p.next_seq > wanted || !p.open)
                .await
                .map_err(|_| LogError::Closed)?;
            if progress.next_seq <= wanted {
                return Err(LogError::Closed);
            }
        }
    }

    /// The sequence this tail reads next.
    pub fn position(&self) -> u64 {
        self.next
    }
}
