//! What Docker's aufs driver answered, on every driver: `changes` (as `docker diff` lists
//! them), `diff_usage` (`DiffSize` beside the whole tree's size), and reference-counted mounts.
//!
//! The same workload runs on vfs and on overlay, written through a real mount when root (so
//! overlay turns deletions into whiteouts and a recreated directory into an opaque one), and
//! both drivers must list the same changes.

#![allow(clippy::unwrap_used)]

use cairn_engine::{Engine, EngineError, EngineHandle, EngineOptions};
use cairn_state::types::DriverKind;
use cairn_state::{Labels, Precondition, StateError};
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn open(root: &Path, driver: DriverKind) -> Option<EngineHandle> {
    let options = EngineOptions {
        driver: Some(driver),
        workers: 2,
        ..EngineOptions::default()
    };
    match Engine::open(root, options) {
        Ok((h, _)) => Some(h),
        Err(e) if driver == DriverKind::Overlay => {
            println!("skipped: overlay unavailable here ({e})");
            None
        }
        Err(e) => panic!("open: {e}"),
    }
}

fn drivers() -> Vec<DriverKind> {
    if is_root() {
        vec![DriverKind::Vfs, DriverKind::Overlay]
    } else {
        println!("skipped: the overlay variant needs root (vfs runs unprivileged)");
        vec![DriverKind::Vfs]
    }
}

/// Run `f` on a writable view of Active `key`: through `cairn mount` when root (the kernel's
/// overlay writes the whiteouts), else in the tree the bind mount would show.
fn through_mount(h: &EngineHandle, key: &str, work: &Path, f: impl FnOnce(&Path)) {
    if is_root() {
        let target = work.join(format!("mnt-{key}"));
        fs::create_dir_all(&target).unwrap();
        let info = h.mount(key, &target).unwrap();
        assert_eq!(info.count, 1);
        f(&target);
        let info = h.unmount(&target).unwrap();
        assert_eq!(info.count, 0);
    } else {
        let mounts = h.mounts(key).unwrap();
        f(&mounts[0].source);
    }
}

fn write(dir: &Path, rel: &str, data: &[u8]) {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn listed(h: &EngineHandle, key: &str) -> Vec<String> {
    h.changes(key)
        .unwrap()
        .into_iter()
        .map(|c| format!("{} {}", c.kind, c.path))
        .collect()
}

/// Bytes and entries of a tree as a mount shows it, walked by hand.
fn walk_size(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut inodes) = (0, 0);
    let mut seen = BTreeSet::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            inodes += 1;
            if md.is_dir() {
                dirs.push(p);
            } else if md.is_file() && seen.insert((md.dev(), md.ino())) {
                bytes += md.size();
            }
        }
    }
    (bytes, inodes)
}

const CHILD: [&str; 16] = [
    "D /del.txt",
    "C /dir",
    "C /dir/sub",
    "D /dir/sub/x",
    "C /f2d",
    "A /f2d/in",
    "D /gone",
    "C /keep.txt",
    "A /new.txt",
    "A /newdir",
    "A /newdir/deep",
    "A /newdir/deep/z",
    "C /opq",
    "A /opq/fresh",
    "D /opq/old1",
    "D /opq/old2",
];

const GRANDCHILD: [&str; 6] = [
    "C /dir",
    "C /dir/sub",
    "D /dir/sub/y",
    "C /opq",
    "A /opq/old1",
    "D /same.txt",
];

