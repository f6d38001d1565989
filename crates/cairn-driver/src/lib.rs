//! Drivers: the on-disk trees behind snapshots, and the mounts that expose them.
//!
//! A driver owns three directories under the cairn root (see docs/drivers.md):
//! `staging/<txid>/` (being built), `snapshots/<id>/` (installed), `trash/<id>/` (being
//! deleted). Every step that moves a tree between them is a single rename followed by the
//! directory fsyncs that make it durable, so after a crash each tree is wholly in one place
//! and `inventory` tells recovery which.
//!
//! The engine thread calls only the cheap operations (install, discard, mounts, inventory);
//! `stage`, `sync_staged`, `seal` and `remove` may walk whole trees and belong on workers.

mod batch;
mod block;
mod block_options;
mod btrfs;
mod copy;
mod digest;
mod error;
mod layout;
pub mod loopdev;
pub mod marker;
pub mod mount;
pub mod mountinfo;
mod overlay;
mod probe;
mod remove;
pub mod scratch;
mod step;
mod sync;
mod vfs;
mod view;
mod walk;

pub use batch::{NewTree, SealedInline, INLINE_SEAL_MAX_BYTES, INLINE_SEAL_MAX_INODES};
pub use block::BlockDriver;
pub use block_options::{parse_size, BlockFs, BlockOptions, DEFAULT_IMAGE_SIZE_BYTES};
pub use btrfs::BtrfsDriver;
pub use copy::{copy_tree, CopyStats};
pub use digest::tree_digest;
pub use error::{DriverError, MarkerFault};
pub use layout::{Inventory, Layout, SYNC_FAILED};
pub use overlay::OverlayDriver;
pub use step::DurableStep;
#[cfg(feature = "failpoints")]
pub use sync::hook;
pub use sync::{create_dir_all_durable, fsync_open, sync_tree, SyncMode};
pub use vfs::VfsDriver;
pub use view::TreeView;

use cairn_state::types::{DriverKind, Kind, Mount, SnapshotId, TxId, Usage};
use std::path::{Path, PathBuf};

/// How a layer's whiteouts are written into a driver's trees (the layer library's type).
pub use cairn_layer::WhiteoutStyle;

