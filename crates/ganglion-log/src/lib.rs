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
//!   and every recovery scan checks. A torn tail of the active segment (a write whose
//!   group commit never returned) is cut off on open and the bytes dropped are logged;
//!   any other damage refuses to open, naming the file, the byte offset and how many
//!   acknowledged records are missing.
//! - **A sequence number is never given twice.** Recovery knows how far the log was
//!   acknowledged (below), so damage that cuts acknowledged records off is refused rather
//!   than mistaken for a torn write; and a repair continues numbering above the highest
//!   sequence ever acknowledged, leaving the lost numbers as a gap readers step over.
//! - **Failure is sticky.** A failed write or fsync puts the log in a failed state that
//!   refuses writes until it is reopened (an fsync is never retried: after it fails the
//!   kernel may have dropped the dirty pages, so a retry could report success for lost
//!   data). Reads keep working. A full device (`ENOSPC`) is different: the append is
//!   refused, its partial bytes are cut off, and appends work again once space returns.
//!
//! # On-disk format (version 2, little-endian)
//!
//! A log is a directory of segment files, each named by the zero-padded sequence number
//! of its first record (`00000000000000000001.log`), a sparse index beside each sealed
//! segment (`….index`), `log.meta`, `log.hwm`, a `LOCK` file held while the log is
//! open, and `quarantine/` once a repair has cut something.
//!
//! ```text
//! segment header (64 bytes; 24 in version 1, which is still read)
//!   0  magic  "GNGLSEG1"
//!   8  u32    format version (2)
//!  12  u64    base sequence: the first record's sequence, as in the file name
//!  20  u32    CRC32C of bytes 0..20
//!  24  u64    commit mark "written": one past the newest record whose write completed
//!  32  u64    commit mark "durable": one past the newest record fdatasynced before it
//!  40  u64    boot id of the machine that wrote the marks
//!  48  u64    reserved (0)
//!  56  u32    CRC32C of bytes 24..56
//!  60  u32    reserved (0)
//! record (24-byte header + payload), repeated
//!   0  u32    CRC32C of bytes 4..24+len (length, sequence, timestamp and payload)
//!   4  u32    len: payload length
//!   8  u64    sequence
//!  16  u64    timestamp, microseconds since the Unix epoch
//!  24  [len]  payload
//! ```
//!
//! Invariants: in each segment the records' sequences run from the base sequence without
//! gaps, and each segment starts where the previous one ended, or where a gap recorded
//! in `log.meta` ends. Only the last (active) segment is ever written; a segment is
//! sealed once it reaches `segment_bytes`, after which it never changes until retention
//! deletes it whole. A new segment's header is fsynced, and then its directory, before
//! any record goes into it, and only then does `log.meta` name it. Each group commit
//! writes its records, then the commit marks, then fdatasyncs once.
//!
//! `log.meta` (text, replaced atomically) holds the oldest sequence retention kept, the
//! newest segment created, a high-water mark below which everything was acknowledged
//! (refreshed at most once a second, at every seal and at close), and the gaps repairs
//! left. `log.hwm` holds the newest "written" mark with the boot id, rewritten after
//! every group's write and never fsynced.
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
//! active one; sealed ones with a valid index are then checked as they are read).
//!
//! **How far the log was acknowledged.** Within the same boot of the machine (a crash
//! of the process, a kill), every completed write is still in the page cache, so the
//! "written" mark, in the header and in `log.hwm`, is exact. After a reboot (a power
//! loss) only the "durable" mark holds: the previous group commit's end. `log.meta`'s
//! high-water mark is a lower bound either way. The one case recovery cannot tell from
//! a torn write is damage to the records of the very last group commit before a power
//! loss: those are cut like a torn tail.
//!
//! - **Active segment.** Scanning stops at the first position that is not the next
//!   valid record: cut short, a CRC mismatch, an impossible length or the wrong
//!   sequence. If nothing acknowledged is lost and no intact record of this segment
//!   follows, it is a torn tail: the file is truncated there and the bytes dropped are
//!   logged. Otherwise it is damage, and open fails naming the file, the offset and the
//!   acknowledged records missing. A header damaged before `log.meta` named the segment
//!   (a crash while it was being created, so nothing was ever written in it) is written
//!   again; after that, a damaged header, or a file of zeros, is damage.
//! - **Sealed segments.** Any damage, and any gap or overlap between segments that
//!   `log.meta` does not record, fails the open with the file and offset. Nothing is
//!   skipped.
//! - **Missing segments.** A first segment newer than `log.meta`'s oldest sequence, or
//!   a newest segment older than the one `log.meta` names (or than the acknowledged
//!   mark), fails the open: segments are deleted by retention, which records it first,
//!   never by accident.
//!
//! [`Log::verify`] reports every such problem, changing nothing. Opening with
//! [`Recovery::DropDamagedTail`] repairs them: what is cut goes to `quarantine/` first;
//! lost sequences become a gap in `log.meta`; the active segment continues above the
//! highest sequence ever acknowledged.
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
mod meta;
mod options;
mod recover;
mod reports;
mod segment;
mod shared;
pub mod storage;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

