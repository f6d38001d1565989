//! An iterative pre-order walk that never follows symlinks, and the usage count built on it.
//!
//! Iterative (an explicit stack) so a deep tree cannot blow the thread's stack, and each
//! directory is read completely and closed before descending, so depth costs memory, never
//! file descriptors.

use super::error::DriverError;
use cairn_state::types::Usage;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The names in a directory, sorted (a stable order makes copies and walks reproducible).
pub(crate) fn list_dir(dir: &Path) -> Result<std::vec::IntoIter<OsString>, DriverError> {
    Ok(list_dir_bounded(dir, usize::MAX)?.unwrap_or_default())
}

/// Opens `path` to read with `O_NOATIME` where the caller may (it owns the file, or has
/// `CAP_FOWNER`), else without: reading a tree (a seal's walk and digest, fsck, verify) must not
/// write it. An atime update dirties the inode, and the seal's fsync that follows would then
/// commit a journal transaction for nothing but that timestamp (measured through `cairn serve`
/// with one client on ext4: the commit's fsync took 0.89 ms on average with atime updates,
/// 0.46 ms without).
pub(crate) fn open_noatime(path: &Path, flags: OFlag) -> Result<OwnedFd, DriverError> {
    let flags = flags | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let open = |flags| nix::fcntl::open(path, flags, Mode::empty());
    let fd = match open(flags | OFlag::O_NOATIME) {
        Err(Errno::EPERM) => open(flags),
        other => other,
    }
    .map_err(|e| DriverError::io("open", path, std::io::Error::from(e)))?;
    // SAFETY: `open` returned this descriptor to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Bytes of one `getdents64` read: as glibc's `readdir` takes.
const DIRENT_BUF_BYTES: usize = 32 * 1024;

/// `list_dir`, or `None` once the directory holds more than `limit` names. Read with
/// `getdents64` straight into a buffer: open, the reads, close, and nothing else (an empty
/// tree's seal reads its root this way on the engine thread).
fn list_dir_bounded(
    dir: &Path,
    limit: usize,
) -> Result<Option<std::vec::IntoIter<OsString>>, DriverError> {
    let fd = open_noatime(dir, OFlag::O_DIRECTORY)?;
    let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); DIRENT_BUF_BYTES];
    let mut listing = rustix::fs::RawDir::new(&fd, &mut buf);
    let mut names = Vec::new();
    while let Some(entry) = listing.next() {
        let entry = entry.map_err(|e| DriverError::io("readdir", dir, e.into()))?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        if names.len() >= limit {
            return Ok(None);
        }
        names.push(OsString::from_vec(name.to_vec()));
    }
    names.sort();
    Ok(Some(names.into_iter()))
}

/// Visits `root` and then every entry below it, parents before children, with its lstat.
pub(crate) fn walk(
    root: &Path,
    visit: impl FnMut(&Path, &Metadata) -> Result<(), DriverError>,
) -> Result<(), DriverError> {
    walk_bounded(root, usize::MAX, visit).map(|_| ())
}

/// `walk`'s visits as a list (the same order), or `None` as soon as the tree turns out to hold
/// more than `max_inodes` entries, its root included: a small tree read once, for callers that
/// need it several ways (an inline seal's usage, fsync list and digest). A directory is read
/// only as far as the bound, so a huge one costs no more than a small one.
pub(crate) fn walk_small(
    root: &Path,
    max_inodes: u64,
) -> Result<Option<Vec<(PathBuf, Metadata)>>, DriverError> {
    let max = usize::try_from(max_inodes).unwrap_or(usize::MAX);
    let mut entries = Vec::new();
    let within = walk_bounded(root, max, |path, meta| {
        entries.push((path.to_path_buf(), meta.clone()));
        Ok(())
    })?;
    Ok(within.then_some(entries))
}

