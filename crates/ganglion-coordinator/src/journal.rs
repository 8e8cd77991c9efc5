//! An append-only journal of text lines, each fdatasynced before the change it records
//! is acted on, and compacted (rewritten with what is live, then renamed over) when it
//! grows past its live content. What quotas and request queues keep on disk.
//!
//! A write that fails (a full disk) is cut back off, so no torn line is left for a later
//! one to follow; a torn *last* line found on reading is a write that was never
//! acknowledged, and is ignored.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::CoordinatorError;

#[derive(Debug)]
pub(crate) struct Journal {
    /// What it is, for error messages (`quota journal`).
    what: &'static str,
    path: PathBuf,
    file: File,
    /// The file's length.
    len: u64,
    lines: usize,
    compact_at: usize,
}

pub(crate) fn io_error(what: &str, path: &Path, e: std::io::Error) -> CoordinatorError {
    CoordinatorError::Unavailable(format!("{what} {}: {e}", path.display()))
}

impl Journal {
    /// The complete lines of the journal at `path` (none if there is none), with their
    /// line numbers.
    pub(crate) fn read(
        what: &'static str,
        path: &Path,
    ) -> Result<Vec<(usize, String)>, CoordinatorError> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(what, path, e)),
        };
        let mut lines = Vec::new();
        let mut reader = BufReader::new(file);
        let mut number = 0;
        loop {
            let mut line = String::new();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| io_error(what, path, e))?;
            if n == 0 {
                break;
            }
            number += 1;
            if !line.ends_with('\n') {
                tracing::warn!(path = %path.display(), line = number, "ignoring a torn last journal line (a change that was never acknowledged)");
                break;
            }
            line.pop();
            lines.push((number, line));
        }
        Ok(lines)
    }

    /// The error for a line that does not parse.
    pub(crate) fn damaged(what: &str, path: &Path, number: usize, line: &str) -> CoordinatorError {
        CoordinatorError::Unavailable(format!(
            "{what} {} line {number} is damaged: {:?}",
            path.display(),
            ganglion_core::excerpt(line)
        ))
    }

    /// Replaces the journal with `text` (`lines` lines of live state), then appends
    /// from there.
    pub(crate) fn rewrite(
        what: &'static str,
        path: PathBuf,
        text: &str,
        lines: usize,
    ) -> Result<Journal, CoordinatorError> {
        ganglion_core::fs::write_atomically(&path, text.as_bytes())
            .map_err(|e| io_error(what, &path, e))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| io_error(what, &path, e))?;
        Ok(Journal {
            what,
            path,
            file,
            len: text.len() as u64,
            lines,
            compact_at: (lines * 4).max(1024),
        })
    }

    /// Appends `text` (whole lines) and fdatasyncs it (off the async tasks: see
    /// [`ganglion_core::fs::blocking`]).
    pub(crate) fn append(&mut self, text: &str) -> Result<(), CoordinatorError> {
        let file = &mut self.file;
        let written = ganglion_core::fs::blocking(|| {
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_data())
        });
        if let Err(e) = written {
            let _ = self.file.set_len(self.len);
            return Err(io_error(self.what, &self.path, e));
        }
        self.len += text.len() as u64;
        self.lines += text.matches('\n').count();
        Ok(())
    }

    /// Whether it has grown enough past its live content to be rewritten.
    pub(crate) fn wants_compaction(&self) -> bool {
        self.lines > self.compact_at
    }
}

/// A journal at a path as a store keeps it: opened by its first `replace`, closed by a
/// failed append until the next `replace` (so nothing is appended after a torn write).
#[derive(Debug)]
pub(crate) struct JournalFile {
    what: &'static str,
    path: PathBuf,
    journal: Option<Journal>,
}

impl JournalFile {
    /// The journal `what` (`quota journal`) at `path`; a temporary file a compaction
    /// interrupted by a crash (or a full disk) left beside it is removed.
    pub(crate) fn new(what: &'static str, path: PathBuf) -> JournalFile {
        ganglion_core::fs::remove_temporary(&path);
        JournalFile {
            what,
            path,
            journal: None,
        }
    }

    /// Its complete lines, numbered from 1 (none if there is no file).
    pub(crate) fn read(&self) -> Result<Vec<(usize, String)>, CoordinatorError> {
        Journal::read(self.what, &self.path)
    }

    /// The error for line `number`, which does not parse.
    pub(crate) fn damaged(&self, number: usize, line: &str) -> CoordinatorError {
        Journal::damaged(self.what, &self.path, number, line)
    }

    /// Appends `text` and fdatasyncs it; a failure closes the journal.
    pub(crate) fn append(&mut self, text: &str) -> Result<(), CoordinatorError> {
        let Some(journal) = self.journal.as_mut() else {
            return Err(CoordinatorError::Unavailable(format!(
                "{} {} is not open: a write failed and it was not rewritten",
                self.what,
                self.path.display()
            )));
        };
        journal.append(text).inspect_err(|_| self.journal = None)
    }

    /// Replaces everything with `text` (`lines` lines of live state).
    pub(crate) fn replace(&mut self, text: &str, lines: usize) -> Result<(), CoordinatorError> {
        self.journal = None;
        self.journal = Some(Journal::rewrite(self.what, self.path.clone(), text, lines)?);
        Ok(())
    }

    pub(crate) fn wants_compaction(&self) -> bool {
        self.journal.as_ref().is_some_and(Journal::wants_compaction)
    }
}
