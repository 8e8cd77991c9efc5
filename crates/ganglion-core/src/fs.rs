//! Small files replaced whole: state, journals compacted, purges.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `target` so that a crash leaves the old file or the new one (a
/// temporary `<target>.tmp`, fdatasynced, renamed over, the directory synced), and a
/// failed write (a full disk) leaves no temporary file behind.
pub fn write_atomically(target: &Path, bytes: &[u8]) -> io::Result<()> {
    blocking(|| replace(target, bytes))
}

/// Runs `f`, which blocks on the disk (an fsync), without stalling the async tasks
/// around it: on a worker of a multi-thread tokio runtime through
/// [`tokio::task::block_in_place`] (the worker's other tasks move to another worker
/// meanwhile); on any other thread (a plain one, a blocking-pool one, a current-thread
/// runtime's) directly.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn replace(target: &Path, bytes: &[u8]) -> io::Result<()> {
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

#[cfg(test)]
mod blocking_tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use super::blocking;

    /// Inside `blocking`, waits (up to 5 s) for another task of the runtime to run.
    fn others_run_meanwhile(ran: &AtomicBool) -> bool {
        let until = Instant::now() + Duration::from_secs(5);
        while !ran.load(Ordering::SeqCst) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        ran.load(Ordering::SeqCst)
    }

    #[test]
    fn a_blocking_call_on_the_only_worker_lets_the_other_tasks_run() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let ran_meanwhile = runtime.block_on(async move {
            let blocked = tokio::spawn(async move { blocking(|| others_run_meanwhile(&ran)) });
            tokio::task::yield_now().await;
            let other = tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
            let ran_meanwhile = blocked.await.unwrap();
            other.await.unwrap();
            ran_meanwhile
        });
        assert!(
            ran_meanwhile,
            "the runtime's other task was stalled by the fsync"
        );
    }

    #[test]
    fn a_blocking_call_runs_on_a_current_thread_runtime_and_off_any_runtime() {
        assert_eq!(blocking(|| 7), 7);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(runtime.block_on(async { blocking(|| 8) }), 8);
    }
}
