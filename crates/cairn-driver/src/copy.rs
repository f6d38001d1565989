//! Faithful tree copy for the vfs driver: a child snapshot starts as an exact copy of its parent.
//!
//! Preserved: file type, permission bits including setuid/setgid/sticky, owner, atime/mtime to
//! the nanosecond, xattrs, hardlinks inside the tree, symlink targets verbatim, fifos, sockets,
//! device numbers, empty directories, and holes in sparse files. Symlinks are never followed.
//! ctime and inode numbers cannot be preserved by any copy.
//!
//! Durability is part of the copy rather than a walk afterwards: a second walk would read every
//! copied directory and, under relatime, bump the atimes just restored. `SyncMode::Auto` fsyncs
//! file by file while the tree is small and switches to one syncfs(2) at the end once it has
//! copied more than `SYNCFS_THRESHOLD` inodes (files already fsynced stay durable either way).

use super::error::DriverError;
use super::sync::{syncfs, SyncMode, SYNCFS_THRESHOLD};
use super::walk::list_dir;
use nix::sys::stat::{futimens, mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use std::collections::HashMap;
use std::fs::{self, File, Metadata, Permissions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{
    DirBuilderExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::path::{Path, PathBuf};
use xattr::FileExt as _;

/// _IOW(0x94, 9, int): share the source's extents (btrfs, xfs with reflink); libc lacks it.
const FICLONE: libc::c_ulong = 0x4004_9409;
const COPY_CHUNK: usize = 1 << 20;

/// What a copy produced, so callers can choose how to make it durable.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyStats {
    pub inodes: u64,
    pub bytes: u64,
}

#[derive(Debug)]
struct Identity {
    root: bool,
    uid: u32,
    gid: u32,
}

/// Decides, as the copy goes, whether each inode is fsynced or a syncfs ends the copy.
#[derive(Debug)]
struct Durability {
    mode: SyncMode,
    inodes: u64,
}

impl Durability {
    fn per_file(&self) -> bool {
        match self.mode {
            SyncMode::PerFile => true,
            SyncMode::Syncfs => false,
            SyncMode::Auto => self.inodes <= SYNCFS_THRESHOLD,
        }
    }

    /// Called with the open file or directory once its data and metadata are final. Other
    /// types carry no data and are never opened; the fsync of the directory naming them (or
    /// the final syncfs) persists them.
    fn settle(&self, path: &Path, file: &File) -> Result<(), DriverError> {
        if self.per_file() {
            file.sync_all()
                .map_err(|e| DriverError::io("fsync", path, e))?;
        }
        Ok(())
    }
}

/// Copies the directory `src` to `dst` (which must not exist yet) and makes the copy durable
/// as `mode` says: when this returns, every copied inode survives a crash.
pub fn copy_tree(src: &Path, dst: &Path, mode: SyncMode) -> Result<CopyStats, DriverError> {
    let me = Identity {
        root: nix::unistd::geteuid().is_root(),
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    };
    let root_meta = fs::symlink_metadata(src).map_err(|e| DriverError::io("lstat", src, e))?;
    if !root_meta.is_dir() {
        return Err(DriverError::io(
            "copy",
            src,
            io::Error::from_raw_os_error(libc::ENOTDIR),
        ));
    }
    let mut stats = CopyStats::default();
    let mut durability = Durability { mode, inodes: 0 };
    // Directory metadata is applied after everything below it exists: creating entries would
    // bump the mtime again, and a read-only mode would stop an unprivileged copy from filling it.
    let mut dirs: Vec<(PathBuf, PathBuf, Metadata)> = Vec::new();
    // (dev, ino) of a multiply-linked source inode -> the first copy of it.
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();

    make_dir(dst)?;
    stats.inodes += 1;
    dirs.push((src.to_path_buf(), dst.to_path_buf(), root_meta));
    // (source dir, copy of it, names not yet copied): iterative, and no directory stays open
    // while its subdirectories are copied.
    let mut stack = vec![(src.to_path_buf(), dst.to_path_buf(), list_dir(src)?)];
    while let Some((src_dir, dst_dir, names)) = stack.last_mut() {
        let Some(name) = names.next() else {
            stack.pop();
            continue;
        };
        let from = src_dir.join(&name);
        let to = dst_dir.join(&name);
        let meta = fs::symlink_metadata(&from).map_err(|e| DriverError::io("lstat", &from, e))?;
        if meta.is_dir() {
            make_dir(&to)?;
            stats.inodes += 1;
            durability.inodes = stats.inodes;
            let names = list_dir(&from)?;
            dirs.push((from.clone(), to.clone(), meta));
            stack.push((from, to, names));
            continue;
        }
        if meta.nlink() > 1 {
            if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                // linkat without AT_SYMLINK_FOLLOW: a hardlinked symlink stays a symlink.
                // The new name is persisted by its directory's fsync.
                fs::hard_link(first, &to).map_err(|e| DriverError::io("link", &to, e))?;
                continue;
            }
            links.insert((meta.dev(), meta.ino()), to.clone());
        }
        stats.inodes += 1;
        durability.inodes = stats.inodes;
        if let Some(file) = copy_entry(&me, &from, &to, &meta, &mut stats)? {
            // Invariant: a copied file is on disk before the directories naming it are synced.
            durability.settle(&to, &file)?;
        }
    }
    // Reverse pre-order: children before parents, so each directory's fsync comes after
    // every entry in it exists.
    for (from, to, meta) in dirs.iter().rev() {
        // Opened while still 0700 (make_dir), so even a 0000 directory can be finished.
        let dir = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(to)
            .map_err(|e| DriverError::io("open", to, e))?;
        apply_metadata(&me, from, to, meta, Some(&dir))?;
        // Invariant: the directory's entries and metadata are durable (PerFile regime).
        durability.settle(to, &dir)?;
    }
    if !durability.per_file() {
        // Invariant: everything copied (and not fsynced above) is durable when copy returns.
        syncfs(dst)?;
    }
    Ok(stats)
}

fn make_dir(path: &Path) -> Result<(), DriverError> {
    // Owner-only until apply_metadata sets the real mode: nobody else can open a half-copied dir.
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|e| DriverError::io("mkdir", path, e))
}