fn changes_on(driver: DriverKind) {
    let tmp = tempfile::tempdir().unwrap();
    let Some(h) = open(&tmp.path().join("root"), driver) else {
        return;
    };
    let base = h.prepare("base-a", None, Labels::new()).unwrap();
    let b = &base[0].source;
    for (rel, data) in [
        ("keep.txt", &b"keep"[..]),
        ("same.txt", b"same"),
        ("del.txt", b"del"),
        ("dir/sub/x", b"x"),
        ("dir/sub/y", b"y"),
        ("gone/a", b"a"),
        ("gone/b/c", b"c"),
        ("opq/old1", b"1"),
        ("opq/old2", b"2"),
        ("f2d", b"file"),
    ] {
        write(b, rel, data);
    }
    h.commit("base", "base-a", Labels::new()).unwrap();
    assert_eq!(
        listed(&h, "base").len(),
        15,
        "a base lists its whole tree as added"
    );

    h.prepare("child", Some("base"), Labels::new()).unwrap();
    assert!(listed(&h, "child").is_empty(), "nothing changed yet");
    through_mount(&h, "child", tmp.path(), |m| {
        write(m, "keep.txt", b"changed!");
        write(m, "new.txt", b"new");
        fs::remove_file(m.join("del.txt")).unwrap();
        fs::remove_file(m.join("dir/sub/x")).unwrap();
        fs::remove_dir_all(m.join("gone")).unwrap();
        fs::remove_dir_all(m.join("opq")).unwrap();
        write(m, "opq/fresh", b"fresh");
        fs::remove_file(m.join("f2d")).unwrap();
        write(m, "f2d/in", b"in");
        write(m, "newdir/deep/z", b"zz");
    });
    let name = driver.name();
    assert_eq!(listed(&h, "child"), CHILD, "{name}");
    let u = h.diff_usage("child").unwrap();
    assert_eq!(u.diff_size_bytes, 8 + 3 + 5 + 2 + 2, "{name}: DiffSize");
    assert_eq!(
        (u.tree_size_bytes, u.tree_inodes),
        (8 + 4 + 1 + 3 + 2 + 2 + 5, 13),
        "{name}: the whole tree"
    );
    assert_eq!(u.usage, h.usage("child").unwrap());

    h.commit("c1", "child", Labels::new()).unwrap();
    assert_eq!(listed(&h, "c1"), CHILD, "{name}: committed, the same");
    h.prepare("c2", Some("c1"), Labels::new()).unwrap();
    through_mount(&h, "c2", tmp.path(), |m| {
        fs::remove_file(m.join("same.txt")).unwrap();
        fs::remove_file(m.join("dir/sub/y")).unwrap();
        write(m, "opq/old1", b"back");
    });
    assert_eq!(listed(&h, "c2"), GRANDCHILD, "{name}: over two parents");
    let u = h.diff_usage("c2").unwrap();
    assert_eq!(u.diff_size_bytes, 4, "{name}");
    assert_eq!(
        (u.tree_size_bytes, u.tree_inodes),
        (8 + 3 + 2 + 2 + 5 + 4, 12),
        "{name}"
    );
    if is_root() {
        // The whole tree's size is what the kernel's mount shows.
        let target = tmp.path().join("mnt-check");
        fs::create_dir_all(&target).unwrap();
        h.mount("c2", &target).unwrap();
        let walked = walk_size(&target);
        h.unmount(&target).unwrap();
        assert_eq!(walked, (u.tree_size_bytes, u.tree_inodes), "{name}");
    }

    // A view has no changes of its own; its tree is its parent's.
    h.view("v", Some("c1"), Labels::new()).unwrap();
    assert!(listed(&h, "v").is_empty());
    let u = h.diff_usage("v").unwrap();
    assert_eq!((u.diff_size_bytes, u.tree_size_bytes), (0, 25), "{name}");
    let e = h.changes("nope").unwrap_err();
    assert!(
        matches!(e, EngineError::State(StateError::NotFound { .. })),
        "{e}"
    );
    h.close().unwrap();
}

#[test]
fn changes_and_diff_size_read_the_same_on_every_driver() {
    for driver in drivers() {
        changes_on(driver);
    }
}

fn is_mounted(target: &Path) -> bool {
    cairn_driver::mountinfo::is_mount_point(&target.canonicalize().unwrap()).unwrap()
}

