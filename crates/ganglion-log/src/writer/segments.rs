//! The writer's segments: rolling to a new one when the active one is full, and deleting
//! the oldest ones retention no longer needs.

use std::sync::Arc;
use std::time::Instant;

use crate::RetentionReport;
use crate::error::{LogError, Result, is_no_space};
use crate::format::{self, FORMAT_VERSION};
use crate::recover::{create_segment, empty_extent, write_index};
use crate::segment::Segment;

use super::{Cursor, Writer};

impl Writer {
    /// Seals the active segment and starts a new one at the next sequence.
    pub(super) fn roll(&mut self) -> Result<()> {
        self.sync_if_dirty()?;
        let dir = &self.shared.dir;
        let storage = &*self.shared.storage;
        let base = self.cursor.extent.next_seq;
        match create_segment(storage, dir, base) {
            Ok((path, file)) => {
                write_index(storage, dir, &self.active.sealed_index());
                let extent = empty_extent(base, format::header_len(FORMAT_VERSION));
                let segment = Arc::new(Segment::new(
                    base,
                    FORMAT_VERSION,
                    path,
                    file,
                    Vec::new(),
                    extent,
                ));
                self.shared.push_segment(segment.clone());
                self.active = segment;
                self.cursor = Cursor {
                    extent,
                    last_index_offset: None,
                };
                // The meta now knows the new segment: from here on a damaged header
                // of it is damage, not a creation a crash interrupted.
                self.meta.last_segment = base;
                self.meta.high_water = self.meta.high_water.max(base);
                if let Err(e) = self.meta.write(storage, dir) {
                    tracing::warn!(error = %e, "could not update log.meta after sealing a segment; will retry");
                    self.meta_stale_since = Some(Instant::now());
                }
                if let Err(e) = self.retention() {
                    tracing::warn!(error = %e, "log retention failed; will retry");
                }
                Ok(())
            }
            Err(e) => {
                let path = dir.join(format::segment_file_name(base));
                if is_no_space(&e) {
                    // Leave no half-made segment behind; the next append tries again.
                    let _ = storage.remove(&path);
                    let _ = storage.sync_dir(dir);
                    self.set_full(true);
                    Err(LogError::NoSpace { file: path })
                } else {
                    self.fail(format!("creating segment {} failed: {e}", path.display()));
                    Err(self.failed())
                }
            }
        }
    }

    /// Deletes the sealed segments that retention no longer keeps, oldest first.
    pub(super) fn retention(&mut self) -> Result<RetentionReport> {
        self.last_retention = Instant::now();
        let policy = self.shared.options.retention;
        let now = self.shared.options.clock.now_micros();
        let segments = self.shared.segments();
        let mut total: u64 = segments.iter().map(|s| s.extent().len).sum();
        let mut doomed = 0;
        for segment in &segments[..segments.len() - 1] {
            let extent = segment.extent();
            let too_old = policy.max_age.is_some_and(|age| {
                let age = u64::try_from(age.as_micros()).unwrap_or(u64::MAX);
                extent.last_timestamp_micros.saturating_add(age) < now
            });
            let too_big = policy.max_bytes.is_some_and(|max| total > max);
            if !(too_old || too_big) {
                break;
            }
            total -= extent.len;
            doomed += 1;
        }
        self.delete_oldest(&segments, doomed)
    }

    /// Deletes the sealed segments that hold nothing at or after `seq`, oldest first.
    pub(super) fn delete_before(&mut self, seq: u64) -> Result<RetentionReport> {
        let segments = self.shared.segments();
        let doomed = segments[..segments.len() - 1]
            .iter()
            .take_while(|s| s.extent().next_seq <= seq)
            .count();
        self.delete_oldest(&segments, doomed)
    }

    /// Deletes the `doomed` oldest of `segments` (never the active one).
    pub(super) fn delete_oldest(
        &mut self,
        segments: &[Arc<Segment>],
        doomed: usize,
    ) -> Result<RetentionReport> {
        let mut report = RetentionReport::default();
        if doomed == 0 {
            return Ok(report);
        }
        // Recorded first: a crash before the files go finishes the deletion on open,
        // and a deleted segment is never taken for a missing one.
        let mut meta = self.meta.clone();
        meta.first_seq = segments[doomed].base_seq;
        meta.prune_gaps();
        meta.write(&*self.shared.storage, &self.shared.dir)?;
        self.meta = meta;
        let removed = self.shared.drop_oldest_segments(doomed);
        let dir = &self.shared.dir;
        for segment in &removed {
            let extent = segment.extent();
            report.segments_deleted += 1;
            report.bytes_deleted += extent.len;
            report.records_deleted += extent.next_seq - segment.base_seq;
            self.shared
                .storage
                .remove(&segment.path)
                .map_err(|e| LogError::io("remove", &segment.path, e))?;
            let index = dir.join(format::index_file_name(segment.base_seq));
            if let Err(e) = self.shared.storage.remove(&index)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(LogError::io("remove", index, e));
            }
        }
        self.shared
            .storage
            .sync_dir(dir)
            .map_err(|e| LogError::io("sync directory", dir, e))?;
        tracing::info!(
            segments = report.segments_deleted,
            bytes = report.bytes_deleted,
            records = report.records_deleted,
            "retention deleted sealed segments"
        );
        Ok(report)
    }
}
