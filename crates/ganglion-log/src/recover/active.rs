//! The active (newest) segment: its header, its commit marks, and a damaged or torn
//! tail.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Damage, LogError, Result};
use crate::format::{self, FORMAT_VERSION, Marks, RECORD_HEADER_LEN, header_len};
use crate::segment::Segment;
use crate::storage::{StorageFile, write_all_at};

use super::{
    Ctx, all_zeros, check_header, corrupt, empty_segment, new_segment, read_head, scan,
    valid_records_after,
};

/// The active segment: returns it, its last index entry, and the sequence numbering must
/// continue from when a repair cut acknowledged records (numbers are never given twice).
pub(super) fn open_active(
    ctx: &mut Ctx<'_>,
    base: u64,
) -> Result<(Segment, Option<u64>, Option<u64>)> {
    let (storage, dir, options) = (ctx.storage, ctx.dir, ctx.options);
    let path = dir.join(format::segment_file_name(base));
    let file = storage
        .open(&path)
        .map_err(|e| LogError::io("open", &path, e))?;
    let file_len = file.size().map_err(|e| LogError::io("stat", &path, e))?;
    let meta_acked = ctx.acknowledged();
    let head = read_head(&path, &*file)?;
    let header = match check_header(&head, base) {
        Ok(header) => header,
        Err(damage) => {
            return damaged_header(
                ctx,
                base,
                Opened {
                    path,
                    file,
                    len: file_len,
                },
                damage,
            );
        }
    };

    // What was acknowledged for certain: the commit marks (within one boot, every
    // completed write; across a reboot, what the previous group commit had synced),
    // and the meta's high-water mark.
    let marks = (header.version >= 2)
        .then(|| Marks::decode(&head))
        .flatten();
    if header.version >= 2 && marks.is_none() {
        tracing::warn!(file = %path.display(), "the active segment's commit marks are damaged; using log.meta's high-water mark");
    }
    let acked = marks
        .map_or(0, |m| m.acknowledged(ctx.boot))
        .max(meta_acked);

    let scan = scan(&path, &*file, base, header.len(), file_len, options)?;
    let end = scan.extent.next_seq;
    let missing = acked.saturating_sub(end);
    let continue_at = (missing > 0).then_some(acked);
    let opened = Opened {
        path,
        file,
        len: file_len,
    };
    match scan.damage {
        Some((offset, damage)) => damaged_tail(ctx, &opened, offset, damage, end, acked)?,
        None if missing > 0 => {
            let problem = LogError::Corrupt {
                file: opened.path.clone(),
                offset: scan.extent.len,
                damage: Damage::Truncated {
                    needed: RECORD_HEADER_LEN,
                    available: 0,
                },
                valid_records_after: 0,
                acknowledged_missing: missing,
            };
            ctx.refuse(problem, format!("continue numbering at {acked}"))?;
        }
        None => {}
    }
    let last_index_offset = scan.entries.last().map(|e| e.offset);
    let Opened { path, file, .. } = opened;
    let segment = Segment::new(base, header.version, path, file, scan.entries, scan.extent);
    Ok((segment, last_index_offset, continue_at))
}

/// The active segment's file as opened.
pub(super) struct Opened {
    pub(super) path: PathBuf,
    pub(super) file: Arc<dyn StorageFile>,
    pub(super) len: u64,
}

/// The active segment's header is damaged. Torn while the segment was being created
/// (nothing was ever written in it): written again. Otherwise refused, or (repairing)
/// the segment goes to quarantine and numbering continues past what was acknowledged.
pub(super) fn damaged_header(
    ctx: &mut Ctx<'_>,
    base: u64,
    opened: Opened,
    damage: Damage,
) -> Result<(Segment, Option<u64>, Option<u64>)> {
    let Opened { path, file, len } = opened;
    // The meta knows this segment once its creation completed (header and directory
    // entry fsynced): from then on its header is never torn, only damaged.
    let known = ctx.had_meta && ctx.meta.last_segment >= base;
    if !known && len <= header_len(FORMAT_VERSION) {
        let problem = corrupt(&path, 0, damage, 0);
        if ctx.mend(problem, "write the header again".to_owned()) {
            tracing::warn!(file = %path.display(), bytes_dropped = len, records_dropped = 0, "rewriting the torn header of a segment whose creation a crash interrupted");
            file.set_len(0)
                .map_err(|e| LogError::io("truncate", &path, e))?;
            write_all_at(&*file, &format::encode_segment_header(base, ctx.boot), 0)
                .map_err(|e| LogError::io("write", &path, e))?;
            file.sync_data()
                .map_err(|e| LogError::io("sync", &path, e))?;
        }
        return Ok((empty_segment(base, path, file), None, None));
    }
    let damage = if len > 0 && all_zeros(&path, &*file, len)? {
        Damage::ZeroFilled { len }
    } else {
        damage
    };
    let valid = valid_records_after(&path, &*file, 0, len, base, ctx.options.max_record_bytes)?;
    let acked = ctx.acknowledged().max(base);
    let problem = LogError::Corrupt {
        file: path.clone(),
        offset: 0,
        damage,
        valid_records_after: valid,
        acknowledged_missing: acked - base,
    };
    let repair = format!(
        "move the segment to quarantine/ and continue numbering at {acked} (how many records it held is not known)"
    );
    if ctx.refuse(problem, repair)? {
        ctx.quarantine(&path, &*file, 0, len)?;
        ctx.storage
            .remove(&path)
            .map_err(|e| LogError::io("remove", &path, e))?;
        let segment = new_segment(ctx, base)?;
        return Ok((segment, None, Some(acked)));
    }
    Ok((empty_segment(base, path, file), None, Some(acked)))
}

/// The active segment is damaged at `offset`, after `end` - 1. A torn tail of a write
/// never acknowledged is cut; damage with intact records after it, or with
/// acknowledged records missing, is refused, or (repairing) cut with a copy kept.
pub(super) fn damaged_tail(
    ctx: &mut Ctx<'_>,
    opened: &Opened,
    offset: u64,
    damage: Damage,
    end: u64,
    acked: u64,
) -> Result<()> {
    let Opened { path, file, len } = opened;
    let missing = acked.saturating_sub(end);
    let valid = valid_records_after(
        path,
        &**file,
        offset,
        *len,
        end,
        ctx.options.max_record_bytes,
    )?;
    let dropped = len - offset;
    if valid > 0 || missing > 0 {
        let problem = LogError::Corrupt {
            file: path.clone(),
            offset,
            damage,
            valid_records_after: valid,
            acknowledged_missing: missing,
        };
        let mut repair = format!(
            "cut the segment at byte {offset} ({dropped} bytes, {valid} intact records after the damage; a copy goes to quarantine/)"
        );
        if missing > 0 {
            repair.push_str(&format!(" and continue numbering at {acked}"));
        }
        if ctx.refuse(problem, repair)? {
            ctx.cut(path, &**file, offset, *len)?;
        }
        return Ok(());
    }
    let problem = corrupt(path, offset, damage.clone(), 0);
    if ctx.mend(
        problem,
        format!("cut the torn tail ({dropped} bytes of a write that was never acknowledged)"),
    ) {
        tracing::warn!(
            file = %path.display(), offset, bytes_dropped = dropped, records_dropped = 0, %damage,
            "truncating the torn tail of the active segment: a write that was never acknowledged"
        );
        file.set_len(offset)
            .map_err(|e| LogError::io("truncate", path, e))?;
        file.sync_data()
            .map_err(|e| LogError::io("sync", path, e))?;
    }
    Ok(())
}
