//! One segment file: its sparse index, its committed extent, and sequential record
//! reading (shared by recovery scans and reads).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use bytes::{Bytes, BytesMut};

use crate::error::{Damage, LogError, Result};
use crate::format::{IndexEntry, RECORD_HEADER_LEN, Record, RecordHeader, SealedIndex, header_len};
use crate::storage::{StorageFile, read_full_at};

/// How much a reader asks the file for at once.
const READ_CHUNK: usize = 256 * 1024;

/// The committed part of a segment: what readers may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent {
    /// One past the last committed sequence (== base_seq when empty).
    pub(crate) next_seq: u64,
    /// Bytes of the file that hold committed records (header included).
    pub(crate) len: u64,
    /// Timestamp of the first record (0 when empty).
    pub(crate) first_timestamp_micros: u64,
    /// Timestamp of the last record (0 when empty).
    pub(crate) last_timestamp_micros: u64,
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base_seq: u64,
    /// Its format version (1: no commit marks; 2: commit marks in the header).
    pub(crate) version: u32,
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<dyn StorageFile>,
    index: RwLock<Vec<IndexEntry>>,
    extent: Mutex<Extent>,
}

impl Segment {
    pub(crate) fn new(
        base_seq: u64,
        version: u32,
        path: PathBuf,
        file: Arc<dyn StorageFile>,
        index: Vec<IndexEntry>,
        extent: Extent,
    ) -> Self {
        Segment {
            base_seq,
            version,
            path,
            file,
            index: RwLock::new(index),
            extent: Mutex::new(extent),
        }
    }

