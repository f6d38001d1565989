//! The three driver directories and the steps both drivers share: install, discard, remove,
//! purge, seal, usage, inventory. Only staging and mounts differ between vfs and overlay.

use super::error::DriverError;
use super::marker;
use super::remove::remove_tree;
use super::sync::{
    fsync_dir, fsync_open, sync_tree_unmetered_watched, sync_tree_watched, FsWatch, SyncMode,
};
use super::walk;
use cairn_state::types::{SnapshotId, TxId, Usage};
use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

const STAGING: &str = "staging";
const SNAPSHOTS: &str = "snapshots";
const TRASH: &str = "trash";
/// A snapshot's own tree inside its directory.
pub const TREE: &str = "fs";
/// The overlay work dir inside a snapshot directory.
pub const WORK: &str = "work";

/// Written into a snapshot directory when a sync of its tree failed (see `Layout::seal`).
pub const SYNC_FAILED: &str = "sync-failed";

/// containerd's snapshotters give a new snapshot's root directory mode 0755.
const TREE_ROOT_MODE: u32 = 0o755;

/// Creates the root directory of a new, empty tree with mode 0755 whatever the umask.
pub(crate) fn create_tree_root(tree: &Path) -> Result<(), DriverError> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir(tree).map_err(|e| DriverError::io("mkdir", tree, e))?;
    fs::set_permissions(tree, fs::Permissions::from_mode(TREE_ROOT_MODE))
        .map_err(|e| DriverError::io("chmod", tree, e))
}

/// What `inventory` found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Installed snapshots and their marker (None: marker missing, unreadable or corrupt).
    pub installed: BTreeMap<SnapshotId, Option<TxId>>,
    /// Staged transactions, ascending.
    pub staging: Vec<TxId>,
    /// Removed snapshots not yet deleted, ascending.
    pub trash: Vec<SnapshotId>,
    /// Names in the three directories that no driver operation creates (non-decimal names,
    /// non-directories). Recovery reports them; it must not guess what they are.
    pub unexpected: Vec<PathBuf>,
}

/// Paths of one cairn root's driver directories, and the watch on their file system.
#[derive(Debug)]
pub struct Layout {
    root: PathBuf,
    staging: PathBuf,
    snapshots: PathBuf,
    trash: PathBuf,
    /// Every syncfs of the driver goes through it (docs/drivers.md, "Sync errors").
    watch: FsWatch,
    /// The watch's error count when each staged tree's work began, by transaction.
    stage_since: std::sync::Mutex<BTreeMap<TxId, u64>>,
    /// How a batch's durable step is made (per-file fsyncs or one syncfs).
    pub(crate) step: crate::step::StepChooser,
}

pub(crate) fn exists(path: &Path) -> Result<bool, DriverError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(DriverError::io("lstat", path, e)),
    }
}

