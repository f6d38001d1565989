//! The tree digest: one sha256 over a canonical listing of a snapshot's own tree, computed when
//! a commit seals it and journaled with the commit, so `fsck --verify` can tell whether the tree
//! on disk is still the one that was committed. The byte layout is in docs/engine-format.md
//! ("Tree digest").
//!
//! Every entry in walk order (pre-order, names sorted bytewise, never following symlinks), the
//! root first with the empty path, is fed to the hash as:
//! ```text
//! path bytes (relative to the root) 0x00
//! type  1 byte: 'd' dir, 'f' regular file, 'l' symlink, 'c' char dev, 'b' block dev,
//!               'p' fifo, 's' socket
//! mode  u32 LE (st_mode & 0o7777)   uid u32 LE   gid u32 LE
//! 'f':  size u64 LE, then the 32-byte sha256 of the content
//! 'l':  target length u32 LE, target bytes
//! 'c' 'b': rdev u64 LE
//! xattrs: count u32 LE, then for each (sorted by name) name length u32 LE, name, value length
//!         u32 LE, value
//! ```
//! Times are left out (a copy or an export restores them, and atime moves on every read): the
//! digest covers what the tree holds, not when it was touched.

use super::error::DriverError;
use super::walk::walk;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// The digest of the tree at `root`, as `sha256:<64 hex>`.
pub fn tree_digest(root: &Path) -> Result<String, DriverError> {
    let mut digest = TreeDigest::new(root);
    walk(root, |path, meta| digest.add(path, meta))?;
    Ok(digest.finish())
}

/// The digest of a tree already walked (`walk_small`): the same bytes as [`tree_digest`] of it.
pub(crate) fn entries_digest(
    root: &Path,
    entries: &[(std::path::PathBuf, Metadata)],
) -> Result<String, DriverError> {
    let mut digest = TreeDigest::new(root);
    for (path, meta) in entries {
        digest.add(path, meta)?;
    }
    Ok(digest.finish())
}

/// The hash fed entry by entry, in walk order.
struct TreeDigest<'a> {
    root: &'a Path,
    hasher: Sha256,
    /// A hardlinked inode's content is hashed once.
    linked: HashMap<(u64, u64), [u8; 32]>,
    buf: Vec<u8>,
}

