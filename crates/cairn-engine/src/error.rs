//! The engine's one error type.

use cairn_state::types::{SnapshotId, TxId};
use cairn_state::StateError;
use cairn_wal::{Lsn, WalError};
use std::path::PathBuf;

/// Everything an engine call can fail with. Match on the variants a caller handles (most
/// often [`EngineError::State`], a refusal that changed nothing) and treat the rest as
/// failures; more variants may come.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The command was refused by the state machine; nothing was written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The write-ahead log failed or is damaged.
    #[error("write-ahead log: {0}")]
    Wal(#[from] WalError),
    /// The driver failed on a tree or a mount.
    #[error("driver: {0}")]
    Driver(#[from] cairn_driver::DriverError),
    /// A layer tar could not be read, extracted or exported.
    #[error("layer: {0}")]
    Layer(#[from] cairn_layer::LayerError),
    /// An imported layer's DiffID is not the one the caller expected; nothing was stored.
    #[error("layer has DiffID {found}, the image says {expected}")]
    DiffIdMismatch {
        /// The DiffID the caller gave.
        expected: String,
        /// The DiffID of the tar that was read.
        found: String,
    },
    /// A file system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// To which path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A mount was asked for on a target something cairn does not count is mounted on.
    #[error("{target} is already a mount point of something cairn did not mount there")]
    TargetMounted {
        /// The target.
        target: PathBuf,
    },
    /// Another process has the root open.
    #[error("root {root} is locked by pid {pid}")]
    Locked {
        /// The root.
        root: PathBuf,
        /// The holder's pid, as its lock file records it.
        pid: String,
    },
    /// The root was created with another driver than the one asked for.
    #[error("root {root} was created with the {recorded} driver, not {requested}")]
    DriverMismatch {
        /// The root.
        root: PathBuf,
        /// The driver its meta file records.
        recorded: &'static str,
        /// The driver the options asked for.
        requested: &'static str,
    },
    /// The directory is not a usable cairn root.
    #[error("{path} is not a cairn root: {reason}")]
    NotARoot {
        /// The directory.
        path: PathBuf,
        /// Why not.
        reason: RootProblem,
    },
    /// The checkpoint file is damaged.
    #[error("checkpoint {path} is damaged: {reason}")]
    BadCheckpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it.
        reason: CheckpointProblem,
    },
    /// A journal record's payload does not decode.
    #[error("journal record at LSN {lsn} cannot be decoded: {reason}")]
    BadRecord {
        /// The record's LSN.
        lsn: Lsn,
        /// What is wrong with it.
        reason: RecordProblem,
    },
    /// A journal record does not apply to the state replay has reached: the journal is damaged.
    #[error("journal record at LSN {lsn} ({txid}) does not follow from the state: {source}")]
    Replay {
        /// The record's LSN.
        lsn: Lsn,
        /// The record's transaction id.
        txid: TxId,
        /// The state machine's refusal.
        #[source]
        source: StateError,
    },
    /// A journal record's transaction or snapshot id is out of sequence.
    #[error("journal record at LSN {lsn} breaks the transaction sequence: {reason}")]
    Sequence {
        /// The record's LSN.
        lsn: Lsn,
        /// Which sequence it breaks.
        reason: SequenceProblem,
    },
    /// The log starts after the checkpoint ends: records in between are lost.
    #[error("the log starts at LSN {wal_first} but the checkpoint covers only up to {checkpoint}: records are missing")]
    LogGap {
        /// The last LSN the checkpoint covers.
        checkpoint: Lsn,
        /// The first LSN in the log.
        wal_first: Lsn,
    },
    /// The derived index (sled) failed.
    #[error("index {path}: {source}")]
    Index {
        /// The index directory.
        path: PathBuf,
        /// sled's error.
        #[source]
        source: sled::Error,
    },
    /// sled panicked (0.34.7 unwraps some disk errors); the index is set aside until the next
    /// open rebuilds it from the journal.
    #[error("index {path} is set aside after sled panicked ({panic}); the next open rebuilds it")]
    IndexDamaged {
        /// The index directory.
        path: PathBuf,
        /// What the first contained panic said.
        panic: String,
    },
    /// A snapshot whose creation is durable has no tree on disk.
    #[error("snapshot {id} has no tree on disk although its creation is durable")]
    LostTree {
        /// The snapshot's id.
        id: SnapshotId,
    },
    /// An earlier failure (a journal write, an install) stopped the engine; every command
    /// gets this until the root is reopened, which recovers.
    #[error("the engine stopped after an earlier failure ({cause}); reopen the root to recover")]
    Failed {
        /// The earlier failure.
        cause: String,
    },
    /// A detached layer import the engine cannot take (crate::StagedLayer).
    #[error("detached layer import: {0}")]
    Detached(#[from] super::detached::DetachedRefusal),
    /// The engine was closed.
    #[error("the engine has shut down")]
    ShutDown,
    /// A bug: a worker's job for this command panicked. The engine keeps running; the command
    /// was not completed (a removal already journaled stays removed).
    #[error("bug: the {job} job of this command panicked: {message}")]
    WorkerPanicked {
        /// What the job was doing: `stage`, `seal`, `import`, `delete`, `usage`, `export`,
        /// `diff` or `verify`.
        job: &'static str,
        /// What the panic said.
        message: String,
    },
    /// A bug: the engine thread panicked. Reopen the root to recover.
    #[error("bug: the engine thread panicked: {message}")]
    EnginePanicked {
        /// What the panic said.
        message: String,
    },
}

/// Why a root directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootProblem {
    /// The meta file is not one cairn wrote, or its checksum fails.
    #[error("its meta file is unreadable or damaged")]
    BadMeta,
    /// The meta file has a format version this build does not read.
    #[error("it has format version {0}, this build reads version 1")]
    Version(u16),
}

/// What is wrong with a checkpoint file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointProblem {
    /// It does not start with the checkpoint magic.
    #[error("bad magic")]
    Magic,
    /// Its format version is unknown.
    #[error("unknown version {0}")]
    Version(u16),
    /// Its checksum fails.
    #[error("checksum mismatch")]
    Checksum,
    /// Header bytes that must be zero are not.
    #[error("reserved header bytes are not zero")]
    Reserved,
    /// It belongs to another store.
    #[error("it belongs to store {found:032x}, not {expected:032x}")]
    Store {
        /// The root's store id.
        expected: u128,
        /// The checkpoint's.
        found: u128,
    },
    /// It is shorter than its header says.
    #[error("truncated at {len} bytes")]
    Truncated {
        /// Its length.
        len: usize,
    },
    /// The state in it does not decode.
    #[error("state does not decode: {0}")]
    Decode(postcard::Error),
}

