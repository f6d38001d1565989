//! The one error type of the log crate.

use crate::format::{HeaderError, RecordError};
use crate::lsn::{Lsn, StoreId};
use std::fmt;
use std::io;
use std::path::PathBuf;

/// What is wrong with a record found by recovery or a reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Damage {
    /// The frame failed to decode (length or checksum).
    Frame(RecordError),
    /// The frame is valid but carries the wrong LSN for its place.
    OutOfSequence { found: Lsn },
    /// Damage in a segment that was fully synced before its successor was created: it cannot be
    /// a torn write.
    InSealedSegment(RecordError),
    /// The record is damaged and a later valid record (this LSN) was written after it was
    /// durable: it was acknowledged, so this is not a torn tail.
    ProvedDurable { by: Lsn },
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::Frame(e) => write!(f, "bad frame ({e:?})"),
            Damage::OutOfSequence { found } => write!(f, "frame carries LSN {found}"),
            Damage::InSealedSegment(e) => {
                write!(f, "bad frame ({e:?}) in a sealed segment, not a torn tail")
            }
            Damage::ProvedDurable { by } => write!(
                f,
                "damaged, and record LSN {by} written after it shows it was already durable"
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the log is poisoned: {op} on {path} failed and is never retried; reopen the log to recover"
    )]
    Poisoned { op: &'static str, path: PathBuf },
    #[error("no log in {dir} (and create_if_missing is off)")]
    NotFound { dir: PathBuf },
    #[error("segment {path}: bad header: {reason:?}")]
    BadHeader { path: PathBuf, reason: HeaderError },
    #[error(
        "segment {path}: unknown format version {version}; this build reads version {}",
        crate::format::VERSION
    )]
    UnknownVersion { path: PathBuf, version: u16 },
    #[error("segment {path} belongs to store {found}, not to store {expected}")]
    ForeignSegment {
        path: PathBuf,
        expected: StoreId,
        found: StoreId,
    },
    #[error("segment {path}: its name says first LSN {named}, its header says {header}")]
    MisnamedSegment {
        path: PathBuf,
        named: Lsn,
        header: Lsn,
    },
    #[error("missing segment before {path}: the log expects LSN {expected} next, the segment starts at {found}")]
    MissingSegment {
        path: PathBuf,
        expected: Lsn,
        found: Lsn,
    },
    #[error("corrupt record in {path} at byte {offset} (LSN {lsn}): {damage}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        lsn: Lsn,
        damage: Damage,
    },
    #[error("record of {len} bytes is over the limit of {max} bytes")]
    RecordTooLarge { len: usize, max: u32 },
    #[error("LSN {lsn} is outside the log, which holds {first} up to (not including) {next}")]
    LsnOutOfRange { lsn: Lsn, first: Lsn, next: Lsn },
    #[error("invalid WAL options: {0}")]
    InvalidOptions(&'static str),
    #[error("cannot draw a random store id: {0}")]
    Random(getrandom::Error),
}

pub type Result<T, E = WalError> = std::result::Result<T, E>;

/// Attach the operation and path to an io::Error.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> WalError {
    let path = path.into();
    move |source| WalError::Io { op, path, source }
}
