//! Reading a segment's bytes: its head, its records one by one until the first damage,
//! and whether intact records follow a damage.

use std::path::Path;

use crate::error::{Damage, LogError, Result};
use crate::format::{
    self, FORMAT_VERSION, IndexEntry, RECORD_HEADER_LEN, RecordHeader, header_len,
};
use crate::options::LogOptions;
use crate::segment::{Extent, ReadFailure, RecordReader};
use crate::storage::{StorageFile, read_full_at};

use super::{empty_extent, needs_index_entry};

/// The result of reading a segment record by record.
pub(super) struct Scan {
    pub(super) extent: Extent,
    pub(super) entries: Vec<IndexEntry>,
    /// The first position that is not a valid next record, if any before the end.
    pub(super) damage: Option<(u64, Damage)>,
}

pub(super) fn scan(
    path: &Path,
    file: &dyn StorageFile,
    base_seq: u64,
    header_len: u64,
    file_len: u64,
    options: &LogOptions,
) -> Result<Scan> {
    let mut extent = empty_extent(base_seq, header_len);
    let mut entries = Vec::new();
    let mut last_entry = None;
    let mut reader = RecordReader::new(file, header_len, file_len, options.max_record_bytes);
    loop {
        match reader.next(extent.next_seq) {
            Ok(Some((offset, record))) => {
                if needs_index_entry(last_entry, offset, options.index_interval_bytes) {
                    entries.push(IndexEntry {
                        seq: record.seq,
                        offset,
                        timestamp_micros: record.timestamp_micros,
                    });
                    last_entry = Some(offset);
                }
                if extent.next_seq == base_seq {
                    extent.first_timestamp_micros = record.timestamp_micros;
                }
                extent.next_seq += 1;
                extent.last_timestamp_micros = record.timestamp_micros;
                extent.len = reader.position();
            }
            Ok(None) => {
                return Ok(Scan {
                    extent,
                    entries,
                    damage: None,
                });
            }
            Err(ReadFailure::Damaged(offset, damage)) => {
                return Ok(Scan {
                    extent,
                    entries,
                    damage: Some((offset, damage)),
                });
            }
            Err(ReadFailure::Io(e)) => return Err(LogError::io("read", path, e)),
        }
    }
}

/// Reads `[from, len)` of a file.
pub(super) fn read_range(
    path: &Path,
    file: &dyn StorageFile,
    from: u64,
    len: u64,
) -> Result<Vec<u8>> {
    let n = usize::try_from(len.saturating_sub(from)).unwrap_or(usize::MAX);
    let mut bytes = vec![0u8; n];
    let got = read_full_at(file, &mut bytes, from).map_err(|e| LogError::io("read", path, e))?;
    bytes.truncate(got);
    Ok(bytes)
}

/// Counts records after `from` that are intact and could belong to this segment
/// (sequence at least `min_seq`): evidence that damage at `from` is not a torn tail.
pub(super) fn valid_records_after(
    path: &Path,
    file: &dyn StorageFile,
    from: u64,
    file_len: u64,
    min_seq: u64,
    max_record_bytes: u64,
) -> Result<u64> {
    let tail = read_range(path, file, from, file_len)?;
    // Any sequence a record in this file could carry: one record needs at least a header.
    let max_seq = min_seq.saturating_add(file_len / RECORD_HEADER_LEN);
    let header_len = RECORD_HEADER_LEN as usize;
    let (mut pos, mut found) = (1usize, 0u64);
    while pos + header_len <= tail.len() {
        let h = RecordHeader::parse(&tail[pos..pos + header_len]);
        let total = h.total_len() as usize;
        let plausible = (min_seq..=max_seq).contains(&h.seq)
            && u64::from(h.len) <= max_record_bytes
            && pos + total <= tail.len();
        if plausible && h.verify(&tail[pos..pos + total]).is_ok() {
            found += 1;
            pos += total;
        } else {
            pos += 1;
        }
    }
    Ok(found)
}

/// Reads a segment's header (as much of the first 64 bytes as there are).
pub(super) fn read_head(path: &Path, file: &dyn StorageFile) -> Result<Vec<u8>> {
    let mut head = vec![0u8; header_len(FORMAT_VERSION) as usize];
    let got = read_full_at(file, &mut head, 0).map_err(|e| LogError::io("read", path, e))?;
    head.truncate(got);
    Ok(head)
}

/// Checks the header against the base sequence in the file name.
pub(super) fn check_header(
    head: &[u8],
    base: u64,
) -> std::result::Result<format::SegmentHeader, Damage> {
    let header = format::decode_segment_header(head)?;
    if header.base_seq != base {
        return Err(Damage::BadHeader(
            "base sequence differs from the file name",
        ));
    }
    Ok(header)
}

/// `true` if every byte of the file is zero.
pub(super) fn all_zeros(path: &Path, file: &dyn StorageFile, len: u64) -> Result<bool> {
    const CHUNK: u64 = 1 << 20;
    let mut at = 0;
    while at < len {
        let bytes = read_range(path, file, at, (at + CHUNK).min(len))?;
        if bytes.is_empty() {
            break;
        }
        if bytes.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += bytes.len() as u64;
    }
    Ok(true)
}
