//! The current configuration, swapped atomically on reload, with watchers per key path.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::{Config, Loaded, Loader, Problems};

/// Key paths whose changes apply without a restart: a change to one of them or under
/// one is live; `*` stands for any one name (a quota, a breaker). Anything else that
/// changes, including a quota or breaker added or removed, needs a restart.
pub const LIVE_KEYS: &[&str] = &[
    "bus.batch_window_ms",
    "bus.retention",
    "telemetry.log_level",
    "auth",
    "features",
    "coordinator.leases",
    "coordinator.quotas.*.rule",
    "coordinator.quotas.*.shares",
    "coordinator.quotas.*.reserve",
    "coordinator.quotas.*.aging_ms",
    "coordinator.breakers.*.failure_threshold",
    "coordinator.breakers.*.recovery_timeout_ms",
    "coordinator.breakers.*.half_open_probes",
];

/// Whether a change at `path` applies live: `path` is at or under a [`LIVE_KEYS`] entry.
pub fn is_live(path: &str) -> bool {
    LIVE_KEYS.iter().any(|live| {
        let mut path = path.split('.');
        live.split('.')
            .all(|want| path.next().is_some_and(|got| want == "*" || want == got))
    })
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Every key path whose value changed (leaves, or whole subtrees that appeared or went).
    pub changed: Vec<String>,
    /// The changed paths that only take effect after a restart.
    pub restart_required: Vec<String>,
}

/// The live configuration. Clones share it.
#[derive(Debug, Clone)]
pub struct ConfigHandle {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    loader: Loader,
    current: ArcSwap<Loaded>,
    watchers: Mutex<Vec<(String, watch::Sender<Arc<Config>>)>>,
    /// One reload at a time, so watchers see changes in order.
    reloading: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a change at `changed` concerns a watcher of `watched` (either contains the
/// other).
fn overlaps(changed: &str, watched: &str) -> bool {
    let within = |inner: &str, outer: &str| {
        outer.is_empty()
            || inner == outer
            || (inner.starts_with(outer) && inner.as_bytes().get(outer.len()) == Some(&b'.'))
    };
    within(changed, watched) || within(watched, changed)
}

impl ConfigHandle {
    /// Loads every layer once; fails with every problem found.
    pub fn load(loader: Loader) -> Result<ConfigHandle, Problems> {
        let loaded = loader.load()?;
        Ok(ConfigHandle {
            shared: Arc::new(Shared {
                loader,
                current: ArcSwap::from_pointee(loaded),
                watchers: Mutex::new(Vec::new()),
                reloading: Mutex::new(()),
            }),
        })
    }

    /// The current configuration.
    pub fn get(&self) -> Arc<Config> {
        self.shared.current.load().config().clone()
    }

    /// The current configuration with the origin of each value.
    pub fn loaded(&self) -> Arc<Loaded> {
        self.shared.current.load_full()
    }

    /// A receiver that sees a new config each time a reload changes something at or
    /// under `path` (`"bus.batch_window_ms"`, `"coordinator.quotas"`, `""` for any).
    pub fn watch(&self, path: &str) -> watch::Receiver<Arc<Config>> {
        let (tx, rx) = watch::channel(self.get());
        let mut watchers = lock(&self.shared.watchers);
        watchers.retain(|(_, tx)| !tx.is_closed());
        watchers.push((path.to_owned(), tx));
        rx
    }

    /// Re-reads every layer. A valid result is swapped in and the watchers of what
    /// changed are told; an invalid one is refused (and logged) and the current config
    /// stays.
    pub fn reload(&self) -> Result<Reloaded, Problems> {
        let _one_at_a_time = lock(&self.shared.reloading);
        let loaded = match self.shared.loader.load() {
            Ok(loaded) => loaded,
            Err(problems) => {
                tracing::warn!(
                    problems = %problems.0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
                    "configuration reload refused; the previous configuration stays"
                );
                return Err(problems);
            }
        };
        let old = self.shared.current.load_full();
        let mut changed = Vec::new();
        diff(old.json(), loaded.json(), "", &mut changed);
        let restart_required: Vec<String> = changed
            .iter()
            .filter(|path| !is_live(path))
            .cloned()
            .collect();
        let config = loaded.config().clone();
        self.shared.current.store(Arc::new(loaded));
        if changed.is_empty() {
            tracing::debug!("configuration reloaded: nothing changed");
        } else {
            // An admin action like a purge: on the audit target too.
            tracing::info!(target: "ganglion::audit", action = "config change", changed = ?changed, "configuration reloaded");
        }
        if !restart_required.is_empty() {
            tracing::warn!(
                settings = ?restart_required,
                "these changed settings take effect only after a restart"
            );
        }
        let mut watchers = lock(&self.shared.watchers);
        watchers.retain(|(path, tx)| {
            if changed.iter().any(|c| overlaps(c, path)) {
                tx.send(config.clone()).is_ok()
            } else {
                !tx.is_closed()
            }
        });
        Ok(Reloaded {
            changed,
            restart_required,
        })
    }

    /// Watches the config files and reloads `debounce` after the last change. Reload
    /// results are logged. Stops when the returned value is dropped. Must be called
    /// within a Tokio runtime.
    pub fn watch_files(&self, debounce: Duration) -> Result<FileWatcher, notify::Error> {
        use notify::{EventKind, RecursiveMode, Watcher as _};

        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event {
                    let relevant = matches!(
                        event.kind,
                        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(_)
                    ) && !matches!(
                        event.kind,
                        EventKind::Modify(notify::event::ModifyKind::Metadata(_))
                    );
                    if relevant {
                        let _ = tx.send(event.paths);
                    }
                }
            })?;
        let dir = self.shared.loader.dir.clone();
        watcher.watch(&dir, RecursiveMode::Recursive)?;
        let files: Vec<PathBuf> = self.shared.loader.files();
        let handle = self.clone();
        let task = tokio::spawn(async move {
            while let Some(paths) = rx.recv().await {
                if !concerns(&files, &paths) {
                    continue;
                }
                // Debounce: wait until the config files have been quiet for `debounce`.
                // Other files under the watched directory (a data directory beside a
                // config file, written all the time) neither count nor delay it.
                let quiet = tokio::time::sleep(debounce);
                tokio::pin!(quiet);
                loop {
                    tokio::select! {
                        () = &mut quiet => break,
                        paths = rx.recv() => match paths {
                            Some(paths) if concerns(&files, &paths) => {
                                quiet.as_mut().reset(tokio::time::Instant::now() + debounce);
                            }
                            Some(_) => {}
                            None => return,
                        },
                    }
                }
                let _ = handle.reload();
            }
        });
        tracing::info!(dir = %dir.display(), "watching the configuration for changes");
        Ok(FileWatcher {
            _watcher: watcher,
            task,
        })
    }
}