impl<'a> TreeDigest<'a> {
    fn new(root: &'a Path) -> TreeDigest<'a> {
        TreeDigest {
            root,
            hasher: Sha256::new(),
            linked: HashMap::new(),
            buf: Vec::new(),
        }
    }

    fn add(&mut self, path: &Path, meta: &Metadata) -> Result<(), DriverError> {
        let rel = path.strip_prefix(self.root).unwrap_or(path);
        self.hasher.update(rel.as_os_str().as_bytes());
        self.hasher.update([0u8]);
        if meta.file_type().is_file() && self.buf.is_empty() {
            self.buf = vec![0u8; 1 << 16];
        }
        entry(
            &mut self.hasher,
            path,
            meta,
            &mut self.linked,
            &mut self.buf,
        )
    }

    fn finish(self) -> String {
        // `sha256:<64 hex>`, as every other digest cairn prints.
        cairn_layer::digest::Digest(self.hasher.finalize().into()).to_string()
    }
}

fn kind(meta: &Metadata) -> u8 {
    let t = meta.file_type();
    if t.is_dir() {
        b'd'
    } else if t.is_file() {
        b'f'
    } else if t.is_symlink() {
        b'l'
    } else if t.is_char_device() {
        b'c'
    } else if t.is_block_device() {
        b'b'
    } else if t.is_fifo() {
        b'p'
    } else {
        b's'
    }
}

fn len_u32(len: usize) -> [u8; 4] {
    u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes()
}

fn entry(
    hasher: &mut Sha256,
    path: &Path,
    meta: &Metadata,
    linked: &mut HashMap<(u64, u64), [u8; 32]>,
    buf: &mut [u8],
) -> Result<(), DriverError> {
    let k = kind(meta);
    hasher.update([k]);
    hasher.update((meta.mode() & 0o7777).to_le_bytes());
    hasher.update(meta.uid().to_le_bytes());
    hasher.update(meta.gid().to_le_bytes());
    match k {
        b'f' => {
            hasher.update(meta.size().to_le_bytes());
            let id = (meta.dev(), meta.ino());
            let content = match linked.get(&id) {
                Some(done) => *done,
                None => {
                    let done = content_digest(path, buf)?;
                    if meta.nlink() > 1 {
                        linked.insert(id, done);
                    }
                    done
                }
            };
            hasher.update(content);
        }
        b'l' => {
            let target = fs::read_link(path).map_err(|e| DriverError::io("readlink", path, e))?;
            let target = target.as_os_str().as_bytes();
            hasher.update(len_u32(target.len()));
            hasher.update(target);
        }
        b'c' | b'b' => hasher.update(meta.rdev().to_le_bytes()),
        _ => {}
    }
    let mut names: Vec<std::ffi::OsString> = xattr::list(path)
        .map_err(|e| DriverError::io("listxattr", path, e))?
        .collect();
    names.sort();
    hasher.update(len_u32(names.len()));
    for name in names {
        let value = xattr::get(path, &name)
            .map_err(|e| DriverError::io("getxattr", path, e))?
            .unwrap_or_default();
        hasher.update(len_u32(name.len()));
        hasher.update(name.as_bytes());
        hasher.update(len_u32(value.len()));
        hasher.update(&value);
    }
    Ok(())
}

fn content_digest(path: &Path, buf: &mut [u8]) -> Result<[u8; 32], DriverError> {
    let mut file = fs::File::from(super::walk::open_noatime(path, nix::fcntl::OFlag::empty())?);
    let mut hasher = Sha256::new();
    loop {
        let n = read_some(&mut file, buf).map_err(|e| DriverError::io("read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

fn read_some(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_covers_content_names_modes_and_links_but_not_times() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("t");
        fs::create_dir_all(root.join("d")).expect("mkdir");
        fs::write(root.join("d/f"), b"one").expect("write");
        std::os::unix::fs::symlink("d/f", root.join("l")).expect("symlink");
        let first = tree_digest(&root).expect("digest");
        assert!(first.starts_with("sha256:") && first.len() == 71, "{first}");
        assert_eq!(tree_digest(&root).expect("digest"), first, "stable");
        // Times do not count.
        let f = fs::File::options()
            .write(true)
            .open(root.join("d/f"))
            .expect("open");
        f.set_modified(std::time::SystemTime::UNIX_EPOCH)
            .expect("mtime");
        assert_eq!(tree_digest(&root).expect("digest"), first);
        // Content, names, modes and link targets do.
        fs::write(root.join("d/f"), b"two").expect("write");
        let content = tree_digest(&root).expect("digest");
        assert_ne!(content, first);
        fs::rename(root.join("d/f"), root.join("d/g")).expect("rename");
        let renamed = tree_digest(&root).expect("digest");
        assert_ne!(renamed, content);
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root.join("d/g"), fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_ne!(tree_digest(&root).expect("digest"), renamed);
    }

    #[test]
    fn a_walked_small_tree_digests_as_the_tree_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("t");
        fs::create_dir_all(root.join("d/e")).expect("mkdir");
        fs::write(root.join("d/f"), b"one").expect("write");
        fs::hard_link(root.join("d/f"), root.join("g")).expect("link");
        std::os::unix::fs::symlink("d/f", root.join("l")).expect("symlink");
        let entries = crate::walk::walk_small(&root, 16)
            .expect("walk")
            .expect("small");
        assert_eq!(
            entries_digest(&root, &entries).expect("entries digest"),
            tree_digest(&root).expect("digest")
        );
        let empty = dir.path().join("empty");
        fs::create_dir(&empty).expect("mkdir");
        let entries = crate::walk::walk_small(&empty, 16)
            .expect("walk")
            .expect("small");
        assert_eq!(
            entries_digest(&empty, &entries).expect("entries digest"),
            tree_digest(&empty).expect("digest")
        );
    }
}