pub trait Driver: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> DriverKind;
    /// Build a new snapshot's tree in staging/<txid> (remove any leftover staging/<txid> first).
    /// Active with parent: vfs copies the parent's fs tree; overlay makes empty fs/ + work/.
    /// Active without parent, or View: empty fs/ (a vfs View's mounts bind the parent read-only,
    /// nothing is copied). Writes the marker = txid. Everything staged is durable when this returns.
    /// Heavy: called on a worker thread, never on the engine thread.
    fn stage(&self, txid: TxId, kind: Kind, parent: Option<SnapshotId>) -> Result<(), DriverError>;
    /// True when staging `kind` on `parent` copies nothing (an empty tree, an overlay upper, a
    /// view): the engine then makes the tree with `create_many` on its own thread, in the batch
    /// that begins it, instead of a worker's `stage`.
    fn creates_inline(&self, kind: Kind, parent: Option<SnapshotId>) -> bool {
        let _ = (kind, parent);
        false
    }
    /// The trees of several such creations made straight in snapshots/<id> (no staging, no
    /// install), all durable after one shared sync when this returns Ok for them; a failed
    /// item's tree is removed. Nothing is journaled: the caller journals their completions
    /// after this returns (docs/drivers.md, "Batched syncs").
    fn create_many(&self, items: &[NewTree]) -> Vec<Result<(), DriverError>> {
        // Called only for what `creates_inline` accepts, which by default is nothing.
        items
            .iter()
            .map(|item| {
                Err(DriverError::Io {
                    op: "create inline",
                    path: self.tree(item.id),
                    source: std::io::Error::from(std::io::ErrorKind::Unsupported),
                })
            })
            .collect()
    }
    /// How `durable_many` makes its steps durable from now on (drivers whose steps have one
    /// way only ignore it).
    fn set_durable_step(&self, _step: DurableStep) {}
    /// True when a commit's seal may be made on the engine thread by `durable_many`, in the
    /// batch that begins the commit (a tree too big for it is left to a worker's `seal_many`).
    fn seals_inline(&self) -> bool {
        false
    }
    /// The durable step of one engine batch: the inline creations (as `create_many`) and the
    /// seals of small commits' trees, all made durable by shared syncs; each seal's usage and
    /// digest, or `None` for a tree too big to seal here. A seal here keeps the snapshot's
    /// marker (its creation's txid). Nothing is journaled: the caller journals the completions
    /// after this returns (docs/drivers.md, "Batched syncs").
    fn durable_many(
        &self,
        items: &[NewTree],
        seals: &[(SnapshotId, TxId)],
    ) -> (Vec<Result<(), DriverError>>, Vec<SealedInline>) {
        (
            self.create_many(items),
            seals.iter().map(|_| None).collect(),
        )
    }
    /// `seal` of several snapshots with their syncs shared (two syncfs for the batch); a
    /// failed shared sync fails and taints every snapshot it covered.
    fn seal_many(&self, items: &[(SnapshotId, TxId)]) -> Vec<Result<Usage, DriverError>> {
        items
            .iter()
            .map(|&(id, txid)| self.seal(id, txid))
            .collect()
    }
    /// True when extracting a layer never reads its parent's tree (overlay: the diff goes into
    /// the layer's own directory, whiteouts as overlay whiteouts), so a layer can be extracted
    /// before its parent is a layer: the engine's detached imports (docs/parallel-import.md).
    /// vfs, btrfs and block copy or clone the parent first, so they cannot.
    fn extracts_without_parent(&self) -> bool {
        false
    }
    /// The directory a layer import extracts into for a staged snapshot: staging/<txid>/fs.
    fn staged_tree(&self, txid: TxId) -> PathBuf;
    /// Make staging/<txid>/fs durable after someone (layer import) wrote into it.
    fn sync_staged(&self, txid: TxId) -> Result<(), DriverError>;
    /// rename(staging/<txid>, snapshots/<id>) then fsync(snapshots/). Idempotent: if staging/<txid>
    /// is gone and snapshots/<id> exists, Ok(()). Error if neither exists.
    fn install(&self, txid: TxId, id: SnapshotId) -> Result<(), DriverError>;
    /// `install` of each (txid, id) in order, with the directory fsyncs done once for all: the
    /// engine thread installs every completion of a journal batch at once.
    fn install_many(&self, items: &[(TxId, SnapshotId)]) -> Result<(), DriverError> {
        items
            .iter()
            .try_for_each(|&(txid, id)| self.install(txid, id))
    }
    /// Remove staging/<txid> if present (idempotent), fsync staging/.
    fn discard(&self, txid: TxId) -> Result<(), DriverError>;
    /// Before a commit is journaled as complete: make every file and directory of snapshot id's own
    /// tree durable, rewrite its marker with `txid`, return its usage (bytes of its own tree: sum of
    /// regular-file sizes counting each hardlinked inode once; inodes = number of inodes).
    fn seal(&self, id: SnapshotId, txid: TxId) -> Result<Usage, DriverError>;
    fn usage(&self, id: SnapshotId) -> Result<Usage, DriverError>;
    /// Mounts as data (containerd shape). `parents` = committed ancestors, nearest first.
    /// vfs: Active -> [bind rw of fs]; View -> [bind ro of parents[0]'s fs] (or its own empty fs if
    /// no parent); Committed -> [bind ro of fs].
    /// overlay: Active no parent -> bind rw fs; Active with parents -> overlay lowerdir=p0/fs:p1/fs…,
    /// upperdir, workdir; View with one parent -> bind ro of parent fs; View with >=2 parents ->
    /// overlay with lowerdir only (ro); Committed -> bind ro of fs.
    fn mounts(
        &self,
        id: SnapshotId,
        kind: Kind,
        parents: &[SnapshotId],
    ) -> Result<Vec<Mount>, DriverError>;
    /// rename(snapshots/<id>, trash/<id>) + fsync both dirs, then delete trash/<id>. Idempotent.
    fn remove(&self, id: SnapshotId) -> Result<(), DriverError>;
    /// Delete everything under trash/ (recovery calls this).
    fn purge_trash(&self) -> Result<(), DriverError>;
    /// What is on disk, for recovery and fsck: installed ids with their marker txid (None if the
    /// marker is missing or unreadable), staging txids, trash ids, and any unexpected names.
    fn inventory(&self) -> Result<Inventory, DriverError>;
    /// `inventory` without the markers (each `installed` value `None`): what recovery needs,
    /// without a file read per snapshot.
    fn inventory_names(&self) -> Result<Inventory, DriverError> {
        self.inventory()
    }
    /// The snapshot's own tree (vfs: full tree; overlay: its diff/upper dir).
    fn tree(&self, id: SnapshotId) -> PathBuf;
    /// How a layer's whiteouts must be written into this driver's trees.
    fn whiteout_style(&self) -> WhiteoutStyle;
    /// Makes `staged_tree(txid)` a writable directory before a worker writes into it (layer
    /// import, init files). block: loop-mounts the staged image there, undone by `sync_staged`
    /// or `discard`; the other drivers' trees are directories already.
    fn attach_staged(&self, _txid: TxId) -> Result<(), DriverError> {
        Ok(())
    }
    /// Snapshot id's own tree as a readable directory while the view lives (digest, export,
    /// diff, verify). block: a private read-only loop mount of its image.
    fn open_tree(&self, id: SnapshotId) -> Result<TreeView, DriverError> {
        Ok(TreeView::dir(self.tree(id)))
    }
}

/// Opens (creating if needed) the driver directories under `root`. The overlay driver probes
/// overlay support first and fails with `DriverError::OverlayUnsupported` when it cannot mount.
pub fn open_driver(kind: DriverKind, root: &Path) -> Result<Box<dyn Driver>, DriverError> {
    open_driver_with(kind, root, None)
}

/// `open_driver`, with the block driver's options for a new root (`None`: the default, with
/// `CAIRN_BLOCK_SIZE_BYTES`). Given for an existing block root, they must be the ones its
/// base image records (`BlockOptionsMismatch`).
pub fn open_driver_with(
    kind: DriverKind,
    root: &Path,
    block: Option<BlockOptions>,
) -> Result<Box<dyn Driver>, DriverError> {
    Ok(match kind {
        DriverKind::Vfs => Box::new(VfsDriver::open(root)?),
        DriverKind::Overlay => Box::new(OverlayDriver::open(root)?),
        DriverKind::Block => Box::new(match block {
            Some(options) => BlockDriver::open_with(root, options, true)?,
            None => BlockDriver::open(root, BlockOptions::from_env()?)?,
        }),
        DriverKind::Btrfs => Box::new(BtrfsDriver::open(root)?),
    })
}
