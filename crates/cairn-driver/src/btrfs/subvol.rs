//! The btrfs ioctls the driver needs (`linux/btrfs.h`), called directly rather than through the
//! `btrfs` command: subvolume create, snapshot, destroy, the read-only flag, and a transaction
//! commit.
//!
//! Why the transaction commit: a subvolume's creation, deletion and flag changes live in the
//! file system's root tree, which btrfs's fsync log does not carry; they are durable when the
//! transaction that made them has committed. `commit` starts that commit and waits for it
//! (`BTRFS_IOC_START_SYNC` + `BTRFS_IOC_WAIT_SYNC`): unlike syncfs it does not write back every
//! dirty file of the file system first, so it costs a metadata commit, not a flush.

use crate::error::DriverError;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

const IOCTL_MAGIC: u8 = 0x94;
const PATH_NAME_MAX: usize = 4087;
const SUBVOL_NAME_MAX: usize = 4039;
/// `BTRFS_SUBVOL_RDONLY`: the subvolume flag (and snapshot-create flag) for read-only.
const SUBVOL_RDONLY: u64 = 1 << 1;
/// `BTRFS_FIRST_FREE_OBJECTID`: the inode number of every subvolume's root directory.
const SUBVOL_ROOT_INO: u64 = 256;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; PATH_NAME_MAX + 1],
}

/// `struct btrfs_ioctl_vol_args_v2` (the size/qgroup_inherit union is unused: zeroed).
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; SUBVOL_NAME_MAX + 1],
}

// The kernel's structs are 4096 bytes each; a layout mistake here would be an ioctl number
// mismatch (ENOTTY) at best.
const _: () = assert!(std::mem::size_of::<VolArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);

nix::ioctl_write_ptr!(ioc_subvol_create, IOCTL_MAGIC, 14, VolArgs);
nix::ioctl_write_ptr!(ioc_snap_destroy, IOCTL_MAGIC, 15, VolArgs);
nix::ioctl_write_ptr!(ioc_wait_sync, IOCTL_MAGIC, 22, u64);
nix::ioctl_write_ptr!(ioc_snap_create_v2, IOCTL_MAGIC, 23, VolArgsV2);
nix::ioctl_read!(ioc_start_sync, IOCTL_MAGIC, 24, u64);
nix::ioctl_read!(ioc_subvol_getflags, IOCTL_MAGIC, 25, u64);
nix::ioctl_write_ptr!(ioc_subvol_setflags, IOCTL_MAGIC, 26, u64);

fn open_dir(path: &Path) -> Result<File, DriverError> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| DriverError::io("open", path, e))
}

/// Copies `name` into a NUL-terminated ioctl name field; a name the field cannot hold (or one
/// with a '/' or NUL) is refused rather than cut.
fn put_name(field: &mut [u8], name: &OsStr, path: &Path) -> Result<(), DriverError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= field.len() || bytes.iter().any(|&b| b == b'/' || b == 0)
    {
        return Err(DriverError::io(
            "btrfs subvolume name",
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "not a single path component"),
        ));
    }
    field[..bytes.len()].copy_from_slice(bytes);
    Ok(())
}

fn vol_args(fd: i64, name: &OsStr, path: &Path) -> Result<Box<VolArgs>, DriverError> {
    let mut args = Box::new(VolArgs {
        fd,
        name: [0; PATH_NAME_MAX + 1],
    });
    put_name(&mut args.name, name, path)?;
    Ok(args)
}

/// True when `path` (a directory whose lstat is `meta`) is the root of a btrfs subvolume.
pub(crate) fn is_subvolume(path: &Path, meta: &Metadata) -> Result<bool, DriverError> {
    if !meta.is_dir() || meta.ino() != SUBVOL_ROOT_INO {
        return Ok(false);
    }
    // Inode 256 is an ordinary number on other file systems: only btrfs gives it this meaning.
    is_btrfs(path)
}

/// True when `path` is on a btrfs file system (statfs magic).
pub(crate) fn is_btrfs(path: &Path) -> Result<bool, DriverError> {
    Ok(fs_type(path)? == nix::sys::statfs::BTRFS_SUPER_MAGIC)
}

pub(crate) fn fs_type(path: &Path) -> Result<nix::sys::statfs::FsType, DriverError> {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type())
        .map_err(|e| DriverError::nix("statfs", path, e))
}

/// Creates an empty subvolume `dir/name`.
pub(crate) fn create(dir: &Path, name: &str) -> Result<(), DriverError> {
    let path = dir.join(name);
    let parent = open_dir(dir)?;
    let args = vol_args(0, OsStr::new(name), &path)?;
    // SAFETY: `args` is a live, correctly laid out vol_args for the call; the kernel only reads it.
    unsafe { ioc_subvol_create(parent.as_raw_fd(), &*args) }
        .map_err(|e| DriverError::nix("btrfs subvolume create", &path, e))?;
    Ok(())
}