fn copy_entry(
    me: &Identity,
    from: &Path,
    to: &Path,
    meta: &Metadata,
    stats: &mut CopyStats,
) -> Result<Option<File>, DriverError> {
    let ft = meta.file_type();
    if ft.is_file() {
        let file = copy_file(from, to, meta)?;
        stats.bytes += meta.size();
        apply_metadata(me, from, to, meta, Some(&file))?;
        return Ok(Some(file));
    } else if ft.is_symlink() {
        let target = fs::read_link(from).map_err(|e| DriverError::io("readlink", from, e))?;
        std::os::unix::fs::symlink(&target, to).map_err(|e| DriverError::io("symlink", to, e))?;
    } else if ft.is_fifo() || ft.is_socket() {
        let kind = if ft.is_fifo() {
            SFlag::S_IFIFO
        } else {
            SFlag::S_IFSOCK
        };
        mknod(to, kind, Mode::from_bits_truncate(0o600), 0)
            .map_err(|e| DriverError::nix("mknod", to, e))?;
    } else if ft.is_char_device() || ft.is_block_device() {
        if !me.root {
            return Err(DriverError::DeviceNeedsRoot {
                path: from.to_path_buf(),
            });
        }
        let kind = if ft.is_char_device() {
            SFlag::S_IFCHR
        } else {
            SFlag::S_IFBLK
        };
        mknod(to, kind, Mode::from_bits_truncate(0o600), meta.rdev())
            .map_err(|e| DriverError::nix("mknod", to, e))?;
    } else {
        return Err(DriverError::UnsupportedFileType {
            path: from.to_path_buf(),
            mode: meta.mode(),
        });
    }
    apply_metadata(me, from, to, meta, None)?;
    Ok(None)
}

/// Sets owner, xattrs, mode and times of `to` from `meta`, through `open` when the copy holds
/// the file or directory open (so a restrictive mode cannot lock the copy out before the fsync)
/// and by path otherwise (symlinks, fifos, sockets, devices: never opened).
///
/// Order matters: chown clears setuid/setgid and security.capability, so it goes first; ACL
/// xattrs rewrite the group mode bits, so chmod follows them; any change bumps mtime, so the
/// times go last.
fn apply_metadata(
    me: &Identity,
    from: &Path,
    to: &Path,
    meta: &Metadata,
    open: Option<&File>,
) -> Result<(), DriverError> {
    if me.root {
        match open {
            Some(f) => std::os::unix::fs::fchown(f, Some(meta.uid()), Some(meta.gid())),
            None => std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid())),
        }
        .map_err(|e| DriverError::io("chown", to, e))?;
    } else if meta.uid() != me.uid || meta.gid() != me.gid {
        return Err(DriverError::ForeignOwner {
            path: from.to_path_buf(),
            uid: meta.uid(),
            gid: meta.gid(),
        });
    }
    copy_xattrs(me, from, to, open)?;
    let perms = Permissions::from_mode(meta.mode() & 0o7777);
    match open {
        Some(f) => f
            .set_permissions(perms)
            .map_err(|e| DriverError::io("fchmod", to, e))?,
        // Linux has no lchmod; symlink permission bits are always 0777 and never consulted.
        None if meta.file_type().is_symlink() => {}
        None => fs::set_permissions(to, perms).map_err(|e| DriverError::io("chmod", to, e))?,
    }
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    match open {
        Some(f) => futimens(f.as_raw_fd(), &atime, &mtime),
        None => utimensat(None, to, &atime, &mtime, UtimensatFlags::NoFollowSymlink),
    }
    .map_err(|e| DriverError::nix("utimensat", to, e))
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP))
}

