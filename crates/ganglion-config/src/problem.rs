//! What is wrong with a config: the key, where it was set, and what was expected.

use std::fmt;

use crate::Origin;

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The key path (`bus.batch_window_ms`).
    pub path: String,
    /// Where the offending value came from.
    pub origin: Origin,
    pub message: String,
}

impl Problem {
    pub fn new(path: &str, origin: Origin, message: impl Into<String>) -> Problem {
        Problem {
            path: path.to_owned(),
            origin,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(top level)"
        } else {
            &self.path
        };
        write!(f, "{}: {path}: {}", self.origin, self.message)
    }
}

/// Everything wrong with a configuration, one problem per line.
#[derive(Debug, Clone, PartialEq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} problem{} in the configuration:",
            if n == 1 { "" } else { "s" }
        )?;
        for problem in &self.0 {
            writeln!(f, "  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}