/// Snapshots the subvolume `source` as `dir/name` (read-only if asked): constant time, whatever
/// the size of the source.
pub(crate) fn snapshot(
    source: &Path,
    dir: &Path,
    name: &str,
    read_only: bool,
) -> Result<(), DriverError> {
    let path = dir.join(name);
    let src = open_dir(source)?;
    let parent = open_dir(dir)?;
    let mut args = Box::new(VolArgsV2 {
        fd: i64::from(src.as_raw_fd()),
        transid: 0,
        flags: if read_only { SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; SUBVOL_NAME_MAX + 1],
    });
    put_name(&mut args.name, OsStr::new(name), &path)?;
    // SAFETY: `args` is a live vol_args_v2 naming an open descriptor (`src`) for the call.
    unsafe { ioc_snap_create_v2(parent.as_raw_fd(), &*args) }
        .map_err(|e| DriverError::nix("btrfs subvolume snapshot", &path, e))?;
    Ok(())
}

/// Deletes the subvolume `path` in one step (its directory entry goes at once; the space is
/// reclaimed by btrfs's cleaner in the background).
fn destroy(path: &Path) -> Result<(), nix::errno::Errno> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(nix::errno::Errno::EINVAL);
    };
    let parent = open_dir(dir).map_err(|_| nix::errno::Errno::ENOENT)?;
    let args = vol_args(0, name, path).map_err(|_| nix::errno::Errno::EINVAL)?;
    // SAFETY: `args` is a live vol_args for the call; the kernel only reads it.
    unsafe { ioc_snap_destroy(parent.as_raw_fd(), &*args) }.map(|_| ())
}

/// What `remove_tree` should do with a directory it meets.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Removal {
    /// Not a subvolume: delete its contents, then rmdir it.
    Plain,
    /// A subvolume, now deleted whole.
    Destroyed,
    /// A subvolume holding other subvolumes (btrfs refuses to destroy it): it is writable now;
    /// delete its contents (the nested subvolumes are destroyed as they are met), then rmdir it
    /// (an empty subvolume can be rmdir'ed).
    Emptied,
}

/// Deletes `path` if it is a subvolume (see [`Removal`]).
pub(crate) fn remove_if_subvolume(path: &Path, meta: &Metadata) -> Result<Removal, DriverError> {
    if !is_subvolume(path, meta)? {
        return Ok(Removal::Plain);
    }
    match destroy(path) {
        Ok(()) => Ok(Removal::Destroyed),
        Err(nix::errno::Errno::ENOENT) => Ok(Removal::Destroyed),
        Err(nix::errno::Errno::ENOTEMPTY) => {
            set_read_only(path, false)?;
            Ok(Removal::Emptied)
        }
        Err(e) => Err(DriverError::nix("btrfs subvolume delete", path, e)),
    }
}

/// Sets or clears the subvolume `path`'s read-only flag (no call if it already is so). The change
/// is durable at the next transaction commit.
pub(crate) fn set_read_only(path: &Path, read_only: bool) -> Result<(), DriverError> {
    let fd = open_dir(path)?;
    let mut flags = 0u64;
    // SAFETY: the kernel writes one u64 into `flags`.
    unsafe { ioc_subvol_getflags(fd.as_raw_fd(), &mut flags) }
        .map_err(|e| DriverError::nix("btrfs subvolume get flags", path, e))?;
    let wanted = if read_only {
        flags | SUBVOL_RDONLY
    } else {
        flags & !SUBVOL_RDONLY
    };
    if wanted == flags {
        return Ok(());
    }
    // SAFETY: the kernel reads one u64 from `wanted`.
    unsafe { ioc_subvol_setflags(fd.as_raw_fd(), &wanted) }
        .map_err(|e| DriverError::nix("btrfs subvolume set flags", path, e))?;
    Ok(())
}

/// Commits the running btrfs transaction of the file system `fd` is on and waits for it: every
/// subvolume created, snapshotted, deleted or re-flagged before the call is durable when this
/// returns. A failure is a sync failure (the file system has gone read-only); never retried.
pub(crate) fn commit(fd: &File, path: &Path) -> Result<(), DriverError> {
    let failed = |source: io::Error| DriverError::SyncFailed {
        op: "btrfs transaction commit",
        path: path.to_path_buf(),
        source,
    };
    crate::sync::check_fs_call(path).map_err(failed)?;
    let mut transid = 0u64;
    // SAFETY: the kernel writes the transaction id into `transid`.
    unsafe { ioc_start_sync(fd.as_raw_fd(), &mut transid) }
        .map_err(|e| failed(io::Error::from(e)))?;
    // SAFETY: the kernel reads one u64 from `transid`.
    unsafe { ioc_wait_sync(fd.as_raw_fd(), &transid) }.map_err(|e| failed(io::Error::from(e)))?;
    Ok(())
}
