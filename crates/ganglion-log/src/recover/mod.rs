//! Opening a log: find the segments, check them against `log.meta` and the commit marks,
//! cut a torn tail, load or rebuild the sparse indexes. The rules are in the crate docs
//! under "Recovery".
//!
//! One procedure serves three callers ([`Mode`]): opening (refuses at the first damage
//! that would lose an acknowledged record), repairing (cuts what is damaged, keeps a
//! copy in `quarantine/`, and goes on numbering above every acknowledged sequence), and
//! verifying (changes nothing, and carries on past each problem as a repair would, so
//! that it reports them all).

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Damage, LogError, Result};
use crate::format::{self, FORMAT_VERSION, SealedIndex, header_len};
use crate::meta::{self, Meta};
use crate::options::LogOptions;
use crate::segment::{Extent, Segment};
use crate::storage::{Storage, StorageFile, write_all_at};

mod active;
mod scan;
mod sealed;

use active::open_active;
use scan::{all_zeros, check_header, read_head, read_range, scan, valid_records_after};
use sealed::{check_follows, open_sealed};

/// Where repairs keep the bytes they cut.
pub(crate) const QUARANTINE: &str = "quarantine";

/// What recovery is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Open the log: damage that loses an acknowledged record refuses the open.
    Open,
    /// Cut what is damaged (a copy goes to `quarantine/`) and continue numbering above
    /// every acknowledged sequence.
    Repair,
    /// Change nothing; report every problem.
    Verify,
}

/// A problem recovery found, and what was (or would be) done about it.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The problem, as opening the log would report it.
    pub problem: LogError,
    /// `true` if it makes a normal open refuse; `false` for what an open repairs by
    /// itself (a torn, never acknowledged tail; files a crash left behind).
    pub refuses_open: bool,
    /// What a repair does (or did) about it.
    pub repair: String,
}

/// The state a recovered log resumes from.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// Oldest first; the last one is the active segment.
    pub(crate) segments: Vec<Arc<Segment>>,
    /// Offset of the active segment's last sparse index entry.
    pub(crate) last_index_offset: Option<u64>,
    /// `log.meta` as it stands after recovery.
    pub(crate) meta: Meta,
    /// Whether `meta` is on disk (a full device can keep it from being written).
    pub(crate) meta_written: bool,
    /// `log.hwm`, open for the writer (`None` if verifying, or if it cannot be made).
    pub(crate) hwm: Option<Arc<dyn StorageFile>>,
    pub(crate) findings: Vec<Finding>,
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
    write_all_at(
        &*file,
        &format::encode_segment_header(base_seq, storage.boot_id()),
        0,
    )?;
    file.sync_data()?;
    storage.sync_dir(dir)?;
    Ok((path, file))
}

/// An empty segment's extent.
pub(crate) fn empty_extent(base_seq: u64, header_len: u64) -> Extent {
    Extent {
        next_seq: base_seq,
        len: header_len,
        first_timestamp_micros: 0,
        last_timestamp_micros: 0,
    }
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

/// The state of one recovery.
struct Ctx<'a> {
    storage: &'a dyn Storage,
    dir: &'a Path,
    options: &'a LogOptions,
    mode: Mode,
    boot: u64,
    /// `log.meta` as recovery goes (repairs add gaps); written at the end unless
    /// verifying.
    meta: Meta,
    /// Whether `log.meta` existed: without it (a new log, or one from before it
    /// existed) nothing can be said about missing segments.
    had_meta: bool,
    /// `log.hwm`'s mark, when written in this boot.
    hwm: Option<u64>,
    findings: Vec<Finding>,
}

impl Ctx<'_> {
    /// One past the last sequence known to have been acknowledged, from outside the
    /// segments (log.meta, and log.hwm from this boot).
    fn acknowledged(&self) -> u64 {
        let meta = if self.had_meta {
            self.meta.high_water
        } else {
            0
        };
        meta.max(self.hwm.unwrap_or(0))
    }
}

