//! The engine's one error type.

use cairn_state::types::{SnapshotId, TxId};
use cairn_state::StateError;
use cairn_wal::{Lsn, WalError};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The command was refused by the state machine; nothing was written.
    #[error(transparent)]
    State(#[from] StateError),
    #[error("write-ahead log: {0}")]
    Wal(#[from] WalError),
    #[error("driver: {0}")]
    Driver(#[from] cairn_driver::DriverError),
    #[error("layer: {0}")]
    Layer(#[from] cairn_layer::LayerError),
    #[error("layer has DiffID {found}, the image says {expected}")]
    DiffIdMismatch { expected: String, found: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("root {root} is locked by pid {pid}")]
    Locked { root: PathBuf, pid: String },
    #[error("root {root} was created with the {recorded} driver, not {requested}")]
    DriverMismatch {
        root: PathBuf,
        recorded: &'static str,
        requested: &'static str,
    },
    #[error("{path} is not a cairn root: {reason}")]
    NotARoot { path: PathBuf, reason: RootProblem },
    #[error("checkpoint {path} is damaged: {reason}")]
    BadCheckpoint {
        path: PathBuf,
        reason: CheckpointProblem,
    },
    #[error("journal record at LSN {lsn} cannot be decoded: {reason}")]
    BadRecord { lsn: Lsn, reason: RecordProblem },
    #[error("journal record at LSN {lsn} ({txid}) does not follow from the state: {source}")]
    Replay {
        lsn: Lsn,
        txid: TxId,
        #[source]
        source: StateError,
    },
    #[error("journal record at LSN {lsn} breaks the transaction sequence: {reason}")]
    Sequence { lsn: Lsn, reason: SequenceProblem },
    #[error("the log starts at LSN {wal_first} but the checkpoint covers only up to {checkpoint}: records are missing")]
    LogGap { checkpoint: Lsn, wal_first: Lsn },
    #[error("index {path}: {source}")]
    Index {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("snapshot {id} has no tree on disk although its creation is durable")]
    LostTree { id: SnapshotId },
    #[error("the engine stopped after an earlier failure ({cause}); reopen the root to recover")]
    Failed { cause: String },
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
pub enum RootProblem {
    #[error("its meta file is unreadable or damaged")]
    BadMeta,
    #[error("it has format version {0}, this build reads version 1")]
    Version(u16),
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointProblem {
    #[error("bad magic")]
    Magic,
    #[error("unknown version {0}")]
    Version(u16),
    #[error("checksum mismatch")]
    Checksum,
    #[error("reserved header bytes are not zero")]
    Reserved,
    #[error("it belongs to store {found:032x}, not {expected:032x}")]
    Store { expected: u128, found: u128 },
    #[error("truncated at {len} bytes")]
    Truncated { len: usize },
    #[error("state does not decode: {0}")]
    Decode(postcard::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum RecordProblem {
    #[error("empty payload")]
    Empty,
    #[error("unknown record version {0}")]
    Version(u8),
    #[error("{0}")]
    Decode(postcard::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum SequenceProblem {
    #[error("{found} does not come after {last}")]
    TxId { last: TxId, found: TxId },
    #[error("snapshot id {found} given, {expected} expected")]
    SnapshotId { expected: u64, found: u64 },
}

impl EngineError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> EngineError {
        let path = path.into();
        move |source| EngineError::Io { op, path, source }
    }

    /// For the CLI's exit status and containerd's error classes.
    pub fn is_not_found(&self) -> bool {
        matches!(self, EngineError::State(StateError::NotFound { .. }))
    }
}
