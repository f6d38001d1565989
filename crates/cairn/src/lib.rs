//! cairn: a crash-safe, transactional storage engine for container image layers and snapshots.
//!
//! This crate is the `cairn` command line. The engine and its parts live in their own crates:
//! `cairn-state` (the pure state machine), `cairn-layer` (tar streams, digests, export
//! metadata), `cairn-driver` (trees and mounts), `cairn-engine` (the one thread that journals
//! and applies; what an embedder depends on), `cairn-image` (image loading) and `cairn-wal`.

pub mod cli;
