//! What applying a record asks the engine to do on disk, in order. Each effect says everything
//! the engine needs to run it: the engine keeps no tables of its own about a transaction.

use crate::types::{Kind, SnapshotId, TxId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Build the tree of a new snapshot in staging (heavy: runs on a worker), then journal
    /// `Complete` (`CompleteImport` for an import) or `Abort`.
    Stage { txid: TxId, stage: Stage },
    /// Make a snapshot's tree durable before its commit completes (heavy: a worker).
    Seal { txid: TxId, id: SnapshotId },
    /// Move a staged tree into place (idempotent).
    Install { txid: TxId, id: SnapshotId },
    /// Drop what a transaction staged (idempotent).
    Discard { txid: TxId },
    /// Delete a snapshot's tree (idempotent).
    Delete { id: SnapshotId },
    /// Mount snapshot `key` on `target` (the first reference), then journal `Complete` or
    /// `Abort` of `txid`.
    Mount {
        txid: TxId,
        key: String,
        target: String,
    },
    /// Unmount `target` (its last reference was released), then journal `Complete` or
    /// `Abort` of `txid`.
    Unmount { txid: TxId, target: String },
}

/// What a staged tree is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// An Active or View snapshot without a parent: an empty tree.
    Empty { kind: Kind },
    /// An Active or View snapshot on committed `parent`: the driver's copy of it (vfs) or an
    /// empty upper directory over it (overlay).
    OnParent { kind: Kind, parent: SnapshotId },
    /// A container's init snapshot on its layer: an Active tree on `parent` with placeholder
    /// hostname, hosts and resolv.conf files, made durable before it completes.
    ContainerInit { parent: SnapshotId },
    /// A layer import onto layer `parent`: the engine extracts the caller's tar into an Active
    /// tree and makes it durable, then journals `CompleteImport` with the layer's digests.
    Import { parent: Option<SnapshotId> },
}

impl Stage {
    /// The kind of tree the driver stages and the parent it stages it on.
    pub fn tree(&self) -> (Kind, Option<SnapshotId>) {
        match *self {
            Stage::Empty { kind } => (kind, None),
            Stage::OnParent { kind, parent } => (kind, Some(parent)),
            Stage::ContainerInit { parent } => (Kind::Active, Some(parent)),
            Stage::Import { parent } => (Kind::Active, parent),
        }
    }
}
