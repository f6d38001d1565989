//! An iterative pre-order walk that never follows symlinks, and the usage count built on it.
//!
//! Iterative (an explicit stack) so a deep tree cannot blow the thread's stack, and each
//! directory is read completely and closed before descending, so depth costs memory, never
//! file descriptors.

use super::error::DriverError;
use cairn_state::types::Usage;
use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The names in a directory, sorted (a stable order makes copies and walks reproducible).
pub(crate) fn list_dir(dir: &Path) -> Result<std::vec::IntoIter<OsString>, DriverError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| DriverError::io("readdir", dir, e))? {
        names.push(
            entry
                .map_err(|e| DriverError::io("readdir", dir, e))?
                .file_name(),
        );
    }
    names.sort();
    Ok(names.into_iter())
}

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
    let mut stack = vec![(root.to_path_buf(), list_dir(root)?)];
    while let Some((dir, names)) = stack.last_mut() {
        let Some(name) = names.next() else {
            stack.pop();
            continue;
        };
        let path: PathBuf = dir.join(name);
        // lstat: symlinks are reported, never followed.
        let meta = fs::symlink_metadata(&path).map_err(|e| DriverError::io("lstat", &path, e))?;
        visit(&path, &meta)?;
        if meta.is_dir() {
            let names = list_dir(&path)?;
            stack.push((path, names));
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