impl Ctx<'_> {
    fn changes(&self) -> bool {
        self.mode != Mode::Verify
    }

    /// Damage that a normal open refuses. Opening: the error. Verifying: noted, and
    /// recovery carries on as a repair would. Repairing: noted and logged; `Ok(true)`
    /// tells the caller to repair.
    fn refuse(&mut self, problem: LogError, repair: String) -> Result<bool> {
        match self.mode {
            Mode::Open => Err(problem),
            Mode::Verify => {
                self.findings.push(Finding {
                    problem,
                    refuses_open: true,
                    repair,
                });
                Ok(false)
            }
            Mode::Repair => {
                tracing::warn!(problem = %problem, %repair, "repairing the event log");
                self.findings.push(Finding {
                    problem,
                    refuses_open: true,
                    repair,
                });
                Ok(true)
            }
        }
    }

    /// Something an open mends by itself; `true` if it should be mended now.
    fn mend(&mut self, problem: LogError, repair: String) -> bool {
        self.findings.push(Finding {
            problem,
            refuses_open: false,
            repair,
        });
        self.changes()
    }

    fn io<'p>(&self, op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> LogError + 'p {
        move |e| LogError::io(op, path, e)
    }

    /// Copies `[from, len)` of a segment into `quarantine/` before it is cut.
    fn quarantine(&self, path: &Path, file: &dyn StorageFile, from: u64, len: u64) -> Result<()> {
        let dir = self.dir.join(QUARANTINE);
        self.storage
            .create_dir_all(&dir)
            .map_err(self.io("create directory", &dir))?;
        let name = path.file_name().map_or_else(
            || "segment".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        );
        let target = dir.join(format!("{name}.from-byte-{from}"));
        let bytes = read_range(path, file, from, len)?;
        let copy = self.storage.create(&target).and_then(|f| {
            write_all_at(&*f, &bytes, 0)?;
            f.sync_data()
        });
        copy.and_then(|()| self.storage.sync_dir(&dir))
            .map_err(self.io("write", &target))?;
        tracing::warn!(from = %path.display(), to = %target.display(), bytes = bytes.len(), "damaged bytes moved to quarantine");
        Ok(())
    }

    /// Cuts a segment at `offset` (after quarantining what follows).
    fn cut(&self, path: &Path, file: &dyn StorageFile, offset: u64, len: u64) -> Result<()> {
        self.quarantine(path, file, offset, len)?;
        file.set_len(offset).map_err(self.io("truncate", path))?;
        file.sync_data().map_err(self.io("sync", path))
    }
}

fn corrupt(path: &Path, offset: u64, damage: Damage, acknowledged_missing: u64) -> LogError {
    LogError::Corrupt {
        file: path.to_path_buf(),
        offset,
        damage,
        valid_records_after: 0,
        acknowledged_missing,
    }
}

/// Opens every segment in `dir`, checks it per `options` and `mode`, and returns the
/// log's state.
pub(crate) fn recover(
    storage: &dyn Storage,
    dir: &Path,
    options: &LogOptions,
    mode: Mode,
) -> Result<Recovered> {
    let names = storage
        .list(dir)
        .map_err(|e| LogError::io("list", dir, e))?;
    let mut ctx = context(storage, dir, options, mode)?;
    let indexes: BTreeSet<u64> = names
        .iter()
        .filter_map(|n| format::parse_file_name(n, "index"))
        .collect();
    let bases = clean_up(&mut ctx, &names, &indexes)?;
    let Some(&first_base) = bases.first() else {
        return recover_empty(ctx);
    };
    check_start(&mut ctx, first_base)?;

    let mut segments = Vec::with_capacity(bases.len() + 1);
    for (i, &base) in bases[..bases.len() - 1].iter().enumerate() {
        let next_base = bases[i + 1];
        let segment = open_sealed(&mut ctx, base, next_base, indexes.contains(&base))?;
        check_follows(&mut ctx, &segment, next_base)?;
        segments.push(Arc::new(segment));
    }
    let last_base = *bases.last().expect("at least one segment");
    let (mut active, mut last_index_offset, continue_at) = open_active(&mut ctx, last_base)?;
    let continue_at = check_end(&mut ctx, &active, last_base, continue_at)?;

    if let Some(next) = continue_at.filter(|&next| next > active.extent().next_seq) {
        // A repair: the sequences up to `next` were acknowledged and are gone; new
        // records must not be given them again.
        let end = active.extent().next_seq;
        ctx.meta.gaps.push((end, next));
        ctx.meta.high_water = ctx.meta.high_water.max(next);
        if ctx.changes() {
            write_index(storage, dir, &active.sealed_index());
            segments.push(Arc::new(active));
            active = new_segment(&ctx, next)?;
            last_index_offset = None;
        }
    } else if active.version < FORMAT_VERSION && ctx.changes() {
        // A segment from before commit marks: seal it (or replace it, if empty) so
        // that every record from now on is covered by the marks.
        let end = active.extent().next_seq;
        if end > active.base_seq {
            write_index(storage, dir, &active.sealed_index());
            segments.push(Arc::new(active));
        } else {
            storage
                .remove(&active.path)
                .map_err(|e| LogError::io("remove", &active.path, e))?;
        }
        active = new_segment(&ctx, end)?;
        last_index_offset = None;
    }
    segments.push(Arc::new(active));
    finish(ctx, segments, last_index_offset)
}

