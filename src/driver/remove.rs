//! Deleting a tree that may hold read-only directories.

use super::error::DriverError;
use super::walk::walk;
use std::fs::{self, Permissions};
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Removes `path` and everything below it; a missing path is success (callers are idempotent).
pub(crate) fn remove_tree(path: &Path) -> Result<(), DriverError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(DriverError::io("lstat", path, e)),
    };
    if !meta.is_dir() {
        return fs::remove_file(path).map_err(|e| DriverError::io("unlink", path, e));
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            // An unprivileged owner cannot unlink inside a 0555 directory it copied faithfully;
            // opening every directory up is the only way to delete such a tree.
            walk(path, |p, m| {
                if m.is_dir() {
                    let mode = m.permissions().mode() | 0o700;
                    fs::set_permissions(p, Permissions::from_mode(mode))
                        .map_err(|e| DriverError::io("chmod", p, e))?;
                }
                Ok(())
            })?;
            fs::remove_dir_all(path).map_err(|e| DriverError::io("remove", path, e))
        }
        Err(e) => Err(DriverError::io("remove", path, e)),
    }
}
