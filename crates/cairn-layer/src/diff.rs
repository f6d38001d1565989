//! The changes of a snapshot against its parent, written as an OCI layer tar.
//!
//! Two sources, one output:
//! - [`DiffSource::Trees`] (vfs): the snapshot's full tree against its parent's full tree,
//!   compared like containerd's `fs.Changes` double walk: type, permission bits, owner,
//!   device number, size, mtime to the nanosecond, symlink target, xattrs, and content where
//!   all of those are equal. A name only in the parent becomes a `.wh.NAME` whiteout.
//! - [`DiffSource::OverlayUpper`] (overlay): every entry of the upper dir is a change; a
//!   0:0 character device is a whiteout, a directory with `trusted.overlay.opaque=y` is
//!   followed by `.wh..wh..opq` and then its upper contents.
//!
//! The tar is deterministic: uncompressed, GNU headers as the `tar` crate writes them (GNU
//! long names), xattrs in PAX `SCHILY.xattr.*` records, entries in path order with every
//! directory before its contents, mtimes truncated to the second (as containerd does),
//! whiteouts with mode 0, owner 0:0 and mtime 0. Files linked to each other inside the diff
//! become tar hardlinks to the first name; a changed inode brings every name it has in the
//! snapshot into the diff, so links survive the round trip. Sockets are skipped.

use std::collections::{HashMap, HashSet};
use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::digest::Digest;
use super::error::{LayerError, NO_ENTRY};
use super::safepath::{self, os, Root};
use super::whiteout::{OPAQUE, OVERLAY_OPAQUE_XATTR, PREFIX};

/// What to diff.
#[derive(Clone, Copy, Debug)]
pub enum DiffSource<'a> {
    /// `upper` is the snapshot's full tree, `lower` its parent's (none: the whole tree).
    Trees {
        lower: Option<&'a Path>,
        upper: &'a Path,
    },
    /// An overlay upper dir: it holds exactly the snapshot's changes.
    OverlayUpper(&'a Path),
}

/// What [`diff`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diffed {
    /// sha256 of the tar bytes.
    pub diff_id: Digest,
    /// Bytes of tar written, end-of-archive included.
    pub size_bytes: u64,
    /// Tar entries (extended headers not counted).
    pub entries: u64,
}

/// xattrs named with this prefix belong to overlayfs, never to the layer.
const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";
/// Overlay features whose upper dir does not hold the whole change.
const OVERLAY_UNSUPPORTED: [&[u8]; 2] = [b"trusted.overlay.redirect", b"trusted.overlay.metacopy"];
const CHUNK: usize = 256 * 1024;

type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Debug)]
pub(crate) enum Change {
    /// Write this entry of the snapshot.
    Entry { rel: Vec<u8>, md: Metadata },
    /// `rel` was deleted.
    Whiteout { rel: Vec<u8> },
    /// Directory `dir` hides everything below it in the parent.
    Opaque { dir: Vec<u8> },
    /// An unchanged file with several links: written only if another of its names changed.
    Linked { rel: Vec<u8>, md: Metadata },
}

pub(crate) fn join(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(rel.len() + 1 + name.len());
    v.extend_from_slice(rel);
    if !rel.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

fn shown(rel: &[u8]) -> String {
    if rel.is_empty() {
        ".".to_owned()
    } else {
        String::from_utf8_lossy(rel).into_owned()
    }
}

pub(crate) fn abs(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(os(rel))
    }
}

fn fs_err<'a>(rel: &'a [u8], op: &'static str) -> impl FnOnce(io::Error) -> LayerError + 'a {
    move |source| LayerError::Fs {
        path: shown(rel),
        offset: 0,
        op,
        source,
    }
}

pub(crate) fn list(dir: &Path, rel: &[u8]) -> Result<Vec<Vec<u8>>, LayerError> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).map_err(fs_err(rel, "read directory"))? {
        let e = e.map_err(fs_err(rel, "read directory"))?;
        names.push(e.file_name().into_vec());
    }
    names.sort();
    Ok(names)
}

pub(crate) fn lstat(root: &Path, rel: &[u8]) -> Result<Metadata, LayerError> {
    std::fs::symlink_metadata(abs(root, rel)).map_err(fs_err(rel, "lstat"))
}

