//! The Python SDK's tests (`python/tests`, pytest) against this build's `ganglion serve`.
//! They need a Python with grpcio, protobuf, pytest and mypy (with grpcio's and
//! protobuf's type stubs): `.ci/run` makes `.venv`;
//! `GANGLION_TEST_PYTHON` names another. Without one the test is skipped, or fails
//! under `CI=true`.

mod common;

use std::path::Path;
use std::process::Command;

fn python() -> Option<std::path::PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    [
        std::env::var_os("GANGLION_TEST_PYTHON").map(Into::into),
        Some(repo.join(".venv/bin/python")),
    ]
    .into_iter()
    .flatten()
    .find(|python: &std::path::PathBuf| {
        Command::new(python)
            .args(["-c", "import grpc, google.protobuf, pytest, mypy"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn the_python_sdk_passes_its_tests_against_this_server() {
    let Some(python) = python() else {
        common::skip_or_fail(
            "no Python with grpcio, protobuf, pytest and mypy (.ci/run makes .venv)",
        );
        return;
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "python/tests",
        ])
        .current_dir(&repo)
        .env("GANGLION_BIN", common::BIN)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "pytest failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `py.typed` promises types: the package and its tests pass `mypy --strict` (the
/// settings are in python/pyproject.toml; the generated stubs are exempt).
#[test]
fn the_python_sdk_is_mypy_strict_clean() {
    let Some(python) = python() else {
        common::skip_or_fail(
            "no Python with grpcio, protobuf, pytest and mypy (.ci/run makes .venv)",
        );
        return;
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(python)
        .args(["-m", "mypy", "--cache-dir"])
        .arg(cache.path())
        .args(["src/ganglion", "tests"])
        .current_dir(repo.join("python"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mypy --strict:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
