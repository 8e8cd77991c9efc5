//! An in-memory [`Storage`] that models what a disk keeps across power loss, and injects
//! the faults the log must survive.
//!
//! The model: each file has its current bytes and the bytes it had at its last
//! `sync_data`; each directory has its current entries and the entries it had at its last
//! `sync_dir`. A [`crash image`](MemStorage::crash_image) keeps only what was synced,
//! optionally with a torn, unsynced tail, as a real power loss would.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{DirLock, Storage, StorageFile};

/// What survives of unsynced data in a [`crash image`](MemStorage::crash_image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Only synced bytes survive.
    DropUnsynced,
    /// A random prefix of each file's unsynced appended bytes survives too (a torn write).
    TornUnsynced { seed: u64 },
    /// As `TornUnsynced`, then up to 512 random bytes (a sector the disk half wrote).
    GarbageTail { seed: u64 },
}

#[derive(Debug, Default, Clone)]
struct Content {
    data: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug, Default)]
struct Faults {
    /// Syncs to let through before every sync fails (`None`: no failures).
    fail_sync_after: Option<u64>,
    /// Mutating operations left before simulated power loss.
    crash_after_ops: Option<u64>,
    dead: bool,
    /// Percent of writes cut short.
    short_write_percent: u8,
    /// Total bytes all files may hold.
    capacity: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    contents: Vec<Content>,
    names: BTreeMap<PathBuf, usize>,
    durable_names: BTreeMap<PathBuf, usize>,
    dirs: HashSet<PathBuf>,
    locks: HashSet<PathBuf>,
    faults: Faults,
    rng: u64,
    ops: u64,
    /// Which boot of the simulated machine this is: a crash image is the next one.
    boot: u64,
}

/// The in-memory storage. Clones share the same files.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    state: Arc<Mutex<State>>,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn power_lost() -> io::Error {
    io::Error::other("simulated power loss: storage is gone")
}

impl State {
    /// Counts one mutating operation and fails if the power is (now) out.
    fn mutate(&mut self) -> io::Result<()> {
        if self.faults.dead {
            return Err(power_lost());
        }
        self.ops += 1;
        if let Some(left) = self.faults.crash_after_ops.as_mut() {
            if *left == 0 {
                self.faults.dead = true;
                return Err(power_lost());
            }
            *left -= 1;
        }
        Ok(())
    }

    fn alive(&self) -> io::Result<()> {
        if self.faults.dead {
            Err(power_lost())
        } else {
            Ok(())
        }
    }

    fn used_bytes(&self) -> u64 {
        let live: HashSet<usize> = self.names.values().copied().collect();
        live.iter()
            .map(|&id| self.contents[id].data.len() as u64)
            .sum()
    }
}

impl MemStorage {
    /// An empty storage with no faults.
    pub fn new() -> Self {
        let storage = Self::default();
        storage.lock().boot = 1;
        storage
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After `n` more successful syncs, every `sync_data` fails with EIO.
    pub fn fail_syncs_after(&self, n: u64) {
        self.lock().faults.fail_sync_after = Some(n);
    }

    /// After `n` more mutating operations (write, sync, truncate, create, remove,
    /// directory sync) the power goes out: that operation and all later ones fail.
    pub fn crash_after_ops(&self, n: u64) {
        self.lock().faults.crash_after_ops = Some(n);
    }

    /// Cuts `percent` of writes short at a random length (seeded).
    pub fn set_short_writes(&self, percent: u8, seed: u64) {
        let mut s = self.lock();
        s.faults.short_write_percent = percent.min(100);
        s.rng = seed;
    }

    /// Limits the bytes all files together may hold (`None`: unlimited). A write that
    /// does not fit writes what fits, then fails with `StorageFull`.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock().faults.capacity = bytes;
    }

    /// Mutating operations so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// `true` once a simulated power loss happened.
    pub fn is_dead(&self) -> bool {
        self.lock().faults.dead
    }

