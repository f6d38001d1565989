//! The btrfs driver: every snapshot's tree (`fs/`) is its own btrfs subvolume. Prepare and view
//! snapshot the parent's subvolume (constant time, whatever the parent's size); a commit makes
//! the subvolume read-only; removal deletes it whole. The directories around the trees
//! (staging/, snapshots/, trash/, markers) are the shared [`Layout`], so install, remove and
//! recovery move a subvolume with the same single renames as the other drivers' trees.
//!
//! Durability: a subvolume's creation, deletion and read-only flag are root-tree changes that
//! btrfs makes durable only by committing its transaction (fsync's log tree does not carry
//! them). Every step the `Driver` trait promises durable is followed by [`subvol::commit`],
//! or is an ioctl that commits itself (a snapshot is made inside a transaction commit).

mod inline;
mod qgroup;
pub(crate) mod subvol;

use super::error::DriverError;
use super::layout::{Inventory, Layout, TREE};
use super::vfs::bind;
use super::{Driver, WhiteoutStyle};
use cairn_state::types::{DriverKind, Kind, Mount, SnapshotId, TxId, Usage};
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct BtrfsDriver {
    layout: Layout,
    /// A descriptor on the root, through which the btrfs transaction commits are asked for.
    root_fd: File,
}

/// containerd's snapshotters give a new snapshot's root directory mode 0755 (as `Layout` does).
const TREE_ROOT_MODE: u32 = 0o755;

fn set_tree_root_mode(tree: &Path) -> Result<(), DriverError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tree, std::fs::Permissions::from_mode(TREE_ROOT_MODE))
        .map_err(|e| DriverError::io("chmod", tree, e))
}

/// Fails with `NotBtrfs` unless `path` is on btrfs.
fn require_btrfs(path: &Path) -> Result<(), DriverError> {
    let fs_type = subvol::fs_type(path)?;
    if fs_type != nix::sys::statfs::BTRFS_SUPER_MAGIC {
        return Err(DriverError::NotBtrfs {
            path: path.to_path_buf(),
            // The magic is a 32-bit value whatever the width of `f_type`.
            #[allow(clippy::unnecessary_cast)]
            fs_type: fs_type.0 as u64 & 0xffff_ffff,
        });
    }
    Ok(())
}

/// `walked` with its bytes replaced by the subvolume's exclusive bytes where btrfs quotas are
/// enabled and consistent (the inode count is always the walk's: qgroups do not count inodes).
fn with_qgroup_bytes(tree: &Path, walked: Usage) -> Result<Usage, DriverError> {
    Ok(match qgroup::exclusive_bytes(tree)? {
        Some(size_bytes) => Usage {
            size_bytes,
            inodes: walked.inodes,
        },
        None => walked,
    })
}

