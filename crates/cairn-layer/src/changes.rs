//! A snapshot's changes against its parent as `docker diff` lists them (aufs' `Changes`), the
//! bytes those changes hold (aufs' `DiffSize`), and the size of the whole tree a mount shows.
//!
//! The changes come from the same walk as [`diff`](crate::diff) (the tar), read differently:
//! - `A path`: in the snapshot, not in its parent; everything below an added directory is added.
//! - `D path`: in the parent, not in the snapshot; only the top of a deleted tree is listed.
//! - `C path`: in both, and different (type, mode, owner, mtime, size, content, xattrs); and, as
//!   moby's `archive.ChangesDirs` does, every directory that holds a change.
//!
//! On overlay the snapshot's upper dir is read against the merged view of its parents: a 0:0
//! character device is `D` of what it hides, an opaque directory is `D` of every name its
//! parents showed there that it does not hold again, and an upper entry is `A` or `C` by
//! whether the parents showed that name. So the same change reads the same on every driver.
//! Paths are absolute (`/etc/hosts`), sorted bytewise, non-UTF-8 bytes shown lossily.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::diff::{self, abs, join, list, same_attrs, Change, DiffSource};
use super::error::LayerError;
use super::whiteout::OVERLAY_OPAQUE_XATTR;

/// What happened to a path, as `docker diff` prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChangeKind {
    /// `A`: added.
    Added,
    /// `C`: changed.
    Changed,
    /// `D`: deleted.
    Deleted,
}

impl ChangeKind {
    /// The letter `docker diff` prints.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// One listed change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathChange {
    pub kind: ChangeKind,
    /// Absolute within the snapshot: `/etc/hosts`.
    pub path: String,
    /// The path relative to the tree's root, as bytes (for sizes).
    pub rel: Vec<u8>,
}

/// What a snapshot's tree is made of.
#[derive(Clone, Copy, Debug)]
pub enum ChangesSource<'a> {
    /// Drivers that keep whole trees (vfs): the snapshot's tree and its parent's.
    Trees {
        lower: Option<&'a Path>,
        upper: &'a Path,
    },
    /// Overlay: the snapshot's upper dir over its parents' upper dirs, nearest first.
    Overlay {
        upper: &'a Path,
        lowers: &'a [PathBuf],
    },
}

/// Bytes and inodes of a tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeSize {
    /// Sum of regular-file sizes, each inode once.
    pub size_bytes: u64,
    /// Entries, the root not counted.
    pub inodes: u64,
}

fn fs_err<'a>(rel: &'a [u8], op: &'static str) -> impl FnOnce(io::Error) -> LayerError + 'a {
    move |source| LayerError::Fs {
        path: shown(rel),
        offset: 0,
        op,
        source,
    }
}

fn shown(rel: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(rel))
}

