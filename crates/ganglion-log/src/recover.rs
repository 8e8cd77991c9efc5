//! Opening a log: find the segments, check them, repair a torn tail, load or rebuild the
//! sparse indexes. The rules are in the crate docs under "Recovery".

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Damage, LogError, Result};
use crate::format::{
    self, IndexEntry, RECORD_HEADER_LEN, RecordHeader, SEGMENT_HEADER_LEN, SealedIndex,
};
use crate::options::{LogOptions, Recovery, VerifyOnOpen};
use crate::segment::{Extent, ReadFailure, RecordReader, Segment};
use crate::storage::{Storage, StorageFile, read_full_at, write_all_at};

/// The state a recovered log resumes from.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// Oldest first; the last one is the active segment.
    pub(crate) segments: Vec<Arc<Segment>>,
    /// Offset of the active segment's last sparse index entry.
    pub(crate) last_index_offset: Option<u64>,
}

/// `true` if a record starting at `offset` needs an index entry.
pub(crate) fn needs_index_entry(last_entry: Option<u64>, offset: u64, interval: u64) -> bool {
    last_entry.is_none_or(|last| offset - last >= interval)
}

/// Creates a segment file with its header and makes both file and directory entry durable.
pub(crate) fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    base_seq: u64,
) -> io::Result<(PathBuf, Arc<dyn StorageFile>)> {
    let path = dir.join(format::segment_file_name(base_seq));
    let file = storage.create(&path)?;
    write_all_at(&*file, &format::encode_segment_header(base_seq), 0)?;
    file.sync_data()?;
    storage.sync_dir(dir)?;
    Ok((path, file))
}

/// Writes a sealed segment's index file. The index is a cache: it is not fsynced, and a
/// damaged or missing one is rebuilt from the segment.
pub(crate) fn write_index(storage: &dyn Storage, dir: &Path, index: &SealedIndex) {
    let path = dir.join(format::index_file_name(index.base_seq));
    let result = storage
        .create(&path)
        .and_then(|f| write_all_at(&*f, &format::encode_index(index), 0));
    if let Err(e) = result {
        tracing::warn!(file = %path.display(), error = %e, "could not write segment index; it will be rebuilt on open");
    }
}

/// The result of reading a segment record by record.
struct Scan {
    extent: Extent,
    entries: Vec<IndexEntry>,
    /// The first position that is not a valid next record, if any before the end.
    damage: Option<(u64, Damage)>,
}

