//! Where lease state lives between runs: the [`LeaseStore`] seam, and the file store
//! (`leases.state`, written whole, fsynced and renamed over).

use std::path::{Path, PathBuf};

use crate::{CoordinatorError, FencingToken, LeaseId};

/// What a store keeps: enough to restore live leases and to never reuse a lease id or a
/// fencing token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseSnapshot {
    /// The next lease id to hand out.
    pub next_lease: u64,
    /// Per pool, the token counting resumes from after a restart (the reserved
    /// ceiling, at or above every token handed out).
    pub token_ceilings: Vec<(String, u64)>,
    /// The leases held, by id.
    pub leases: Vec<StoredLease>,
}

/// One held lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLease {
    pub id: LeaseId,
    pub pool: String,
    pub holder: String,
    pub fencing_token: FencingToken,
    /// Unit indices in the pool's spec.
    pub units: Vec<usize>,
    pub granted_at_micros: u64,
    pub expires_at_micros: u64,
    pub max_hold_until_micros: u64,
    pub revoked_at_micros: Option<u64>,
    pub warned: bool,
}

/// Keeps lease state for [`super::Pools`]. `save` must be durable when it returns: a
/// fencing token is handed out only after the ceiling covering it was saved.
pub trait LeaseStore: Send + Sync + std::fmt::Debug {
    /// What was saved last, or `None` when nothing ever was.
    fn load(&self) -> Result<Option<LeaseSnapshot>, CoordinatorError>;
    fn save(&self, snapshot: &LeaseSnapshot) -> Result<(), CoordinatorError>;
}

/// Lease state in `dir/leases.state`, one line per fact, replaced atomically.
#[derive(Debug)]
pub struct FileLeaseStore {
    path: PathBuf,
}

impl FileLeaseStore {
    pub fn new(dir: &Path) -> FileLeaseStore {
        let path = dir.join("leases.state");
        // A write a crash (or a full disk) interrupted.
        ganglion_core::fs::remove_temporary(&path);
        FileLeaseStore { path }
    }

    fn error(&self, e: impl std::fmt::Display) -> CoordinatorError {
        CoordinatorError::Unavailable(format!("lease state {}: {e}", self.path.display()))
    }
}

impl LeaseStore for FileLeaseStore {
    fn load(&self) -> Result<Option<LeaseSnapshot>, CoordinatorError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => parse(&text)
                .map(Some)
                .map_err(|(n, line)| self.error(format!("line {n} is damaged: {line:?}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    fn save(&self, snapshot: &LeaseSnapshot) -> Result<(), CoordinatorError> {
        ganglion_core::fs::write_atomically(&self.path, format(snapshot).as_bytes())
            .map_err(|e| self.error(e))
    }
}

/// The state file's text: the lease counter, each pool's token ceiling, the leases.
fn format(snapshot: &LeaseSnapshot) -> String {
    let mut text = format!("next_lease {}\n", snapshot.next_lease);
    for (pool, ceiling) in &snapshot.token_ceilings {
        text.push_str(&format!("pool {pool} {ceiling}\n"));
    }
    for l in &snapshot.leases {
        let units: Vec<String> = l.units.iter().map(usize::to_string).collect();
        text.push_str(&format!(
            "lease {} {} {} {} {} {} {} {} {} {}\n",
            l.id,
            l.pool,
            l.holder,
            l.fencing_token,
            units.join(","),
            l.granted_at_micros,
            l.expires_at_micros,
            l.max_hold_until_micros,
            l.revoked_at_micros.unwrap_or(0),
            u8::from(l.warned),
        ));
    }
    text
}

/// The snapshot in `text`, or the first damaged line (numbered from 1).
fn parse(text: &str) -> Result<LeaseSnapshot, (usize, String)> {
    let mut snapshot = LeaseSnapshot::default();
    for (i, line) in text.lines().enumerate() {
        let damaged = || (i + 1, line.to_owned());
        let num = |s: &str| s.parse::<u64>().map_err(|_| damaged());
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["next_lease", next] => snapshot.next_lease = snapshot.next_lease.max(num(next)?),
            ["pool", name, next] => snapshot
                .token_ceilings
                .push(((*name).to_owned(), num(next)?)),
            [
                "lease",
                id,
                pool,
                holder,
                token,
                units,
                granted,
                expires,
                max_hold,
                revoked,
                warned,
            ] => {
                let revoked = num(revoked)?;
                snapshot.leases.push(StoredLease {
                    id: LeaseId(num(id)?),
                    pool: (*pool).to_owned(),
                    holder: (*holder).to_owned(),
                    fencing_token: FencingToken(num(token)?),
                    units: units
                        .split(',')
                        .map(|u| u.parse::<usize>().map_err(|_| damaged()))
                        .collect::<Result<_, _>>()?,
                    granted_at_micros: num(granted)?,
                    expires_at_micros: num(expires)?,
                    max_hold_until_micros: num(max_hold)?,
                    revoked_at_micros: (revoked > 0).then_some(revoked),
                    warned: *warned == "1",
                });
            }
            _ => return Err(damaged()),
        }
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> LeaseSnapshot {
        LeaseSnapshot {
            next_lease: 7,
            token_ceilings: vec![("gpu".into(), 1025), ("db".into(), 3)],
            leases: vec![StoredLease {
                id: LeaseId(6),
                pool: "gpu".into(),
                holder: "trainer".into(),
                fencing_token: FencingToken(4),
                units: vec![0, 2],
                granted_at_micros: 10,
                expires_at_micros: 20,
                max_hold_until_micros: 30,
                revoked_at_micros: Some(25),
                warned: true,
            }],
        }
    }

    #[test]
    fn a_saved_snapshot_loads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileLeaseStore::new(dir.path());
        assert_eq!(store.load().unwrap(), None, "nothing saved yet");
        store.save(&snapshot()).unwrap();
        assert_eq!(
            FileLeaseStore::new(dir.path()).load().unwrap(),
            Some(snapshot())
        );
    }

    #[test]
    fn a_damaged_line_is_named_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileLeaseStore::new(dir.path());
        std::fs::write(
            dir.path().join("leases.state"),
            "next_lease 3\npool gpu x\n",
        )
        .unwrap();
        let error = store.load().unwrap_err().to_string();
        assert!(
            error.contains("line 2 is damaged") && error.contains("pool gpu x"),
            "{error}"
        );
    }
}
