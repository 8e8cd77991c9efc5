//! A durable consumer's state on disk: `consumers/<name>.state`, a small text file
//! replaced atomically (write, fsync, rename, fsync the directory).
//!
//! ```text
//! ganglion-consumer 1
//! pattern game.>
//! dlq dlq.strategy
//! floor 17            every sequence below this is done
//! done 18 19 25       done sequences at or above the floor
//! attempts 20:2 21:3  deliveries so far of sequences not done
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const MAGIC: &str = "ganglion-consumer 1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DurableState {
    pub(crate) pattern: String,
    pub(crate) dlq_topic: String,
    pub(crate) floor: u64,
    pub(crate) done: BTreeSet<u64>,
    pub(crate) attempts: BTreeMap<u64, u32>,
}

/// Where durable consumers keep their state: files in a directory, or memory (for an
/// in-memory bus in tests).
#[derive(Debug)]
pub(crate) enum StateStore {
    Dir(PathBuf),
    Memory(Mutex<HashMap<String, DurableState>>),
}

impl StateStore {
    pub(crate) fn save(&self, name: &str, state: &DurableState) -> io::Result<()> {
        match self {
            StateStore::Dir(dir) => save(dir, name, state),
            StateStore::Memory(states) => {
                states
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name.to_owned(), state.clone());
                Ok(())
            }
        }
    }

    /// The names of every durable with a saved state.
    pub(crate) fn names(&self) -> Vec<String> {
        match self {
            StateStore::Dir(dir) => fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    name.strip_suffix(".state").map(str::to_owned)
                })
                .collect(),
            StateStore::Memory(states) => states
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned()
                .collect(),
        }
    }

    pub(crate) fn load(&self, name: &str) -> Result<Option<DurableState>, String> {
        match self {
            StateStore::Dir(dir) => load(dir, name),
            StateStore::Memory(states) => Ok(states
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .cloned()),
        }
    }
}

pub(crate) fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.state"))
}

fn render(state: &DurableState) -> String {
    let done: Vec<String> = state.done.iter().map(u64::to_string).collect();
    let attempts: Vec<String> = state
        .attempts
        .iter()
        .map(|(seq, n)| format!("{seq}:{n}"))
        .collect();
    format!(
        "{MAGIC}\npattern {}\ndlq {}\nfloor {}\ndone {}\nattempts {}\n",
        state.pattern,
        state.dlq_topic,
        state.floor,
        done.join(" "),
        attempts.join(" ")
    )
}

/// Writes the state so that a crash leaves either the old file or the new one.
fn save(dir: &Path, name: &str, state: &DurableState) -> io::Result<()> {
    ganglion_core::fs::write_atomically(&path(dir, name), render(state).as_bytes())
}

/// Reads a saved state; `Ok(None)` if there is none. A damaged file is an error naming
/// the file and line, never a silent reset to the start.
fn load(dir: &Path, name: &str) -> Result<Option<DurableState>, String> {
    let file = path(dir, name);
    let text = match fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", file.display())),
    };
    let bad = |line: usize, what: &str| format!("{}:{}: {what}", file.display(), line + 1);
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, MAGIC)) => {}
        _ => return Err(bad(0, "not a ganglion consumer state file")),
    }
    let mut field = |key: &str| -> Result<(usize, String), String> {
        match lines.next() {
            Some((n, line)) => match line.strip_prefix(key) {
                Some(rest) if rest.is_empty() || rest.starts_with(' ') => {
                    Ok((n, rest.trim().to_owned()))
                }
                _ => Err(bad(n, &format!("expected '{key}'"))),
            },
            None => Err(bad(0, &format!("missing '{key}'"))),
        }
    };
    let (_, pattern) = field("pattern")?;
    let (_, dlq_topic) = field("dlq")?;
    let (n, floor) = field("floor")?;
    let floor = floor.parse().map_err(|_| bad(n, "floor is not a number"))?;
    let (n, done_line) = field("done")?;
    let done = done_line
        .split_whitespace()
        .map(|s| s.parse().map_err(|_| bad(n, "done holds a non-number")))
        .collect::<Result<_, _>>()?;
    let (n, attempts_line) = field("attempts")?;
    let attempts = attempts_line
        .split_whitespace()
        .map(|pair| {
            let (seq, count) = pair
                .split_once(':')
                .ok_or_else(|| bad(n, "attempts needs seq:count"))?;
            Ok((
                seq.parse()
                    .map_err(|_| bad(n, "attempts holds a non-number"))?,
                count
                    .parse()
                    .map_err(|_| bad(n, "attempts holds a non-number"))?,
            ))
        })
        .collect::<Result<_, String>>()?;
    Ok(Some(DurableState {
        pattern,
        dlq_topic,
        floor,
        done,
        attempts,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path(), "s").unwrap(), None);
        let state = DurableState {
            pattern: "game.>".into(),
            dlq_topic: "dlq.s".into(),
            floor: 17,
            done: [18, 19, 25].into(),
            attempts: [(20, 2), (21, 3)].into(),
        };
        save(dir.path(), "s", &state).unwrap();
        assert_eq!(load(dir.path(), "s").unwrap(), Some(state));
        fs::write(
            path(dir.path(), "s"),
            "ganglion-consumer 1\npattern a\ndlq b\nfloor x\n",
        )
        .unwrap();
        let err = load(dir.path(), "s").unwrap_err();
        assert!(err.ends_with("s.state:4: floor is not a number"), "{err}");
    }
}
