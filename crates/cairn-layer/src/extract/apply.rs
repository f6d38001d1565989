//! Materializing one parsed entry in the target: files, directories, links, devices,
//! whiteouts, and their owners, modes, xattrs and times.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fchmodat, futimens, mkdirat, mknodat, FchmodatFlags, Mode, SFlag};
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, mkfifoat, symlinkat, Gid, Uid};

use super::{lossy, Content, Entry, Ex};
use crate::error::LayerError;
use crate::header::{self, TypeFlag, BLOCK};
use crate::meta::{Record, RAW_CHUNK};
use crate::safepath::{self, errno_io, lstat_at, os, remove_all_at, Leaf};
use crate::whiteout::{self, Whiteout, WhiteoutStyle};

impl<R: Read> Ex<'_, R> {
    pub(super) fn entry(&mut self, e: Entry) -> Result<(), LayerError> {
        match whiteout::classify(&e.rel) {
            Err(reason) => {
                return Err(LayerError::UnsafePath {
                    path: lossy(&e.name),
                    offset: e.offset,
                    reason,
                })
            }
            Ok(Whiteout::No) => {}
            Ok(w) => {
                self.fresh_dirs.clear();
                let done = self.whiteout(&e, w);
                self.root.forget_dirs();
                done?;
                return self.skip_data(&e);
            }
        }
        if e.rel.is_empty() {
            if e.hdr.flag != TypeFlag::Dir {
                return Err(LayerError::UnsafePath {
                    path: lossy(&e.name),
                    offset: e.offset,
                    reason: "a non-directory names the root",
                });
            }
            self.chown_at(&e, self.root.fd(), b".")?;
            self.defer_dir(Vec::new(), &e);
            return self.skip_data(&e);
        }
        match e.hdr.flag {
            TypeFlag::Regular => self.regular(e),
            TypeFlag::Hardlink => {
                self.hardlink(&e)?;
                self.skip_data(&e)
            }
            TypeFlag::Dir => {
                let leaf = self.prepare(&e, true)?;
                match mkdirat(
                    Some(leaf.dirfd()),
                    os(&leaf.name),
                    Mode::from_bits_truncate(0o700),
                ) {
                    Ok(()) => {
                        self.fresh_dirs.insert(leaf.canonical.clone());
                    }
                    Err(Errno::EEXIST) => {}
                    Err(er) => return Err(self.fs(&e, "mkdir")(errno_io(er))),
                }
                self.chown_at(&e, leaf.dirfd(), &leaf.name)?;
                self.xattrs_at(&e, &leaf)?;
                self.defer_dir(leaf.canonical, &e);
                self.skip_data(&e)
            }
            TypeFlag::Symlink => {
                let leaf = self.prepare(&e, false)?;
                symlinkat(os(&e.link), Some(leaf.dirfd()), os(&leaf.name))
                    .map_err(|er| self.fs(&e, "symlink")(errno_io(er)))?;
                self.chown_at(&e, leaf.dirfd(), &leaf.name)?;
                self.xattrs_at(&e, &leaf)?;
                self.times_at(&e, &leaf)?;
                self.skip_data(&e)
            }
            TypeFlag::Fifo | TypeFlag::Char | TypeFlag::Block => {
                let (kind, dev) = match e.hdr.flag {
                    TypeFlag::Fifo => (SFlag::S_IFIFO, 0),
                    TypeFlag::Char => (
                        SFlag::S_IFCHR,
                        nix::sys::stat::makedev(e.hdr.devmajor, e.hdr.devminor),
                    ),
                    _ => (
                        SFlag::S_IFBLK,
                        nix::sys::stat::makedev(e.hdr.devmajor, e.hdr.devminor),
                    ),
                };
                if kind != SFlag::S_IFIFO && !self.is_root {
                    return Err(LayerError::NotPermitted {
                        path: lossy(&e.name),
                        offset: e.offset,
                        reason: "device nodes need root",
                    });
                }
                let leaf = self.prepare(&e, false)?;
                let r = if kind == SFlag::S_IFIFO {
                    mkfifoat(
                        Some(leaf.dirfd()),
                        os(&leaf.name),
                        Mode::from_bits_truncate(0o600),
                    )
                } else {
                    mknodat(
                        Some(leaf.dirfd()),
                        os(&leaf.name),
                        kind,
                        Mode::from_bits_truncate(0o600),
                        dev,
                    )
                };
                r.map_err(|er| self.fs(&e, "mknod")(errno_io(er)))?;
                self.chown_at(&e, leaf.dirfd(), &leaf.name)?;
                self.xattrs_at(&e, &leaf)?;
                // The leaf was just created by us and is not a symlink, so following is safe.
                fchmodat(
                    Some(leaf.dirfd()),
                    os(&leaf.name),
                    Mode::from_bits_truncate(e.hdr.mode),
                    FchmodatFlags::FollowSymlink,
                )
                .map_err(|er| self.fs(&e, "chmod")(errno_io(er)))?;
                self.times_at(&e, &leaf)?;
                self.skip_data(&e)
            }
            _ => Err(LayerError::Unsupported {
                path: lossy(&e.name),
                offset: e.offset,
                reason: "entry type",
            }),
        }
    }

    /// Data of an entry that is not written to a file (tar allows it on any type) is kept
    /// verbatim in the metadata, with its padding.
    pub(super) fn skip_data(&mut self, e: &Entry) -> Result<(), LayerError> {
        self.raw_data(e.size, &e.name, "inside entry data")?;
        self.raw_data(header::padding(e.size), &e.name, "inside padding")
    }

    pub(super) fn defer_dir(&mut self, canonical: Vec<u8>, e: &Entry) {
        let v = (canonical.clone(), e.hdr.mode, e.mtime);
        match self.dir_index.get(&canonical) {
            Some(&i) => self.dirs[i] = v,
            None => {
                self.dir_index.insert(canonical, self.dirs.len());
                self.dirs.push(v);
            }
        }
    }

    pub(super) fn mark_touched(&mut self, canonical: &[u8]) {
        for (i, &c) in canonical.iter().enumerate() {
            if c == b'/' {
                self.touched.insert(canonical[..i].to_vec());
            }
        }
        self.touched.insert(canonical.to_vec());
    }

    /// Resolves the entry's parent (creating it), and clears the way: an existing entry is
    /// removed unless both it and the new one are directories.
    pub(super) fn prepare(&mut self, e: &Entry, new_is_dir: bool) -> Result<Leaf, LayerError> {
        let leaf = self
            .root
            .leaf(&e.rel, true)
            .map_err(self.fs(e, "resolve parent directory"))?;
        let parent = match leaf.canonical.iter().rposition(|&c| c == b'/') {
            Some(i) => &leaf.canonical[..i],
            None => &[][..],
        };
        // Everything this import put in a directory it made is in `touched`: a name that is
        // not cannot exist there.
        let surely_absent =
            self.fresh_dirs.contains(parent) && !self.touched.contains(&leaf.canonical);
        let existing = if surely_absent {
            None
        } else {
            lstat_at(leaf.dirfd(), &leaf.name).map_err(self.fs(e, "lstat"))?
        };
        if let Some(st) = existing {
            if !(new_is_dir && safepath::is_dir(&st)) {
                self.fresh_dirs.clear();
                self.before_remove(&leaf.canonical, e)?;
                self.root.forget_dirs();
                remove_all_at(leaf.dirfd(), &leaf.name).map_err(self.fs(e, "remove existing"))?;
            }
        }
        self.mark_touched(&leaf.canonical);
        Ok(leaf)
    }

    pub(super) fn regular(&mut self, e: Entry) -> Result<(), LayerError> {
        let leaf = self.prepare(&e, false)?;
        // Always a new inode (O_EXCL): writing into an existing file would change what a
        // hardlink from a parent layer or earlier in this layer sees, and O_NOFOLLOW keeps
        // a symlink planted at the leaf from redirecting the write. 0600 until the content
        // and xattrs are in: the tar's mode may forbid writing.
        let fd = openat(
            Some(leaf.dirfd()),
            os(&leaf.name),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|er| self.fs(&e, "create file")(errno_io(er)))?;
        // SAFETY: fd was just opened and is owned by nobody else.
        let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // The content's sha256 is taken on the hashing thread from the stream (a file's
        // bytes are one span of it, sparse segments included); `assemble` fills it in.
        let record = match &e.sparse {
            None => {
                self.tin.hash.file_span(e.size);
                self.copy_into(&mut file, e.size, &e)?;
                self.tracked.insert(
                    leaf.canonical.clone(),
                    (self.next_file, Content::Plain(e.size)),
                );
                Record::File {
                    path: leaf.canonical.clone(),
                    size: e.size,
                    sha256: [0; 32],
                }
            }
            Some((_, realsize)) => {
                let segments = self.sparse_map(&e, *realsize)?;
                self.tin
                    .hash
                    .file_span(segments.iter().map(|&(_, len)| len).sum());
                for &(off, len) in &segments {
                    file.seek(SeekFrom::Start(off))
                        .map_err(self.fs(&e, "seek"))?;
                    self.copy_into(&mut file, len, &e)?;
                }
                file.set_len(*realsize).map_err(self.fs(&e, "truncate"))?;
                self.tracked.insert(
                    leaf.canonical.clone(),
                    (self.next_file, Content::Sparse(segments.clone())),
                );
                Record::Sparse {
                    path: leaf.canonical.clone(),
                    realsize: *realsize,
                    segments,
                    sha256: [0; 32],
                }
            }
        };
        if e.size >= EARLY_WRITEBACK_BYTES {
            start_writeback(&file).map_err(self.fs(&e, "start writeback"))?;
        }
        self.flush_raw()?;
        self.spill.write(&record)?;
        self.next_file += 1;
        if self.opts.same_owner && self.is_root {
            let (u, g) = self.ids(&e)?;
            fchown(file.as_raw_fd(), Some(u), Some(g))
                .map_err(|er| self.fs(&e, "chown")(errno_io(er)))?;
        }
        // Order matters: chown clears setuid/setgid, so the mode comes after it; xattrs go
        // before the mode, which may make the file read-only for a non-root importer.
        for (k, v) in &e.xattrs {
            xattr::FileExt::set_xattr(&file, os(k), v).map_err(self.fs(&e, "setxattr"))?;
        }
        fchmod(file.as_raw_fd(), Mode::from_bits_truncate(e.hdr.mode))
            .map_err(|er| self.fs(&e, "chmod")(errno_io(er)))?;
        let (a, m) = times(&e);
        futimens(file.as_raw_fd(), &a, &m).map_err(|er| self.fs(&e, "set times")(errno_io(er)))?;
        self.raw_data(header::padding(e.size), &e.name, "inside padding")
    }

    pub(super) fn copy_into(
        &mut self,
        file: &mut File,
        n: u64,
        e: &Entry,
    ) -> Result<(), LayerError> {
        let mut buf = std::mem::take(&mut self.io_buf);
        buf.resize(RAW_CHUNK, 0);
        let mut left = n;
        let mut done = Ok(());
        while left > 0 {
            let k = left.min(RAW_CHUNK as u64) as usize;
            done = self
                .tin
                .exact(&mut buf[..k], &e.name, "inside file data")
                .and_then(|()| file.write_all(&buf[..k]).map_err(self.fs(e, "write file")));
            if done.is_err() {
                break;
            }
            left -= k as u64;
        }
        self.io_buf = buf;
        done
    }

    /// Reads the GNU sparse 1.0 map (decimal lines, padded to a block) at the start of the
    /// entry's data, recording it raw; returns the checked segments.
    pub(super) fn sparse_map(
        &mut self,
        e: &Entry,
        realsize: u64,
    ) -> Result<Vec<(u64, u64)>, LayerError> {
        let max_blocks = (header::MAX_SPARSE_SEGMENTS * 2 + 1) * 21 / BLOCK + 1;
        let bad = |reason| LayerError::BadHeader {
            path: lossy(&e.name),
            offset: e.offset,
            reason,
        };
        let mut nums: Vec<u64> = Vec::new();
        let mut cur: Option<u64> = None;
        let mut want: Option<u64> = None;
        let mut blocks = 0u64;
        let mut block = [0u8; BLOCK as usize];
        'blocks: loop {
            if blocks >= max_blocks || (blocks + 1) * BLOCK > e.size {
                return Err(bad("sparse map larger than its bound or its entry"));
            }
            self.tin
                .exact(&mut block, &e.name, "inside the sparse map")?;
            self.push_raw(&block)?;
            blocks += 1;
            for &c in &block {
                match c {
                    b'0'..=b'9' => {
                        let v = cur.unwrap_or(0);
                        cur = Some(
                            v.checked_mul(10)
                                .and_then(|v| v.checked_add(u64::from(c - b'0')))
                                .ok_or_else(|| bad("sparse map number overflows"))?,
                        );
                    }
                    b'\n' => {
                        nums.push(
                            cur.take()
                                .ok_or_else(|| bad("empty line in the sparse map"))?,
                        );
                        if want.is_none() {
                            if nums[0] > header::MAX_SPARSE_SEGMENTS {
                                return Err(LayerError::TooLarge {
                                    path: lossy(&e.name),
                                    offset: e.offset,
                                    what: "sparse map",
                                    len: nums[0],
                                    max: header::MAX_SPARSE_SEGMENTS,
                                });
                            }
                            want = Some(1 + 2 * nums[0]);
                        }
                        if Some(nums.len() as u64) == want {
                            break 'blocks;
                        }
                    }
                    _ => return Err(bad("bad byte in the sparse map")),
                }
            }
        }
        let segments: Vec<(u64, u64)> = nums[1..].chunks_exact(2).map(|p| (p[0], p[1])).collect();
        let mut end = 0u64;
        let mut total = 0u64;
        for &(off, len) in &segments {
            let stop = off
                .checked_add(len)
                .ok_or_else(|| bad("sparse segment overflows"))?;
            if off < end || stop > realsize {
                return Err(bad("sparse segments overlap or exceed the real size"));
            }
            end = stop;
            total += len;
        }
        if total + blocks * BLOCK != e.size {
            return Err(bad("sparse segments do not add up to the entry size"));
        }
        Ok(segments)
    }

    pub(super) fn hardlink(&mut self, e: &Entry) -> Result<(), LayerError> {
        let bad = |reason| LayerError::BadHardlink {
            path: lossy(&e.name),
            offset: e.offset,
            target: lossy(&e.link),
            reason,
        };
        let target_rel =
            safepath::normalize(&e.link).map_err(|_| bad("target escapes the layer"))?;
        if target_rel.is_empty() {
            return Err(bad("empty target"));
        }
        let t = match self.root.leaf(&target_rel, false) {
            Ok(t) => t,
            Err(er) if matches!(er.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Err(bad("target does not exist"))
            }
            Err(er) => return Err(self.fs(e, "resolve link target")(er)),
        };
        match lstat_at(t.dirfd(), &t.name).map_err(self.fs(e, "lstat link target"))? {
            None => return Err(bad("target does not exist")),
            Some(st) if safepath::is_dir(&st) => return Err(bad("target is a directory")),
            Some(_) => {}
        }
        let leaf = self
            .root
            .leaf(&e.rel, true)
            .map_err(self.fs(e, "resolve parent directory"))?;
        if leaf.canonical == t.canonical {
            // A link to itself: the file is already what the entry asks for.
            return Ok(());
        }
        drop(leaf);
        let leaf = self.prepare(e, false)?;
        linkat(
            Some(t.dirfd()),
            os(&t.name),
            Some(leaf.dirfd()),
            os(&leaf.name),
            AtFlags::empty(),
        )
        .map_err(|er| match er {
            Errno::ENOENT => bad("target does not exist"),
            er => self.fs(e, "link")(errno_io(er)),
        })
    }

    pub(super) fn ids(&self, e: &Entry) -> Result<(Uid, Gid), LayerError> {
        let conv = |v: u64| {
            u32::try_from(v).map_err(|_| LayerError::BadHeader {
                path: lossy(&e.name),
                offset: e.offset,
                reason: "uid or gid above 2^32",
            })
        };
        Ok((Uid::from_raw(conv(e.uid)?), Gid::from_raw(conv(e.gid)?)))
    }

    pub(super) fn chown_at(&self, e: &Entry, dirfd: i32, name: &[u8]) -> Result<(), LayerError> {
        if !(self.opts.same_owner && self.is_root) {
            return Ok(());
        }
        let (u, g) = self.ids(e)?;
        let flags = if name == b"." {
            AtFlags::empty()
        } else {
            AtFlags::AT_SYMLINK_NOFOLLOW
        };
        fchownat(Some(dirfd), os(name), Some(u), Some(g), flags)
            .map_err(|er| self.fs(e, "chown")(errno_io(er)))
    }

    pub(super) fn xattrs_at(&self, e: &Entry, leaf: &Leaf) -> Result<(), LayerError> {
        if e.xattrs.is_empty() {
            return Ok(());
        }
        let p = leaf.proc_path();
        for (k, v) in &e.xattrs {
            xattr::set(&p, os(k), v).map_err(self.fs(e, "setxattr"))?;
        }
        Ok(())
    }

    pub(super) fn times_at(&self, e: &Entry, leaf: &Leaf) -> Result<(), LayerError> {
        let (a, m) = times(e);
        utimensat(
            Some(leaf.dirfd()),
            os(&leaf.name),
            &a,
            &m,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|er| self.fs(e, "set times")(errno_io(er)))
    }

    pub(super) fn whiteout(&mut self, e: &Entry, w: Whiteout<'_>) -> Result<(), LayerError> {
        // Whatever a whiteout removes, no remembered directory may outlive it.
        self.root.forget_dirs();
        let overlay = self.opts.whiteouts == WhiteoutStyle::OverlayCharDevice;
        if overlay && !self.is_root && !matches!(w, Whiteout::Ignored) {
            return Err(LayerError::NotPermitted {
                path: lossy(&e.name),
                offset: e.offset,
                reason: "overlay whiteouts need root",
            });
        }
        match w {
            Whiteout::No | Whiteout::Ignored => Ok(()),
            Whiteout::Remove { dir, name } => {
                let mut rel = dir.to_vec();
                if !rel.is_empty() {
                    rel.push(b'/');
                }
                rel.extend_from_slice(name);
                if overlay {
                    let leaf = self
                        .root
                        .leaf(&rel, true)
                        .map_err(self.fs(e, "resolve parent directory"))?;
                    self.before_remove(&leaf.canonical, e)?;
                    remove_all_at(leaf.dirfd(), &leaf.name)
                        .map_err(self.fs(e, "remove whited-out path"))?;
                    self.mark_touched(&leaf.canonical);
                    mknodat(
                        Some(leaf.dirfd()),
                        os(&leaf.name),
                        SFlag::S_IFCHR,
                        Mode::empty(),
                        nix::sys::stat::makedev(0, 0),
                    )
                    .map_err(|er| self.fs(e, "mknod whiteout")(errno_io(er)))?;
                    return self.chown_at(e, leaf.dirfd(), &leaf.name);
                }
                let leaf = match self.root.leaf(&rel, false) {
                    Ok(l) => l,
                    Err(er) if matches!(er.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                        return Ok(())
                    }
                    Err(er) => return Err(self.fs(e, "resolve parent directory")(er)),
                };
                self.before_remove(&leaf.canonical, e)?;
                remove_all_at(leaf.dirfd(), &leaf.name)
                    .map_err(self.fs(e, "remove whited-out path"))?;
                Ok(())
            }
            Whiteout::Opaque { dir } => {
                let canonical = if dir.is_empty() {
                    Vec::new()
                } else {
                    let leaf = self
                        .root
                        .leaf(dir, overlay)
                        .map_err(self.fs(e, "resolve opaque directory"));
                    let leaf = match leaf {
                        Ok(l) => l,
                        Err(_) if !overlay => return Ok(()),
                        Err(er) => return Err(er),
                    };
                    if overlay {
                        match mkdirat(
                            Some(leaf.dirfd()),
                            os(&leaf.name),
                            Mode::from_bits_truncate(0o755),
                        ) {
                            Ok(()) | Err(Errno::EEXIST) => {}
                            Err(er) => return Err(self.fs(e, "mkdir")(errno_io(er))),
                        }
                    }
                    leaf.canonical
                };
                if overlay {
                    self.mark_touched(&canonical);
                    // A readable descriptor, not O_PATH: fsetxattr refuses O_PATH descriptors.
                    let dir = self
                        .root
                        .open_dir(&canonical)
                        .map_err(self.fs(e, "open opaque directory"))?;
                    let fd = openat(
                        Some(dir.as_raw_fd()),
                        ".",
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|er| self.fs(e, "open opaque directory")(errno_io(er)))?;
                    // SAFETY: fd was just opened and is owned by nobody else.
                    let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
                    return xattr::FileExt::set_xattr(&f, whiteout::OVERLAY_OPAQUE_XATTR, b"y")
                        .map_err(self.fs(e, "setxattr"));
                }
                whiteout::clear_opaque(&self.root, &canonical, &self.touched)
                    .map_err(self.fs(e, "clear opaque directory"))
            }
        }
    }

    /// Directory modes and times are applied last, children first: creating entries inside
    /// a directory changes its mtime, and a read-only mode would stop a non-root import.
    pub(super) fn finish_dirs(&mut self) -> Result<(), LayerError> {
        for (canonical, mode, mtime) in self.dirs.iter().rev() {
            let err = |op, source| LayerError::Fs {
                path: lossy(canonical),
                offset: 0,
                op,
                source,
            };
            let fd = if canonical.is_empty() {
                openat(
                    Some(self.root.fd()),
                    ".",
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
            } else {
                let leaf = match self.root.leaf(canonical, false) {
                    Ok(l) => l,
                    Err(_) => continue,
                };
                openat(
                    Some(leaf.dirfd()),
                    os(&leaf.name),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
            };
            // Removed or replaced by a non-directory later in the layer: nothing to do.
            let Ok(fd) = fd else { continue };
            // SAFETY: fd was just opened and is owned by nobody else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(*mode))
                .map_err(|e| err("chmod", errno_io(e)))?;
            let t = TimeSpec::new(mtime.0, i64::from(mtime.1));
            futimens(fd.as_raw_fd(), &t, &t).map_err(|e| err("set times", errno_io(e)))?;
        }
        Ok(())
    }
}

/// Files at least this big have their writeback started as soon as they are written.
const EARLY_WRITEBACK_BYTES: u64 = 128 << 10;

/// Starts writing `file`'s dirty pages to disk without waiting for them
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): the device works while the rest of the layer
/// is extracted, so the sync that makes the layer durable at the end waits for less. Not a
/// durability step: the caller's sync of the whole tree still is.
fn start_writeback(file: &File) -> std::io::Result<()> {
    // SAFETY: sync_file_range only reads the descriptor, which `file` keeps open.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn times(e: &Entry) -> (TimeSpec, TimeSpec) {
    let t = TimeSpec::new(e.mtime.0, i64::from(e.mtime.1));
    (t, t)
}
