//! Where a quota's grants live between runs: the [`QuotaStore`] seam, and the file store
//! (`<name>.quota`, a journal fdatasynced per record, see [`crate::journal`]).

use std::path::Path;

use crate::CoordinatorError;
use crate::journal::JournalFile;

/// One change, made durable before it is acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaRecord {
    /// A call granted to `component` at `at_micros` (wall clock).
    Granted { at_micros: u64, component: String },
    /// Grants suspended until `until_micros` (an upstream limit).
    Suspended { until_micros: u64 },
}

/// What a store holds: the grants (oldest first) and the suspension.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaState {
    pub grants: Vec<(u64, String)>,
    /// 0: not suspended.
    pub suspended_until_micros: u64,
}

/// Keeps one quota's grants. `append` must be durable when it returns: a permit is
/// handed out only after its grant was appended, so a restart never forgets it.
pub trait QuotaStore: Send + std::fmt::Debug {
    /// What was kept, grants oldest first (empty when nothing ever was).
    fn load(&mut self) -> Result<QuotaState, CoordinatorError>;
    fn append(&mut self, record: &QuotaRecord) -> Result<(), CoordinatorError>;
    /// Replaces everything with `live`: a compaction, or a fresh start after a failed
    /// append (until one succeeds, the quota grants nothing).
    fn replace(&mut self, live: &QuotaState) -> Result<(), CoordinatorError>;
    /// Whether the store grew well past what is live, so a `replace` is due.
    fn wants_compaction(&self) -> bool;
}

/// A quota's grants in `dir/<name>.quota`: `g <micros> <component>` per grant,
/// `s <micros>` per suspension.
#[derive(Debug)]
pub struct FileQuotaStore {
    file: JournalFile,
}

impl FileQuotaStore {
    pub fn new(dir: &Path, quota: &str) -> FileQuotaStore {
        let path = dir.join(format!("{quota}.quota"));
        FileQuotaStore {
            file: JournalFile::new("quota journal", path),
        }
    }
}

impl QuotaStore for FileQuotaStore {
    fn load(&mut self) -> Result<QuotaState, CoordinatorError> {
        let mut state = QuotaState::default();
        for (number, line) in self.file.read()? {
            let mut parts = line.split(' ');
            match (
                parts.next(),
                parts.next().map(str::parse::<u64>),
                parts.next(),
            ) {
                (Some("g"), Some(Ok(at)), Some(component)) => {
                    state.grants.push((at, component.to_owned()))
                }
                (Some("s"), Some(Ok(until)), None) => state.suspended_until_micros = until,
                _ => return Err(self.file.damaged(number, &line)),
            }
        }
        state.grants.sort_by_key(|(at, _)| *at);
        Ok(state)
    }

    fn append(&mut self, record: &QuotaRecord) -> Result<(), CoordinatorError> {
        let line = match record {
            QuotaRecord::Granted {
                at_micros,
                component,
            } => format!("g {at_micros} {component}\n"),
            QuotaRecord::Suspended { until_micros } => format!("s {until_micros}\n"),
        };
        self.file.append(&line)
    }

    fn replace(&mut self, live: &QuotaState) -> Result<(), CoordinatorError> {
        let mut text = String::new();
        for (at, component) in &live.grants {
            text.push_str(&format!("g {at} {component}\n"));
        }
        if live.suspended_until_micros > 0 {
            text.push_str(&format!("s {}\n", live.suspended_until_micros));
        }
        self.file.replace(&text, live.grants.len() + 1)
    }

    fn wants_compaction(&self) -> bool {
        self.file.wants_compaction()
    }
}
