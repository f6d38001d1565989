//! Helpers shared by the engine test suites: opening roots, error classes, seeded runs,
//! mounting snapshots, applying file-system changes and comparing trees.

#![allow(dead_code)]

use cairn_driver::mount::{mount_all, unmount};
use cairn_engine::{Engine, EngineError, EngineHandle, EngineOptions};
use cairn_state::types::{DriverKind, Mount};
use cairn_state::{Labels, StateError};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Says loudly that a test did not run (never pass silently).
pub fn skip(reason: &str) {
    println!("skipped: {reason}");
    eprintln!("skipped: {reason}");
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

pub fn options(driver: DriverKind) -> EngineOptions {
    EngineOptions {
        driver: Some(driver),
        ..EngineOptions::default()
    }
}

pub fn open(root: &Path, driver: DriverKind) -> EngineHandle {
    Engine::open(root, options(driver))
        .unwrap_or_else(|e| panic!("open {}: {e}", root.display()))
        .0
}

/// containerd's error classes (errdefs), plus "anything else".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    Other,
}

pub fn class(e: &EngineError) -> Class {
    match e {
        EngineError::State(StateError::NotFound { .. }) => Class::NotFound,
        EngineError::State(StateError::AlreadyExists { .. }) => Class::AlreadyExists,
        EngineError::State(StateError::FailedPrecondition { .. }) => Class::FailedPrecondition,
        EngineError::State(StateError::InvalidArgument { .. }) => Class::InvalidArgument,
        _ => Class::Other,
    }
}

/// Asserts `r` failed with error class `want`.
#[track_caller]
pub fn expect_err<T: std::fmt::Debug>(r: Result<T, EngineError>, want: Class, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected {want:?}, got Ok({v:?})"),
        Err(e) => assert_eq!(class(&e), want, "{what}: wrong error class for {e}"),
    }
}

/// Run `case` for `count` seeds derived from `base` (or just the seed in env `CAIRN_SEED`;
/// env `CAIRN_CASES` overrides `count`), naming the failing seed and how to replay it.
pub fn run_seeds(test: &str, count: u64, base: u64, case: impl Fn(u64)) {
    let seeds: Vec<u64> = match std::env::var("CAIRN_SEED") {
        Ok(s) => vec![s.parse().expect("CAIRN_SEED must be a u64")],
        Err(_) => {
            let count = std::env::var("CAIRN_CASES")
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(count);
            (0..count)
                .map(|i| base.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
                .collect()
        }
    };
    for seed in seeds {
        println!("{test}: seed {seed}");
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| case(seed))) {
            eprintln!("{test}: failed with seed {seed}; replay: CAIRN_SEED={seed} cargo test --test {test}");
            std::panic::resume_unwind(panic);
        }
    }
}

/// A snapshot's mounts made accessible as a directory: really mounted (root), or, without
/// root, the source of a single bind mount used directly.
#[derive(Debug)]
pub struct Mounted {
    dir: PathBuf,
    mounted: bool,
}

impl Mounted {
    /// `None` when the mounts cannot be accessed without root (the caller must skip).
    pub fn new(mounts: &[Mount], work: &Path) -> Option<Mounted> {
        if is_root() {
            let dir = tempfile::Builder::new()
                .prefix("mnt")
                .tempdir_in(work)
                .expect("mount point")
                .keep();
            mount_all(mounts, &dir)
                .unwrap_or_else(|e| panic!("mount {mounts:?} on {}: {e}", dir.display()));
            return Some(Mounted { dir, mounted: true });
        }
        match mounts {
            [m] if m.kind == "bind" => Some(Mounted {
                dir: m.source.clone(),
                mounted: false,
            }),
            _ => None,
        }
    }