/// lstat that reads "absent" (and "a parent is not a directory") as `None`.
fn try_lstat(root: &Path, rel: &[u8]) -> Result<Option<Metadata>, LayerError> {
    match std::fs::symlink_metadata(abs(root, rel)) {
        Ok(md) => Ok(Some(md)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
        Err(e) => Err(fs_err(rel, "lstat")(e)),
    }
}

fn is_whiteout(md: &Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

fn is_opaque(root: &Path, rel: &[u8]) -> bool {
    matches!(xattr::get(abs(root, rel), OVERLAY_OPAQUE_XATTR), Ok(Some(v)) if v == b"y")
}

/// What the merged view of `layers` (nearest first, overlay rules) shows at `rel`.
fn lookup(layers: &[PathBuf], rel: &[u8]) -> Result<Option<Metadata>, LayerError> {
    let comps: Vec<&[u8]> = rel.split(|b| *b == b'/').collect();
    for layer in layers {
        let mut prefix = Vec::new();
        let mut opaque = false;
        for (i, c) in comps.iter().enumerate() {
            prefix = join(&prefix, c);
            let last = i + 1 == comps.len();
            match try_lstat(layer, &prefix)? {
                None => break,
                Some(md) if is_whiteout(&md) => return Ok(None),
                Some(md) if last => return Ok(Some(md)),
                // A non-directory hides everything below its name in the layers under it.
                Some(md) if !md.is_dir() => return Ok(None),
                Some(_) => opaque |= is_opaque(layer, &prefix),
            }
        }
        if opaque {
            return Ok(None);
        }
    }
    Ok(None)
}

/// The names the merged view of `layers` shows in directory `rel`.
fn merged_names(layers: &[PathBuf], rel: &[u8]) -> Result<BTreeSet<Vec<u8>>, LayerError> {
    let mut names = BTreeSet::new();
    for layer in layers {
        match try_lstat(layer, rel)? {
            Some(md) if md.is_dir() => names.extend(list(&abs(layer, rel), rel)?),
            _ => {}
        }
    }
    let mut shown = BTreeSet::new();
    for name in names {
        if lookup(layers, &join(rel, &name))?.is_some() {
            shown.insert(name);
        }
    }
    Ok(shown)
}

/// The changes `source` holds, sorted by path.
pub fn changes(source: ChangesSource<'_>) -> Result<Vec<PathChange>, LayerError> {
    let mut out: BTreeMap<Vec<u8>, ChangeKind> = BTreeMap::new();
    match source {
        ChangesSource::Trees { lower, upper } => {
            for change in diff::collect(DiffSource::Trees { lower, upper })? {
                match change {
                    Change::Entry { rel, .. } => {
                        let before = match lower {
                            Some(l) => try_lstat(l, &rel)?.is_some(),
                            None => false,
                        };
                        let kind = if before {
                            ChangeKind::Changed
                        } else {
                            ChangeKind::Added
                        };
                        out.insert(rel, kind);
                    }
                    Change::Whiteout { rel } => {
                        out.insert(rel, ChangeKind::Deleted);
                    }
                    Change::Opaque { .. } | Change::Linked { .. } => {}
                }
            }
        }
        ChangesSource::Overlay { upper, lowers } => {
            for change in diff::collect(DiffSource::OverlayUpper(upper))? {
                match change {
                    Change::Entry { rel, md } => {
                        let kind = match lookup(lowers, &rel)? {
                            None => ChangeKind::Added,
                            // Copied up for a change below it: listed only as its parent.
                            Some(l) if l.is_dir() && md.is_dir() && same_attrs(&md, &l) => continue,
                            Some(_) => ChangeKind::Changed,
                        };
                        out.insert(rel, kind);
                    }
                    Change::Whiteout { rel } => {
                        // A whiteout of nothing the parents show changes nothing.
                        if lookup(lowers, &rel)?.is_some() {
                            out.insert(rel, ChangeKind::Deleted);
                        }
                    }
                    Change::Opaque { dir } => {
                        for name in merged_names(lowers, &dir)? {
                            let child = join(&dir, &name);
                            if try_lstat(upper, &child)?.is_none() {
                                out.insert(child, ChangeKind::Deleted);
                            }
                        }
                    }
                    Change::Linked { .. } => {}
                }
            }
        }
    }
    // A directory that holds a change is changed itself (moby's ChangesDirs).
    let listed: Vec<Vec<u8>> = out.keys().cloned().collect();
    for rel in listed {
        let mut cur = rel.as_slice();
        while let Some(slash) = cur.iter().rposition(|b| *b == b'/') {
            cur = &cur[..slash];
            out.entry(cur.to_vec()).or_insert(ChangeKind::Changed);
        }
    }
    Ok(out
        .into_iter()
        .map(|(rel, kind)| PathChange {
            kind,
            path: shown(&rel),
            rel,
        })
        .collect())
}

/// aufs' `DiffSize` (moby's `archive.ChangesSize`): the bytes of the regular files the
/// changes add or change, each inode once, read from the snapshot's own tree `upper`.
pub fn changes_size(upper: &Path, changes: &[PathChange]) -> Result<u64, LayerError> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    for c in changes {
        if c.kind == ChangeKind::Deleted {
            continue;
        }
        if let Some(md) = try_lstat(upper, &c.rel)? {
            if md.is_file() && seen.insert((md.dev(), md.ino())) {
                total = total.saturating_add(md.size());
            }
        }
    }
    Ok(total)
}

/// The size of the whole tree the merged view of `layers` shows (nearest first; one layer
/// for a driver that keeps whole trees): what a mount of the snapshot holds.
pub fn tree_size(layers: &[PathBuf]) -> Result<TreeSize, LayerError> {
    let mut size = TreeSize::default();
    let mut seen = HashSet::new();
    let mut dirs = vec![Vec::new()];
    while let Some(dir) = dirs.pop() {
        for name in merged_names(layers, &dir)? {
            let child = join(&dir, &name);
            let Some(md) = lookup(layers, &child)? else {
                continue;
            };
            size.inodes += 1;
            if md.is_dir() {
                dirs.push(child);
            } else if md.is_file() && seen.insert((md.dev(), md.ino())) {
                size.size_bytes = size.size_bytes.saturating_add(md.size());
            }
        }
    }
    Ok(size)
}
