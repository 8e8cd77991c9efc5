//! The writer thread: the only code that writes, syncs, rolls or deletes segments.
//!
//! Appenders send requests over a bounded channel. The writer takes every request that is
//! waiting (up to `max_group_bytes`), encodes them into one buffer, writes it with one
//! positional write, makes it durable with one fdatasync (under `Durability::Always`),
//! then publishes the new records to readers and answers every appender of the group.
//!
//! Each group also rewrites the active segment's commit marks (in its header, covered by
//! the same fdatasync), and `log.meta` is refreshed at most once a second, when a
//! segment is sealed and at close: together they let recovery tell a torn, never
//! acknowledged write from damage to acknowledged records.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::error::{LogError, Result, is_no_space};
use crate::format::{self, IndexEntry, Marks};
use crate::meta::Meta;
use crate::options::Durability;
use crate::recover::needs_index_entry;
use crate::segment::{Extent, Segment};
use crate::{AppendAck, RetentionReport, Shared};

mod segments;

pub(crate) enum Command {
    Append {
        records: Vec<Bytes>,
        bytes: usize,
        reply: oneshot::Sender<Result<AppendAck>>,
    },
    Sync {
        reply: oneshot::Sender<Result<()>>,
    },
    Retention {
        reply: oneshot::Sender<Result<RetentionReport>>,
    },
    DeleteBefore {
        seq: u64,
        reply: oneshot::Sender<Result<RetentionReport>>,
    },
}

/// Where the next record goes. The writer's copy runs ahead of the segment's published
/// [`Extent`] while a group is being written.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    extent: Extent,
    last_index_offset: Option<u64>,
}

/// One group commit in the making.
struct Group {
    start: Cursor,
    buf: Vec<u8>,
    entries: Vec<IndexEntry>,
    /// The records, for the commit hook (only when one is set).
    records: Vec<Bytes>,
    waiting: Vec<(oneshot::Sender<Result<AppendAck>>, AppendAck)>,
}

impl Group {
    fn new(start: Cursor) -> Self {
        Group {
            start,
            buf: Vec::new(),
            entries: Vec::new(),
            records: Vec::new(),
            waiting: Vec::new(),
        }
    }

    fn answer_all(&mut self, result: impl Fn(&AppendAck) -> Result<AppendAck>) {
        for (reply, ack) in self.waiting.drain(..) {
            let _ = reply.send(result(&ack));
        }
    }
}

