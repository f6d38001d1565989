//! Layer tars: streaming import into a directory, tar-split-style metadata, and
//! byte-for-byte export. A pure library over paths and readers/writers: no engine, no WAL.
//!
//! - [`extract`] reads a layer (plain, gzip or zstd) once, materializes it under a target
//!   directory without ever touching anything outside it, and writes metadata.
//! - [`export`] rebuilds the exact original tar from that metadata and the tree.
//! - [`diff`] writes a snapshot's changes against its parent as a layer tar.
//! - [`Digest`] and [`chain_id`] are the OCI DiffID / ChainID.
//!
//! The metadata format is specified in `docs/layer-format.md`.

pub mod changes;
pub mod decompress;
pub mod diff;
pub mod digest;
pub mod error;
pub mod export;
pub mod extract;
mod hashpipe;
pub mod header;
pub mod meta;
mod prefetch;
pub mod safepath;
pub mod whiteout;

pub use changes::{
    changes, changes_size, tree_size, ChangeKind, ChangesSource, PathChange, TreeSize,
};
pub use decompress::Compression;
pub use diff::{diff, DiffSource, Diffed};
pub use digest::{chain_id, Digest};
pub use error::LayerError;
pub use export::export;
pub use extract::{extract, ExtractOptions, Extracted};
pub use whiteout::WhiteoutStyle;
