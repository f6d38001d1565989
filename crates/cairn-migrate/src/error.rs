//! The one error type of a migration.

use cairn_engine::EngineError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The directory is not a Docker data root we can read.
    #[error("{path}: not a Docker data root: {reason}")]
    NotDockerRoot { path: PathBuf, reason: String },
    /// A file of Docker's layer store or image store that does not parse.
    #[error("{path}: {reason}")]
    Metadata { path: PathBuf, reason: String },
    /// A `tar-split.json.gz` that does not decode.
    #[error("{path}: tar-split entry {entry}: {reason}")]
    TarSplit {
        path: PathBuf,
        entry: u64,
        reason: String,
    },
    /// A file payload on disk that is not the one tar-split recorded.
    #[error("{path}: {reason}")]
    Payload { path: PathBuf, reason: String },
    /// `--strict`: some layer or image cannot be moved, so nothing was.
    #[error(
        "refused: {count} layers or images cannot be moved (first: {first}); nothing was imported"
    )]
    Refused { count: usize, first: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl MigrateError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MigrateError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