    /// The current bytes of `path` (for tests that damage or inspect files).
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.lock();
        s.names.get(path).map(|&id| s.contents[id].data.clone())
    }

    /// Replaces the bytes of `path`, as durable ones (for tests that damage files).
    pub fn write_file(&self, path: &Path, bytes: Vec<u8>) {
        let mut s = self.lock();
        let id = match s.names.get(path) {
            Some(&id) => id,
            None => {
                s.contents.push(Content::default());
                let id = s.contents.len() - 1;
                s.names.insert(path.to_path_buf(), id);
                s.durable_names.insert(path.to_path_buf(), id);
                id
            }
        };
        s.contents[id] = Content {
            data: bytes.clone(),
            durable: bytes,
        };
    }

    /// An independent copy of everything as it is now, faults cleared.
    pub fn snapshot(&self) -> MemStorage {
        let s = self.lock();
        MemStorage {
            state: Arc::new(Mutex::new(State {
                contents: s.contents.clone(),
                names: s.names.clone(),
                durable_names: s.durable_names.clone(),
                dirs: s.dirs.clone(),
                boot: s.boot,
                ..State::default()
            })),
        }
    }

    /// Removes every injected fault (but not a power loss that already happened).
    pub fn clear_faults(&self) {
        let mut s = self.lock();
        let dead = s.faults.dead;
        s.faults = Faults {
            dead,
            ..Faults::default()
        };
    }

    /// What a disk holding this storage would show after power loss right now: a new
    /// storage with only synced directory entries and synced bytes (and, per `mode`, a
    /// torn unsynced tail). This storage is left as it is.
    pub fn crash_image(&self, mode: CrashMode) -> MemStorage {
        let s = self.lock();
        let mut rng = match mode {
            CrashMode::DropUnsynced => 0,
            CrashMode::TornUnsynced { seed } | CrashMode::GarbageTail { seed } => seed,
        };
        let mut image = State {
            dirs: s.dirs.clone(),
            boot: s.boot + 1,
            ..State::default()
        };
        for (path, &id) in &s.durable_names {
            let c = &s.contents[id];
            let mut data = c.durable.clone();
            if mode != CrashMode::DropUnsynced {
                // Unsynced writes over synced bytes (a header rewritten in place) reach
                // the disk or not, independently of what was appended after them.
                let overlap = data.len().min(c.data.len());
                if data[..overlap] != c.data[..overlap] && splitmix(&mut rng).is_multiple_of(2) {
                    data[..overlap].copy_from_slice(&c.data[..overlap]);
                }
                if c.data.len() > data.len() {
                    let unsynced = &c.data[data.len()..];
                    let keep = (splitmix(&mut rng) % (unsynced.len() as u64 + 1)) as usize;
                    data.extend_from_slice(&unsynced[..keep]);
                    if matches!(mode, CrashMode::GarbageTail { .. }) {
                        let garbage = splitmix(&mut rng) % 513;
                        data.extend((0..garbage).map(|_| splitmix(&mut rng) as u8));
                    }
                }
            }
            image.contents.push(Content {
                durable: data.clone(),
                data,
            });
            let new_id = image.contents.len() - 1;
            image.names.insert(path.clone(), new_id);
            image.durable_names.insert(path.clone(), new_id);
        }
        MemStorage {
            state: Arc::new(Mutex::new(image)),
        }
    }
}

#[derive(Debug)]
struct MemFile {
    storage: MemStorage,
    id: usize,
}

impl StorageFile for MemFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let s = self.storage.lock();
        s.alive()?;
        let data = &s.contents[self.id].data;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        let mut s = self.storage.lock();
        s.mutate()?;
        let mut n = buf.len();
        if s.faults.short_write_percent > 0
            && n > 1
            && splitmix(&mut s.rng) % 100 < u64::from(s.faults.short_write_percent)
        {
            n = 1 + (splitmix(&mut s.rng) % (n as u64 - 1)) as usize;
        }
        let offset = usize::try_from(offset).map_err(io::Error::other)?;
        let end = offset + n;
        if let Some(cap) = s.faults.capacity {
            let len = s.contents[self.id].data.len();
            let growth = end.saturating_sub(len) as u64;
            let free = cap.saturating_sub(s.used_bytes());
            if growth > free {
                let fits = (free as usize + len).saturating_sub(offset);
                if fits == 0 {
                    return Err(io::Error::from(io::ErrorKind::StorageFull));
                }
                n = n.min(fits);
            }
        }
        let data = &mut s.contents[self.id].data;
        if data.len() < offset + n {
            data.resize(offset + n, 0);
        }
        data[offset..offset + n].copy_from_slice(&buf[..n]);
        Ok(n)
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.storage.lock();
        s.mutate()?;
        if let Some(left) = s.faults.fail_sync_after.as_mut() {
            if *left == 0 {
                return Err(io::Error::other("simulated fsync failure (EIO)"));
            }
            *left -= 1;
        }
        let c = &mut s.contents[self.id];
        c.durable = c.data.clone();
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.storage.lock();
        s.mutate()?;
        let len = usize::try_from(len).map_err(io::Error::other)?;
        s.contents[self.id].data.resize(len, 0);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        let s = self.storage.lock();
        s.alive()?;
        Ok(s.contents[self.id].data.len() as u64)
    }
}

#[derive(Debug)]
struct MemLock {
    storage: MemStorage,
    dir: PathBuf,
}

impl DirLock for MemLock {}