fn copy_xattrs(
    me: &Identity,
    from: &Path,
    to: &Path,
    open: Option<&File>,
) -> Result<(), DriverError> {
    // xattr::{list,get,set} are the l*xattr calls: they act on a symlink itself.
    let names = match xattr::list(from) {
        Ok(names) => names,
        Err(e) if is_unsupported(&e) => return Ok(()),
        Err(e) => return Err(DriverError::io("llistxattr", from, e)),
    };
    for name in names {
        let privileged = name.as_encoded_bytes().starts_with(b"trusted.")
            || name.as_encoded_bytes().starts_with(b"security.");
        if privileged && !me.root {
            continue;
        }
        let value = match xattr::get(from, &name) {
            Ok(Some(value)) => value,
            // Removed between list and get.
            Ok(None) => continue,
            Err(e) if is_unsupported(&e) => continue,
            Err(e) => return Err(DriverError::io("lgetxattr", from, e)),
        };
        let set = match open {
            Some(f) => f.set_xattr(&name, &value),
            None => xattr::set(to, &name, &value),
        };
        match set {
            Ok(()) => {}
            Err(e) if is_unsupported(&e) => {}
            Err(e) => return Err(DriverError::io("lsetxattr", to, e)),
        }
    }
    Ok(())
}

/// Copies the data of one regular file into a new file `to` and returns it, still open.
fn copy_file(from: &Path, to: &Path, meta: &Metadata) -> Result<File, DriverError> {
    let open = |extra: libc::c_int| {
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | extra)
            .open(from)
    };
    // O_NOATIME: copying a committed parent must not change it, atimes included. Only the
    // owner (or CAP_FOWNER) may ask for it; anyone else reads the ordinary way.
    let src = match open(libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
        other => other,
    }
    .map_err(|e| DriverError::io("open", from, e))?;
    let dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(to)
        .map_err(|e| DriverError::io("create", to, e))?;
    // SAFETY: both descriptors are open for the duration of the call; FICLONE takes an int arg.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) };
    if rc == 0 {
        return Ok(dst);
    }
    let size = meta.size();
    // Sizing first keeps every hole we skip below a hole in the copy.
    dst.set_len(size)
        .map_err(|e| DriverError::io("ftruncate", to, e))?;
    let mut use_cfr = true;
    let mut off: u64 = 0;
    while off < size {
        let Some((data, end)) =
            next_extent(&src, off, size).map_err(|e| DriverError::io("lseek", from, e))?
        else {
            break;
        };
        copy_range(&src, &dst, data, end, &mut use_cfr)
            .map_err(|e| DriverError::io("copy_file_range", to, e))?;
        off = end;
    }
    Ok(dst)
}

/// The next data extent at or after `off`, as [start, end), or None if only a hole remains.
/// Filesystems without SEEK_DATA report the whole rest of the file as data.
fn next_extent(src: &File, off: u64, size: u64) -> io::Result<Option<(u64, u64)>> {
    let fd = src.as_raw_fd();
    let seek = |pos: u64, whence| -> io::Result<Option<u64>> {
        let pos = i64::try_from(pos).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // SAFETY: plain lseek on an open descriptor.
        let r = unsafe { libc::lseek(fd, pos, whence) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENXIO) => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(r as u64))
    };
    let data = match seek(off, libc::SEEK_DATA) {
        Ok(Some(d)) => d,
        Ok(None) => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(Some((off, size))),
        Err(e) => return Err(e),
    };
    let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(size);
    Ok(Some((data, hole.min(size))))
}

fn copy_range(src: &File, dst: &File, start: u64, end: u64, use_cfr: &mut bool) -> io::Result<()> {
    let mut pos = start;
    while pos < end && *use_cfr {
        let mut off_in = pos as libc::loff_t;
        let mut off_out = pos as libc::loff_t;
        let len = usize::try_from(end - pos)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        // SAFETY: both descriptors are open; the offset pointers outlive the call.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                len,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EXDEV | libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP) => {
                    *use_cfr = false;
                    break;
                }
                _ => return Err(e),
            }
        }
        if n == 0 {
            // The source shrank under us; what is there has been copied.
            return Ok(());
        }
        pos += n as u64;
    }
    let mut buf = vec![0u8; COPY_CHUNK.min(usize::try_from(end - pos).unwrap_or(COPY_CHUNK))];
    while pos < end {
        let want = usize::try_from(end - pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = src.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            return Ok(());
        }
        dst.write_all_at(&buf[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}