/// The walk both share: `false` (and no more visits) once more than `max` entries, the root
/// included, are found or listed.
fn walk_bounded(
    root: &Path,
    max: usize,
    mut visit: impl FnMut(&Path, &Metadata) -> Result<(), DriverError>,
) -> Result<bool, DriverError> {
    if max == 0 {
        return Ok(false);
    }
    let meta = fs::symlink_metadata(root).map_err(|e| DriverError::io("lstat", root, e))?;
    visit(root, &meta)?;
    let mut seen = 1usize;
    if !meta.is_dir() {
        return Ok(true);
    }
    let Some(names) = list_dir_bounded(root, max - seen)? else {
        return Ok(false);
    };
    let mut stack = vec![(root.to_path_buf(), names)];
    while let Some((dir, names)) = stack.last_mut() {
        let Some(name) = names.next() else {
            stack.pop();
            continue;
        };
        let path: PathBuf = dir.join(name);
        // lstat: symlinks are reported, never followed.
        let meta = fs::symlink_metadata(&path).map_err(|e| DriverError::io("lstat", &path, e))?;
        visit(&path, &meta)?;
        seen += 1;
        if meta.is_dir() {
            // Names listed and not yet visited count against the bound too (an unbounded
            // walk skips the sum: it would cost the depth at every directory).
            let room = if max == usize::MAX {
                usize::MAX
            } else {
                let pending: usize = stack.iter().map(|(_, n)| n.len()).sum();
                max.saturating_sub(seen.saturating_add(pending))
            };
            let Some(names) = list_dir_bounded(&path, room)? else {
                return Ok(false);
            };
            stack.push((path, names));
        }
    }
    Ok(true)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A seal reads its tree (a walk, then the digest) and must not write it: with atime
    /// updates its fsync would commit a journal transaction for nothing else.
    #[test]
    fn reading_a_tree_to_seal_it_leaves_its_access_times_alone() {
        use std::time::{Duration, SystemTime};
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().join("fs");
        fs::create_dir_all(root.join("sub")).expect("mkdir");
        fs::write(root.join("sub/f"), b"contents").expect("write");
        // An access time older than the modification time: relatime updates it on the next read.
        let old = SystemTime::now() - Duration::from_secs(3600);
        for path in [root.join("sub/f"), root.join("sub"), root.clone()] {
            let f = fs::File::open(&path).expect("open");
            f.set_times(fs::FileTimes::new().set_accessed(old))
                .expect("set atime");
        }
        let atimes = |root: &Path| -> Vec<i64> {
            ["sub/f", "sub", ""]
                .iter()
                .map(|p| fs::symlink_metadata(root.join(p)).expect("lstat").atime())
                .collect()
        };
        let before = atimes(&root);
        let entries = walk_small(&root, 16).expect("walk").expect("small");
        crate::digest::entries_digest(&root, &entries).expect("digest");
        assert_eq!(atimes(&root), before, "a seal's reads updated access times");
    }

    /// A directory too big for one `getdents64` buffer is read whole, in order, and the bound
    /// stops the read at the first name past it.
    #[test]
    fn a_directory_bigger_than_one_read_is_listed_whole_and_sorted() {
        let d = tempfile::tempdir().expect("tempdir");
        // 3,000 names of 40 bytes: some 170 KiB of dirents, several reads of 32 KiB.
        let mut want: Vec<OsString> = (0..3_000)
            .map(|i| OsString::from(format!("{i:0>40}")))
            .collect();
        for name in &want {
            fs::write(d.path().join(name), b"").expect("create");
        }
        want.sort();
        let got: Vec<OsString> = list_dir(d.path()).expect("list").collect();
        assert_eq!(got, want);
        assert!(list_dir_bounded(d.path(), 2_999).expect("list").is_none());
        let all = list_dir_bounded(d.path(), 3_000)
            .expect("list")
            .expect("fits");
        assert_eq!(all.count(), 3_000);
        let e = list_dir(&d.path().join("missing")).expect_err("a missing directory");
        assert!(
            matches!(e, DriverError::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound),
            "{e:?}"
        );
    }

    fn visited(root: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(root, |p, _| {
            out.push(p.to_path_buf());
            Ok(())
        })
        .expect("walk");
        out
    }

    #[test]
    fn walk_small_visits_what_walk_does_or_says_the_tree_is_too_big() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("t");
        fs::create_dir_all(root.join("b/c")).expect("mkdir");
        fs::write(root.join("a"), b"x").expect("write");
        fs::write(root.join("b/c/d"), b"y").expect("write");
        fs::write(root.join("b/e"), b"z").expect("write");
        // root, a, b, b/c, b/c/d, b/e
        let all = visited(&root);
        assert_eq!(all.len(), 6);
        for max in 6..9 {
            let small = walk_small(&root, max).expect("walk_small").expect("fits");
            let paths: Vec<PathBuf> = small.into_iter().map(|(p, _)| p).collect();
            assert_eq!(paths, all, "max {max}");
        }
        for max in 0..6 {
            assert!(
                walk_small(&root, max).expect("walk_small").is_none(),
                "max {max}"
            );
        }
        let file = root.join("a");
        assert_eq!(
            walk_small(&file, 1).expect("file").map(|e| e.len()),
            Some(1)
        );
        assert!(walk_small(&file, 0).expect("file").is_none());
    }
}
