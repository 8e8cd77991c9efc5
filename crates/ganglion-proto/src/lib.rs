//! Ganglion's wire contract, generated from `proto/` by `cargo run -p xtask -- proto`.
//!
//! The code under `gen/` is committed so that users need no `protoc`; CI regenerates it
//! and fails on a diff. Payloads are [`bytes::Bytes`] and header maps are `BTreeMap`s, as
//! in `ganglion_core::Event`, so converting moves rather than copies.

/// `ganglion.v1`: the event bus service and its messages.
#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
pub mod v1 {
    include!("gen/ganglion.v1.rs");
}

/// `ganglion.examples.v1`: the seeds' game-state schema, used by `examples/game-events`.
#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
pub mod examples {
    include!("gen/ganglion.examples.v1.rs");
}

/// The encoded `FileDescriptorSet` of every proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("gen/descriptor.bin");

pub mod convert;
pub mod json;
