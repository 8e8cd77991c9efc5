//! What the log's handles and its writer thread share: the segments, progress, failure
//! and the commit hook.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::segment::Segment;
use crate::storage::Storage;

use crate::{CommitHook, LogOptions, Record, Result};

/// How far the log has committed, and whether it still accepts readers' waits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    pub(crate) next_seq: u64,
    pub(crate) open: bool,
}

/// State shared by the log handle, its readers and the writer thread.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) options: LogOptions,
    pub(crate) segments: RwLock<Vec<Arc<Segment>>>,
    pub(crate) progress: watch::Sender<Progress>,
    pub(crate) failure: OnceLock<Arc<str>>,
    /// The file whose write found the device full, while appends are refused for it.
    pub(crate) no_space: std::sync::Mutex<Option<PathBuf>>,
    pub(crate) appends: AtomicU64,
    pub(crate) fsyncs: AtomicU64,
    pub(crate) fsync_micros: AtomicU64,
    /// Told of every committed group of records, in sequence order (see
    /// [`Log::on_commit`]).
    pub(crate) on_commit: OnceLock<Hook>,
}

/// The commit hook, shown by name only.
pub(crate) struct Hook(pub(crate) CommitHook);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitHook")
    }
}

impl Shared {
    pub(crate) fn segments(&self) -> Vec<Arc<Segment>> {
        self.segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn active(&self) -> Arc<Segment> {
        let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
        segments
            .last()
            .expect("a log always has an active segment")
            .clone()
    }

    pub(crate) fn push_segment(&self, segment: Arc<Segment>) {
        self.segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(segment);
    }

    pub(crate) fn drop_oldest_segments(&self, n: usize) -> Vec<Arc<Segment>> {
        let mut segments = self.segments.write().unwrap_or_else(|e| e.into_inner());
        let n = n.min(segments.len() - 1);
        segments.drain(..n).collect()
    }

    /// The segment holding `seq` (or the oldest, if `seq` is older than all of them;
    /// or the next one, if `seq` falls in a gap a repair left).
    pub(crate) fn segment_for(&self, seq: u64) -> Arc<Segment> {
        let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
        let i = segments
            .partition_point(|s| s.base_seq <= seq)
            .saturating_sub(1);
        match segments.get(i + 1) {
            Some(next) if segments[i].extent().next_seq <= seq => next.clone(),
            _ => segments[i].clone(),
        }
    }

    /// The segment after `segment`, if any.
    pub(crate) fn segment_after(&self, segment: &Segment) -> Option<Arc<Segment>> {
        let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
        let i = segments.partition_point(|s| s.base_seq <= segment.base_seq);
        segments.get(i).cloned()
    }

    pub(crate) fn first_seq(&self) -> u64 {
        let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
        segments[0].base_seq
    }

    pub(crate) fn failure(&self) -> Option<Arc<str>> {
        self.failure.get().cloned()
    }

    pub(crate) fn set_failure(&self, reason: String) {
        let _ = self.failure.set(reason.into());
    }

    pub(crate) fn set_no_space(&self, file: Option<PathBuf>) {
        *self.no_space.lock().unwrap_or_else(|e| e.into_inner()) = file;
    }

    pub(crate) fn no_space(&self) -> Option<PathBuf> {
        self.no_space
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn publish(&self, next_seq: u64, appends: usize) {
        self.appends.fetch_add(appends as u64, Ordering::Relaxed);
        self.progress.send_modify(|p| p.next_seq = next_seq);
    }

    pub(crate) fn close_progress(&self) {
        self.progress.send_modify(|p| p.open = false);
    }

    pub(crate) fn record_fsync(&self, took: Duration) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn read(&self, from_seq: u64, max_records: usize) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut next = from_seq.max(self.first_seq());
        let mut segment = self.segment_for(next);
        while out.len() < max_records {
            segment.read_into(
                next,
                max_records,
                self.options.max_read_bytes,
                self.options.max_record_bytes,
                &mut out,
                &mut bytes,
            )?;
            if bytes >= self.options.max_read_bytes {
                break;
            }
            // On to the next segment (past a gap a repair left, if there is one).
            match self.segment_after(&segment) {
                Some(after) => {
                    next = next.max(after.base_seq);
                    segment = after;
                }
                None => break,
            }
        }
        Ok(out)
    }
}