fn refcounts_on(driver: DriverKind) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let Some(h) = open(&root, driver) else {
        return;
    };
    let name = driver.name();
    h.prepare("a-base", None, Labels::new()).unwrap();
    h.commit("base", "a-base", Labels::new()).unwrap();
    h.prepare("a", Some("base"), Labels::new()).unwrap();
    h.prepare("b", Some("base"), Labels::new()).unwrap();
    let target = tmp.path().join("target");
    fs::create_dir_all(&target).unwrap();
    let canonical = target.canonicalize().unwrap().display().to_string();

    assert_eq!(h.mount("a", &target).unwrap().count, 1, "{name}");
    assert!(is_mounted(&target));
    fs::write(target.join("through"), b"x").unwrap();
    // The same target again (named another way): a second reference, not a second mount.
    let relative: PathBuf = target.join("..").join("target");
    assert_eq!(h.mount("a", &relative).unwrap().count, 2);
    let stacked = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(canonical.as_str()))
        .count();
    assert_eq!(stacked, 1, "{name}: one mount for two references");
    let refs = h.mount_refs().unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!((refs[0].key.as_str(), refs[0].count), ("a", 2));

    // Refusals, each typed, each changing nothing.
    let mounted = |e: EngineError| {
        matches!(
            e,
            EngineError::State(StateError::FailedPrecondition {
                reason: Precondition::Mounted { .. },
                ..
            })
        )
    };
    assert!(mounted(h.remove("a").unwrap_err()), "{name}: remove");
    assert!(mounted(h.commit("a-c", "a", Labels::new()).unwrap_err()));
    let e = h.mount("b", &target).unwrap_err();
    assert!(
        matches!(
            e,
            EngineError::State(StateError::FailedPrecondition {
                reason: Precondition::TargetHeld { .. },
                ..
            })
        ),
        "{e}"
    );
    let e = h.mount("base", &target).unwrap_err();
    assert!(
        matches!(
            e,
            EngineError::State(StateError::FailedPrecondition {
                reason: Precondition::NoMounts,
                ..
            })
        ),
        "{e}"
    );
    let other = tmp.path().join("other");
    fs::create_dir_all(&other).unwrap();
    let e = h.unmount(&other).unwrap_err();
    assert!(
        matches!(e, EngineError::State(StateError::NotMounted { .. })),
        "{e}"
    );
    // A target something else is mounted on is not taken over.
    let e = h.mount("b", Path::new("/proc")).unwrap_err();
    assert!(matches!(e, EngineError::TargetMounted { .. }), "{e}");

    // The counts survive a reopen (recovery finds the mount in mountinfo).
    h.close().unwrap();
    let h = open(&root, driver).unwrap();
    assert_eq!(h.mount_refs().unwrap()[0].count, 2);
    assert_eq!(h.unmount(&target).unwrap().count, 1, "{name}: released one");
    assert!(is_mounted(&target), "still mounted for the other reference");
    assert_eq!(h.unmount(&target).unwrap().count, 0, "the last unmounts");
    assert!(!is_mounted(&target));
    assert!(!target.join("through").exists());
    assert!(h.mount_refs().unwrap().is_empty());
    assert_eq!(listed(&h, "a"), ["A /through"], "{name}: written into a");

    // Unmounted behind cairn's back: the next open drops the count, and the remove works.
    h.mount("a", &target).unwrap();
    cairn_driver::mount::unmount(&target).unwrap();
    h.close().unwrap();
    let (h, report) = Engine::open(
        &root,
        EngineOptions {
            driver: Some(driver),
            ..EngineOptions::default()
        },
    )
    .unwrap();
    assert_eq!(report.mounts_gone, vec![canonical], "{name}");
    h.remove("a").unwrap();
    h.close().unwrap();
}

#[test]
fn mounts_are_reference_counted_on_every_driver() {
    if !is_root() {
        println!("skipped: mounting needs root");
        return;
    }
    for driver in drivers() {
        refcounts_on(driver);
    }
}