/// What is wrong with a journal record's payload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordProblem {
    /// The payload is empty.
    #[error("empty payload")]
    Empty,
    /// The payload's version byte is unknown.
    #[error("unknown record version {0}")]
    Version(u8),
    /// The record does not decode.
    #[error("{0}")]
    Decode(postcard::Error),
}

/// Which sequence a journal record breaks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SequenceProblem {
    /// Its transaction id does not follow the last one.
    #[error("{found} does not come after {last}")]
    TxId {
        /// The last transaction id replayed.
        last: TxId,
        /// The record's.
        found: TxId,
    },
    /// The snapshot id it assigns is not the next one.
    #[error("snapshot id {found} given, {expected} expected")]
    SnapshotId {
        /// The next snapshot id.
        expected: u64,
        /// The record's.
        found: u64,
    },
}

impl EngineError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> EngineError {
        let path = path.into();
        move |source| EngineError::Io { op, path, source }
    }

    /// The row of the recovery table (docs/recovery.md) whose refusal this is, if it is one.
    pub fn recovery_row(&self) -> Option<super::Row> {
        use super::Row;
        Some(match self {
            EngineError::Locked { .. } => Row::R5,
            EngineError::DriverMismatch { .. } => Row::R6,
            EngineError::NotARoot { .. } => Row::R7,
            EngineError::LogGap { .. } => Row::R9,
            EngineError::BadCheckpoint { .. } => Row::R10,
            EngineError::BadRecord { .. } => Row::R11,
            EngineError::Sequence { .. } => Row::R12,
            EngineError::Replay { .. } => Row::R13,
            EngineError::Wal(
                WalError::Corrupt { .. }
                | WalError::MissingSegment { .. }
                | WalError::MisnamedSegment { .. }
                | WalError::ForeignSegment { .. }
                | WalError::BadHeader { .. }
                | WalError::UnknownVersion { .. }
                | WalError::SegmentTooLarge { .. },
            ) => Row::R36,
            _ => return None,
        })
    }

    /// For the CLI's exit status and containerd's error classes.
    pub fn is_not_found(&self) -> bool {
        matches!(self, EngineError::State(StateError::NotFound { .. }))
    }
}