impl Drop for MemLock {
    fn drop(&mut self) {
        self.storage.lock().locks.remove(&self.dir);
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl Storage for MemStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.alive()?;
        s.dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn lock_dir(&self, dir: &Path) -> io::Result<Option<Box<dyn DirLock>>> {
        let mut s = self.lock();
        s.alive()?;
        if !s.locks.insert(dir.to_path_buf()) {
            return Ok(None);
        }
        Ok(Some(Box::new(MemLock {
            storage: self.clone(),
            dir: dir.to_path_buf(),
        })))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.lock();
        s.alive()?;
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let s = self.lock();
        s.alive()?;
        let id = *s.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(Arc::new(MemFile {
            storage: self.clone(),
            id,
        }))
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let mut s = self.lock();
        s.mutate()?;
        let parent = path.parent().unwrap_or(Path::new(""));
        if !s.dirs.contains(parent) {
            return Err(not_found(parent));
        }
        let id = match s.names.get(path) {
            Some(&id) => {
                s.contents[id].data.clear();
                id
            }
            None => {
                s.contents.push(Content::default());
                let id = s.contents.len() - 1;
                s.names.insert(path.to_path_buf(), id);
                id
            }
        };
        Ok(Arc::new(MemFile {
            storage: self.clone(),
            id,
        }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.mutate()?;
        s.names
            .remove(path)
            .map(drop)
            .ok_or_else(|| not_found(path))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.mutate()?;
        let s = &mut *s;
        s.durable_names.retain(|p, _| p.parent() != Some(dir));
        for (p, &id) in &s.names {
            if p.parent() == Some(dir) {
                s.durable_names.insert(p.clone(), id);
            }
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.mutate()?;
        let id = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn boot_id(&self) -> u64 {
        self.lock().boot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (MemStorage, PathBuf) {
        let storage = MemStorage::new();
        let dir = PathBuf::from("/log");
        storage.create_dir_all(&dir).unwrap();
        (storage, dir)
    }

    #[test]
    fn only_synced_entries_and_bytes_survive_a_crash() {
        let (storage, dir) = setup();
        let a = storage.create(&dir.join("a")).unwrap();
        a.write_at(b"synced", 0).unwrap();
        a.sync_data().unwrap();
        storage.sync_dir(&dir).unwrap();
        a.write_at(b"+lost", 6).unwrap();
        let b = storage.create(&dir.join("b")).unwrap();
        b.write_at(b"never in dir", 0).unwrap();
        b.sync_data().unwrap();

        let image = storage.crash_image(CrashMode::DropUnsynced);
        assert_eq!(image.list(&dir).unwrap(), vec!["a".to_string()]);
        assert_eq!(image.read_file(&dir.join("a")).unwrap(), b"synced");
    }

    #[test]
    fn a_torn_crash_keeps_a_prefix_of_unsynced_appends() {
        let (storage, dir) = setup();
        let a = storage.create(&dir.join("a")).unwrap();
        storage.sync_dir(&dir).unwrap();
        a.write_at(b"0123456789", 0).unwrap();
        let mut lengths = HashSet::new();
        for seed in 0..64 {
            let image = storage.crash_image(CrashMode::TornUnsynced { seed });
            let data = image.read_file(&dir.join("a")).unwrap();
            assert!(b"0123456789".starts_with(&data));
            lengths.insert(data.len());
        }
        assert!(lengths.len() > 5, "torn lengths vary: {lengths:?}");
    }

    #[test]
    fn capacity_cuts_a_write_short_then_refuses() {
        let (storage, dir) = setup();
        storage.set_capacity(Some(4));
        let a = storage.create(&dir.join("a")).unwrap();
        assert_eq!(a.write_at(b"abcdef", 0).unwrap(), 4);
        let err = a.write_at(b"ef", 4).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        storage.set_capacity(None);
        assert_eq!(a.write_at(b"ef", 4).unwrap(), 2);
    }

    #[test]
    fn power_loss_fails_the_nth_operation_and_everything_after() {
        let (storage, dir) = setup();
        let a = storage.create(&dir.join("a")).unwrap();
        storage.crash_after_ops(1);
        a.write_at(b"x", 0).unwrap();
        assert!(a.sync_data().is_err());
        assert!(a.read_at(&mut [0u8; 1], 0).is_err());
        assert!(storage.is_dead());
    }

    #[test]
    fn sync_failures_start_after_the_allowed_count() {
        let (storage, dir) = setup();
        let a = storage.create(&dir.join("a")).unwrap();
        storage.fail_syncs_after(1);
        a.sync_data().unwrap();
        assert!(a.sync_data().is_err());
        assert!(a.sync_data().is_err());
    }
}
