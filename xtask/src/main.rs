//! Repository chores.
//!
//! `cargo run -p xtask -- proto` compiles `proto/**/*.proto` with protox (no `protoc`
//! needed) and writes the generated Rust and the encoded descriptor set (for gRPC
//! reflection) into `crates/ganglion-proto/src/gen/`. CI runs it and fails on a diff.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const PROTOS: &[&str] = &[
    "ganglion/v1/bus.proto",
    "ganglion/v1/coordinator.proto",
    "ganglion/examples/v1/game.proto",
];

fn main() -> ExitCode {
    let task = std::env::args().nth(1);
    let result = match task.as_deref() {
        Some("proto") => proto(),
        _ => Err("usage: cargo run -p xtask -- proto".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn proto() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let includes = [root.join("proto")];
    let out = root.join("crates/ganglion-proto/src/gen");
    std::fs::create_dir_all(&out)?;

    let fds = protox::compile(PROTOS, &includes)?;
    std::fs::write(
        out.join("descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    tonic_prost_build::configure()
        .out_dir(&out)
        .bytes(".")
        .btree_map(".")
        .compile_fds(fds)?;

    let generated: Vec<PathBuf> = std::fs::read_dir(&out)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "rs"))
        .collect();
    let status = Command::new("rustfmt")
        .args(["--edition", "2024"])
        .args(&generated)
        .status()?;
    if !status.success() {
        return Err(format!("rustfmt failed: {status}").into());
    }
    for path in &generated {
        eprintln!("xtask: wrote {}", path.display());
    }
    Ok(())
}
