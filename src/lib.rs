//! cairn: a crash-safe, transactional storage engine for container image layers and snapshots.
//!
//! The parts, each in its own module: `state` (the pure state machine), `driver` (trees and
//! mounts), `layer` (tar streams, digests, export metadata), `engine` (the one thread that
//! journals and applies), `image` and `cli` (clients of the engine).

pub mod cli;
pub mod driver;
pub mod engine;
pub mod image;
pub mod layer;
pub mod state;
pub mod types;
