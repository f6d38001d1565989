//! Inline creations on btrfs (docs/drivers.md, "Batched syncs"): every prepare and view is a
//! subvolume snapshot (or an empty subvolume), constant time whatever the parent's size, so the
//! engine makes it on its own thread straight in `snapshots/<id>`, without staging, install or
//! marker fsyncs, and journals its completion in the same append as its beginning.
//!
//! Why this is cheap and still durable: a btrfs snapshot is made inside a transaction commit
//! that the ioctl waits for, and a transaction commit is atomic: everything in the running
//! transaction is on disk with it or none is. So `mkdir snapshots/<id>`, the marker (written
//! back into the transaction first) and the snapshot become durable together, by the one
//! commit the snapshot costs anyway. The batch's shared syncfs then finds nothing left to
//! commit (it is a no-op unless something is still dirty, e.g. an empty subvolume's creation,
//! which it commits) and keeps the shared-sync error rule of every inline creation.

use super::subvol;
use super::BtrfsDriver;
use crate::batch::NewTree;
use crate::error::DriverError;
use crate::layout::TREE;
use crate::marker::MARKER_NAME;
use cairn_state::types::Kind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes back `dir/txid`'s data (and waits), when the marker is a file, without an fsync:
/// btrfs puts a marker this small inline in the file system tree as it writes it back, so it
/// joins the running transaction,
/// which the snapshot that follows commits. No flush of the device, no log-tree commit. (Were
/// it not inline, the batch's syncfs afterwards writes it back and commits it.) An error is the
/// creation's: its tree is removed and nothing is retried over the page.
fn write_back_marker(dir: &Path) -> Result<(), DriverError> {
    let path = dir.join(MARKER_NAME);
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(f) => f,
        // The marker is the directory's xattr (btrfs keeps user xattrs): metadata, already in
        // the running transaction, with nothing to write back.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(DriverError::io("open", &path, e)),
    };
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: sync_file_range on a descriptor we own; no memory is passed.
    let r = unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, flags) };
    if r != 0 {
        return Err(DriverError::SyncFailed {
            op: "sync_file_range",
            path,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

impl BtrfsDriver {
    /// The tree of one inline creation, `snapshots/<id>/fs`: a snapshot of the parent's tree
    /// (read-only for a View), or an empty subvolume (mode 0755; read-only for a View).
    fn make_inline_tree(&self, item: &NewTree, tree: &Path) -> Result<(), DriverError> {
        let Some(dir) = tree.parent() else {
            return Err(DriverError::io(
                "btrfs inline tree",
                tree,
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ));
        };
        let read_only = item.kind == Kind::View;
        match item.parent {
            Some(parent) => {
                let parent_tree = self.layout.require_installed(parent)?.join(TREE);
                write_back_marker(dir)?;
                // Invariant: snapshots/<id>, its marker and the snapshot are durable together
                // when the ioctl returns (it waits for the transaction commit that makes the
                // snapshot), before the engine journals the creation complete.
                subvol::snapshot(&parent_tree, dir, TREE, read_only)?;
            }
            None => {
                subvol::create(dir, TREE)?;
                super::set_tree_root_mode(tree)?;
                if read_only {
                    subvol::set_read_only(tree, true)?;
                }
                // Not yet durable: the batch's syncfs commits the transaction (a btrfs syncfs
                // writes back and commits), before the creation is journaled.
            }
        }
        fail::fail_point!("driver::btrfs::stage::after_subvolume");
        Ok(())
    }

    pub(super) fn create_inline(&self, items: &[NewTree]) -> Vec<Result<(), DriverError>> {
        self.layout.create_many_with(
            items,
            |_| false,
            |item, tree| self.make_inline_tree(item, tree),
        )
    }
}
