//! Byte layout of segment and index files. See the crate docs for the format and its
//! invariants; this module is the only place that encodes or decodes them.

use bytes::Bytes;

use crate::error::Damage;

/// `GNGLSEG1`: the first bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"GNGLSEG1";
/// The format new segments are written in. Version 1 segments (no commit marks) are
/// still read.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// The version of index files (unchanged since version 1).
const INDEX_VERSION: u32 = 1;
/// The part of a segment header that never changes: magic, version, base, CRC.
pub(crate) const STATIC_HEADER_LEN: u64 = 24;
/// Where the commit marks of a version 2 segment start, and their length.
const MARKS_AT: u64 = STATIC_HEADER_LEN;
const MARKS_LEN: usize = 40;
pub(crate) const RECORD_HEADER_LEN: u64 = 24;

/// Bytes before a segment's first record, by format version.
pub(crate) fn header_len(version: u32) -> u64 {
    if version == 1 { 24 } else { 64 }
}

/// `GNGLIDX1`: the first bytes of every index file.
pub(crate) const INDEX_MAGIC: [u8; 8] = *b"GNGLIDX1";
const INDEX_HEADER_LEN: usize = 8 + 4 + 8 + 8 + 8 + 8 + 8 + 8;
const INDEX_ENTRY_LEN: usize = 24;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A new (version 2) segment's header: the static part, and commit marks that say
/// nothing is committed yet.
pub(crate) fn encode_segment_header(base_seq: u64, boot: u64) -> Vec<u8> {
    let mut h = vec![0u8; header_len(FORMAT_VERSION) as usize];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&base_seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    let marks = Marks {
        written: base_seq,
        durable: base_seq,
        boot,
    };
    h[MARKS_AT as usize..].copy_from_slice(&marks.encode());
    h
}

/// What a segment header says: its format version and base sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub(crate) version: u32,
    pub(crate) base_seq: u64,
}

impl SegmentHeader {
    /// Bytes before the first record.
    pub(crate) fn len(&self) -> u64 {
        header_len(self.version)
    }
}

/// Checks the static part of a segment header (the first 24 bytes).
pub(crate) fn decode_segment_header(h: &[u8]) -> Result<SegmentHeader, Damage> {
    if (h.len() as u64) < STATIC_HEADER_LEN {
        return Err(Damage::Truncated {
            needed: STATIC_HEADER_LEN,
            available: h.len() as u64,
        });
    }
    if h[0..8] != SEGMENT_MAGIC {
        return Err(Damage::BadHeader("magic is not GNGLSEG1"));
    }
    if crc32c::crc32c(&h[0..20]) != u32_at(h, 20) {
        return Err(Damage::BadHeader("header checksum mismatch"));
    }
    let version = u32_at(h, 8);
    if version != 1 && version != FORMAT_VERSION {
        return Err(Damage::BadHeader("unsupported format version"));
    }
    if (h.len() as u64) < header_len(version) {
        return Err(Damage::Truncated {
            needed: header_len(version),
            available: h.len() as u64,
        });
    }
    Ok(SegmentHeader {
        version,
        base_seq: u64_at(h, 12),
    })
}

/// The commit marks of a version 2 segment, rewritten with every group commit in the
/// same fdatasync as the group's records.
///
/// `written` is one past the last record of the newest group whose write completed (it
/// may not be on disk yet after a power loss); `durable` is one past the last record
/// known to be on disk (fdatasynced) before that write. `boot` names the boot of the
/// machine that wrote them: within the same boot the page cache still holds every
/// completed write, so `written` holds; after a reboot only `durable` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Marks {
    pub(crate) written: u64,
    pub(crate) durable: u64,
    pub(crate) boot: u64,
}

impl Marks {
    pub(crate) const OFFSET: u64 = MARKS_AT;

