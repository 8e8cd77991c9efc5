//! `log.meta`: what the log knows about itself beyond its segments, so that recovery can
//! tell a segment that is missing from one that never existed, and a log whose end was
//! lost from one that never went further. A small text file, replaced atomically.
//!
//! ```text
//! ganglion-log-meta 1
//! first_seq 1          the oldest sequence retention has not deleted
//! last_segment 4097    the base of the newest segment created
//! high_water 5000      every sequence below this was acknowledged (a lower bound)
//! gap 4000 4100        sequences 4000..4100 do not exist (cut by a repair)
//! ```
//!
//! `high_water` is written when a segment is sealed, when the log opens and when it
//! closes, and at most once a second between; the commit marks in the active segment's
//! header carry it from one group commit to the next.
//!
//! `log.hwm` is the newest high-water mark, overwritten in place after every group's
//! write and never fsynced: within one boot of the machine the page cache keeps it
//! (through a crash of the process, and through damage to the active segment, even its
//! deletion), so it is trusted only when it names the current boot.

use std::path::{Path, PathBuf};

use crate::error::{LogError, Result};
use crate::storage::{Storage, read_full_at, write_atomically};

const MAGIC: &str = "ganglion-log-meta 1";
pub(crate) const FILE_NAME: &str = "log.meta";
pub(crate) const HWM_FILE: &str = "log.hwm";
const HWM_LEN: usize = 20;

/// `log.hwm`'s bytes: the mark, the boot that wrote it, a CRC32C of both.
pub(crate) fn encode_hwm(written: u64, boot: u64) -> [u8; HWM_LEN] {
    let mut b = [0u8; HWM_LEN];
    b[0..8].copy_from_slice(&written.to_le_bytes());
    b[8..16].copy_from_slice(&boot.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..16]);
    b[16..20].copy_from_slice(&crc.to_le_bytes());
    b
}

/// `log.hwm`'s mark, if it is intact and was written in boot `boot` (a known one).
pub(crate) fn read_hwm(storage: &dyn Storage, dir: &Path, boot: u64) -> Option<u64> {
    let file = storage.open(&dir.join(HWM_FILE)).ok()?;
    let mut b = [0u8; HWM_LEN];
    if read_full_at(&*file, &mut b, 0).ok()? != HWM_LEN {
        return None;
    }
    let crc = u32::from_le_bytes(b[16..20].try_into().ok()?);
    let written = u64::from_le_bytes(b[0..8].try_into().ok()?);
    let written_in = u64::from_le_bytes(b[8..16].try_into().ok()?);
    (crc32c::crc32c(&b[0..16]) == crc && boot != 0 && written_in == boot).then_some(written)
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) first_seq: u64,
    pub(crate) last_segment: u64,
    pub(crate) high_water: u64,
    /// Ranges `[from, to)` of sequences that do not exist, oldest first.
    pub(crate) gaps: Vec<(u64, u64)>,
}

pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

impl Meta {
    fn render(&self) -> String {
        let mut text = format!(
            "{MAGIC}\nfirst_seq {}\nlast_segment {}\nhigh_water {}\n",
            self.first_seq, self.last_segment, self.high_water
        );
        for (from, to) in &self.gaps {
            text.push_str(&format!("gap {from} {to}\n"));
        }
        text
    }

    /// Reads the meta file; `Ok(None)` if there is none (a new log, or one written
    /// before the file existed).
    pub(crate) fn read(storage: &dyn Storage, dir: &Path) -> Result<Option<Meta>> {
        let path = path(dir);
        let file = match storage.open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LogError::io("open", &path, e)),
        };
        let len = file.size().map_err(|e| LogError::io("stat", &path, e))?;
        let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(0).min(1 << 20)];
        let got =
            read_full_at(&*file, &mut bytes, 0).map_err(|e| LogError::io("read", &path, e))?;
        bytes.truncate(got);
        let bad = |line: usize, what: &str| LogError::BadMeta {
            file: path.clone(),
            line,
            reason: what.to_owned(),
        };
        let text = String::from_utf8(bytes).map_err(|_| bad(1, "not UTF-8 text"))?;
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
        if lines.next().map(|(_, l)| l) != Some(MAGIC) {
            return Err(bad(1, "not a ganglion log meta file"));
        }
        let mut meta = Meta::default();
        for (n, line) in lines {
            let words: Vec<&str> = line.split(' ').collect();
            let num = |s: &str| s.parse::<u64>().map_err(|_| bad(n, "expected a number"));
            match words.as_slice() {
                ["first_seq", v] => meta.first_seq = num(v)?,
                ["last_segment", v] => meta.last_segment = num(v)?,
                ["high_water", v] => meta.high_water = num(v)?,
                ["gap", from, to] => {
                    let (from, to) = (num(from)?, num(to)?);
                    if from >= to {
                        return Err(bad(n, "a gap must end after it starts"));
                    }
                    meta.gaps.push((from, to));
                }
                [] | [""] => {}
                _ => return Err(bad(n, "unknown line")),
            }
        }
        meta.gaps.sort_unstable();
        Ok(Some(meta))
    }

    /// Replaces the meta file (atomically; see [`write_atomically`]).
    pub(crate) fn write(&self, storage: &dyn Storage, dir: &Path) -> Result<()> {
        let path = path(dir);
        write_atomically(storage, &path, self.render().as_bytes())
            .map_err(|e| LogError::io("write", &path, e))
    }

    /// Whether `[from, to)` is a declared gap (or covered by declared gaps).
    pub(crate) fn explains_gap(&self, from: u64, to: u64) -> bool {
        let mut at = from;
        for &(gap_from, gap_to) in &self.gaps {
            if gap_from <= at && at < gap_to {
                at = gap_to;
            }
        }
        at >= to
    }

    /// Forgets gaps retention has passed.
    pub(crate) fn prune_gaps(&mut self) {
        let first = self.first_seq;
        self.gaps.retain(|&(_, to)| to > first);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    #[test]
    fn meta_round_trips_and_damage_is_named() {
        let storage = MemStorage::new();
        let dir = Path::new("/log");
        storage.create_dir_all(dir).unwrap();
        assert_eq!(Meta::read(&storage, dir).unwrap(), None);
        let meta = Meta {
            first_seq: 3,
            last_segment: 40,
            high_water: 55,
            gaps: vec![(10, 20), (20, 25)],
        };
        meta.write(&storage, dir).unwrap();
        assert_eq!(Meta::read(&storage, dir).unwrap(), Some(meta.clone()));
        assert!(meta.explains_gap(12, 25));
        assert!(!meta.explains_gap(9, 25));
        assert!(!meta.explains_gap(12, 26));
        storage.write_file(&path(dir), b"ganglion-log-meta 1\nfirst_seq x\n".to_vec());
        let err = Meta::read(&storage, dir).unwrap_err();
        assert!(err.to_string().contains("log.meta:2"), "{err}");
    }
}
