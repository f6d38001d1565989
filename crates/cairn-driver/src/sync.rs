//! Durability primitives: fsync of a file or directory, syncfs, and making a whole tree durable.
//!
//! The error rules (docs/drivers.md, "Sync errors"), which any batching of these calls must keep:
//! - a failed fsync or syncfs is never retried over the same dirty pages: the kernel may have
//!   dropped them and marked them clean, so a second call returns 0 over lost data;
//! - a syncfs only reports a write-back error to a descriptor opened before the error, once per
//!   descriptor: the trees of one root are checked through one [`FsWatch`] descriptor opened
//!   when the driver opens, never through a descriptor opened at the end;
//! - when the file system reported an error since the tree's work began, the tree is fsynced file
//!   by file to learn whether the lost pages were its own (a file's own error is kept in its
//!   inode until someone fsyncs that file, and only the engine fsyncs its trees).

use super::error::DriverError;
use super::walk::{fsyncable, walk, UsageCounter};
use cairn_state::types::Usage;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Above this many inodes a tree is made durable with one syncfs(2) instead of one fsync per
/// file and directory. Measured on this project's ext4 (see docs/drivers.md): per-file fsync of
/// a 2,000-file tree costs one journal commit per file, syncfs costs one commit in all.
pub(crate) const SYNCFS_THRESHOLD: u64 = 64;

/// How `sync_tree` makes a tree durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// fsync every regular file and directory, then rely on the parent's fsync for the rest.
    PerFile,
    /// One syncfs(2) on the tree's filesystem.
    Syncfs,
    /// PerFile for small trees, Syncfs above `SYNCFS_THRESHOLD` inodes.
    Auto,
}

/// A test hook on every durability call of the driver: it sees each call (to record the order
/// of fsyncs) and can make it fail (to inject the EIO of a lost write-back). Compiled in with
/// the `failpoints` feature only.
#[cfg(feature = "failpoints")]
pub mod hook {
    use std::path::Path;
    use std::sync::RwLock;