    pub(crate) fn encode(&self) -> [u8; MARKS_LEN] {
        let mut b = [0u8; MARKS_LEN];
        b[0..8].copy_from_slice(&self.written.to_le_bytes());
        b[8..16].copy_from_slice(&self.durable.to_le_bytes());
        b[16..24].copy_from_slice(&self.boot.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..32]);
        b[32..36].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The marks at the start of a version 2 header; `None` if they do not check out.
    pub(crate) fn decode(header: &[u8]) -> Option<Marks> {
        let b = header.get(MARKS_AT as usize..MARKS_AT as usize + MARKS_LEN)?;
        if crc32c::crc32c(&b[0..32]) != u32_at(b, 32) {
            return None;
        }
        Some(Marks {
            written: u64_at(b, 0),
            durable: u64_at(b, 8),
            boot: u64_at(b, 16),
        })
    }

    /// One past the last record that was acknowledged for certain, as seen from boot
    /// `boot_now`.
    pub(crate) fn acknowledged(&self, boot_now: u64) -> u64 {
        if self.boot != 0 && self.boot == boot_now {
            self.written
        } else {
            self.durable
        }
    }
}

/// Appends one encoded record to `buf`.
pub(crate) fn encode_record(buf: &mut Vec<u8>, seq: u64, timestamp_micros: u64, payload: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 4]);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&timestamp_micros.to_le_bytes());
    buf.extend_from_slice(payload);
    let crc = crc32c::crc32c(&buf[start + 4..]);
    buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// The fixed-size part of a record, as read from disk and not yet checked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordHeader {
    pub(crate) crc: u32,
    pub(crate) len: u32,
    pub(crate) seq: u64,
    pub(crate) timestamp_micros: u64,
}

impl RecordHeader {
    pub(crate) fn parse(b: &[u8]) -> Self {
        RecordHeader {
            crc: u32_at(b, 0),
            len: u32_at(b, 4),
            seq: u64_at(b, 8),
            timestamp_micros: u64_at(b, 16),
        }
    }

    /// Total bytes of the record on disk.
    pub(crate) fn total_len(&self) -> u64 {
        RECORD_HEADER_LEN + u64::from(self.len)
    }

    /// Checks the CRC against the record's bytes (`record` is header and payload).
    pub(crate) fn verify(&self, record: &[u8]) -> Result<(), Damage> {
        let computed = crc32c::crc32c(&record[4..]);
        if computed == self.crc {
            Ok(())
        } else {
            Err(Damage::ChecksumMismatch {
                stored: self.crc,
                computed,
            })
        }
    }
}

/// One record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The sequence number the log assigned (the first record of a log is 1).
    pub seq: u64,
    /// When the log appended it, in microseconds since the Unix epoch. Never decreases
    /// along the log, even if the wall clock steps back.
    pub timestamp_micros: u64,
    /// The bytes that were appended.
    pub payload: Bytes,
}

/// A sparse index entry: the record `seq` starts at byte `offset` and was appended at
/// `timestamp_micros`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) seq: u64,
    pub(crate) offset: u64,
    pub(crate) timestamp_micros: u64,
}

/// Everything an index file records about a sealed segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SealedIndex {
    pub(crate) base_seq: u64,
    /// One past the last sequence in the segment.
    pub(crate) next_seq: u64,
    /// The segment file's length when the index was written.
    pub(crate) file_len: u64,
    pub(crate) first_timestamp_micros: u64,
    pub(crate) last_timestamp_micros: u64,
    pub(crate) entries: Vec<IndexEntry>,
}

