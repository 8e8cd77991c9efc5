//! Where a request queue lives between runs: the [`QueueStore`] seam, and the file store
//! (`<name>.queue`, a journal fdatasynced per change, see [`crate::journal`]).

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;

use super::Outcome;
use crate::journal::JournalFile;
use crate::{CoordinatorError, RequestId};

/// One change to a request queue, made durable before it is acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueRecord {
    /// A request waiting in line (or taken: a restart puts it back in line).
    Waiting {
        id: RequestId,
        priority: i32,
        component: String,
        idempotency_key: Option<String>,
        request: Bytes,
    },
    /// A request that joined an identical one in flight (`leader`).
    Joined {
        id: RequestId,
        leader: RequestId,
        idempotency_key: Option<String>,
    },
    /// Who submitted request `id`.
    Submitted { id: RequestId, component: String },
    /// The idempotency key of a request answered at once.
    Key {
        id: RequestId,
        idempotency_key: String,
    },
    /// Request `id` answered at `at_micros` (wall clock); takes it out of line.
    Answered {
        id: RequestId,
        at_micros: u64,
        outcome: Outcome,
    },
    /// A cache entry.
    Cached {
        expires_at_micros: u64,
        request: Bytes,
        response: Bytes,
    },
}

/// Keeps one request queue. `append` must be durable when it returns: a submit or a
/// completion is acknowledged only after its records were appended.
pub trait QueueStore: Send + std::fmt::Debug {
    /// Every record kept, in the order appended (empty when nothing ever was).
    fn load(&mut self) -> Result<Vec<QueueRecord>, CoordinatorError>;
    /// Makes `records` durable together.
    fn append(&mut self, records: &[QueueRecord]) -> Result<(), CoordinatorError>;
    /// Replaces everything with `live`: a compaction, or a fresh start after a failed
    /// append (until one succeeds, submits are refused).
    fn replace(&mut self, live: &[QueueRecord]) -> Result<(), CoordinatorError>;
    /// Whether the store grew well past what is live, so a `replace` is due.
    fn wants_compaction(&self) -> bool;
}

/// A request queue in `dir/<name>.queue`, one line per record:
///
/// ```text
/// p <id> <priority> <component> <idempotency key|-> <request>      waiting
/// f <id> <leader> <idempotency key|->                               joined a request
/// s <id> <component>                                               who submitted it
/// i <id> <idempotency key>                                          key of an answer
/// o <id> <at> <c|d|-> <ok|err> <response or error>                  answered
/// k <expires at> <request> <response>                               cached
/// ```
///
/// Keys and bytes are base64 (`-` when empty).
#[derive(Debug)]
pub struct FileQueueStore {
    file: JournalFile,
}

impl FileQueueStore {
    pub fn new(dir: &Path, queue: &str) -> FileQueueStore {
        let path = dir.join(format!("{queue}.queue"));
        FileQueueStore {
            file: JournalFile::new("request queue journal", path),
        }
    }
}

impl QueueStore for FileQueueStore {
    fn load(&mut self) -> Result<Vec<QueueRecord>, CoordinatorError> {
        self.file
            .read()?
            .into_iter()
            .map(|(number, line)| decode(&line).ok_or_else(|| self.file.damaged(number, &line)))
            .collect()
    }

    fn append(&mut self, records: &[QueueRecord]) -> Result<(), CoordinatorError> {
        let text: String = records.iter().map(encode).collect();
        self.file.append(&text)
    }

    fn replace(&mut self, live: &[QueueRecord]) -> Result<(), CoordinatorError> {
        let text: String = live.iter().map(encode).collect();
        self.file.replace(&text, live.len())
    }

    fn wants_compaction(&self) -> bool {
        self.file.wants_compaction()
    }
}

fn b64(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        "-".to_owned()
    } else {
        BASE64.encode(bytes)
    }
}

fn unb64(text: &str) -> Option<Bytes> {
    if text == "-" {
        return Some(Bytes::new());
    }
    BASE64.decode(text).ok().map(Bytes::from)
}

fn key(key: &Option<String>) -> String {
    b64(key.as_deref().unwrap_or("").as_bytes())
}

