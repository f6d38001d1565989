//! A snapshot's tree as a readable directory for as long as it is needed.

use std::path::{Path, PathBuf};

/// What `Driver::open_tree` returns: `path()` is the snapshot's own tree while this lives.
/// For the block driver that is a private read-only loop mount, undone on drop.
#[derive(Debug)]
pub struct TreeView {
    path: PathBuf,
    mounted: bool,
}

impl TreeView {
    /// A tree that is a directory already (vfs, overlay): nothing to undo.
    pub fn dir(path: PathBuf) -> TreeView {
        TreeView {
            path,
            mounted: false,
        }
    }

    /// A mount made for this view at `path`: unmounted and its directory removed on drop.
    pub(crate) fn mounted(path: PathBuf) -> TreeView {
        TreeView {
            path,
            mounted: true,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TreeView {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        // The loop device detaches itself once this unmount drops its last user. A failure
        // leaves a read-only mount under the driver's scratch directory, which the next open
        // of the driver unmounts (nothing durable depends on it).
        if let Err(e) = super::mount::unmount(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "unmounting a tree view failed");
            return;
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}
