//! What the engine journals: one record per accepted step, each with its transaction id.
//!
//! Times and ids are chosen by the engine before journaling and travel in the record, so
//! applying a record is the same computation at run time and at replay.

use crate::types::{Kind, SnapshotId, TxId, Usage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub txid: TxId,
    pub op: Op,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Begin creating an Active or View snapshot. Its tree is built in staging; the key is
    /// reserved until `Complete` (the snapshot exists) or `Abort` (it never did).
    BeginCreate {
        key: String,
        parent: Option<String>,
        kind: Kind,
        id: SnapshotId,
        labels: Labels,
        time_ns: i64,
    },
    /// Begin committing Active `key` as `name`: its tree is made durable before `Complete`.
    BeginCommit {
        key: String,
        name: String,
        labels: Labels,
        time_ns: i64,
    },
    /// The heavy part of transaction `of` is durable on disk. `usage` is the committed tree's,
    /// `digest` its tree digest (`driver::tree_digest`, docs/engine-format.md), both for a commit
    /// only.
    Complete {
        of: TxId,
        usage: Option<Usage>,
        digest: Option<String>,
    },
    /// Transaction `of` is abandoned; whatever it staged is discarded.
    Abort {
        of: TxId,
    },
    Remove {
        key: String,
    },
    /// Replace the labels of `key` (the engine resolves field paths before journaling).
    Update {
        key: String,
        labels: Labels,
        time_ns: i64,
    },
    /// Begin importing a layer tar onto `parent` (a layer's ChainID): extracted in staging,
    /// completed by `CompleteImport` once its content is durable. `pin`: the user holds it.
    BeginImport {
        id: SnapshotId,
        parent: Option<String>,
        pin: bool,
        time_ns: i64,
    },
    /// The layer of import `of` is durable in staging. Its snapshot is named by its ChainID.
    CompleteImport {
        of: TxId,
        diff_id: String,
        chain_id: String,
        size_bytes: u64,
        usage: Usage,
    },
    /// Release the user's hold on a layer; it and every ancestor left unreferenced are deleted.
    RemoveLayer {
        chain_id: String,
    },
    /// Record an image: `name` holds its top layer (and through it the whole chain).
    PutImage {
        name: String,
        top: String,
        manifest_digest: String,
        config_digest: String,
        time_ns: i64,
    },
    RemoveImage {
        name: String,
    },
    /// Delete every layer nothing holds (left by an image load a crash interrupted).
    CollectLayers,
    /// Create container `name` on layer `layer`: stage its init snapshot (id `init_id`).
    BeginContainer {
        name: String,
        layer: String,
        init_id: SnapshotId,
        time_ns: i64,
    },
    RemoveContainer {
        name: String,
    },
    /// Take a reference on a mount of Active or View `key` on `target` (absolute, resolved by
    /// the engine). The first reference begins a transaction: the mount is made, then
    /// `Complete` (or `Abort`); later ones only count.
    Mount {
        key: String,
        target: String,
    },
    /// Release a reference on the mount at `target`; the last one begins a transaction: the
    /// unmount is made, then `Complete` (or `Abort`: the mount and its reference stay).
    Unmount {
        target: String,
    },
    /// Recovery found nothing mounted on counted `target` (a reboot, or an unmount behind
    /// cairn's back): its references are dropped.
    MountGone {
        target: String,
    },
    /// `CompleteImport`, and image `hold` recorded on the new layer in the same record (a
    /// pull's `NAME#partial`): no crash can leave the layer completed but unheld.
    CompleteImportHeld {
        of: TxId,
        diff_id: String,
        chain_id: String,
        size_bytes: u64,
        usage: Usage,
        hold: String,
        time_ns: i64,
    },
    /// Begin importing a layer tar whose parent is named only when it completes: extracted in
    /// a staging area of its own, on a driver whose extraction does not read the parent
    /// (overlay), so the layers of one image extract side by side (docs/parallel-import.md).
    /// Completed by `CompleteDetachedImport`, in chain order.
    BeginDetachedImport {
        id: SnapshotId,
        pin: bool,
        time_ns: i64,
    },
    /// The layer of detached import `of` is durable in staging and goes on `parent` (a layer
    /// now: its own completion came first). Its snapshot is named by its ChainID.
    CompleteDetachedImport {
        of: TxId,
        parent: Option<String>,
        diff_id: String,
        chain_id: String,
        size_bytes: u64,
        usage: Usage,
    },
    /// Keep image `name`'s original config (and, for an image from an OCI source or a
    /// registry, its manifest) byte for byte, so `cairn push` re-sends them (docs/registry.md).
    /// Refused unless the image exists, the config's sha256 is the image's `config_digest`
    /// (the manifest's its `manifest_digest`), its `rootfs.diff_ids` are the image's layers,
    /// and both are within [`crate::limits::MAX_KEPT_CONFIG_BYTES`] and
    /// [`crate::limits::MAX_KEPT_MANIFEST_BYTES`].
    PutImageConfig {
        name: String,
        config: Vec<u8>,
        manifest: Option<Vec<u8>>,
    },
    /// `PutImage` and `PutImageConfig` of the same image in one record: an image load or a
    /// pull records its image with the original config (and manifest) kept, so no crash can
    /// leave the image listed without them. Refused, with nothing changed, where either would
    /// be.
    PutImageKept {
        name: String,
        top: String,
        manifest_digest: String,
        config_digest: String,
        time_ns: i64,
        config: Vec<u8>,
        manifest: Option<Vec<u8>>,
    },
}

impl Op {
    /// The snapshot id this op takes, if any. `apply` asserts that it is the state's next id,
    /// so whoever applies records read off disk checks this first (recovery's
    /// `check_sequence`, the journal fuzz target): one list, so a new op that takes an id is
    /// checked everywhere.
    pub fn takes_id(&self) -> Option<SnapshotId> {
        match self {
            Op::BeginCreate { id, .. }
            | Op::BeginImport { id, .. }
            | Op::BeginDetachedImport { id, .. } => Some(*id),
            Op::BeginContainer { init_id, .. } => Some(*init_id),
            _ => None,
        }
    }
}