fn encode(record: &QueueRecord) -> String {
    match record {
        QueueRecord::Waiting {
            id,
            priority,
            component,
            idempotency_key,
            request,
        } => format!(
            "p {id} {priority} {component} {} {}\n",
            key(idempotency_key),
            b64(request)
        ),
        QueueRecord::Joined {
            id,
            leader,
            idempotency_key,
        } => format!("f {id} {leader} {}\n", key(idempotency_key)),
        QueueRecord::Submitted { id, component } => format!("s {id} {component}\n"),
        QueueRecord::Key {
            id,
            idempotency_key,
        } => format!("i {id} {}\n", b64(idempotency_key.as_bytes())),
        QueueRecord::Answered {
            id,
            at_micros,
            outcome,
        } => {
            let flags = match (outcome.cached, outcome.degraded) {
                (true, true) => "cd",
                (true, false) => "c",
                (false, true) => "d",
                (false, false) => "-",
            };
            let (kind, body) = match &outcome.response {
                Ok(body) => ("ok", b64(body)),
                Err(error) => ("err", b64(error.as_bytes())),
            };
            format!("o {id} {at_micros} {flags} {kind} {body}\n")
        }
        QueueRecord::Cached {
            expires_at_micros,
            request,
            response,
        } => format!("k {expires_at_micros} {} {}\n", b64(request), b64(response)),
    }
}

/// The record on `line`, or `None` when it is damaged.
fn decode(line: &str) -> Option<QueueRecord> {
    let f: Vec<&str> = line.split(' ').collect();
    let num = |s: &str| s.parse::<u64>().ok();
    let id_of = |s: &str| num(s).map(RequestId);
    let text = |s: &str| String::from_utf8(unb64(s)?.to_vec()).ok();
    let optional = |s: &str| text(s).map(|k| (!k.is_empty()).then_some(k));
    Some(match f.as_slice() {
        ["p", id, priority, component, key, request] => QueueRecord::Waiting {
            id: id_of(id)?,
            priority: priority.parse().ok()?,
            component: (*component).to_owned(),
            idempotency_key: optional(key)?,
            request: unb64(request)?,
        },
        ["f", id, leader, key] => QueueRecord::Joined {
            id: id_of(id)?,
            leader: id_of(leader)?,
            idempotency_key: optional(key)?,
        },
        ["s", id, component] => QueueRecord::Submitted {
            id: id_of(id)?,
            component: (*component).to_owned(),
        },
        ["i", id, key] => QueueRecord::Key {
            id: id_of(id)?,
            idempotency_key: text(key)?,
        },
        ["o", id, at, flags, kind, body] => {
            let body = unb64(body)?;
            let response = match *kind {
                "ok" => Ok(body),
                "err" => Err(String::from_utf8_lossy(&body).into_owned()),
                _ => return None,
            };
            QueueRecord::Answered {
                id: id_of(id)?,
                at_micros: num(at)?,
                outcome: Outcome {
                    response,
                    cached: flags.contains('c'),
                    degraded: flags.contains('d'),
                },
            }
        }
        ["k", expires_at, request, response] => QueueRecord::Cached {
            expires_at_micros: num(expires_at)?,
            request: unb64(request)?,
            response: unb64(response)?,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_reads_back_as_written() {
        let records = [
            QueueRecord::Waiting {
                id: RequestId(1),
                priority: -3,
                component: "advisor".into(),
                idempotency_key: Some("k 1".into()),
                request: Bytes::from_static(b"prompt"),
            },
            QueueRecord::Waiting {
                id: RequestId(2),
                priority: 0,
                component: "anonymous".into(),
                idempotency_key: None,
                request: Bytes::new(),
            },
            QueueRecord::Joined {
                id: RequestId(3),
                leader: RequestId(1),
                idempotency_key: None,
            },
            QueueRecord::Submitted {
                id: RequestId(3),
                component: "game".into(),
            },
            QueueRecord::Key {
                id: RequestId(4),
                idempotency_key: "once".into(),
            },
            QueueRecord::Answered {
                id: RequestId(1),
                at_micros: 99,
                outcome: Outcome {
                    response: Err("upstream 500".into()),
                    cached: true,
                    degraded: true,
                },
            },
            QueueRecord::Cached {
                expires_at_micros: 7,
                request: Bytes::from_static(b"q"),
                response: Bytes::from_static(b"a"),
            },
        ];
        for record in records {
            let line = encode(&record);
            assert_eq!(decode(line.trim_end()), Some(record), "{line}");
        }
        assert_eq!(decode("p 1 x"), None);
        assert_eq!(decode("o 1 2 - maybe -"), None);
    }
}