    /// Like `new`, panicking if a mount is needed without root.
    pub fn must(mounts: &[Mount], work: &Path) -> Mounted {
        Mounted::new(mounts, work)
            .expect("these mounts need root; the test should have been skipped")
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn unmount(mut self) {
        if self.mounted {
            self.mounted = false;
            unmount(&self.dir).unwrap_or_else(|e| panic!("unmount {}: {e}", self.dir.display()));
            std::fs::remove_dir(&self.dir).expect("remove mount point");
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            // Reached only when a test panicked with the snapshot mounted: best effort.
            let _ = unmount(&self.dir);
        }
    }
}

/// A temp dir for roots whose durability is not under test: on tmpfs (/dev/shm) when there is
/// one, where fsync is free, so semantic tests run fast on a busy machine.
pub fn fast_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(t) = tempfile::Builder::new()
            .prefix("cairn-test-")
            .tempdir_in(shm)
        {
            return t;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

/// A root path, `<tmp>/root`, not yet created, in a temp dir on the real disk (removed when
/// the returned guard drops).
pub fn new_root() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    (tmp, root)
}

/// `new_root` in a [`fast_tempdir`], for roots whose durability is not under test.
pub fn new_fast_root() -> (tempfile::TempDir, PathBuf) {
    let tmp = fast_tempdir();
    let root = tmp.path().join("root");
    (tmp, root)
}

/// continuity's fstest appliers.
#[derive(Clone, Debug)]
pub enum FsOp {
    File(String, Vec<u8>, u32),
    Dir(String, u32),
    RemoveAll(String),
    Chown(String, u32, u32),
    Rename(String, String),
    Link(String, String),
}

pub fn file(path: &str, content: &[u8], mode: u32) -> FsOp {
    FsOp::File(path.to_owned(), content.to_vec(), mode)
}
pub fn dir(path: &str, mode: u32) -> FsOp {
    FsOp::Dir(path.to_owned(), mode)
}
pub fn remove_all(path: &str) -> FsOp {
    FsOp::RemoveAll(path.to_owned())
}
pub fn chown(path: &str, uid: u32, gid: u32) -> FsOp {
    FsOp::Chown(path.to_owned(), uid, gid)
}
pub fn rename(from: &str, to: &str) -> FsOp {
    FsOp::Rename(from.to_owned(), to.to_owned())
}
pub fn link(old: &str, new: &str) -> FsOp {
    FsOp::Link(old.to_owned(), new.to_owned())
}

fn under(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

pub fn apply(root: &Path, ops: &[FsOp]) -> io::Result<()> {
    for op in ops {
        match op {
            FsOp::File(p, content, mode) => {
                let path = under(root, p);
                std::fs::write(&path, content)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))?;
            }
            FsOp::Dir(p, mode) => {
                let path = under(root, p);
                if !path.is_dir() {
                    std::fs::create_dir_all(&path)?;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))?;
                }
            }
            FsOp::RemoveAll(p) => {
                let path = under(root, p);
                match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path)?,
                    Ok(_) => std::fs::remove_file(&path)?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            FsOp::Chown(p, uid, gid) => {
                std::os::unix::fs::lchown(under(root, p), Some(*uid), Some(*gid))?
            }
            FsOp::Rename(from, to) => std::fs::rename(under(root, from), under(root, to))?,
            FsOp::Link(old, new) => std::fs::hard_link(under(root, old), under(root, new))?,
        }
    }
    Ok(())
}

/// What continuity's manifest compares for one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub content: Option<Vec<u8>>,
    pub target: Option<PathBuf>,
    pub rdev: u64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// Every path below `root` (not `root` itself) and the hardlink groups among them.
pub fn manifest(root: &Path) -> (BTreeMap<PathBuf, Entry>, BTreeSet<Vec<PathBuf>>) {
    let mut entries = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<PathBuf>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in
            std::fs::read_dir(&d).unwrap_or_else(|e| panic!("readdir {}: {e}", d.display()))
        {
            let path = entry.expect("dirent").path();
            let rel = path.strip_prefix(root).expect("under root").to_path_buf();
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                stack.push(path.clone());
                "dir"
            } else if ft.is_file() {
                "file"
            } else if ft.is_symlink() {
                "symlink"
            } else {
                "special"
            };
            if !ft.is_dir() && meta.nlink() > 1 {
                inodes
                    .entry((meta.dev(), meta.ino()))
                    .or_default()
                    .push(rel.clone());
            }
            let xattrs = xattr::list(&path)
                .map(|names| {
                    names
                        .filter_map(|n| {
                            let name = n.to_string_lossy().into_owned();
                            xattr::get(&path, &n).ok().flatten().map(|v| (name, v))
                        })
                        .collect()
                })
                .unwrap_or_default();
            entries.insert(
                rel,
                Entry {
                    kind,
                    mode: if ft.is_symlink() {
                        0
                    } else {
                        meta.mode() & 0o7777
                    },
                    uid: meta.uid(),
                    gid: meta.gid(),
                    content: ft.is_file().then(|| std::fs::read(&path).expect("read")),
                    target: ft
                        .is_symlink()
                        .then(|| std::fs::read_link(&path).expect("readlink")),
                    rdev: if kind == "special" { meta.rdev() } else { 0 },
                    xattrs,
                },
            );
        }
    }
    let groups = inodes
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    (entries, groups)
}

/// continuity's `fstest.CheckDirectoryEqual`: same paths, types, modes, owners, contents,
/// link targets, xattrs and hardlink groups.
#[track_caller]
pub fn assert_same_tree(expected: &Path, actual: &Path, what: &str) {
    let (e, eg) = manifest(expected);
    let (a, ag) = manifest(actual);
    let mut diffs = Vec::new();
    for (p, ee) in &e {
        match a.get(p) {
            None => diffs.push(format!("missing {}", p.display())),
            Some(ae) if ae != ee => {
                diffs.push(format!("{}: expected {ee:?}, got {ae:?}", p.display()))
            }
            Some(_) => {}
        }
    }
    for p in a.keys().filter(|p| !e.contains_key(*p)) {
        diffs.push(format!("unexpected {}", p.display()));
    }
    if eg != ag {
        diffs.push(format!("hardlinks: expected {eg:?}, got {ag:?}"));
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} differs from {}:\n  {}",
        actual.display(),
        expected.display(),
        diffs.join("\n  ")
    );
}