    /// One durability call, with the path it was made on.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum SyncCall<'a> {
        /// fsync(2) of a regular file.
        File(&'a Path),
        /// fsync(2) of a directory.
        Dir(&'a Path),
        /// syncfs(2) through a descriptor on this path.
        Fs(&'a Path),
    }

    type Hook = Box<dyn Fn(SyncCall<'_>) -> Option<std::io::Error> + Send + Sync>;

    static HOOK: RwLock<Option<Hook>> = RwLock::new(None);

    /// Install `hook` (replacing any other) until the returned guard drops. A hook returning
    /// `Some(error)` makes that call fail with it instead of reaching the kernel.
    pub fn install(
        hook: impl Fn(SyncCall<'_>) -> Option<std::io::Error> + Send + Sync + 'static,
    ) -> Installed {
        *HOOK.write().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(hook));
        Installed(())
    }

    /// Removes the hook when dropped.
    #[derive(Debug)]
    pub struct Installed(());

    impl Drop for Installed {
        fn drop(&mut self) {
            *HOOK.write().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    pub(crate) fn check(call: SyncCall<'_>) -> std::io::Result<()> {
        let hook = HOOK.read().unwrap_or_else(|p| p.into_inner());
        match hook.as_ref().and_then(|h| h(call)) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(feature = "failpoints")]
use hook::{check as hook_check, SyncCall};

#[cfg(not(feature = "failpoints"))]
#[allow(dead_code)] // read only by the test hook
enum SyncCall<'a> {
    File(&'a Path),
    Dir(&'a Path),
    Fs(&'a Path),
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
fn hook_check(_call: SyncCall<'_>) -> std::io::Result<()> {
    Ok(())
}

fn open_nofollow(path: &Path) -> Result<File, DriverError> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| DriverError::io("open", path, e))
}

/// fsync an open file or directory; every fsync of the driver goes through here.
pub fn fsync_open(file: &File, path: &Path, is_dir: bool) -> Result<(), DriverError> {
    let call = if is_dir {
        SyncCall::Dir(path)
    } else {
        SyncCall::File(path)
    };
    hook_check(call)
        .and_then(|()| file.sync_all())
        .map_err(|source| DriverError::SyncFailed {
            op: "fsync",
            path: path.to_path_buf(),
            source,
        })
}

/// fsync a directory: makes its entries (creations, renames, removals) durable.
pub(crate) fn fsync_dir(path: &Path) -> Result<(), DriverError> {
    let dir = open_nofollow(path)?;
    fsync_open(&dir, path, true)
}

/// Create `path` and its missing ancestors, each creation made durable in its parent.
pub fn create_dir_all_durable(path: &Path) -> Result<(), DriverError> {
    let missing: Vec<&Path> = path
        .ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .take_while(|a| std::fs::symlink_metadata(a).is_err())
        .collect();
    std::fs::create_dir_all(path).map_err(|e| DriverError::io("mkdir", path, e))?;
    // Deepest first: each parent's fsync covers its new child.
    for created in missing {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Invariant: a directory created here survives a power cut before anything written
            // under it is acknowledged (a fresh root's own entry in its parent).
            fsync_dir(parent)?;
        }
    }
    Ok(())
}

fn syncfs_fd(fd: &File, path: &Path) -> Result<(), DriverError> {
    let failed = |source| DriverError::SyncFailed {
        op: "syncfs",
        path: path.to_path_buf(),
        source,
    };
    hook_check(SyncCall::Fs(path)).map_err(failed)?;
    // SAFETY: syncfs only reads the descriptor, which `fd` keeps open for the call.
    let rc = unsafe { libc::syncfs(fd.as_raw_fd()) };
    if rc != 0 {
        return Err(failed(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// syncfs(2) on the filesystem holding `path`: writes back and waits for every dirty inode and
/// the journal of that filesystem. The descriptor is opened now, so a write-back error that
/// another syncfs already saw is not reported: durability the engine depends on goes through an
/// [`FsWatch`] instead.
pub(crate) fn syncfs(path: &Path) -> Result<(), DriverError> {
    let fd = open_nofollow(path)?;
    syncfs_fd(&fd, path)
}

/// One descriptor on the root's file system, opened when the driver opens and kept, through
/// which every syncfs of the driver is made; and a count of the write-back errors it reported.
///
/// Linux (5.8+) reports a file system's write-back error once to each open descriptor, at its
/// next syncfs. A descriptor opened only at the end of an import misses an error that another
/// worker's syncfs (or any other process's `sync -f`) saw first; this one, opened before any
/// write of this engine, sees every error, and the count makes each error visible to every
/// tree whose work began before it.
#[derive(Debug)]
pub struct FsWatch {
    fd: File,
    path: PathBuf,
    errors: Mutex<u64>,
}

impl FsWatch {
    pub fn open(path: &Path) -> Result<FsWatch, DriverError> {
        Ok(FsWatch {
            fd: open_nofollow(path)?,
            path: path.to_path_buf(),
            errors: Mutex::new(0),
        })
    }

    /// Write-back errors reported so far: a tree's work samples this when it begins.
    pub fn errors(&self) -> u64 {
        *self.errors.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// syncfs through the watch descriptor; returns the errors reported so far, this one
    /// included. Serialised, so each report is counted exactly once.
    fn syncfs(&self) -> u64 {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = syncfs_fd(&self.fd, &self.path) {
            tracing::warn!(error = %e, "syncfs reported a write-back error on the root's file system");
            *errors += 1;
        }
        *errors
    }
}

impl FsWatch {
    /// One syncfs through the watch for a whole batch (docs/drivers.md, "Batched syncs"):
    /// returns the error count after it. A count other than the one sampled when the batch's
    /// work began means an error was reported while the batch's pages were written back.
    pub(crate) fn sync_batch(&self) -> u64 {
        self.syncfs()
    }

    /// syncfs through the watch; fails if any write-back error was reported since `since`.
    pub(crate) fn check_since(&self, since: u64, path: &Path) -> Result<(), DriverError> {
        let errors = self.syncfs();
        if errors != since {
            return Err(DriverError::SyncFailed {
                op: "syncfs",
                path: path.to_path_buf(),
                source: std::io::Error::other(format!(
                    "{} write-back error(s) reported on the file system since this tree's work began",
                    errors - since
                )),
            });
        }
        Ok(())
    }
}

/// Makes every file and directory under `root` (and `root` itself) durable and returns the
/// tree's usage, counted in the same walk.
///
/// Symlinks, fifos, sockets and device nodes carry no data; their inodes are made durable by
/// the fsync of the directory that names them (PerFile) or by syncfs.
pub fn sync_tree(root: &Path, mode: SyncMode) -> Result<Usage, DriverError> {
    sync_tree_with(root, mode, None)
}

/// `sync_tree` for the engine's trees: syncfs goes through `watch`, and if the file system
/// reported a write-back error since `since` (sampled when the tree's work began), every file
/// and directory of the tree is fsynced to learn whether the lost pages were its own.
pub(crate) fn sync_tree_watched(
    root: &Path,
    mode: SyncMode,
    watch: &FsWatch,
    since: u64,
) -> Result<Usage, DriverError> {
    sync_tree_with(root, mode, Some((watch, since)))
}

/// A tree's usage and the files and directories an fsync can flush, parents first.
pub(crate) fn collect_tree(root: &Path) -> Result<(Usage, Vec<(PathBuf, bool)>), DriverError> {
    let mut counter = UsageCounter::default();
    let mut to_sync: Vec<(PathBuf, bool)> = Vec::new();
    walk(root, |path, meta| {
        counter.add(meta);
        if fsyncable(meta) {
            to_sync.push((path.to_path_buf(), meta.is_dir()));
        }
        Ok(())
    })?;
    Ok((counter.usage(), to_sync))
}

/// fsync each of `to_sync`, children first (they were collected parents first).
pub(crate) fn fsync_each(to_sync: &[(PathBuf, bool)]) -> Result<(), DriverError> {
    for (path, is_dir) in to_sync.iter().rev() {
        let file = open_nofollow(path)?;
        fsync_open(&file, path, *is_dir)?;
    }
    Ok(())
}

fn sync_tree_with(
    root: &Path,
    mode: SyncMode,
    watch: Option<(&FsWatch, u64)>,
) -> Result<Usage, DriverError> {
    let (usage, to_sync) = collect_tree(root)?;
    let per_file = match mode {
        SyncMode::PerFile => true,
        SyncMode::Syncfs => false,
        SyncMode::Auto => usage.inodes <= SYNCFS_THRESHOLD,
    };
    // Children before parents is not required for correctness (each fsync is independent),
    // but flushing files first lets the directory fsyncs find their inodes already clean.
    let fsync_all = fsync_each;
    if per_file {
        fsync_all(&to_sync)?;
        return Ok(usage);
    }
    match watch {
        None => syncfs(root)?,
        Some((watch, since)) => {
            if watch.syncfs() != since {
                // Invariant: a tree is never called durable over a write-back error reported
                // since its work began unless every one of its files fsyncs cleanly.
                tracing::warn!(tree = %root.display(), "write-back error on the file system; checking this tree file by file");
                fsync_all(&to_sync)?;
            }
        }
    }
    Ok(usage)
}

/// True when the tree under `root` holds more than `limit` entries. Reads directories only
/// until the answer is known (entry types come from readdir), so a big tree costs a few
/// readdirs, not the full walk with an lstat per entry.
pub(crate) fn more_entries_than(root: &Path, limit: u64) -> Result<bool, DriverError> {
    let mut count = 0u64;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| DriverError::io("readdir", &dir, e))? {
            let entry = entry.map_err(|e| DriverError::io("readdir", &dir, e))?;
            count += 1;
            if count > limit {
                return Ok(true);
            }
            let is_dir = entry
                .file_type()
                .map_err(|e| DriverError::io("lstat", entry.path(), e))?
                .is_dir();
            if is_dir {
                dirs.push(entry.path());
            }
        }
    }
    Ok(false)
}

/// `sync_tree_watched(root, SyncMode::Auto, ..)` for a caller that does not need the usage: a
/// big tree is synced with one syncfs(2) through the watch without walking it first.
pub(crate) fn sync_tree_unmetered_watched(
    root: &Path,
    watch: &FsWatch,
    since: u64,
) -> Result<(), DriverError> {
    if !more_entries_than(root, SYNCFS_THRESHOLD)? {
        return sync_tree(root, SyncMode::PerFile).map(|_| ());
    }
    if watch.syncfs() != since {
        // Invariant: a tree is never called durable over a write-back error reported since its
        // work began unless every one of its files fsyncs cleanly (as in `sync_tree_with`).
        tracing::warn!(tree = %root.display(), "write-back error on the file system; checking this tree file by file");
        sync_tree(root, SyncMode::PerFile)?;
    }
    Ok(())
}

/// The test hook's view of a file-system-wide durability call made outside this module (the
/// btrfs driver's transaction commit): seen, and failable, as a syncfs on `path`.
pub(crate) fn check_fs_call(path: &Path) -> std::io::Result<()> {
    hook_check(SyncCall::Fs(path))
}