fn scan(
    path: &Path,
    file: &dyn StorageFile,
    base_seq: u64,
    file_len: u64,
    options: &LogOptions,
) -> Result<Scan> {
    let mut extent = Extent {
        next_seq: base_seq,
        len: SEGMENT_HEADER_LEN,
        first_timestamp_micros: 0,
        last_timestamp_micros: 0,
    };
    let mut entries = Vec::new();
    let mut last_entry = None;
    let mut reader =
        RecordReader::new(file, SEGMENT_HEADER_LEN, file_len, options.max_record_bytes);
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

/// Counts records after `from` that are intact and could belong to this segment
/// (sequence at least `min_seq`): evidence that damage at `from` is not a torn tail.
fn valid_records_after(
    path: &Path,
    file: &dyn StorageFile,
    from: u64,
    file_len: u64,
    min_seq: u64,
    max_record_bytes: u64,
) -> Result<u64> {
    let len = usize::try_from(file_len.saturating_sub(from)).unwrap_or(usize::MAX);
    let mut tail = vec![0u8; len];
    let got = read_full_at(file, &mut tail, from).map_err(|e| LogError::io("read", path, e))?;
    tail.truncate(got);
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

/// Opens every segment in `dir`, checks it per `options`, and returns the log's state.
pub(crate) fn recover(
    storage: &dyn Storage,
    dir: &Path,
    options: &LogOptions,
) -> Result<Recovered> {
    let names = storage
        .list(dir)
        .map_err(|e| LogError::io("list", dir, e))?;
    let bases: BTreeSet<u64> = names
        .iter()
        .filter_map(|n| format::parse_file_name(n, "log"))
        .collect();
    let indexes: BTreeSet<u64> = names
        .iter()
        .filter_map(|n| format::parse_file_name(n, "index"))
        .collect();
    for orphan in indexes.difference(&bases) {
        let path = dir.join(format::index_file_name(*orphan));
        storage
            .remove(&path)
            .map_err(|e| LogError::io("remove orphan index", &path, e))?;
    }

    if bases.is_empty() {
        let (path, file) = create_segment(storage, dir, 1)
            .map_err(|e| LogError::io("create segment in", dir, e))?;
        let extent = Extent {
            next_seq: 1,
            len: SEGMENT_HEADER_LEN,
            first_timestamp_micros: 0,
            last_timestamp_micros: 0,
        };
        return Ok(Recovered {
            segments: vec![Arc::new(Segment::new(1, path, file, Vec::new(), extent))],
            last_index_offset: None,
        });
    }

    let bases: Vec<u64> = bases.into_iter().collect();
    let mut segments = Vec::with_capacity(bases.len());
    for (i, &base) in bases[..bases.len() - 1].iter().enumerate() {
        let has_index = indexes.contains(&base);
        segments.push(Arc::new(open_sealed(
            storage,
            dir,
            base,
            bases[i + 1],
            has_index,
            options,
        )?));
    }
    let last_base = *bases.last().expect("at least one segment");
    if let Some(prev) = segments.last() {
        let end = prev.extent().next_seq;
        if end != last_base {
            return Err(gap(prev, end, last_base));
        }
    }
    let (active, last_index_offset) = open_active(storage, dir, last_base, options)?;
    segments.push(Arc::new(active));
    Ok(Recovered {
        segments,
        last_index_offset,
    })
}

fn gap(segment: &Segment, end: u64, next_base: u64) -> LogError {
    LogError::Corrupt {
        file: segment.path.clone(),
        offset: segment.extent().len,
        damage: Damage::Gap { end, next_base },
        valid_records_after: 0,
    }
}

fn corrupt(path: &Path, offset: u64, damage: Damage) -> LogError {
    LogError::Corrupt {
        file: path.to_path_buf(),
        offset,
        damage,
        valid_records_after: 0,
    }
}

/// Reads a segment header and checks it against the base sequence in the file name;
/// `Ok(Some(damage))` if it does not hold.
fn check_header(path: &Path, file: &dyn StorageFile, base: u64) -> Result<Option<Damage>> {
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    let got = read_full_at(file, &mut header, 0).map_err(|e| LogError::io("read", path, e))?;
    Ok(match format::decode_segment_header(&header[..got]) {
        Ok(found) if found == base => None,
        Ok(_) => Some(Damage::BadHeader(
            "base sequence differs from the file name",
        )),
        Err(damage) => Some(damage),
    })
}

fn open_sealed(
    storage: &dyn Storage,
    dir: &Path,
    base: u64,
    next_base: u64,
    has_index: bool,
    options: &LogOptions,
) -> Result<Segment> {
    let path = dir.join(format::segment_file_name(base));
    let file = storage
        .open(&path)
        .map_err(|e| LogError::io("open", &path, e))?;
    let file_len = file.size().map_err(|e| LogError::io("stat", &path, e))?;
    if let Some(damage) = check_header(&path, &*file, base)? {
        return Err(corrupt(&path, 0, damage));
    }

    let stored = if has_index {
        let index_path = dir.join(format::index_file_name(base));
        read_index(storage, &index_path)
    } else {
        None
    };
    let stored = stored.filter(|i| i.base_seq == base && i.file_len == file_len);

    if options.verify_on_open == VerifyOnOpen::ActiveSegment
        && let Some(index) = stored.as_ref().filter(|i| i.next_seq == next_base)
    {
        let extent = Extent {
            next_seq: index.next_seq,
            len: index.file_len,
            first_timestamp_micros: index.first_timestamp_micros,
            last_timestamp_micros: index.last_timestamp_micros,
        };
        return Ok(Segment::new(
            base,
            path,
            file,
            index.entries.clone(),
            extent,
        ));
    }

    let scan = scan(&path, &*file, base, file_len, options)?;
    if let Some((offset, damage)) = scan.damage {
        return Err(corrupt(&path, offset, damage));
    }
    let segment = Segment::new(base, path, file, scan.entries, scan.extent);
    if scan.extent.next_seq != next_base {
        return Err(gap(&segment, scan.extent.next_seq, next_base));
    }
    let rebuilt = segment.sealed_index();
    if stored.as_ref() != Some(&rebuilt) {
        tracing::info!(file = %segment.path.display(), "rebuilt missing or damaged segment index");
        write_index(storage, dir, &rebuilt);
    }
    Ok(segment)
}

fn read_index(storage: &dyn Storage, path: &Path) -> Option<SealedIndex> {
    let file = storage.open(path).ok()?;
    let len = usize::try_from(file.size().ok()?).ok()?;
    let mut bytes = vec![0u8; len];
    let got = read_full_at(&*file, &mut bytes, 0).ok()?;
    format::decode_index(&bytes[..got])
}

fn open_active(
    storage: &dyn Storage,
    dir: &Path,
    base: u64,
    options: &LogOptions,
) -> Result<(Segment, Option<u64>)> {
    let path = dir.join(format::segment_file_name(base));
    let file = storage
        .open(&path)
        .map_err(|e| LogError::io("open", &path, e))?;
    let file_len = file.size().map_err(|e| LogError::io("stat", &path, e))?;
    let io = |op| {
        let path = path.clone();
        move |e| LogError::io(op, path, e)
    };

    if let Some(damage) = check_header(&path, &*file, base)? {
        // A header torn while the segment was being created: nothing was ever
        // acknowledged in it, unless valid records follow.
        let valid =
            valid_records_after(&path, &*file, 0, file_len, base, options.max_record_bytes)?;
        if valid > 0 && options.recovery == Recovery::Strict {
            return Err(LogError::Corrupt {
                file: path.clone(),
                offset: 0,
                damage,
                valid_records_after: valid,
            });
        }
        tracing::warn!(
            file = %path.display(), bytes_dropped = file_len, records_dropped = valid, %damage,
            "rewriting the torn header of the active segment"
        );
        file.set_len(0).map_err(io("truncate"))?;
        write_all_at(&*file, &format::encode_segment_header(base), 0).map_err(io("write"))?;
        file.sync_data().map_err(io("sync"))?;
        let extent = Extent {
            next_seq: base,
            len: SEGMENT_HEADER_LEN,
            first_timestamp_micros: 0,
            last_timestamp_micros: 0,
        };
        return Ok((
            Segment::new(base, path.clone(), file, Vec::new(), extent),
            None,
        ));
    }

    let scan = scan(&path, &*file, base, file_len, options)?;
    if let Some((offset, damage)) = scan.damage {
        let valid = valid_records_after(
            &path,
            &*file,
            offset,
            file_len,
            scan.extent.next_seq,
            options.max_record_bytes,
        )?;
        if valid > 0 && options.recovery == Recovery::Strict {
            return Err(LogError::Corrupt {
                file: path.clone(),
                offset,
                damage,
                valid_records_after: valid,
            });
        }
        let dropped = file_len - offset;
        if valid > 0 {
            tracing::warn!(
                file = %path.display(), offset, bytes_dropped = dropped, records_dropped = valid, %damage,
                "dropping damaged tail of the active segment, with valid records after it, as Recovery::DropDamagedTail allows"
            );
        } else {
            tracing::warn!(
                file = %path.display(), offset, bytes_dropped = dropped, %damage,
                "truncating torn tail of the active segment"
            );
        }
        file.set_len(offset).map_err(io("truncate"))?;
        file.sync_data().map_err(io("sync"))?;
    }
    let last_index_offset = scan.entries.last().map(|e| e.offset);
    Ok((
        Segment::new(base, path.clone(), file, scan.entries, scan.extent),
        last_index_offset,
    ))
}
