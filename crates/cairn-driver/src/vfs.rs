//! The vfs driver: every snapshot is a full copy of its parent. Slow to stage, works anywhere.

use super::copy::copy_tree_watched;
use super::error::DriverError;
use super::layout::{Inventory, Layout, TREE};
use super::sync::{fsync_dir, SyncMode};
use super::{Driver, WhiteoutStyle};
use cairn_state::types::{DriverKind, Kind, Mount, SnapshotId, TxId, Usage};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct VfsDriver {
    layout: Layout,
}

pub(crate) fn bind(source: PathBuf, read_only: bool) -> Mount {
    Mount {
        kind: "bind".to_string(),
        source,
        options: vec![
            "rbind".to_string(),
            if read_only { "ro" } else { "rw" }.to_string(),
        ],
    }
}

impl VfsDriver {
    pub fn open(root: &Path) -> Result<VfsDriver, DriverError> {
        Ok(VfsDriver {
            layout: Layout::open(root)?,
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }
}

impl Driver for VfsDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Vfs
    }

    fn stage(&self, txid: TxId, kind: Kind, parent: Option<SnapshotId>) -> Result<(), DriverError> {
        // Checked for every kind: a View binds its parent at mount time, so a missing parent
        // is a caller bug best reported now.
        let parent_dir = match parent {
            Some(parent) => Some(self.layout.require_installed(parent)?),
            None => None,
        };
        let dir = self.layout.begin_stage(txid)?;
        let tree = dir.join(TREE);
        match (kind, parent_dir) {
            (Kind::Active, Some(parent_dir)) => {
                fail::fail_point!("driver::stage::before_copy");
                // Invariant: the copied tree is on disk before the marker and the staging
                // entry say the stage is complete (copy_tree syncs what it copies).
                copy_tree_watched(
                    &parent_dir.join(TREE),
                    &tree,
                    SyncMode::Auto,
                    self.layout.watch(),
                    self.layout.stage_since(txid),
                )?;
                fail::fail_point!("driver::stage::after_copy");
            }
            _ => {
                super::layout::create_tree_root(&tree)?;
                // Invariant: the empty tree exists after a crash once stage returns (its
                // entry in staging/<txid> is synced by finish_stage).
                fsync_dir(&tree)?;
            }
        }
        fail::fail_point!("driver::stage::after_sync");
        self.layout.finish_stage(txid)
    }

    fn creates_inline(&self, kind: Kind, parent: Option<SnapshotId>) -> bool {
        // A vfs Active on a parent is a copy of it: a worker's job.
        !(kind == Kind::Active && parent.is_some())
    }

    fn create_many(&self, items: &[super::NewTree]) -> Vec<Result<(), DriverError>> {
        self.layout.create_many(items, |_| false)
    }

    fn seals_inline(&self) -> bool {
        true
    }

    fn set_durable_step(&self, step: super::DurableStep) {
        self.layout.set_durable_step(step);
    }

    fn durable_many(
        &self,
        items: &[super::NewTree],
        seals: &[(SnapshotId, TxId)],
    ) -> (Vec<Result<(), DriverError>>, Vec<super::SealedInline>) {
        self.layout.durable_many(items, seals, |_| false)
    }

    fn seal_many(&self, items: &[(SnapshotId, TxId)]) -> Vec<Result<Usage, DriverError>> {
        self.layout.seal_many(items)
    }

    fn staged_tree(&self, txid: TxId) -> PathBuf {
        self.layout.staged_tree(txid)
    }

    fn sync_staged(&self, txid: TxId) -> Result<(), DriverError> {
        self.layout.sync_staged(txid)
    }

    fn install(&self, txid: TxId, id: SnapshotId) -> Result<(), DriverError> {
        self.layout.install(txid, id)
    }

    fn install_many(&self, items: &[(TxId, SnapshotId)]) -> Result<(), DriverError> {
        self.layout.install_many(items)
    }

    fn discard(&self, txid: TxId) -> Result<(), DriverError> {
        self.layout.discard(txid)
    }

    fn seal(&self, id: SnapshotId, txid: TxId) -> Result<Usage, DriverError> {
        self.layout.seal(id, txid)
    }

    fn usage(&self, id: SnapshotId) -> Result<Usage, DriverError> {
        self.layout.usage(id)
    }

    fn mounts(
        &self,
        id: SnapshotId,
        kind: Kind,
        parents: &[SnapshotId],
    ) -> Result<Vec<Mount>, DriverError> {
        let own = self.layout.require_installed(id)?.join(TREE);
        Ok(vec![match kind {
            Kind::Active => bind(own, false),
            Kind::View => match parents.first() {
                Some(&parent) => bind(self.layout.tree(parent), true),
                None => bind(own, true),
            },
            Kind::Committed => bind(own, true),
        }])
    }

    fn remove(&self, id: SnapshotId) -> Result<(), DriverError> {
        self.layout.remove(id)
    }

    fn purge_trash(&self) -> Result<(), DriverError> {
        self.layout.purge_trash()
    }

    fn inventory(&self) -> Result<Inventory, DriverError> {
        self.layout.inventory()
    }

    fn inventory_names(&self) -> Result<Inventory, DriverError> {
        self.layout.inventory_names()
    }

    fn tree(&self, id: SnapshotId) -> PathBuf {
        self.layout.tree(id)
    }

    fn whiteout_style(&self) -> WhiteoutStyle {
        WhiteoutStyle::Delete
    }
}