/// The recovery's context: the stored meta (a damaged one is refused, or rebuilt from
/// the segments when repairing) and the high-water mark of this boot.
fn context<'a>(
    storage: &'a dyn Storage,
    dir: &'a Path,
    options: &'a LogOptions,
    mode: Mode,
) -> Result<Ctx<'a>> {
    let stored = match Meta::read(storage, dir) {
        Ok(meta) => meta,
        Err(problem) => {
            let mut ctx = Ctx {
                storage,
                dir,
                options,
                mode,
                boot: storage.boot_id(),
                meta: Meta::default(),
                had_meta: false,
                hwm: None,
                findings: Vec::new(),
            };
            ctx.refuse(
                problem,
                "rebuild log.meta from the segments (checks for missing segments start afresh)"
                    .to_owned(),
            )?;
            None
        }
    };
    let boot = storage.boot_id();
    Ok(Ctx {
        storage,
        dir,
        options,
        mode,
        boot,
        had_meta: stored.is_some(),
        meta: stored.unwrap_or_default(),
        hwm: meta::read_hwm(storage, dir, boot),
        findings: Vec::new(),
    })
}

/// Removes what a crash can leave behind (an index without its segment, a half-written
/// temporary file, segments retention had decided to delete); returns the bases of the
/// segments that remain, oldest first.
fn clean_up(ctx: &mut Ctx<'_>, names: &[String], indexes: &BTreeSet<u64>) -> Result<Vec<u64>> {
    let (storage, dir) = (ctx.storage, ctx.dir);
    let mut bases: BTreeSet<u64> = names
        .iter()
        .filter_map(|n| format::parse_file_name(n, "log"))
        .collect();
    for orphan in indexes.difference(&bases) {
        let path = dir.join(format::index_file_name(*orphan));
        if ctx.changes() {
            storage
                .remove(&path)
                .map_err(|e| LogError::io("remove orphan index", &path, e))?;
        }
    }
    for name in names.iter().filter(|n| n.ends_with(".tmp")) {
        if ctx.changes() {
            let path = dir.join(name);
            storage
                .remove(&path)
                .map_err(|e| LogError::io("remove", &path, e))?;
        }
    }
    if ctx.had_meta {
        let first = ctx.meta.first_seq;
        let doomed: Vec<u64> = bases
            .iter()
            .zip(bases.iter().skip(1))
            .filter(|(_, next)| **next <= first)
            .map(|(base, _)| *base)
            .collect();
        for base in doomed {
            bases.remove(&base);
            if ctx.changes() {
                let path = dir.join(format::segment_file_name(base));
                tracing::info!(file = %path.display(), "finishing a retention deletion a crash interrupted");
                storage
                    .remove(&path)
                    .map_err(|e| LogError::io("remove", &path, e))?;
                let _ = storage.remove(&dir.join(format::index_file_name(base)));
            }
        }
    }
    Ok(bases.into_iter().collect())
}

/// The oldest segments are gone without retention having deleted them: refused, or
/// the log starts at `first_base` when repairing.
fn check_start(ctx: &mut Ctx<'_>, first_base: u64) -> Result<()> {
    if ctx.had_meta
        && first_base > ctx.meta.first_seq
        && !ctx.meta.explains_gap(ctx.meta.first_seq, first_base)
    {
        let from = ctx.meta.first_seq;
        let problem = corrupt(
            &ctx.dir.join(format::segment_file_name(from)),
            0,
            Damage::MissingSegments {
                from,
                to: first_base,
            },
            first_base - from,
        );
        ctx.refuse(
            problem,
            format!("start the log at sequence {first_base}, as if retention had deleted the rest"),
        )?;
        ctx.meta.first_seq = first_base;
    }
    Ok(())
}