/// Ids are written as canonical decimal; anything else ("007", "+7", "7.tmp") is not ours.
fn parse_id(name: &std::ffi::OsStr) -> Option<u64> {
    let s = name.to_str()?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

impl Layout {
    /// Creates the three directories if missing and makes their creation durable.
    pub fn open(root: &Path) -> Result<Layout, DriverError> {
        super::sync::create_dir_all_durable(root)?;
        let layout = Layout {
            root: root.to_path_buf(),
            staging: root.join(STAGING),
            snapshots: root.join(SNAPSHOTS),
            trash: root.join(TRASH),
            // Opened before this engine writes anything: it sees every write-back error since.
            watch: FsWatch::open(root)?,
            stage_since: std::sync::Mutex::default(),
            step: crate::step::StepChooser::default(),
        };
        let mut created = false;
        for dir in [&layout.staging, &layout.snapshots, &layout.trash] {
            match fs::create_dir(dir) {
                Ok(()) => created = true,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(DriverError::io("mkdir", dir, e)),
            }
        }
        if created {
            // Invariant: the driver directories exist after a crash once open() has returned,
            // so recovery never mistakes a fresh root for a damaged one.
            fsync_dir(root)?;
        }
        Ok(layout)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn watch(&self) -> &FsWatch {
        &self.watch
    }

    /// How this layout's batches make their durable steps from now on.
    pub fn set_durable_step(&self, step: crate::step::DurableStep) {
        self.step.set_mode(step);
    }

    fn since(&self) -> std::sync::MutexGuard<'_, BTreeMap<TxId, u64>> {
        self.stage_since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The watch's error count when staging/<txid> was begun (0, the count at open, if it was
    /// begun before this driver opened: any error since then is then checked for).
    pub(crate) fn stage_since(&self, txid: TxId) -> u64 {
        self.since().get(&txid).copied().unwrap_or(0)
    }

    pub fn staging_dir(&self, txid: TxId) -> PathBuf {
        self.staging.join(txid.0.to_string())
    }

    pub fn snapshot_dir(&self, id: SnapshotId) -> PathBuf {
        self.snapshots.join(id.0.to_string())
    }

    pub fn snapshots_root(&self) -> &Path {
        &self.snapshots
    }

    pub fn trash_dir(&self, id: SnapshotId) -> PathBuf {
        self.trash.join(id.0.to_string())
    }

    pub fn staged_tree(&self, txid: TxId) -> PathBuf {
        self.staging_dir(txid).join(TREE)
    }

    pub fn tree(&self, id: SnapshotId) -> PathBuf {
        self.snapshot_dir(id).join(TREE)
    }

    /// Removes a leftover staging/<txid> and creates it afresh; returns its path.
    pub(crate) fn begin_stage(&self, txid: TxId) -> Result<PathBuf, DriverError> {
        // Sampled before anything of this stage is written: an error reported after this
        // point may be about this tree's pages.
        let errors = self.watch.errors();
        self.since().insert(txid, errors);
        let dir = self.staging_dir(txid);
        if exists(&dir)? {
            fail::fail_point!("driver::stage::before_clear");
            remove_tree(&dir)?;
            // Invariant: the leftover is gone for good before anything new is written under
            // its name, so a crash cannot mix old and new contents.
            fsync_dir(&self.staging)?;
            fail::fail_point!("driver::stage::after_clear");
        }
        fs::create_dir(&dir).map_err(|e| DriverError::io("mkdir", &dir, e))?;
        fail::fail_point!("driver::stage::after_mkdir");
        Ok(dir)
    }

    /// The last steps of every stage: marker, then the staging entry itself.
    pub(crate) fn finish_stage(&self, txid: TxId) -> Result<(), DriverError> {
        let dir = self.staging_dir(txid);
        // marker::write ends with fsync(staging/<txid>), which also makes the fs/ and work/
        // entries created there durable.
        marker::write(&dir, txid)?;
        fail::fail_point!("driver::stage::after_marker");
        // Invariant: stage() returning means staging/<txid> survives a crash.
        fsync_dir(&self.staging)?;
        fail::fail_point!("driver::stage::after_dir_sync");
        Ok(())
    }

    pub fn sync_staged(&self, txid: TxId) -> Result<(), DriverError> {
        let tree = self.staged_tree(txid);
        if !exists(&tree)? {
            return Err(DriverError::StagingMissing { txid, path: tree });
        }
        fail::fail_point!("driver::sync_staged::before_sync");
        // Invariant: everything a layer import wrote is on disk before install can publish it.
        // A failure here is never retried: the engine aborts the transaction and discards the
        // staging, and a new attempt rebuilds the tree from scratch under a new txid. The usage
        // is not needed here (the importer counted it), so no full walk first.
        sync_tree_unmetered_watched(&tree, &self.watch, self.stage_since(txid))?;
        // Invariant: the entries written beside the tree after the stage (layer.meta) are
        // durable in staging/<txid> before install publishes it: the per-file sync above
        // covers only fs/, and install fsyncs only staging/ and snapshots/.
        fsync_dir(&self.staging_dir(txid))?;
        fail::fail_point!("driver::sync_staged::after_sync");
        Ok(())
    }

    pub fn install(&self, txid: TxId, id: SnapshotId) -> Result<(), DriverError> {
        self.install_many(&[(txid, id)])
    }

    /// `install` of several staged trees with one pair of directory fsyncs for all of them: each
    /// rename is durable once the fsyncs after the last one return.
    pub fn install_many(&self, items: &[(TxId, SnapshotId)]) -> Result<(), DriverError> {
        if items.is_empty() {
            return Ok(());
        }
        for &(txid, id) in items {
            self.install_rename(txid, id)?;
            self.since().remove(&txid);
        }
        // Also on the idempotent path: a previous call may have renamed and then failed before
        // its syncs, and the caller journals the install as done once this returns.
        // Invariant: snapshots/<id> survives a crash once install returns.
        fsync_dir(&self.snapshots)?;
        // Invariant: staging/<txid> does not reappear after a crash (on filesystems that
        // journal the two directories separately).
        fsync_dir(&self.staging)?;
        fail::fail_point!("driver::install::after_dir_sync");
        Ok(())
    }

    fn install_rename(&self, txid: TxId, id: SnapshotId) -> Result<(), DriverError> {
        let staged = self.staging_dir(txid);
        let installed = self.snapshot_dir(id);
        if exists(&staged)? {
            if exists(&installed)? {
                return Err(DriverError::InstallTargetExists {
                    txid,
                    id,
                    installed,
                });
            }
            fail::fail_point!("driver::install::before_rename");
            // Invariant: the tree moves in one step; after a crash it is wholly in staging/ or
            // wholly in snapshots/.
            fs::rename(&staged, &installed).map_err(|e| DriverError::io("rename", &staged, e))?;
            fail::fail_point!("driver::install::after_rename");
        } else if !exists(&installed)? {
            return Err(DriverError::InstallSourceMissing {
                txid,
                id,
                staging: staged,
                installed,
            });
        }
        Ok(())
    }

    pub fn discard(&self, txid: TxId) -> Result<(), DriverError> {
        self.since().remove(&txid);
        let dir = self.staging_dir(txid);
        fail::fail_point!("driver::discard::before_remove");
        remove_tree(&dir)?;
        fail::fail_point!("driver::discard::after_remove");
        // Invariant: a discarded transaction's tree does not come back after a crash. (If it
        // did, recovery would discard it again; the sync keeps inventory honest.)
        fsync_dir(&self.staging)?;
        fail::fail_point!("driver::discard::after_dir_sync");
        Ok(())
    }

    pub fn remove(&self, id: SnapshotId) -> Result<(), DriverError> {
        let dir = self.snapshot_dir(id);
        let trashed = self.trash_dir(id);
        if exists(&dir)? {
            // Ids are never reused, so a trash/<id> here is a leftover of the same snapshot.
            remove_tree(&trashed)?;
            fail::fail_point!("driver::remove::before_rename");
            // Invariant: once moved, the snapshot is gone from snapshots/ in one step; a crash
            // during the slow delete below leaves it in trash/, never half-deleted in place.
            fs::rename(&dir, &trashed).map_err(|e| DriverError::io("rename", &dir, e))?;
            fail::fail_point!("driver::remove::after_rename");
            // Invariant: the removal is durable before remove() returns and the caller
            // journals it; snapshots/<id> never reappears after a crash.
            fsync_dir(&self.snapshots)?;
            fsync_dir(&self.trash)?;
            fail::fail_point!("driver::remove::after_dir_sync");
        }
        // The delete needs no sync: a tree resurrected in trash/ is purged by recovery.
        remove_tree(&trashed)?;
        fail::fail_point!("driver::remove::after_delete");
        Ok(())
    }

    pub fn purge_trash(&self) -> Result<(), DriverError> {
        let entries =
            fs::read_dir(&self.trash).map_err(|e| DriverError::io("readdir", &self.trash, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| DriverError::io("readdir", &self.trash, e))?;
            remove_tree(&entry.path())?;
            fail::fail_point!("driver::purge_trash::after_entry");
        }
        // No sync: anything that reappears after a crash is still only trash.
        Ok(())
    }

    pub fn seal(&self, id: SnapshotId, txid: TxId) -> Result<Usage, DriverError> {
        let dir = self.snapshot_dir(id);
        if !exists(&dir)? {
            return Err(DriverError::SnapshotMissing { id, path: dir });
        }
        let tainted = dir.join(SYNC_FAILED);
        if exists(&tainted)? {
            return Err(DriverError::TreeSyncFailed { id, path: tainted });
        }
        fail::fail_point!("driver::seal::before_sync");
        // Invariant: every byte of the tree is on disk before the marker claims `txid` and the
        // commit is journaled as complete. The tree was written through mounts at any time
        // since this driver opened (or before): any write-back error reported since the open
        // makes this sync check every file of the tree.
        let usage = match sync_tree_watched(&dir.join(TREE), SyncMode::Auto, &self.watch, 0) {
            Ok(usage) => usage,
            Err(e) if e.is_sync_failure() => return Err(self.taint(id, &dir, e)),
            Err(e) => return Err(e),
        };
        fail::fail_point!("driver::seal::after_sync");
        marker::write(&dir, txid)?;
        fail::fail_point!("driver::seal::after_marker");
        Ok(usage)
    }

    /// A sync of snapshot `id`'s tree failed: its lost pages may now be marked clean, and the
    /// next fsync would return 0 over them. Record that durably beside the tree, so no later
    /// seal (after a retry, or a reopen within the same boot) can report the tree durable.
    /// Returns the error to report: the sync failure, or `TaintFailed` if the record could not
    /// be made durable (the engine then stops).
    pub(crate) fn taint(&self, id: SnapshotId, dir: &Path, cause: DriverError) -> DriverError {
        let path = dir.join(SYNC_FAILED);
        let recorded = (|| {
            let file = fs::File::create(&path).map_err(|e| DriverError::io("create", &path, e))?;
            fsync_open(&file, &path, false)?;
            // Invariant: the note survives a power cut before the failed commit is answered.
            fsync_dir(dir)
        })();
        match recorded {
            Ok(()) => {
                tracing::error!(%id, error = %cause, "a sync of the snapshot's tree failed; it can no longer be committed");
                cause
            }
            Err(e) => DriverError::TaintFailed {
                id,
                cause: cause.to_string(),
                source: Box::new(e),
            },
        }
    }

    pub fn usage(&self, id: SnapshotId) -> Result<Usage, DriverError> {
        let dir = self.snapshot_dir(id);
        if !exists(&dir)? {
            return Err(DriverError::SnapshotMissing { id, path: dir });
        }
        walk::usage(&dir.join(TREE))
    }

    /// Errors unless snapshots/<id> is installed.
    pub fn require_installed(&self, id: SnapshotId) -> Result<PathBuf, DriverError> {
        let dir = self.snapshot_dir(id);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => Ok(dir),
            Ok(_) => Err(DriverError::SnapshotMissing { id, path: dir }),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Err(DriverError::SnapshotMissing { id, path: dir })
            }
            Err(e) => Err(DriverError::io("lstat", dir, e)),
        }
    }

    pub fn inventory(&self) -> Result<Inventory, DriverError> {
        self.inventory_with(true)
    }

    /// `inventory` without reading the markers (every `installed` value is `None`): one
    /// readdir per directory instead of a file read per snapshot. Recovery needs only names.
    pub fn inventory_names(&self) -> Result<Inventory, DriverError> {
        self.inventory_with(false)
    }

    fn inventory_with(&self, markers: bool) -> Result<Inventory, DriverError> {
        let mut inv = Inventory::default();
        for (dir, slot) in [(&self.snapshots, 0u8), (&self.staging, 1), (&self.trash, 2)] {
            let entries = fs::read_dir(dir).map_err(|e| DriverError::io("readdir", dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| DriverError::io("readdir", dir, e))?;
                let path = entry.path();
                let is_dir = entry
                    .file_type()
                    .map_err(|e| DriverError::io("lstat", &path, e))?
                    .is_dir();
                let Some(n) = parse_id(&entry.file_name()).filter(|_| is_dir) else {
                    inv.unexpected.push(path);
                    continue;
                };
                match slot {
                    0 => {
                        // A marker that cannot be read is reported as None: fsck decides.
                        let txid = if markers {
                            marker::read(&path).ok().flatten()
                        } else {
                            None
                        };
                        inv.installed.insert(SnapshotId(n), txid);
                    }
                    1 => inv.staging.push(TxId(n)),
                    _ => inv.trash.push(SnapshotId(n)),
                }
            }
        }
        inv.staging.sort();
        inv.trash.sort();
        inv.unexpected.sort();
        Ok(inv)
    }
}
