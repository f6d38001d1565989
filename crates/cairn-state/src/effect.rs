//! What applying a record asks the engine to do on disk, in order.

use crate::types::{Kind, SnapshotId, TxId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Build the tree of a new snapshot in staging (heavy: runs on a worker), then journal
    /// `Complete` or `Abort`.
    Stage {
        txid: TxId,
        kind: Kind,
        parent: Option<SnapshotId>,
    },
    /// Make a snapshot's tree durable before its commit completes (heavy: a worker).
    Seal { txid: TxId, id: SnapshotId },
    /// Move a staged tree into place (idempotent).
    Install { txid: TxId, id: SnapshotId },
    /// Drop what a transaction staged (idempotent).
    Discard { txid: TxId },
    /// Delete a snapshot's tree (idempotent).
    Delete { id: SnapshotId },
}