    pub(crate) fn extent(&self) -> Extent {
        *self.extent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes newly committed records (writer only).
    pub(crate) fn commit(&self, extent: Extent, new_entries: &[IndexEntry]) {
        if !new_entries.is_empty() {
            self.index
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(new_entries);
        }
        *self.extent.lock().unwrap_or_else(|e| e.into_inner()) = extent;
    }

    pub(crate) fn sealed_index(&self) -> SealedIndex {
        let extent = self.extent();
        SealedIndex {
            base_seq: self.base_seq,
            next_seq: extent.next_seq,
            file_len: extent.len,
            first_timestamp_micros: extent.first_timestamp_micros,
            last_timestamp_micros: extent.last_timestamp_micros,
            entries: self.index.read().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    /// The byte offset to start scanning from to find `seq`.
    fn offset_for_seq(&self, seq: u64) -> (u64, u64) {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        match index.partition_point(|e| e.seq <= seq) {
            0 => (self.base_seq, header_len(self.version)),
            i => (index[i - 1].seq, index[i - 1].offset),
        }
    }

    /// The byte offset and sequence to start scanning from to find the first record at
    /// or after `micros`.
    fn offset_for_time(&self, micros: u64) -> (u64, u64) {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        match index.partition_point(|e| e.timestamp_micros < micros) {
            0 => (self.base_seq, header_len(self.version)),
            i => (index[i - 1].seq, index[i - 1].offset),
        }
    }

    /// Appends to `out` the committed records with `seq >= from_seq`, until `out` holds
    /// `max_records` or `max_bytes` of payload (at least one record is always returned).
    pub(crate) fn read_into(
        &self,
        from_seq: u64,
        max_records: usize,
        max_bytes: usize,
        max_record_bytes: u64,
        out: &mut Vec<Record>,
        out_bytes: &mut usize,
    ) -> Result<()> {
        let extent = self.extent();
        if from_seq >= extent.next_seq {
            return Ok(());
        }
        let (mut expected, offset) = self.offset_for_seq(from_seq);
        let mut reader = RecordReader::new(&*self.file, offset, extent.len, max_record_bytes);
        while out.len() < max_records && (out.is_empty() || *out_bytes < max_bytes) {
            let Some((_, record)) = reader.next(expected).map_err(|f| self.failure(f))? else {
                break;
            };
            expected += 1;
            if record.seq >= from_seq {
                *out_bytes += record.payload.len();
                out.push(record);
            }
        }
        Ok(())
    }

    /// The first committed record at or after `micros`, if this segment has one.
    pub(crate) fn seq_at_time(&self, micros: u64, max_record_bytes: u64) -> Result<Option<u64>> {
        let extent = self.extent();
        if extent.next_seq == self.base_seq || extent.last_timestamp_micros < micros {
            return Ok(None);
        }
        let (mut expected, offset) = self.offset_for_time(micros);
        let mut reader = RecordReader::new(&*self.file, offset, extent.len, max_record_bytes);
        while let Some((_, record)) = reader.next(expected).map_err(|f| self.failure(f))? {
            if record.timestamp_micros >= micros {
                return Ok(Some(record.seq));
            }
            expected += 1;
        }
        Ok(None)
    }

    fn failure(&self, failure: ReadFailure) -> LogError {
        match failure {
            ReadFailure::Damaged(offset, damage) => LogError::Corrupt {
                file: self.path.clone(),
                offset,
                damage,
                valid_records_after: 0,
                acknowledged_missing: 0,
            },
            ReadFailure::Io(e) => LogError::io("read", &self.path, e),
        }
    }
}

/// Reads records one after another from a byte range of a file, in large chunks, and
/// hands out payloads as slices of the chunk (no copy per record).
pub(crate) struct RecordReader<'a> {
    file: &'a dyn StorageFile,
    pos: u64,
    end: u64,
    max_record_bytes: u64,
    chunk: Bytes,
    chunk_start: u64,
}

impl<'a> RecordReader<'a> {
    pub(crate) fn new(
        file: &'a dyn StorageFile,
        pos: u64,
        end: u64,
        max_record_bytes: u64,
    ) -> Self {
        RecordReader {
            file,
            pos,
            end,
            max_record_bytes,
            chunk: Bytes::new(),
            chunk_start: pos,
        }
    }

    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    /// Makes `[pos, pos + len)` available in the chunk; `false` if the file is shorter.
    fn fill(&mut self, len: u64) -> std::result::Result<bool, ReadFailure> {
        let have_from = self.pos.saturating_sub(self.chunk_start);
        if self.pos >= self.chunk_start && have_from + len <= self.chunk.len() as u64 {
            return Ok(true);
        }
        let want = (self.end - self.pos).min(len.max(READ_CHUNK as u64)) as usize;
        let mut buf = BytesMut::zeroed(want);
        let got = read_full_at(self.file, &mut buf, self.pos).map_err(ReadFailure::Io)?;
        buf.truncate(got);
        self.chunk = buf.freeze();
        self.chunk_start = self.pos;
        Ok(self.chunk.len() as u64 >= len)
    }

    /// The next record, which must carry `expected_seq`: `Ok(None)` at the end of the
    /// range, [`ReadFailure::Damaged`] if the bytes at the position are not that record.
    pub(crate) fn next(
        &mut self,
        expected_seq: u64,
    ) -> std::result::Result<Option<(u64, Record)>, ReadFailure> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let available = self.end - self.pos;
        let pos = self.pos;
        let damaged = |damage| Err(ReadFailure::Damaged(pos, damage));
        if available < RECORD_HEADER_LEN || !self.fill(RECORD_HEADER_LEN)? {
            return damaged(Damage::Truncated {
                needed: RECORD_HEADER_LEN,
                available,
            });
        }
        let at = (self.pos - self.chunk_start) as usize;
        let header = RecordHeader::parse(&self.chunk[at..at + RECORD_HEADER_LEN as usize]);
        if u64::from(header.len) > self.max_record_bytes {
            return damaged(Damage::LengthTooLarge {
                len: u64::from(header.len),
                max: self.max_record_bytes,
            });
        }
        let total = header.total_len();
        if available < total || !self.fill(total)? {
            return damaged(Damage::Truncated {
                needed: total,
                available,
            });
        }
        let at = (self.pos - self.chunk_start) as usize;
        if let Err(damage) = header.verify(&self.chunk[at..at + total as usize]) {
            return damaged(damage);
        }
        if header.seq != expected_seq {
            return damaged(Damage::SequenceMismatch {
                expected: expected_seq,
                found: header.seq,
            });
        }
        let offset = self.pos;
        self.pos += total;
        let payload = self
            .chunk
            .slice(at + RECORD_HEADER_LEN as usize..at + total as usize);
        Ok(Some((
            offset,
            Record {
                seq: header.seq,
                timestamp_micros: header.timestamp_micros,
                payload,
            },
        )))
    }
}

/// Why a [`RecordReader`] could not return the next record.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    /// The bytes at this offset are not the expected record.
    Damaged(u64, Damage),
    /// The file could not be read.
    Io(std::io::Error),
}
