//! Deleting a tree: iteratively, with one directory open at a time (std's remove_dir_all keeps
//! one descriptor per level and fails on deep trees), and able to delete read-only directories
//! an unprivileged owner copied faithfully.

use super::btrfs::subvol::{remove_if_subvolume, Removal};
use super::error::DriverError;
use super::walk::list_dir;
use std::fs::{self, Metadata, Permissions};
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn lstat(path: &Path) -> Result<Option<Metadata>, DriverError> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DriverError::io("lstat", path, e)),
    }
}

/// Lists a directory about to be emptied, first granting the owner the rights that takes.
fn open_up(
    dir: &Path,
    meta: &Metadata,
    privileged: bool,
) -> Result<std::vec::IntoIter<std::ffi::OsString>, DriverError> {
    let mode = meta.permissions().mode();
    if !privileged && mode & 0o700 != 0o700 {
        fs::set_permissions(dir, Permissions::from_mode(mode | 0o700))
            .map_err(|e| DriverError::io("chmod", dir, e))?;
    }
    list_dir(dir)
}

/// Removes `path` and everything below it; a missing path is success (callers are idempotent,
/// and a previous attempt may have deleted part of the tree).
pub(crate) fn remove_tree(path: &Path) -> Result<(), DriverError> {
    let Some(meta) = lstat(path)? else {
        return Ok(());
    };
    if !meta.is_dir() {
        return unlink(path);
    }
    // A btrfs subvolume (a btrfs driver's tree, or one a container made) is deleted whole by
    // the kernel in one step; rmdir cannot remove a non-empty one and unlinks inside a
    // read-only one fail.
    if remove_if_subvolume(path, &meta)? == Removal::Destroyed {
        return Ok(());
    }
    let privileged = nix::unistd::geteuid().is_root();
    let mut stack: Vec<(PathBuf, _)> =
        vec![(path.to_path_buf(), open_up(path, &meta, privileged)?)];
    while let Some((dir, names)) = stack.last_mut() {
        let Some(name) = names.next() else {
            if let Some((dir, _)) = stack.pop() {
                match fs::remove_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(DriverError::io("rmdir", dir, e)),
                }
            }
            continue;
        };
        let child = dir.join(name);
        let Some(meta) = lstat(&child)? else {
            continue;
        };
        if meta.is_dir() {
            if remove_if_subvolume(&child, &meta)? == Removal::Destroyed {
                continue;
            }
            let names = open_up(&child, &meta, privileged)?;
            stack.push((child, names));
        } else {
            unlink(&child)?;
        }
    }
    Ok(())
}

fn unlink(path: &Path) -> Result<(), DriverError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DriverError::io("unlink", path, e)),
    }
}
