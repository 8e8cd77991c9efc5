//! The seam between the log and the filesystem.
//!
//! The log does all of its I/O through [`Storage`] and [`StorageFile`], so tests can run
//! it on [`MemStorage`], which injects fsync errors, short writes, a full device and power
//! loss. [`FsStorage`] is the real filesystem.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod mem;

pub use mem::{CrashMode, MemStorage};

/// An open file. All I/O is positional, so readers and the single writer share it.
pub trait StorageFile: Send + Sync + fmt::Debug + 'static {
    /// Reads up to `buf.len()` bytes at `offset`; fewer at end of file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes some prefix of `buf` at `offset` and returns its length (a short write is
    /// not an error).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize>;
    /// Makes the file's data durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The file's current length.
    fn size(&self) -> io::Result<u64>;
}

/// Holds a directory for one log; released on drop.
pub trait DirLock: Send + Sync + fmt::Debug {}

/// A directory of files.
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `dir`; `Ok(None)` if someone else holds it.
    fn lock_dir(&self, dir: &Path) -> io::Result<Option<Box<dyn DirLock>>>;
    /// Names of the files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>>;
    /// Creates a file, truncating it if it exists.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (created and removed files) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Renames a file, replacing `to` if it exists (durable once the directories are
    /// synced).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Names the current boot of the machine: it changes when the machine restarts (a
    /// power loss), and stays while only processes come and go. 0 when unknown.
    fn boot_id(&self) -> u64;
}

/// Writes all of `buf` at `offset`, looping over short writes.
pub(crate) fn write_all_at(
    file: &dyn StorageFile,
    mut buf: &[u8],
    mut offset: u64,
) -> io::Result<()> {
    while !buf.is_empty() {
        match file.write_at(buf, offset) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "wrote 0 bytes")),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Fills as much of `buf` as the file has at `offset`; returns how much was filled.
pub(crate) fn read_full_at(
    file: &dyn StorageFile,
    buf: &mut [u8],
    offset: u64,
) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsStorage;

#[derive(Debug)]
struct FsFile(File);

impl StorageFile for FsFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.0.write_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

#[derive(Debug)]
struct FsLock {
    _file: File,
    _path: PathBuf,
}

impl DirLock for FsLock {}

impl Storage for FsStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn lock_dir(&self, dir: &Path) -> io::Result<Option<Box<dyn DirLock>>> {
        let path = dir.join("LOCK");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Box::new(FsLock {
                _file: file,
                _path: path,
            }))),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Arc::new(FsFile(file)))
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Arc::new(FsFile(file)))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn boot_id(&self) -> u64 {
        static BOOT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        *BOOT.get_or_init(|| {
            // A UUID the kernel makes at boot: its first 16 hex digits are plenty.
            let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
            let hex: String = id
                .chars()
                .filter(char::is_ascii_hexdigit)
                .take(16)
                .collect();
            u64::from_str_radix(&hex, 16).unwrap_or(0)
        })
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one: a
/// temporary file, fdatasynced, renamed over, and the directory synced.
pub(crate) fn write_atomically(storage: &dyn Storage, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let written = storage.create(&tmp).and_then(|file| {
        write_all_at(&*file, bytes, 0)?;
        file.sync_data()
    });
    let renamed = written.and_then(|()| storage.rename(&tmp, path));
    if let Err(e) = renamed {
        // Leave nothing half-written behind (a full disk, say).
        let _ = storage.remove(&tmp);
        return Err(e);
    }
    match path.parent() {
        Some(dir) => storage.sync_dir(dir),
        None => Ok(()),
    }
}
