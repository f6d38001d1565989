//! Durability primitives: fsync of a file or directory, syncfs, and making a whole tree durable.

use super::error::DriverError;
use super::walk::{fsyncable, walk, UsageCounter};
use cairn_state::types::Usage;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

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

fn open_nofollow(path: &Path) -> Result<File, DriverError> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| DriverError::io("open", path, e))
}

/// fsync a directory: makes its entries (creations, renames, removals) durable.
pub(crate) fn fsync_dir(path: &Path) -> Result<(), DriverError> {
    let dir = open_nofollow(path)?;
    dir.sync_all()
        .map_err(|e| DriverError::io("fsync", path, e))
}

/// fsync a regular file's data and metadata.
pub(crate) fn fsync_file(path: &Path) -> Result<(), DriverError> {
    let file = open_nofollow(path)?;
    file.sync_all()
        .map_err(|e| DriverError::io("fsync", path, e))
}

/// syncfs(2) on the filesystem holding `path`: writes back and waits for every dirty inode and
/// the journal of that filesystem (errors are reported since Linux 5.8).
pub(crate) fn syncfs(path: &Path) -> Result<(), DriverError> {
    let fd = open_nofollow(path)?;
    // SAFETY: syncfs only reads the descriptor, which `fd` keeps open for the call.
    let rc = unsafe { libc::syncfs(fd.as_raw_fd()) };
    if rc != 0 {
        return Err(DriverError::io(
            "syncfs",
            path,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Makes every file and directory under `root` (and `root` itself) durable and returns the
/// tree's usage, counted in the same walk.
///
/// Symlinks, fifos, sockets and device nodes carry no data; their inodes are made durable by
/// the fsync of the directory that names them (PerFile) or by syncfs.
pub fn sync_tree(root: &Path, mode: SyncMode) -> Result<Usage, DriverError> {
    let mut counter = UsageCounter::default();
    let mut to_sync: Vec<PathBuf> = Vec::new();
    let collect = mode != SyncMode::Syncfs;
    walk(root, |path, meta| {
        counter.add(meta);
        if collect && fsyncable(meta) {
            to_sync.push(path.to_path_buf());
        }
        Ok(())
    })?;
    let usage = counter.usage();
    let per_file = match mode {
        SyncMode::PerFile => true,
        SyncMode::Syncfs => false,
        SyncMode::Auto => usage.inodes <= SYNCFS_THRESHOLD,
    };
    if per_file {
        // Children before parents is not required for correctness (each fsync is independent),
        // but flushing files first lets the directory fsyncs find their inodes already clean.
        for path in to_sync.iter().rev() {
            fsync_file(path)?;
        }
    } else {
        syncfs(root)?;
    }
    Ok(usage)
}

/// True when the tree under `root` holds more than `limit` entries. Reads directories only
/// until the answer is known (entry types come from readdir), so a big tree costs a few
/// readdirs, not the full walk with an lstat per entry.
fn more_entries_than(root: &Path, limit: u64) -> Result<bool, DriverError> {
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

/// `sync_tree(root, SyncMode::Auto)` for a caller that does not need the usage: a big tree is
/// synced with one syncfs(2) without walking it first.
pub fn sync_tree_unmetered(root: &Path) -> Result<(), DriverError> {
    if more_entries_than(root, SYNCFS_THRESHOLD)? {
        syncfs(root)
    } else {
        sync_tree(root, SyncMode::PerFile).map(|_| ())
    }
}
