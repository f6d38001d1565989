//! An iterative pre-order walk that never follows symlinks, and the usage count built on it.
//!
//! Iterative (an explicit stack of open directory iterators) so a deep tree cannot blow the
//! thread's stack; the engine's worker threads have ordinary 2 MiB stacks.

use super::error::DriverError;
use crate::types::Usage;
use std::collections::HashSet;
use std::fs::{self, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Visits `root` and then every entry below it, parents before children, with its lstat.
pub(crate) fn walk(
    root: &Path,
    mut visit: impl FnMut(&Path, &Metadata) -> Result<(), DriverError>,
) -> Result<(), DriverError> {
    let meta = fs::symlink_metadata(root).map_err(|e| DriverError::io("lstat", root, e))?;
    visit(root, &meta)?;
    if !meta.is_dir() {
        return Ok(());
    }
    let mut stack: Vec<(PathBuf, fs::ReadDir)> = vec![(
        root.to_path_buf(),
        fs::read_dir(root).map_err(|e| DriverError::io("readdir", root, e))?,
    )];
    while let Some((dir, iter)) = stack.last_mut() {
        let Some(entry) = iter.next() else {
            stack.pop();
            continue;
        };
        let entry = entry.map_err(|e| DriverError::io("readdir", dir.as_path(), e))?;
        let path = entry.path();
        // DirEntry::metadata is fstatat(AT_SYMLINK_NOFOLLOW): symlinks are reported, not followed.
        let meta = entry
            .metadata()
            .map_err(|e| DriverError::io("lstat", &path, e))?;
        visit(&path, &meta)?;
        if meta.is_dir() {
            let iter = fs::read_dir(&path).map_err(|e| DriverError::io("readdir", &path, e))?;
            stack.push((path, iter));
        }
    }
    Ok(())
}

/// Counts a tree the way `Driver::usage` defines it: every inode once (the root directory
/// included), and the st_size of every regular-file inode once, so hardlinks are not doubled.
#[derive(Debug, Default)]
pub(crate) struct UsageCounter {
    seen: HashSet<(u64, u64)>,
    usage: Usage,
}

impl UsageCounter {
    pub(crate) fn add(&mut self, meta: &Metadata) {
        // Only inodes with more than one link can be met twice; skipping the set for the rest
        // keeps the memory proportional to the hardlinked files, not the tree.
        if meta.nlink() > 1 && !meta.is_dir() && !self.seen.insert((meta.dev(), meta.ino())) {
            return;
        }
        self.usage.inodes += 1;
        if meta.file_type().is_file() {
            self.usage.size_bytes += meta.size();
        }
    }

    pub(crate) fn usage(&self) -> Usage {
        self.usage
    }
}

pub(crate) fn usage(root: &Path) -> Result<Usage, DriverError> {
    let mut counter = UsageCounter::default();
    walk(root, |_, meta| {
        counter.add(meta);
        Ok(())
    })?;
    Ok(counter.usage())
}

/// True for the file types whose open(2) has no side effects and which fsync can flush.
pub(crate) fn fsyncable(meta: &Metadata) -> bool {
    meta.file_type().is_file() || meta.is_dir()
}