/// The newest segments are gone: what the meta knows was acknowledged past the last one
/// found is missing. Refused, or (repairing) numbering continues past it; returns where
/// numbering must continue, if not at the active segment's end.
fn check_end(
    ctx: &mut Ctx<'_>,
    active: &Segment,
    last_base: u64,
    mut continue_at: Option<u64>,
) -> Result<Option<u64>> {
    let end = active.extent().next_seq;
    let known_end = ctx.acknowledged().max(ctx.meta.last_segment);
    let newest_gone = ctx.had_meta && ctx.meta.last_segment > last_base;
    if (newest_gone || ctx.hwm.is_some()) && known_end > end && continue_at.is_none() {
        let problem = corrupt(
            &ctx.dir
                .join(format::segment_file_name(ctx.meta.last_segment)),
            0,
            Damage::MissingSegments {
                from: end,
                to: known_end,
            },
            known_end - end,
        );
        ctx.refuse(problem, format!("continue numbering at {known_end}"))?;
        continue_at = Some(continue_at.unwrap_or(0).max(known_end));
    }
    Ok(continue_at)
}

/// A new, empty, durable segment at `base`.
fn new_segment(ctx: &Ctx<'_>, base: u64) -> Result<Segment> {
    let (path, file) = create_segment(ctx.storage, ctx.dir, base)
        .map_err(|e| LogError::io("create segment in", ctx.dir, e))?;
    Ok(empty_segment(base, path, file))
}

/// A segment in the current format with no records yet.
fn empty_segment(base: u64, path: PathBuf, file: Arc<dyn StorageFile>) -> Segment {
    Segment::new(
        base,
        FORMAT_VERSION,
        path,
        file,
        Vec::new(),
        empty_extent(base, header_len(FORMAT_VERSION)),
    )
}

/// A directory with no segment: a new log, or one whose every segment is gone.
fn recover_empty(mut ctx: Ctx<'_>) -> Result<Recovered> {
    let mut base = 1;
    if ctx.had_meta || ctx.hwm.is_some() {
        let known_end = ctx.acknowledged().max(ctx.meta.last_segment);
        if known_end > ctx.meta.first_seq {
            let problem = corrupt(
                &ctx.dir.join(format::segment_file_name(ctx.meta.first_seq)),
                0,
                Damage::MissingSegments {
                    from: ctx.meta.first_seq,
                    to: known_end,
                },
                known_end - ctx.meta.first_seq,
            );
            ctx.refuse(
                problem,
                format!("start an empty log at sequence {known_end}"),
            )?;
        }
        base = known_end.max(1);
    }
    let segments = if ctx.changes() {
        vec![Arc::new(new_segment(&ctx, base)?)]
    } else {
        Vec::new()
    };
    ctx.meta.first_seq = base;
    finish(ctx, segments, None)
}

/// Writes `log.meta` for the recovered segments (unless verifying).
fn finish(
    mut ctx: Ctx<'_>,
    segments: Vec<Arc<Segment>>,
    last_index_offset: Option<u64>,
) -> Result<Recovered> {
    if let (Some(first), Some(active)) = (segments.first(), segments.last()) {
        ctx.meta.first_seq = first.base_seq;
        ctx.meta.last_segment = active.base_seq;
        ctx.meta.high_water = ctx.meta.high_water.max(active.extent().next_seq);
    }
    ctx.meta.prune_gaps();
    if !ctx.had_meta && !segments.is_empty() && segments.len() + ctx.findings.len() > 1 {
        tracing::warn!(dir = %ctx.dir.display(), "the event log had no log.meta: checks for missing segments start now");
    }
    let mut hwm = None;
    let mut meta_written = true;
    if ctx.changes() {
        match ctx.meta.write(ctx.storage, ctx.dir) {
            Ok(()) => {}
            // A full device must not keep the log from opening for reads: the writer
            // writes the meta once it can.
            Err(LogError::Io { ref source, .. }) if crate::error::is_no_space(source) => {
                tracing::warn!(dir = %ctx.dir.display(), "the device is full: log.meta will be written once there is space");
                meta_written = false;
            }
            Err(e) => return Err(e),
        }
        let path = ctx.dir.join(meta::HWM_FILE);
        let file = ctx
            .storage
            .open(&path)
            .or_else(|_| ctx.storage.create(&path));
        match file {
            Ok(file) => hwm = Some(file),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot keep log.hwm: damage after a crash is found only up to log.meta's mark")
            }
        }
    }
    Ok(Recovered {
        segments,
        last_index_offset,
        meta: ctx.meta,
        meta_written,
        hwm,
        findings: ctx.findings,
    })
}