pub(crate) fn encode_index(index: &SealedIndex) -> Vec<u8> {
    let mut b = Vec::with_capacity(INDEX_HEADER_LEN + index.entries.len() * INDEX_ENTRY_LEN + 4);
    b.extend_from_slice(&INDEX_MAGIC);
    b.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    for v in [
        index.base_seq,
        index.next_seq,
        index.file_len,
        index.first_timestamp_micros,
        index.last_timestamp_micros,
        index.entries.len() as u64,
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    // Pad the header to a fixed length so entries start at a known offset.
    b.resize(INDEX_HEADER_LEN, 0);
    for e in &index.entries {
        b.extend_from_slice(&e.seq.to_le_bytes());
        b.extend_from_slice(&e.offset.to_le_bytes());
        b.extend_from_slice(&e.timestamp_micros.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes an index file; `None` if it is damaged in any way (it is then rebuilt).
pub(crate) fn decode_index(b: &[u8]) -> Option<SealedIndex> {
    if b.len() < INDEX_HEADER_LEN + 4 || b[0..8] != INDEX_MAGIC {
        return None;
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32c::crc32c(body) != u32_at(crc, 0) || u32_at(body, 8) != INDEX_VERSION {
        return None;
    }
    let count = usize::try_from(u64_at(body, 52)).ok()?;
    if body.len() != INDEX_HEADER_LEN + count.checked_mul(INDEX_ENTRY_LEN)? {
        return None;
    }
    let entries = body[INDEX_HEADER_LEN..]
        .chunks_exact(INDEX_ENTRY_LEN)
        .map(|e| IndexEntry {
            seq: u64_at(e, 0),
            offset: u64_at(e, 8),
            timestamp_micros: u64_at(e, 16),
        })
        .collect();
    Some(SealedIndex {
        base_seq: u64_at(body, 12),
        next_seq: u64_at(body, 20),
        file_len: u64_at(body, 28),
        first_timestamp_micros: u64_at(body, 36),
        last_timestamp_micros: u64_at(body, 44),
        entries,
    })
}

/// File name of the segment whose first record is `base_seq`.
pub(crate) fn segment_file_name(base_seq: u64) -> String {
    format!("{base_seq:020}.log")
}

/// File name of the index of the segment whose first record is `base_seq`.
pub(crate) fn index_file_name(base_seq: u64) -> String {
    format!("{base_seq:020}.index")
}

/// Parses `{base_seq:020}.{ext}`.
pub(crate) fn parse_file_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_any_flipped_bit_is_detected() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 42, 1_000, b"hello");
        let h = RecordHeader::parse(&buf);
        assert_eq!((h.seq, h.len, h.timestamp_micros), (42, 5, 1_000));
        assert_eq!(h.total_len(), buf.len() as u64);
        h.verify(&buf).unwrap();
        for bit in 32..buf.len() * 8 {
            let mut damaged = buf.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let h = RecordHeader::parse(&damaged);
            if h.total_len() == damaged.len() as u64 {
                assert!(h.verify(&damaged).is_err(), "bit {bit} flipped undetected");
            }
        }
    }

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        let h = encode_segment_header(7, 99);
        let header = decode_segment_header(&h).unwrap();
        assert_eq!((header.version, header.base_seq, header.len()), (2, 7, 64));
        let mut bad = h.clone();
        bad[13] ^= 1;
        assert!(decode_segment_header(&bad).is_err());
        assert!(decode_segment_header(&h[..10]).is_err());
        assert!(decode_segment_header(&h[..40]).is_err(), "marks cut short");
        let marks = Marks::decode(&h).unwrap();
        assert_eq!((marks.written, marks.durable, marks.boot), (7, 7, 99));
        let mut bad = h;
        bad[30] ^= 4;
        assert_eq!(Marks::decode(&bad), None);
    }

    #[test]
    fn index_round_trips_and_damage_makes_it_unreadable() {
        let index = SealedIndex {
            base_seq: 10,
            next_seq: 20,
            file_len: 999,
            first_timestamp_micros: 5,
            last_timestamp_micros: 6,
            entries: vec![IndexEntry {
                seq: 10,
                offset: 24,
                timestamp_micros: 5,
            }],
        };
        let bytes = encode_index(&index);
        assert_eq!(decode_index(&bytes), Some(index));
        let mut bad = bytes.clone();
        bad[40] ^= 0x10;
        assert_eq!(decode_index(&bad), None);
        assert_eq!(decode_index(&bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn file_names_are_zero_padded_base_sequences() {
        assert_eq!(segment_file_name(1), "00000000000000000001.log");
        assert_eq!(parse_file_name("00000000000000000001.log", "log"), Some(1));
        assert_eq!(
            parse_file_name("00000000000000000001.index", "index"),
            Some(1)
        );
        assert_eq!(parse_file_name("1.log", "log"), None);
        assert_eq!(parse_file_name("0000000000000000000x.log", "log"), None);
    }
}
