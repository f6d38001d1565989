//! The one error type of the layer library.
//!
//! Every variant names the tar entry (or the file on disk) and the byte offset in the
//! uncompressed tar stream where the problem was found, so an operator can find it with
//! `tar tvR` or `dd`. Offsets in metadata errors are offsets in the metadata stream.

use std::io;

use super::digest::Digest;

/// Name used in errors that are not about one entry (the stream, the metadata header...).
pub const NO_ENTRY: &str = "<layer>";

/// Everything that can go wrong importing or exporting a layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// Reading the (uncompressed) input failed for a reason other than corruption.
    #[error("{path}: at tar offset {offset}: reading the layer failed: {source}")]
    Read {
        path: String,
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// The compressed stream is corrupt or cut short.
    #[error("{path}: at tar offset {offset}: {format} stream is corrupt or cut short: {source}")]
    Decompress {
        path: String,
        offset: u64,
        format: &'static str,
        #[source]
        source: io::Error,
    },
    /// The stream ended inside a header, inside file data or inside padding.
    #[error("{path}: at tar offset {offset}: layer cut short: {reason}")]
    Truncated {
        path: String,
        offset: u64,
        reason: &'static str,
    },
    /// A header block whose checksum does not match its bytes.
    #[error("{path}: at tar offset {offset}: header checksum mismatch (stored {stored:?}, computed {computed})")]
    BadChecksum {
        path: String,
        offset: u64,
        stored: Option<u64>,
        computed: u64,
    },
    /// A header or extended header that cannot be parsed.
    #[error("{path}: at tar offset {offset}: malformed header: {reason}")]
    BadHeader {
        path: String,
        offset: u64,
        reason: &'static str,
    },
    /// A length read from the stream is above the library's bound.
    #[error("{path}: at offset {offset}: {what} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        path: String,
        offset: u64,
        what: &'static str,
        len: u64,
        max: u64,
    },
    /// A name that would escape the target or is otherwise unusable.
    #[error("{path}: at tar offset {offset}: unsafe path: {reason}")]
    UnsafePath {
        path: String,
        offset: u64,
        reason: &'static str,
    },
    /// A hardlink whose target is not an existing file inside the layer root.
    #[error("{path}: at tar offset {offset}: bad hardlink target {target:?}: {reason}")]
    BadHardlink {
        path: String,
        offset: u64,
        target: String,
        reason: &'static str,
    },
    /// A valid tar feature this library does not implement.
    #[error("{path}: at tar offset {offset}: unsupported: {reason}")]
    Unsupported {
        path: String,
        offset: u64,
        reason: &'static str,
    },
    /// The entry needs privileges this process does not have (devices, overlay whiteouts).
    #[error("{path}: at tar offset {offset}: not permitted: {reason}")]
    NotPermitted {
        path: String,
        offset: u64,
        reason: &'static str,
    },
    /// A filesystem operation inside the target failed.
    #[error("{path}: at tar offset {offset}: {op} failed: {source}")]
    Fs {
        path: String,
        offset: u64,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The metadata stream is corrupt, cut short or of an unknown version.
    #[error("{path}: at metadata offset {offset}: corrupt metadata: {reason}")]
    BadMeta {
        path: String,
        offset: u64,
        reason: &'static str,
    },
    /// Writing the metadata or the exported tar failed.
    #[error("{path}: at offset {offset}: writing {what} failed: {source}")]
    Write {
        path: String,
        offset: u64,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// A file in the tree no longer has the content recorded at import.
    #[error("{path}: at tar offset {offset}: file content changed since import: {reason}")]
    ContentChanged {
        path: String,
        offset: u64,
        reason: &'static str,
    },
    /// A file in the tree is shorter or longer than recorded at import.
    #[error(
        "{path}: at tar offset {offset}: file is {actual} bytes, {expected} recorded at import"
    )]
    SizeChanged {
        path: String,
        offset: u64,
        expected: u64,
        actual: u64,
    },
    /// The exported stream does not hash to the expected DiffID.
    #[error("{path}: at tar offset {offset}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        path: String,
        offset: u64,
        expected: Digest,
        actual: Digest,
    },
    /// A digest string that is not `sha256:<64 lowercase hex>`.
    #[error("{path}: at offset {offset}: invalid digest: {reason}")]
    BadDigest {
        path: String,
        offset: u64,
        reason: &'static str,
    },
}
