//! Small files replaced whole: state, journals compacted, purges.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `target` so that a crash leaves the old file or the new one (a
/// temporary `<target>.tmp`, fdatasynced, renamed over, the directory synced), and a
/// failed write (a full disk) leaves no temporary file behind.
pub fn write_atomically(target: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temporary(target);
    let written = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_data()?;
        fs::rename(&tmp, target)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    match target.parent() {
        Some(dir) => fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Removes the temporary file a crash (or a full disk) in [`write_atomically`] of
/// `target` may have left.
pub fn remove_temporary(target: &Path) {
    let _ = fs::remove_file(temporary(target));
}

/// Removes the temporary files a crash in [`write_atomically`] left in `dir`.
pub fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn temporary(target: &Path) -> PathBuf {
    let mut tmp = target.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}