/// How often `log.meta`'s high-water mark follows the appends.
const META_EVERY: Duration = Duration::from_secs(1);
/// How often a log refusing appends for a full device checks for space.
const PROBE_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct Writer {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Command>,
    active: Arc<Segment>,
    cursor: Cursor,
    /// When the oldest acknowledged but unsynced record was written (Interval only).
    dirty_since: Option<Instant>,
    last_retention: Instant,
    /// One past the last record known to be fdatasynced.
    synced: u64,
    boot: u64,
    meta: Meta,
    /// `meta` differs from `log.meta` on disk since this time.
    meta_stale_since: Option<Instant>,
    /// `log.hwm`, rewritten after every group's write.
    hwm: Option<Arc<dyn crate::storage::StorageFile>>,
    /// Appends were refused for a full device, last at this time.
    full_since: Option<Instant>,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        rx: mpsc::Receiver<Command>,
        last_index_offset: Option<u64>,
        meta: (Meta, bool),
        hwm: Option<Arc<dyn crate::storage::StorageFile>>,
    ) -> Self {
        let (meta, meta_written) = meta;
        let active = shared.active();
        let cursor = Cursor {
            extent: active.extent(),
            last_index_offset,
        };
        let boot = shared.storage.boot_id();
        Writer {
            shared,
            rx,
            active,
            synced: cursor.extent.next_seq,
            cursor,
            dirty_since: None,
            last_retention: Instant::now(),
            boot,
            meta,
            meta_stale_since: (!meta_written).then(Instant::now),
            hwm,
            // Recovery could not write log.meta for a full device: appends would fail
            // the same way, so say so until the device has room.
            full_since: (!meta_written).then(Instant::now),
        }
    }

    /// Runs until every sender is gone, then syncs what is unsynced.
    pub(crate) fn run(mut self) -> Result<()> {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                self.fail(format!("could not start the log writer: {e}"));
                return Err(self.failed());
            }
        };
        runtime.block_on(self.serve());
        let result = self.sync_if_dirty().and_then(|()| self.close_marks());
        self.shared.close_progress();
        result
    }

    /// At close: marks and meta that say every record is acknowledged and synced.
    fn close_marks(&mut self) -> Result<()> {
        if self.shared.failure().is_some() {
            return Ok(());
        }
        let end = self.cursor.extent.next_seq;
        if self.write_marks(end).is_ok() && self.active.file.sync_data().is_ok() {
            self.synced = end;
        }
        self.meta.high_water = self.meta.high_water.max(self.synced);
        self.meta.write(&*self.shared.storage, &self.shared.dir)
    }

    /// Rewrites the active segment's commit marks: everything below `written` was
    /// written, everything below `self.synced` is on disk.
    fn write_marks(&self, written: u64) -> std::io::Result<()> {
        if let Some(hwm) = &self.hwm {
            // Not fsynced: it serves recovery within this boot (see `meta`).
            crate::storage::write_all_at(&**hwm, &crate::meta::encode_hwm(written, self.boot), 0)?;
        }
        if self.active.version < 2 {
            return Ok(());
        }
        let marks = Marks {
            written,
            durable: self.synced.min(written),
            boot: self.boot,
        };
        crate::storage::write_all_at(&*self.active.file, &marks.encode(), Marks::OFFSET)
    }

    /// Writes `log.meta`, its high-water mark brought up to what is synced.
    fn refresh_meta(&mut self) {
        self.meta_stale_since = None;
        self.meta.high_water = self.meta.high_water.max(self.synced);
        if let Err(e) = self.meta.write(&*self.shared.storage, &self.shared.dir) {
            tracing::warn!(error = %e, "could not update log.meta; will retry");
            self.meta_stale_since = Some(Instant::now());
        }
    }

    async fn serve(&mut self) {
        let mut appends = Vec::new();
        loop {
            let command = match self.next_deadline() {
                Some(at) => match tokio::time::timeout_at(
                    tokio::time::Instant::from_std(at),
                    self.rx.recv(),
                )
                .await
                {
                    Ok(command) => command,
                    Err(_) => {
                        self.on_timer();
                        continue;
                    }
                },
                None => self.rx.recv().await,
            };
            let Some(mut command) = command else { return };
            // Take everything already waiting, up to the group size, in arrival order.
            let mut group_bytes = 0;
            loop {
                match command {
                    Command::Append {
                        records,
                        bytes,
                        reply,
                    } => {
                        group_bytes += bytes;
                        appends.push((records, reply));
                    }
                    other => {
                        self.append_group(&mut appends);
                        self.handle(other);
                    }
                }
                if group_bytes >= self.shared.options.max_group_bytes {
                    break;
                }
                match self.rx.try_recv() {
                    Ok(next) => command = next,
                    Err(_) => break,
                }
            }
            self.append_group(&mut appends);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let sync = match (self.shared.options.durability, self.dirty_since) {
            (Durability::Interval(every), Some(since)) => Some(since + every),
            _ => None,
        };
        let retention = &self.shared.options.retention;
        let retention = (retention.max_age.is_some() || retention.max_bytes.is_some())
            .then(|| self.last_retention + retention.check_interval);
        let meta = self.meta_stale_since.map(|since| since + META_EVERY);
        let probe = self.full_since.map(|since| since + PROBE_EVERY);
        [sync, retention, meta, probe].into_iter().flatten().min()
    }

    /// The device was full: is there room again? Writes a page past the committed end
    /// of the active segment and cuts it off again.
    fn probe_space(&mut self) {
        let file = &self.active.file;
        let end = self.cursor.extent.len;
        let written = crate::storage::write_all_at(&**file, &[0u8; 4096], end);
        let cut = file.set_len(end);
        match (written, cut) {
            (Ok(()), Ok(())) => {
                tracing::info!(dir = %self.shared.dir.display(), "space is back: the event log accepts appends again");
                self.set_full(false);
            }
            (Err(e), _) if is_no_space(&e) => self.full_since = Some(Instant::now()),
            (Err(e), _) | (_, Err(e)) => {
                self.fail(format!(
                    "probing for space in {} failed: {e}",
                    self.active.path.display()
                ));
                self.full_since = None;
            }
        }
    }

    /// Records whether appends are being refused for a full device.
    fn set_full(&mut self, full: bool) {
        if full {
            self.full_since = Some(Instant::now());
            self.shared.set_no_space(Some(self.active.path.clone()));
        } else if self.full_since.take().is_some() {
            self.shared.set_no_space(None);
        }
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if let (Durability::Interval(every), Some(since)) =
            (self.shared.options.durability, self.dirty_since)
            && now >= since + every
        {
            let _ = self.sync_if_dirty();
        }
        let retention = &self.shared.options.retention;
        if (retention.max_age.is_some() || retention.max_bytes.is_some())
            && now >= self.last_retention + retention.check_interval
            && let Err(e) = self.retention()
        {
            tracing::warn!(error = %e, "log retention failed; will retry");
        }
        if self
            .meta_stale_since
            .is_some_and(|since| now >= since + META_EVERY)
        {
            self.refresh_meta();
        }
        if self
            .full_since
            .is_some_and(|since| now >= since + PROBE_EVERY)
        {
            self.probe_space();
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Append { .. } => unreachable!("appends are grouped by the caller"),
            Command::Sync { reply } => {
                let _ = reply.send(self.sync_if_dirty());
            }
            Command::Retention { reply } => {
                let _ = reply.send(self.retention());
            }
            Command::DeleteBefore { seq, reply } => {
                let _ = reply.send(self.delete_before(seq));
            }
        }
    }

    fn failed(&self) -> LogError {
        LogError::Failed {
            reason: self.shared.failure().unwrap_or_else(|| "unknown".into()),
        }
    }

    fn fail(&self, reason: String) {
        tracing::error!(dir = %self.shared.dir.display(), %reason, "event log failed; refusing further writes");
        self.shared.set_failure(reason);
    }

    /// Appends every request in `appends` (emptying it), as few group commits as the
    /// segment size allows.
    fn append_group(
        &mut self,
        appends: &mut Vec<(Vec<Bytes>, oneshot::Sender<Result<AppendAck>>)>,
    ) {
        if appends.is_empty() {
            return;
        }
        let segment_bytes = self.shared.options.segment_bytes;
        let mut group = Group::new(self.cursor);
        for (records, reply) in appends.drain(..) {
            let full = self.cursor.extent.len >= segment_bytes
                && self.cursor.extent.next_seq > self.active.base_seq;
            if full {
                self.flush(std::mem::replace(&mut group, Group::new(self.cursor)));
                let rolled = match self.shared.failure() {
                    Some(_) => Err(self.failed()),
                    None => self.roll(),
                };
                group = Group::new(self.cursor);
                if let Err(e) = rolled {
                    let _ = reply.send(Err(e));
                    continue;
                }
            }
            if self.shared.failure().is_some() {
                let _ = reply.send(Err(self.failed()));
                continue;
            }
            self.encode(&mut group, &records, reply);
        }
        self.flush(group);
    }

    fn encode(
        &mut self,
        group: &mut Group,
        records: &[Bytes],
        reply: oneshot::Sender<Result<AppendAck>>,
    ) {
        let now = self.shared.options.clock.now_micros();
        let timestamp = now.max(self.cursor.extent.last_timestamp_micros);
        let extent = &mut self.cursor.extent;
        let ack = AppendAck {
            first_seq: extent.next_seq,
            last_seq: extent.next_seq + records.len() as u64 - 1,
            timestamp_micros: timestamp,
        };
        for payload in records {
            let offset = extent.len;
            if needs_index_entry(
                self.cursor.last_index_offset,
                offset,
                self.shared.options.index_interval_bytes,
            ) {
                group.entries.push(IndexEntry {
                    seq: extent.next_seq,
                    offset,
                    timestamp_micros: timestamp,
                });
                self.cursor.last_index_offset = Some(offset);
            }
            let before = group.buf.len();
            format::encode_record(&mut group.buf, extent.next_seq, timestamp, payload);
            extent.len += (group.buf.len() - before) as u64;
            if extent.next_seq == self.active.base_seq {
                extent.first_timestamp_micros = timestamp;
            }
            extent.next_seq += 1;
            extent.last_timestamp_micros = timestamp;
        }
        if self.shared.on_commit.get().is_some() {
            group.records.extend(records.iter().cloned());
        }
        group.waiting.push((reply, ack));
    }

    /// Writes, syncs and publishes a group, and answers its appenders.
    fn flush(&mut self, mut group: Group) {
        if group.buf.is_empty() {
            return;
        }
        let file = &self.active.file;
        let offset = group.start.extent.len;
        if let Err(e) = crate::storage::write_all_at(&**file, &group.buf, offset) {
            if is_no_space(&e) {
                // Nothing of the group may stay behind: cut the partial write off and
                // hand its sequence numbers to the next group.
                match file.set_len(offset) {
                    Ok(()) => {
                        if self.full_since.is_none() {
                            tracing::warn!(file = %self.active.path.display(), appends = group.waiting.len(), "device full: appends are refused until space returns");
                        }
                        self.set_full(true);
                        self.cursor = group.start;
                        let path = self.active.path.clone();
                        group.answer_all(|_| Err(LogError::NoSpace { file: path.clone() }));
                        return;
                    }
                    Err(t) => self.fail(format!(
                        "device full writing {}, and truncating the partial write failed: {t}",
                        self.active.path.display()
                    )),
                }
            } else {
                self.fail(format!(
                    "write to {} failed: {e}",
                    self.active.path.display()
                ));
            }
            let failed = self.failed();
            group.answer_all(|_| Err(failed.clone()));
            return;
        }
        if let Err(e) = self.write_marks(self.cursor.extent.next_seq) {
            self.fail(format!(
                "writing the commit marks of {} failed: {e}",
                self.active.path.display()
            ));
            let failed = self.failed();
            group.answer_all(|_| Err(failed.clone()));
            return;
        }
        match self.shared.options.durability {
            Durability::Always => {
                if let Err(reason) = self.sync_active() {
                    let failed = LogError::Failed { reason };
                    group.answer_all(|_| Err(failed.clone()));
                    return;
                }
            }
            Durability::Interval(_) => {
                self.dirty_since.get_or_insert_with(Instant::now);
            }
        }
        self.active.commit(self.cursor.extent, &group.entries);
        self.shared
            .publish(self.cursor.extent.next_seq, group.waiting.len());
        if let Some(hook) = self.shared.on_commit.get() {
            (hook.0)(group.start.extent.next_seq, &group.records);
        }
        self.set_full(false);
        group.answer_all(|ack| Ok(*ack));
        if self.meta_stale_since.is_none() && self.synced > self.meta.high_water {
            self.meta_stale_since = Some(Instant::now());
        }
    }

    /// fdatasyncs the active segment; on failure the log fails (fsync is never retried).
    fn sync_active(&mut self) -> std::result::Result<(), Arc<str>> {
        let started = Instant::now();
        match self.active.file.sync_data() {
            Ok(()) => {
                self.shared.record_fsync(started.elapsed());
                self.dirty_since = None;
                self.synced = self.cursor.extent.next_seq;
                Ok(())
            }
            Err(e) => {
                self.fail(format!(
                    "fsync of {} failed: {e}",
                    self.active.path.display()
                ));
                Err(self
                    .shared
                    .failure()
                    .unwrap_or_else(|| "fsync failed".into()))
            }
        }
    }

    fn sync_if_dirty(&mut self) -> Result<()> {
        if let Some(reason) = self.shared.failure() {
            return Err(LogError::Failed { reason });
        }
        if self.dirty_since.is_some() {
            self.sync_active()
                .map_err(|reason| LogError::Failed { reason })?;
        }
        Ok(())
    }
}