/// xattrs of an entry, sorted, without overlayfs' own.
fn xattrs(root: &Path, rel: &[u8]) -> Result<Xattrs, LayerError> {
    let p = abs(root, rel);
    let mut out = Vec::new();
    let names = match xattr::list(&p) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        Err(e) => return Err(fs_err(rel, "listxattr")(e)),
    };
    for name in names {
        let name = name.into_vec();
        if name.starts_with(OVERLAY_XATTR_PREFIX) {
            continue;
        }
        match xattr::get(&p, os(&name)) {
            Ok(Some(v)) => out.push((name, v)),
            Ok(None) => {}
            Err(e) => return Err(fs_err(rel, "getxattr")(e)),
        }
    }
    out.sort();
    Ok(out)
}

fn check_name(rel: &[u8], name: &[u8]) -> Result<(), LayerError> {
    if name.starts_with(PREFIX) {
        return Err(LayerError::Unsupported {
            path: shown(&join(rel, name)),
            offset: 0,
            reason: "a name starting with .wh. would be read back as a whiteout",
        });
    }
    Ok(())
}

struct Collector<'a> {
    upper: &'a Path,
    changes: Vec<Change>,
}

impl Collector<'_> {
    /// `rel` and everything below it is new.
    fn add_all(&mut self, rel: Vec<u8>, md: Metadata) -> Result<(), LayerError> {
        let is_dir = md.is_dir();
        self.changes.push(Change::Entry {
            rel: rel.clone(),
            md,
        });
        if is_dir {
            self.add_children(&rel)?;
        }
        Ok(())
    }

    fn add_children(&mut self, rel: &[u8]) -> Result<(), LayerError> {
        for name in list(&abs(self.upper, rel), rel)? {
            check_name(rel, &name)?;
            let child = join(rel, &name);
            let md = lstat(self.upper, &child)?;
            self.add_all(child, md)?;
        }
        Ok(())
    }

    /// vfs: the directory `rel`, present as a directory in both trees.
    fn compare_dir(&mut self, lower: &Path, rel: &[u8]) -> Result<(), LayerError> {
        let ups = list(&abs(self.upper, rel), rel)?;
        let lows = list(&abs(lower, rel), rel)?;
        let (mut i, mut j) = (0, 0);
        while i < ups.len() || j < lows.len() {
            let ord = match (ups.get(i), lows.get(j)) {
                (Some(u), Some(l)) => u.cmp(l),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match ord {
                std::cmp::Ordering::Greater => {
                    self.changes.push(Change::Whiteout {
                        rel: join(rel, &lows[j]),
                    });
                    j += 1;
                }
                std::cmp::Ordering::Less => {
                    check_name(rel, &ups[i])?;
                    let child = join(rel, &ups[i]);
                    let md = lstat(self.upper, &child)?;
                    self.add_all(child, md)?;
                    i += 1;
                }
                std::cmp::Ordering::Equal => {
                    check_name(rel, &ups[i])?;
                    let child = join(rel, &ups[i]);
                    self.compare_entry(lower, child)?;
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok(())
    }

    fn compare_entry(&mut self, lower: &Path, rel: Vec<u8>) -> Result<(), LayerError> {
        let u = lstat(self.upper, &rel)?;
        let l = lstat(lower, &rel)?;
        let (ut, lt) = (u.file_type(), l.file_type());
        if ut.is_dir() && lt.is_dir() {
            let changed = !same_attrs(&u, &l) || xattrs(self.upper, &rel)? != xattrs(lower, &rel)?;
            if changed {
                self.changes.push(Change::Entry {
                    rel: rel.clone(),
                    md: u,
                });
            }
            return self.compare_dir(lower, &rel);
        }
        if ut.is_dir() {
            // A directory where the parent has something else: new, with all it holds.
            return self.add_all(rel, u);
        }
        if self.same_entry(lower, &rel, &u, &l)? {
            if ut.is_file() && u.nlink() > 1 {
                self.changes.push(Change::Linked { rel, md: u });
            }
            return Ok(());
        }
        self.changes.push(Change::Entry { rel, md: u });
        Ok(())
    }

    fn same_entry(
        &self,
        lower: &Path,
        rel: &[u8],
        u: &Metadata,
        l: &Metadata,
    ) -> Result<bool, LayerError> {
        let (ut, lt) = (u.file_type(), l.file_type());
        let same_type = (ut.is_file() && lt.is_file())
            || (ut.is_symlink() && lt.is_symlink())
            || (ut.is_char_device() && lt.is_char_device())
            || (ut.is_block_device() && lt.is_block_device())
            || (ut.is_fifo() && lt.is_fifo())
            || (ut.is_socket() && lt.is_socket());
        if !same_type || !same_attrs(u, l) || u.size() != l.size() {
            return Ok(false);
        }
        if (ut.is_char_device() || ut.is_block_device()) && u.rdev() != l.rdev() {
            return Ok(false);
        }
        if ut.is_symlink() {
            let a = std::fs::read_link(abs(self.upper, rel)).map_err(fs_err(rel, "readlink"))?;
            let b = std::fs::read_link(abs(lower, rel)).map_err(fs_err(rel, "readlink"))?;
            if a != b {
                return Ok(false);
            }
        }
        if xattrs(self.upper, rel)? != xattrs(lower, rel)? {
            return Ok(false);
        }
        if ut.is_file() && u.size() > 0 {
            return same_content(&abs(self.upper, rel), &abs(lower, rel), rel);
        }
        Ok(true)
    }

    /// overlay: everything in the upper dir below `rel` is a change.
    fn walk_upper(&mut self, rel: &[u8]) -> Result<(), LayerError> {
        for name in list(&abs(self.upper, rel), rel)? {
            check_name(rel, &name)?;
            let child = join(rel, &name);
            let md = lstat(self.upper, &child)?;
            let ft = md.file_type();
            if ft.is_char_device() && md.rdev() == 0 {
                self.changes.push(Change::Whiteout { rel: child });
                continue;
            }
            let p = abs(self.upper, &child);
            for x in OVERLAY_UNSUPPORTED {
                if matches!(xattr::get(&p, os(x)), Ok(Some(_))) {
                    return Err(LayerError::Unsupported {
                        path: shown(&child),
                        offset: 0,
                        reason: "overlay redirect_dir/metacopy entry: the upper dir does not hold the change",
                    });
                }
            }
            if ft.is_dir() {
                let opaque =
                    matches!(xattr::get(&p, OVERLAY_OPAQUE_XATTR), Ok(Some(v)) if v == b"y");
                self.changes.push(Change::Entry {
                    rel: child.clone(),
                    md,
                });
                if opaque {
                    self.changes.push(Change::Opaque { dir: child.clone() });
                }
                self.walk_upper(&child)?;
            } else {
                self.changes.push(Change::Entry { rel: child, md });
            }
        }
        Ok(())
    }
}

pub(crate) fn same_attrs(u: &Metadata, l: &Metadata) -> bool {
    u.mode() & 0o7777 == l.mode() & 0o7777
        && u.uid() == l.uid()
        && u.gid() == l.gid()
        && u.mtime() == l.mtime()
        && u.mtime_nsec() == l.mtime_nsec()
}

fn same_content(a: &Path, b: &Path, rel: &[u8]) -> Result<bool, LayerError> {
    let mut fa = File::open(a).map_err(fs_err(rel, "open for compare"))?;
    let mut fb = File::open(b).map_err(fs_err(rel, "open for compare"))?;
    let mut ba = vec![0u8; CHUNK];
    let mut bb = vec![0u8; CHUNK];
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(fs_err(rel, "read for compare"))?;
        let nb = read_full(&mut fb, &mut bb).map_err(fs_err(rel, "read for compare"))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Hashes and counts what goes through to the output.
struct Hashing<W: Write> {
    w: W,
    hash: Sha256,
    offset: u64,
    /// Set on failure: the builder's drop must not end a partial archive as if it were whole.
    poisoned: bool,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.poisoned {
            return Err(io::Error::other("diff failed"));
        }
        let n = self.w.write(buf)?;
        self.hash.update(&buf[..n]);
        self.offset += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// Gives exactly `remaining` bytes of a file, or an error saying how it changed.
struct Exact {
    f: File,
    remaining: u64,
    failure: Option<&'static str>,
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let k = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = loop {
            match self.f.read(&mut buf[..k]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.failure = Some("read file for diff");
                    return Err(e);
                }
            }
        };
        if n == 0 {
            self.failure = Some("file shrank while it was read");
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

struct Writer<W: Write> {
    tar: tar::Builder<Hashing<W>>,
    entries: u64,
}

impl<W: Write> Writer<W> {
    fn offset(&self) -> u64 {
        self.tar.get_ref().offset
    }

    fn write_err(&self, rel: &[u8]) -> impl FnOnce(io::Error) -> LayerError {
        let (path, offset) = (shown(rel), self.offset());
        move |source| LayerError::Write {
            path,
            offset,
            what: "diff tar",
            source,
        }
    }

    fn header(md: Option<&Metadata>, kind: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        match md {
            Some(md) => {
                h.set_mode(md.mode() & 0o7777);
                h.set_uid(u64::from(md.uid()));
                h.set_gid(u64::from(md.gid()));
                h.set_mtime(u64::try_from(md.mtime()).unwrap_or(0));
            }
            None => {
                h.set_mode(0);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(0);
            }
        }
        h
    }

    /// A PAX extended header carrying the entry's xattrs.
    fn pax(&mut self, rel: &[u8], xattrs: &Xattrs) -> Result<(), LayerError> {
        if xattrs.is_empty() {
            return Ok(());
        }
        let mut data = Vec::new();
        for (k, v) in xattrs {
            let body_len = b" SCHILY.xattr.".len() + k.len() + 1 + v.len() + 1;
            let mut len = body_len + 1;
            while len.to_string().len() + body_len != len {
                len = len.to_string().len() + body_len;
            }
            data.extend_from_slice(len.to_string().as_bytes());
            data.extend_from_slice(b" SCHILY.xattr.");
            data.extend_from_slice(k);
            data.push(b'=');
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        h.set_path("././@PaxHeader").map_err(self.write_err(rel))?;
        h.set_cksum();
        let r = self.tar.append(&h, &data[..]);
        r.map_err(self.write_err(rel))
    }

    fn marker(&mut self, name: Vec<u8>) -> Result<(), LayerError> {
        let mut h = Self::header(None, tar::EntryType::Regular);
        let r = self.tar.append_data(&mut h, os(&name), io::empty());
        r.map_err(self.write_err(&name))?;
        self.entries += 1;
        Ok(())
    }

    fn whiteout(&mut self, rel: &[u8]) -> Result<(), LayerError> {
        let (dir, name) = safepath::split_leaf(rel);
        let mut leaf = PREFIX.to_vec();
        leaf.extend_from_slice(name);
        self.marker(join(dir, &leaf))
    }

    fn opaque(&mut self, dir: &[u8]) -> Result<(), LayerError> {
        self.marker(join(dir, OPAQUE))
    }

    fn entry(
        &mut self,
        src: &Path,
        root: &Root,
        rel: &[u8],
        md: &Metadata,
        links: &mut HashMap<(u64, u64), Vec<u8>>,
    ) -> Result<(), LayerError> {
        let ft = md.file_type();
        if ft.is_socket() {
            return Ok(());
        }
        let name = os(rel);
        if ft.is_file() && md.nlink() > 1 {
            if let Some(first) = links.get(&(md.dev(), md.ino())) {
                let first = first.clone();
                let mut h = Self::header(Some(md), tar::EntryType::Link);
                let r = self.tar.append_link(&mut h, name, os(&first));
                r.map_err(self.write_err(rel))?;
                self.entries += 1;
                return Ok(());
            }
            links.insert((md.dev(), md.ino()), rel.to_vec());
        }
        let x = xattrs(src, rel)?;
        self.pax(rel, &x)?;
        if ft.is_dir() {
            let mut h = Self::header(Some(md), tar::EntryType::Directory);
            let mut dir_name = rel.to_vec();
            dir_name.push(b'/');
            let r = self.tar.append_data(&mut h, os(&dir_name), io::empty());
            r.map_err(self.write_err(rel))?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(abs(src, rel)).map_err(fs_err(rel, "readlink"))?;
            let mut h = Self::header(Some(md), tar::EntryType::Symlink);
            let r = self.tar.append_link(&mut h, name, &target);
            r.map_err(self.write_err(rel))?;
        } else if ft.is_file() {
            self.file(root, rel, md)?;
        } else {
            let kind = if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else {
                tar::EntryType::Fifo
            };
            let mut h = Self::header(Some(md), kind);
            if !ft.is_fifo() {
                let dev = md.rdev();
                let set = h
                    .set_device_major(libc::major(dev))
                    .and_then(|()| h.set_device_minor(libc::minor(dev)));
                set.map_err(self.write_err(rel))?;
            }
            let r = self.tar.append_data(&mut h, name, io::empty());
            r.map_err(self.write_err(rel))?;
        }
        self.entries += 1;
        Ok(())
    }

    fn file(&mut self, root: &Root, rel: &[u8], md: &Metadata) -> Result<(), LayerError> {
        let offset = self.offset();
        let f = safepath::open_file_in(root, rel).map_err(|source| LayerError::Fs {
            path: shown(rel),
            offset,
            op: "open file for diff",
            source,
        })?;
        let now = f.metadata().map_err(fs_err(rel, "fstat"))?;
        if now.dev() != md.dev() || now.ino() != md.ino() {
            return Err(LayerError::ContentChanged {
                path: shown(rel),
                offset,
                reason: "replaced while the diff was written",
            });
        }
        let size = md.size();
        let mut h = Self::header(Some(md), tar::EntryType::Regular);
        h.set_size(size);
        let mut data = Exact {
            f,
            remaining: size,
            failure: None,
        };
        if let Err(source) = self.tar.append_data(&mut h, os(rel), &mut data) {
            return Err(match data.failure {
                Some("file shrank while it was read") => LayerError::SizeChanged {
                    path: shown(rel),
                    offset,
                    expected: size,
                    actual: data.f.metadata().map(|m| m.size()).unwrap_or(0),
                },
                Some(op) => LayerError::Fs {
                    path: shown(rel),
                    offset,
                    op,
                    source,
                },
                None => self.write_err(rel)(source),
            });
        }
        let after = data.f.metadata().map_err(fs_err(rel, "fstat"))?;
        if after.size() != size {
            return Err(LayerError::SizeChanged {
                path: shown(rel),
                offset,
                expected: size,
                actual: after.size(),
            });
        }
        Ok(())
    }
}

/// The changes `source` describes, in walk order (also `snapshot changes`' input).
pub(crate) fn collect(source: DiffSource<'_>) -> Result<Vec<Change>, LayerError> {
    let upper = match source {
        DiffSource::Trees { upper, .. } | DiffSource::OverlayUpper(upper) => upper,
    };
    let mut c = Collector {
        upper,
        changes: Vec::new(),
    };
    match source {
        DiffSource::Trees {
            lower: Some(lower), ..
        } => c.compare_dir(lower, b"")?,
        DiffSource::Trees { lower: None, .. } => c.add_children(b"")?,
        DiffSource::OverlayUpper(_) => c.walk_upper(b"")?,
    }
    Ok(c.changes)
}

/// Writes the changes `source` describes to `out` as a layer tar; returns its DiffID.
pub fn diff(source: DiffSource<'_>, out: impl Write) -> Result<Diffed, LayerError> {
    let upper = match source {
        DiffSource::Trees { upper, .. } | DiffSource::OverlayUpper(upper) => upper,
    };
    let root = Root::open(upper).map_err(|source| LayerError::Fs {
        path: upper.display().to_string(),
        offset: 0,
        op: "open tree",
        source,
    })?;
    let c = Collector {
        upper,
        changes: collect(source)?,
    };
    // Every name of an inode the diff writes goes with it.
    let written: HashSet<(u64, u64)> = c
        .changes
        .iter()
        .filter_map(|ch| match ch {
            Change::Entry { md, .. } if md.is_file() && md.nlink() > 1 => {
                Some((md.dev(), md.ino()))
            }
            _ => None,
        })
        .collect();
    let mut w = Writer {
        tar: tar::Builder::new(Hashing {
            w: io::BufWriter::with_capacity(1 << 20, out),
            hash: Sha256::new(),
            offset: 0,
            poisoned: false,
        }),
        entries: 0,
    };
    let mut links = HashMap::new();
    let written_all = c.changes.iter().try_for_each(|ch| match ch {
        Change::Entry { rel, md } => w.entry(upper, &root, rel, md, &mut links),
        Change::Linked { rel, md } if written.contains(&(md.dev(), md.ino())) => {
            w.entry(upper, &root, rel, md, &mut links)
        }
        Change::Linked { .. } => Ok(()),
        Change::Whiteout { rel } => w.whiteout(rel),
        Change::Opaque { dir } => w.opaque(dir),
    });
    if let Err(e) = written_all {
        w.tar.get_mut().poisoned = true;
        return Err(e);
    }
    if let Err(e) = w.tar.finish() {
        let err = w.write_err(NO_ENTRY.as_bytes())(e);
        w.tar.get_mut().poisoned = true;
        return Err(err);
    }
    let entries = w.entries;
    let offset = w.offset();
    let mut hashing = w.tar.into_inner().map_err(|source| LayerError::Write {
        path: NO_ENTRY.to_string(),
        offset,
        what: "diff tar",
        source,
    })?;
    hashing.w.flush().map_err(|source| LayerError::Write {
        path: NO_ENTRY.to_string(),
        offset,
        what: "diff tar",
        source,
    })?;
    Ok(Diffed {
        diff_id: Digest(hashing.hash.finalize().into()),
        size_bytes: hashing.offset,
        entries,
    })
}
