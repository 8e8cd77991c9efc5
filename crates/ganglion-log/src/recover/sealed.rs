//! Sealed segments: each checked against its index (or scanned when the index is gone
//! or damaged), and each following the one before.

use std::path::Path;

use crate::error::{Damage, LogError, Result};
use crate::format::{self, SealedIndex};
use crate::segment::{Extent, Segment};
use crate::storage::{Storage, read_full_at};

use super::{Ctx, check_header, corrupt, empty_segment, read_head, scan, write_index};

pub(super) fn open_sealed(
    ctx: &mut Ctx<'_>,
    base: u64,
    next_base: u64,
    has_index: bool,
) -> Result<Segment> {
    let (storage, dir, options) = (ctx.storage, ctx.dir, ctx.options);
    let path = dir.join(format::segment_file_name(base));
    let file = storage
        .open(&path)
        .map_err(|e| LogError::io("open", &path, e))?;
    let file_len = file.size().map_err(|e| LogError::io("stat", &path, e))?;
    let head = read_head(&path, &*file)?;
    let header = match check_header(&head, base) {
        Ok(header) => header,
        Err(damage) => return lose_segment(ctx, (base, next_base), path, file, file_len, damage),
    };

    let stored = if has_index {
        read_index(storage, &dir.join(format::index_file_name(base)))
    } else {
        None
    };
    let stored = stored.filter(|i| i.base_seq == base && i.file_len == file_len);
    if options.verify_on_open == crate::VerifyOnOpen::ActiveSegment
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
            header.version,
            path,
            file,
            index.entries.clone(),
            extent,
        ));
    }

    let scan = scan(&path, &*file, base, header.len(), file_len, options)?;
    let segment = Segment::new(
        base,
        header.version,
        path.clone(),
        file.clone(),
        scan.entries,
        scan.extent,
    );
    if let Some((offset, damage)) = scan.damage {
        let end = scan.extent.next_seq;
        let problem = corrupt(&path, offset, damage, next_base.saturating_sub(end));
        if ctx.refuse(
            problem,
            format!("cut the segment at byte {offset} (a copy goes to quarantine/) and record the sequences after it as lost"),
        )? {
            ctx.cut(&path, &*file, offset, file_len)?;
            write_index(storage, dir, &segment.sealed_index());
        }
        return Ok(segment);
    }
    let rebuilt = segment.sealed_index();
    if stored.as_ref() != Some(&rebuilt) && ctx.changes() {
        tracing::info!(file = %segment.path.display(), "rebuilt missing or damaged segment index");
        write_index(storage, dir, &rebuilt);
    }
    Ok(segment)
}

/// A sealed segment whose header is damaged: moved whole to quarantine (when repairing),
/// and an empty stand-in in its place, whose sequences the gap check declares lost.
fn lose_segment(
    ctx: &mut Ctx<'_>,
    (base, next_base): (u64, u64),
    path: std::path::PathBuf,
    file: std::sync::Arc<dyn crate::storage::StorageFile>,
    file_len: u64,
    damage: Damage,
) -> Result<Segment> {
    let (storage, dir) = (ctx.storage, ctx.dir);
    // Every record of a sealed segment was acknowledged.
    let problem = corrupt(&path, 0, damage, next_base.saturating_sub(base));
    if ctx.refuse(
        problem,
        "move the segment to quarantine/ and record its sequences as lost".to_owned(),
    )? {
        ctx.quarantine(&path, &*file, 0, file_len)?;
        storage
            .remove(&path)
            .map_err(|e| LogError::io("remove", &path, e))?;
        let _ = storage.remove(&dir.join(format::index_file_name(base)));
    }
    Ok(empty_segment(base, path, file))
}

pub(super) fn read_index(storage: &dyn Storage, path: &Path) -> Option<SealedIndex> {
    let file = storage.open(path).ok()?;
    let len = usize::try_from(file.size().ok()?).ok()?;
    let mut bytes = vec![0u8; len];
    let got = read_full_at(&*file, &mut bytes, 0).ok()?;
    format::decode_index(&bytes[..got])
}

/// Segment `segment` must end where the next one starts, or where a declared gap does.
pub(super) fn check_follows(ctx: &mut Ctx<'_>, segment: &Segment, next_base: u64) -> Result<()> {
    let end = segment.extent().next_seq;
    if end == next_base || (end < next_base && ctx.meta.explains_gap(end, next_base)) {
        return Ok(());
    }
    let problem = LogError::Corrupt {
        file: segment.path.clone(),
        offset: segment.extent().len,
        damage: Damage::Gap { end, next_base },
        valid_records_after: 0,
        acknowledged_missing: next_base.saturating_sub(end),
    };
    if end > next_base {
        // Two segments claim the same sequences: nothing to cut that would be right.
        return Err(problem);
    }
    ctx.refuse(
        problem,
        format!("record sequences {end} to {} as lost", next_base - 1),
    )?;
    ctx.meta.gaps.push((end, next_base));
    Ok(())
}