fn concerns(files: &[PathBuf], paths: &[PathBuf]) -> bool {
    paths.iter().any(|p| {
        files
            .iter()
            .any(|f| p == f || p.file_name() == f.file_name())
    })
}

/// Watches config files while it lives.
#[derive(Debug)]
pub struct FileWatcher {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The key paths at which `a` and `b` differ.
fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let child = crate::check::join(path, key);
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => diff(x, y, &child, out),
                    _ => out.push(child),
                }
            }
        }
        _ if a != b => out.push(path.to_owned()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_paths_are_at_or_under_a_live_key() {
        assert!(is_live("bus.batch_window_ms"));
        assert!(is_live("features.fast-path.enabled"));
        assert!(is_live("coordinator.leases.max_hold_ms"));
        assert!(is_live("coordinator.quotas.claude.rule"));
        assert!(is_live("coordinator.quotas.claude.shares.advisor"));
        assert!(is_live("coordinator.breakers.claude-api.failure_threshold"));
        // A quota or breaker that appears or goes is a whole subtree: restart.
        assert!(!is_live("coordinator.quotas.openai"));
        assert!(!is_live("coordinator.breakers.db"));
        assert!(!is_live("coordinator.pools.gpu.capacity"));
        assert!(!is_live("coordinator"));
        assert!(!is_live("bus"));
        assert!(!is_live("server.grpc_addr"));
    }

    #[test]
    fn overlapping_paths() {
        assert!(overlaps("bus.batch_window_ms", "bus"));
        assert!(overlaps("bus", "bus.batch_window_ms"));
        assert!(overlaps(
            "coordinator.quotas.claude.rule",
            "coordinator.quotas"
        ));
        assert!(!overlaps("bus.batch_window_msx", "bus.batch_window_ms"));
        assert!(!overlaps("limits.max_sse_clients", "bus"));
        assert!(overlaps("anything", ""));
    }
}