impl BtrfsDriver {
    /// Opens the driver after checking that the root is on btrfs. A root that does not exist
    /// yet is checked through its nearest existing ancestor, before anything is created: a
    /// refused root is left as it was.
    pub fn open(root: &Path) -> Result<BtrfsDriver, DriverError> {
        let existing = root
            .ancestors()
            .find(|a| !a.as_os_str().is_empty() && std::fs::symlink_metadata(a).is_ok())
            .unwrap_or(Path::new("."));
        require_btrfs(existing)?;
        let layout = Layout::open(root)?;
        // A mount point on the way down (e.g. a tmpfs inside the btrfs) is caught here.
        require_btrfs(root)?;
        let root_fd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(root)
            .map_err(|e| DriverError::io("open", root, e))?;
        Ok(BtrfsDriver { layout, root_fd })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Commits the btrfs transaction: see the module comment.
    fn commit(&self) -> Result<(), DriverError> {
        subvol::commit(&self.root_fd, self.layout.root())
    }
}

impl Driver for BtrfsDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Btrfs
    }

    fn stage(&self, txid: TxId, kind: Kind, parent: Option<SnapshotId>) -> Result<(), DriverError> {
        let parent_tree = match parent {
            Some(parent) => Some(self.layout.require_installed(parent)?.join(TREE)),
            None => None,
        };
        let dir = self.layout.begin_stage(txid)?;
        // A View is read-only from its creation; an Active is written through its mounts (and
        // by a layer import or a container's init files while staged).
        let read_only = kind == Kind::View;
        match parent_tree {
            Some(parent_tree) => {
                fail::fail_point!("driver::stage::before_copy");
                // Invariant: the snapshot is on disk before the marker and the staging entry say
                // the stage is complete. btrfs makes a snapshot inside a transaction commit that
                // the ioctl waits for (its "pending snapshot"), so it is durable on return, and
                // so is the mkdir of staging/<txid> before it: no commit of our own is needed.
                subvol::snapshot(&parent_tree, &dir, TREE, read_only)?;
                fail::fail_point!("driver::btrfs::stage::after_subvolume");
            }
            None => {
                subvol::create(&dir, TREE)?;
                let tree = dir.join(TREE);
                set_tree_root_mode(&tree)?;
                if read_only {
                    subvol::set_read_only(&tree, true)?;
                }
                fail::fail_point!("driver::btrfs::stage::after_subvolume");
                // Invariant: the new subvolume (its root-tree entry, mode and flags) is on disk
                // before the marker and the staging entry say the stage is complete (a subvolume
                // create, unlike a snapshot, does not wait for a commit).
                self.commit()?;
            }
        }
        fail::fail_point!("driver::stage::after_sync");
        self.layout.finish_stage(txid)
    }

    fn creates_inline(&self, kind: Kind, _parent: Option<SnapshotId>) -> bool {
        // Every prepare and view is a snapshot or an empty subvolume: constant time, made on
        // the engine thread in snapshots/<id> (btrfs/inline.rs). A layer import's and a
        // container's trees are written into while staged, and keep `stage`.
        matches!(kind, Kind::Active | Kind::View)
    }

    fn create_many(&self, items: &[super::NewTree]) -> Vec<Result<(), DriverError>> {
        self.create_inline(items)
    }

    fn staged_tree(&self, txid: TxId) -> PathBuf {
        self.layout.staged_tree(txid)
    }

    fn sync_staged(&self, txid: TxId) -> Result<(), DriverError> {
        // The files written into the subvolume are ordinary files: the shared per-file fsync or
        // syncfs (a btrfs syncfs also commits the transaction) makes them durable.
        self.layout.sync_staged(txid)
    }

    fn install(&self, txid: TxId, id: SnapshotId) -> Result<(), DriverError> {
        self.install_many(&[(txid, id)])
    }

    fn install_many(&self, items: &[(TxId, SnapshotId)]) -> Result<(), DriverError> {
        // The renamed directories are plain directories (each names a subvolume, committed when
        // it was staged): the layout's fsyncs of snapshots/ and staging/ make the renames
        // durable, btrfs committing the whole transaction itself where its log cannot express
        // a change. No commit of our own on the engine thread.
        self.layout.install_many(items)
    }

    fn discard(&self, txid: TxId) -> Result<(), DriverError> {
        // The subvolume is destroyed in one step by remove_tree; a crash before the next
        // transaction commit brings it back inside staging/<txid>, which recovery discards
        // again (nothing names it).
        self.layout.discard(txid)
    }

    fn seal(&self, id: SnapshotId, txid: TxId) -> Result<Usage, DriverError> {
        let tree = self.layout.require_installed(id)?.join(TREE);
        // Read-only first: nothing written through a mount still open can change the tree
        // between its sync and the commit's acknowledgement. If the commit is then not
        // journaled (recovery row R17 aborts it), the snapshot stays Active and `mounts` makes
        // it writable again.
        subvol::set_read_only(&tree, true)?;
        fail::fail_point!("driver::btrfs::seal::after_read_only");
        let usage = self.layout.seal(id, txid)?;
        // Invariant: the read-only flag is durable before the commit is journaled complete:
        // a committed snapshot is a read-only subvolume after any crash.
        self.commit()?;
        fail::fail_point!("driver::btrfs::seal::after_commit");
        // After the commit, so the qgroup counts this tree's last writes.
        with_qgroup_bytes(&tree, usage)
    }

    fn usage(&self, id: SnapshotId) -> Result<Usage, DriverError> {
        let usage = self.layout.usage(id)?;
        with_qgroup_bytes(&self.layout.tree(id), usage)
    }

    fn mounts(
        &self,
        id: SnapshotId,
        kind: Kind,
        _parents: &[SnapshotId],
    ) -> Result<Vec<Mount>, DriverError> {
        let own = self.layout.require_installed(id)?.join(TREE);
        Ok(vec![match kind {
            Kind::Active => {
                // An Active is read-only only after a seal whose commit was never journaled
                // (aborted by recovery, or failed): it is the user's writable tree again. No
                // commit needed: a crash that loses the change loses nothing written.
                subvol::set_read_only(&own, false)?;
                bind(own, false)
            }
            Kind::View | Kind::Committed => bind(own, true),
        }])
    }

    fn remove(&self, id: SnapshotId) -> Result<(), DriverError> {
        // rename into trash/ with its directory fsyncs, then the subvolume destroyed in one step
        // (remove_tree): a crash leaves it wholly in snapshots/ or trash/, never half-deleted.
        self.layout.remove(id)?;
        // Invariant: the move out of snapshots/ and the deletion are durable before remove
        // returns (the directory fsyncs do not carry subvolume links).
        self.commit()?;
        fail::fail_point!("driver::btrfs::remove::after_commit");
        Ok(())
    }

    fn purge_trash(&self) -> Result<(), DriverError> {
        // No commit: anything that reappears after a crash is still only trash.
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
        // Every tree is a full tree (as vfs's): a layer's whiteouts are applied by deleting.
        WhiteoutStyle::Delete
    }
}