pub use error::{Damage, LogError, Result};
pub use format::Record;
pub use options::{Durability, LogOptions, Recovery, Retention, VerifyOnOpen};
pub use recover::Finding;
use recover::Mode;
pub use reports::{AppendAck, LogHealth, LogStats, RetentionReport, VerifyReport};
use shared::{Hook, Progress, Shared};
use storage::{DirLock, FsStorage, Storage};
use writer::{Command, Writer};

/// Called on the writer thread with the first sequence of each committed group and its
/// records, in order, after readers can see them and before their appenders hear back.
pub type CommitHook = Box<dyn Fn(u64, &[Bytes]) + Send + Sync>;

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
    findings: Vec<Finding>,
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
        let mode = match options.recovery {
            Recovery::Strict => Mode::Open,
            Recovery::DropDamagedTail => Mode::Repair,
        };
        let recovered = recover::recover(&*storage, &dir, &options, mode)?;
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
            no_space: std::sync::Mutex::new(None),
            appends: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            fsync_micros: AtomicU64::new(0),
            on_commit: OnceLock::new(),
        });
        if !recovered.meta_written {
            shared.set_no_space(Some(meta::path(&shared.dir)));
        }
        let writer = Writer::new(
            shared.clone(),
            rx,
            recovered.last_index_offset,
            (recovered.meta, recovered.meta_written),
            recovered.hwm,
        );
        let handle = std::thread::Builder::new()
            .name("ganglion-log-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| LogError::io("spawn writer thread for", &shared.dir, e))?;
        tracing::info!(dir = %shared.dir.display(), first_seq = shared.first_seq(), next_seq, "event log open");
        Ok(Log {
            shared,
            tx: Some(tx),
            writer: Some(handle),
            findings: recovered.findings,
            _lock: lock,
        })
    }

    /// Checks the log in `dir` as opening it would, changes nothing, and reports every
    /// problem found (not only the first), each with what a repair would do. Refused
    /// while the log is open elsewhere.
    pub fn verify(dir: impl AsRef<Path>, options: LogOptions) -> Result<VerifyReport> {
        Self::verify_with_storage(Arc::new(FsStorage), dir, options)
    }

    /// [`verify`](Log::verify) on `storage`.
    pub fn verify_with_storage(
        storage: Arc<dyn Storage>,
        dir: impl AsRef<Path>,
        options: LogOptions,
    ) -> Result<VerifyReport> {
        options.validate()?;
        let dir = dir.as_ref();
        let _lock = storage
            .lock_dir(dir)
            .map_err(|e| LogError::io("lock", dir, e))?
            .ok_or_else(|| LogError::Locked {
                dir: dir.to_path_buf(),
            })?;
        let recovered = recover::recover(&*storage, dir, &options, Mode::Verify)?;
        let (first_seq, next_seq) = match (recovered.segments.first(), recovered.segments.last()) {
            (Some(first), Some(last)) => (first.base_seq, last.extent().next_seq),
            _ => (recovered.meta.first_seq, recovered.meta.first_seq),
        };
        // Where a repair would go on numbering.
        let next_seq = next_seq.max(recovered.meta.high_water);
        let records = recovered
            .segments
            .iter()
            .map(|s| s.extent().next_seq - s.base_seq)
            .sum();
        Ok(VerifyReport {
            segments: recovered.segments.len() as u64,
            records,
            first_seq,
            next_seq,
            findings: recovered.findings,
        })
    }

    /// What recovery found and mended (or, under [`Recovery::DropDamagedTail`],
    /// repaired) when this log opened.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
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

    /// Has `hook` told of every group of records committed from now on: its first
    /// sequence and its records, in sequence order, on the writer thread (so it must be
    /// quick). It runs once the records are readable and before their appends return,
    /// and it runs even when an appender has stopped waiting. One hook per log; returns
    /// `false` if one was set already.
    pub fn on_commit(&self, hook: CommitHook) -> bool {
        self.shared.on_commit.set(Hook(hook)).is_ok()
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

    /// Deletes the sealed segments holding only records below `seq`, oldest first (a
    /// retention decided above the log, per topic, say). The active segment stays.
    pub async fn delete_before(&self, seq: u64) -> Result<RetentionReport> {
        let (reply, answer) = oneshot::channel();
        self.ask(Command::DeleteBefore { seq, reply }, answer).await
    }

    /// Each segment's first sequence and one past its last, oldest first; the last is
    /// the active segment.
    pub fn segment_bounds(&self) -> Vec<(u64, u64)> {
        self.shared
            .segments()
            .iter()
            .map(|s| (s.base_seq, s.extent().next_seq))
            .collect()
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

    /// Whether appends are accepted now, and why not.
    pub fn health(&self) -> LogHealth {
        if let Some(reason) = self.shared.failure() {
            return LogHealth::Failed { reason };
        }
        match self.shared.no_space() {
            Some(file) => LogHealth::NoSpace { file },
            None => LogHealth::Ok,
        }
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
            records: segments
                .iter()
                .map(|s| s.extent().next_seq - s.base_seq)
                .sum(),
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
