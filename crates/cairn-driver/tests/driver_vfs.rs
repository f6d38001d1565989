//! vfs driver: copy fidelity, lifecycle idempotency, inventory, usage and mount data.

use cairn_driver::{
    mount, open_driver, sync_tree, Driver, DriverError, NewTree, SyncMode, VfsDriver, WhiteoutStyle,
};
use cairn_state::types::{DriverKind, Kind, Mount, SnapshotId, TxId, Usage};
use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use std::collections::BTreeMap;
use std::fs::{self, Permissions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn set_times(path: &Path, atime: (i64, i64), mtime: (i64, i64)) -> TestResult {
    utimensat(
        None,
        path,
        &TimeSpec::new(atime.0, atime.1),
        &TimeSpec::new(mtime.0, mtime.1),
        UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

/// Every attribute a faithful copy must keep, keyed by path relative to the tree root.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attrs {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    rdev: u64,
    nlink: u64,
    atime: (i64, i64),
    mtime: (i64, i64),
    link: Option<PathBuf>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn attrs_of(path: &Path) -> Result<Attrs, Box<dyn std::error::Error>> {
    let m = fs::symlink_metadata(path)?;
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "char"
    } else {
        "block"
    };
    let mut xattrs = BTreeMap::new();
    for name in xattr::list(path)? {
        if let Some(v) = xattr::get(path, &name)? {
            xattrs.insert(name.to_string_lossy().into_owned(), v);
        }
    }
    Ok(Attrs {
        kind,
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        size: if ft.is_dir() { 0 } else { m.size() },
        rdev: m.rdev(),
        nlink: if ft.is_dir() { 0 } else { m.nlink() },
        atime: (m.atime(), m.atime_nsec()),
        mtime: (m.mtime(), m.mtime_nsec()),
        link: if ft.is_symlink() {
            Some(fs::read_link(path)?)
        } else {
            None
        },
        xattrs,
    })
}

fn snapshot_attrs(root: &Path) -> Result<BTreeMap<PathBuf, Attrs>, Box<dyn std::error::Error>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let a = attrs_of(&p)?;
        if a.kind == "dir" {
            for e in fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
        out.insert(p.strip_prefix(root)?.to_path_buf(), a);
    }
    // Listing directories above bumped no times we recorded: each dir was lstat'ed first.
    Ok(out)
}

/// Deep enough to matter for recursion and for per-level descriptors (run the suite under
/// `ulimit -n 512` to see the descriptor bound), short enough to stay under PATH_MAX.
const DEEP: usize = 600;

/// Builds one of every kind of entry under `root` (which exists). Times are set last.
fn build_rich_tree(root: &Path) -> TestResult {
    let root_user = is_root();
    fs::create_dir(root.join("d"))?;
    fs::write(root.join("d/f"), b"setuid file")?;
    xattr::set(root.join("d/f"), "user.cairn.note", b"hello")?;
    fs::write(root.join("hl1"), b"shared inode")?;
    fs::hard_link(root.join("hl1"), root.join("d/hl2"))?;
    symlink("../nonexistent/target", root.join("dangling"))?;
    symlink("/etc/passwd", root.join("abs"))?;
    mknod(
        &root.join("pipe"),
        SFlag::S_IFIFO,
        Mode::from_bits_truncate(0o640),
        0,
    )?;
    let _sock = std::os::unix::net::UnixListener::bind(root.join("sock"))?;
    fs::create_dir(root.join("empty"))?;
    fs::create_dir(root.join("sticky"))?;
    fs::create_dir(root.join("ro"))?;
    fs::write(root.join("ro/inner"), b"inside a read-only dir")?;
    {
        let mut f = fs::File::create(root.join("sparse"))?;
        f.set_len(16 << 20)?;
        f.seek(SeekFrom::Start(8 << 20))?;
        f.write_all(&[0xab; 4096])?;
    }
    let mut deep = root.join("deep");
    for _ in 0..DEEP {
        deep.push("n");
    }
    fs::create_dir_all(&deep)?;
    fs::write(deep.join("leaf"), b"bottom")?;
    if root_user {
        mknod(
            &root.join("null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )?;
        mknod(
            &root.join("loop"),
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o660),
            nix::sys::stat::makedev(7, 0),
        )?;
        std::os::unix::fs::lchown(root.join("d"), Some(1000), Some(1001))?;
        std::os::unix::fs::lchown(root.join("dangling"), Some(1234), Some(5678))?;
        std::os::unix::fs::lchown(root.join("hl1"), Some(42), Some(43))?;
        xattr::set(root.join("d"), "trusted.cairn.dir", b"\x00\x01binary")?;
        xattr::set(root.join("dangling"), "trusted.cairn.link", b"on the link")?;
    }
    // chmod after chown: chown clears setuid/setgid.
    fs::set_permissions(root.join("d/f"), Permissions::from_mode(0o4755))?;
    fs::set_permissions(root.join("d"), Permissions::from_mode(0o2775))?;
    fs::set_permissions(root.join("sticky"), Permissions::from_mode(0o1777))?;
    fs::set_permissions(root.join("empty"), Permissions::from_mode(0o700))?;
    fs::set_permissions(root.join("hl1"), Permissions::from_mode(0o640))?;
    fs::set_permissions(root.join("ro"), Permissions::from_mode(0o555))?;
    // Distinct nanosecond times everywhere, directories after their contents.
    let mut n = 0i64;
    let mut stamp = |p: &Path| -> TestResult {
        n += 1;
        set_times(
            p,
            (1_400_000_000 + n, 987_654_321 - n),
            (1_500_000_000 + n, 123_456_789 + n),
        )
    };
    for p in [
        "d/f", "hl1", "dangling", "abs", "pipe", "sock", "sparse", "ro/inner",
    ] {
        stamp(&root.join(p))?;
    }
    if root_user {
        stamp(&root.join("null"))?;
        stamp(&root.join("loop"))?;
    }
    stamp(&deep.join("leaf"))?;
    while deep != root.join("deep") {
        stamp(&deep)?;
        deep.pop();
    }
    for p in ["deep", "d", "empty", "sticky", "ro", ""] {
        stamp(&root.join(p))?;
    }
    Ok(())
}

fn open_vfs(dir: &Path) -> Result<Box<dyn Driver>, DriverError> {
    open_driver(DriverKind::Vfs, &dir.join("root"))
}

#[test]
fn copy_preserves_every_attribute() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let d = open_vfs(tmp.path())?;
    d.stage(TxId(1), Kind::Active, None)?;
    build_rich_tree(&d.staged_tree(TxId(1)))?;
    d.sync_staged(TxId(1))?;
    d.install(TxId(1), SnapshotId(1))?;
    d.seal(SnapshotId(1), TxId(2))?;

    let parent = d.tree(SnapshotId(1));
    let before = snapshot_attrs(&parent)?;
    d.stage(TxId(3), Kind::Active, Some(SnapshotId(1)))?;
    let child = d.staged_tree(TxId(3));
    let after = snapshot_attrs(&child)?;

    let parent_after = snapshot_attrs(&parent)?;
    assert_eq!(before.len(), after.len(), "entry count differs");
    for (rel, want) in &before {
        let got = after
            .get(rel)
            .ok_or_else(|| format!("{} missing from the copy", rel.display()))?;
        let mut want_here = want.clone();
        if want.kind == "dir" || want.kind == "symlink" {
            // Listing a directory or reading a link (the copy must, and so did
            // snapshot_attrs) updates its atime; the copy keeps the atime it observed, which
            // under relatime is the parent's atime after the copy.
            want_here.atime = parent_after[rel].atime;
        } else {
            // The copy reads files with O_NOATIME: the parent is left exactly as it was.
            assert_eq!(
                parent_after[rel].atime,
                want.atime,
                "copy changed the parent's atime of {}",
                rel.display()
            );
        }
        assert_eq!(got, &want_here, "attributes of {} differ", rel.display());
    }
    // Spot checks that the comparison above really covered what matters.
    let f = &after[Path::new("d/f")];
    assert_eq!(f.mode & 0o7777, 0o4755);
    assert_eq!(after[Path::new("d")].mode & 0o7777, 0o2775);
    assert_eq!(after[Path::new("sticky")].mode & 0o7777, 0o1777);
    assert_eq!(
        f.mtime.1 % 1000,
        (123_456_789 + 1) % 1000,
        "nanoseconds lost"
    );
    assert_eq!(
        f.xattrs.get("user.cairn.note").map(Vec::as_slice),
        Some(&b"hello"[..])
    );
    assert_eq!(
        after[Path::new("dangling")].link.as_deref(),
        Some(Path::new("../nonexistent/target"))
    );
    assert_eq!(after[Path::new("abs")].kind, "symlink", "symlink followed");
    assert_eq!(after[Path::new("sock")].kind, "socket");
    if is_root() {
        assert_eq!(after[Path::new("null")].rdev, nix::sys::stat::makedev(1, 3));
        assert_eq!(after[Path::new("loop")].kind, "block");
        assert_eq!(after[Path::new("dangling")].uid, 1234);
        assert!(after[Path::new("dangling")]
            .xattrs
            .contains_key("trusted.cairn.link"));
        assert_eq!(after[Path::new("d")].gid, 1001);
    } else {
        println!("skipped: device, chown and trusted.* checks need root");
    }

    // Hardlinks: one inode in the copy, not the parent's inode.
    let h1 = fs::symlink_metadata(child.join("hl1"))?;
    let h2 = fs::symlink_metadata(child.join("d/hl2"))?;
    assert_eq!(h1.ino(), h2.ino());
    assert_eq!(h1.nlink(), 2);
    assert_ne!(h1.ino(), fs::symlink_metadata(parent.join("hl1"))?.ino());

    // Contents, and holes kept.
    assert_eq!(fs::read(child.join("d/f"))?, b"setuid file");
    assert_eq!(fs::read(child.join("hl1"))?, b"shared inode");
    let sparse = fs::read(child.join("sparse"))?;
    assert_eq!(sparse.len(), 16 << 20);
    assert!(sparse[(8 << 20)..(8 << 20) + 4096]
        .iter()
        .all(|&b| b == 0xab));
    assert!(sparse[..(8 << 20)].iter().all(|&b| b == 0));
    let blocks = fs::symlink_metadata(child.join("sparse"))?.blocks() * 512;
    assert!(
        blocks < 1 << 20,
        "sparse file copied densely: {blocks} bytes"
    );
    let mut leaf = child.join("deep");
    for _ in 0..DEEP {
        leaf.push("n");
    }
    assert_eq!(fs::read(leaf.join("leaf"))?, b"bottom");

    // The child is independent of its parent.
    fs::write(child.join("hl1"), b"changed")?;
    assert_eq!(fs::read(parent.join("hl1"))?, b"shared inode");

    // A tree with a read-only directory can still be discarded and removed.
    d.discard(TxId(3))?;
    assert!(!d.staged_tree(TxId(3)).exists());
    d.remove(SnapshotId(1))?;
    assert!(!parent.exists());
    Ok(())
}

#[test]
fn stage_install_discard_remove_are_idempotent() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let d = open_vfs(tmp.path())?;
    let root = tmp.path().join("root");
    assert_eq!(d.kind(), DriverKind::Vfs);
    assert_eq!(d.whiteout_style(), WhiteoutStyle::Delete);

    // stage removes a leftover staging dir first.
    d.stage(TxId(1), Kind::Active, None)?;
    fs::write(
        d.staged_tree(TxId(1)).join("junk"),
        b"from a crashed attempt",
    )?;
    d.stage(TxId(1), Kind::Active, None)?;
    assert!(!d.staged_tree(TxId(1)).join("junk").exists());
    let inv = d.inventory()?;
    assert_eq!(inv.staging, vec![TxId(1)]);
    assert!(inv.installed.is_empty() && inv.trash.is_empty() && inv.unexpected.is_empty());

    // install twice.
    fs::write(d.staged_tree(TxId(1)).join("a"), b"a")?;
    d.sync_staged(TxId(1))?;
    d.install(TxId(1), SnapshotId(10))?;
    d.install(TxId(1), SnapshotId(10))?;
    let inv = d.inventory()?;
    assert!(inv.staging.is_empty());
    assert_eq!(inv.installed.get(&SnapshotId(10)), Some(&Some(TxId(1))));
    assert_eq!(fs::read(d.tree(SnapshotId(10)).join("a"))?, b"a");

    // Staging on a parent that is not installed fails before touching staging/.
    assert!(matches!(
        d.stage(TxId(8), Kind::View, Some(SnapshotId(404))),
        Err(DriverError::SnapshotMissing {
            id: SnapshotId(404),
            ..
        })
    ));
    assert!(!root.join("staging/8").exists());

    // Neither side exists.
    assert!(matches!(
        d.install(TxId(99), SnapshotId(11)),
        Err(DriverError::InstallSourceMissing {
            txid: TxId(99),
            id: SnapshotId(11),
            ..
        })
    ));
    // Both sides exist: refuse to clobber an installed snapshot.
    d.stage(TxId(2), Kind::Active, None)?;
    assert!(matches!(
        d.install(TxId(2), SnapshotId(10)),
        Err(DriverError::InstallTargetExists { .. })
    ));
    // Simulated crash after the rename, before the syncs.
    fs::rename(root.join("staging/2"), root.join("snapshots/12"))?;
    d.install(TxId(2), SnapshotId(12))?;
    assert_eq!(
        d.inventory()?.installed.keys().copied().collect::<Vec<_>>(),
        vec![SnapshotId(10), SnapshotId(12)]
    );
    assert!(matches!(
        d.sync_staged(TxId(2)),
        Err(DriverError::StagingMissing { .. })
    ));

    // discard twice, and of something never staged.
    d.stage(TxId(4), Kind::View, Some(SnapshotId(10)))?;
    assert_eq!(d.inventory()?.staging, vec![TxId(4)]);
    assert_eq!(
        fs::read_dir(d.staged_tree(TxId(4)))?.count(),
        0,
        "a vfs View copies nothing"
    );
    d.discard(TxId(4))?;
    d.discard(TxId(4))?;
    d.discard(TxId(5))?;
    assert!(d.inventory()?.staging.is_empty());

    // seal rewrites the marker.
    let usage = d.seal(SnapshotId(10), TxId(6))?;
    assert_eq!(
        usage,
        Usage {
            size_bytes: 1,
            inodes: 2
        }
    );
    assert_eq!(
        d.inventory()?.installed.get(&SnapshotId(10)),
        Some(&Some(TxId(6)))
    );
    assert!(matches!(
        d.seal(SnapshotId(77), TxId(7)),
        Err(DriverError::SnapshotMissing {
            id: SnapshotId(77),
            ..
        })
    ));

    // remove twice.
    d.remove(SnapshotId(10))?;
    d.remove(SnapshotId(10))?;
    let inv = d.inventory()?;
    assert!(!inv.installed.contains_key(&SnapshotId(10)));
    assert!(inv.trash.is_empty());
    // Simulated crash after the rename into trash: remove finishes the delete.
    fs::rename(root.join("snapshots/12"), root.join("trash/12"))?;
    assert_eq!(d.inventory()?.trash, vec![SnapshotId(12)]);
    d.remove(SnapshotId(12))?;
    assert!(d.inventory()?.trash.is_empty());

    // purge_trash removes whatever is there, read-only dirs included.
    fs::create_dir_all(root.join("trash/30/fs/locked"))?;
    fs::write(root.join("trash/30/fs/locked/x"), b"x")?;
    fs::set_permissions(
        root.join("trash/30/fs/locked"),
        Permissions::from_mode(0o555),
    )?;
    fs::create_dir_all(root.join("trash/31"))?;
    assert_eq!(d.inventory()?.trash, vec![SnapshotId(30), SnapshotId(31)]);
    d.purge_trash()?;
    assert!(d.inventory()?.trash.is_empty());
    assert_eq!(fs::read_dir(root.join("trash"))?.count(), 0);
    Ok(())
}

#[test]
fn inventory_reports_bad_markers_and_foreign_names() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let d = open_vfs(tmp.path())?;
    let root = tmp.path().join("root");
    for (tx, id) in [(1u64, 1u64), (2, 2), (3, 3)] {
        d.stage(TxId(tx), Kind::Active, None)?;
        d.install(TxId(tx), SnapshotId(id))?;
    }
    fs::remove_file(root.join("snapshots/2/txid"))?;
    fs::write(root.join("snapshots/3/txid"), b"3\n")?;
    fs::write(root.join("snapshots/notes"), b"")?;
    fs::create_dir(root.join("staging/007"))?;
    fs::create_dir(root.join("trash/x1"))?;
    fs::write(root.join("staging/9"), b"a file, not a dir")?;
    let inv = d.inventory()?;
    assert_eq!(inv.installed.get(&SnapshotId(1)), Some(&Some(TxId(1))));
    assert_eq!(inv.installed.get(&SnapshotId(2)), Some(&None));
    assert_eq!(inv.installed.get(&SnapshotId(3)), Some(&None));
    assert!(inv.staging.is_empty());
    assert_eq!(
        inv.unexpected,
        vec![
            root.join("snapshots/notes"),
            root.join("staging/007"),
            root.join("staging/9"),
            root.join("trash/x1"),
        ]
    );
    // Reopening an existing root keeps everything.
    let again = VfsDriver::open(&root)?;
    assert_eq!(again.inventory()?, inv);
    Ok(())
}

#[test]
fn usage_counts_hardlinks_once() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let d = open_vfs(tmp.path())?;
    d.stage(TxId(1), Kind::Active, None)?;
    let t = d.staged_tree(TxId(1));
    fs::write(t.join("big"), vec![7u8; 1000])?;
    fs::hard_link(t.join("big"), t.join("big-again"))?;
    fs::create_dir(t.join("sub"))?;
    fs::hard_link(t.join("big"), t.join("sub/third"))?;
    fs::write(t.join("sub/small"), vec![1u8; 24])?;
    symlink("big", t.join("link"))?;
    d.install(TxId(1), SnapshotId(1))?;
    // root dir, sub, big (3 names), small, link.
    let want = Usage {
        size_bytes: 1024,
        inodes: 5,
    };
    assert_eq!(d.usage(SnapshotId(1))?, want);
    assert_eq!(d.seal(SnapshotId(1), TxId(2))?, want);
    // A child copy has the same usage: the hardlinks stayed hardlinks.
    d.stage(TxId(3), Kind::Active, Some(SnapshotId(1)))?;
    d.install(TxId(3), SnapshotId(2))?;
    assert_eq!(d.usage(SnapshotId(2))?, want);
    assert!(matches!(
        d.usage(SnapshotId(9)),
        Err(DriverError::SnapshotMissing { .. })
    ));
    Ok(())
}

fn bind(source: PathBuf, ro: bool) -> Mount {
    Mount {
        kind: "bind".into(),
        source,
        options: vec!["rbind".into(), if ro { "ro" } else { "rw" }.into()],
    }
}

#[test]
fn mounts_data_for_each_kind() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let d = open_vfs(tmp.path())?;
    for (tx, id, kind, parent) in [
        (1, 1, Kind::Active, None),
        (2, 2, Kind::Active, Some(SnapshotId(1))),
        (3, 3, Kind::View, Some(SnapshotId(1))),
        (4, 4, Kind::View, None),
    ] {
        d.stage(TxId(tx), kind, parent)?;
        d.install(TxId(tx), SnapshotId(id))?;
    }
    let (s1, s2, s3, s4) = (SnapshotId(1), SnapshotId(2), SnapshotId(3), SnapshotId(4));
    assert_eq!(
        d.mounts(s1, Kind::Committed, &[])?,
        vec![bind(d.tree(s1), true)]
    );
    assert_eq!(
        d.mounts(s2, Kind::Active, &[s1])?,
        vec![bind(d.tree(s2), false)]
    );
    assert_eq!(
        d.mounts(s3, Kind::View, &[s1])?,
        vec![bind(d.tree(s1), true)]
    );
    assert_eq!(d.mounts(s4, Kind::View, &[])?, vec![bind(d.tree(s4), true)]);
    assert!(matches!(
        d.mounts(SnapshotId(50), Kind::Active, &[]),
        Err(DriverError::SnapshotMissing { .. })
    ));

    if !is_root() {
        println!("skipped: performing bind mounts needs root");
        return Ok(());
    }
    fs::write(d.tree(s1).join("hello"), b"from the parent")?;
    let target = tmp.path().join("mnt");
    fs::create_dir(&target)?;
    mount::mount_all(&d.mounts(s3, Kind::View, &[s1])?, &target)?;
    let read = fs::read(target.join("hello"));
    let write = fs::write(target.join("new"), b"x");
    mount::unmount(&target)?;
    assert_eq!(read?, b"from the parent");
    let err = write.err().ok_or("a read-only view accepted a write")?;
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    mount::mount_all(&d.mounts(s2, Kind::Active, &[s1])?, &target)?;
    let write = fs::write(target.join("new"), b"x");
    mount::unmount(&target)?;
    write?;
    assert_eq!(fs::read(d.tree(s2).join("new"))?, b"x");
    // Two mounts stacked by one mount_all come off with one unmount_all.
    let mut stacked = d.mounts(s1, Kind::Committed, &[])?;
    stacked.extend(d.mounts(s2, Kind::Active, &[s1])?);
    mount::mount_all(&stacked, &target)?;
    let top = fs::read(target.join("new"));
    mount::unmount_all(&target)?;
    assert_eq!(top?, b"x", "the last mount is on top");
    assert_eq!(fs::read_dir(&target)?.count(), 0);
    assert!(mount::unmount_all(&target).is_err());
    assert!(
        mount::unmount(&target).is_err(),
        "unmounting a non-mount point succeeded"
    );
    Ok(())
}

/// The measurement behind SYNCFS_THRESHOLD (docs/drivers.md). Run with
/// `cargo test --test driver_vfs -- --ignored --nocapture measure_sync`.
#[test]
#[ignore]
fn measure_sync_2000_files() -> TestResult {
    let tmp = tempfile::tempdir()?;
    for mode in [SyncMode::PerFile, SyncMode::Syncfs] {
        let tree = tmp.path().join(format!("{mode:?}"));
        for dir in 0..20 {
            fs::create_dir_all(tree.join(dir.to_string()))?;
            for file in 0..100 {
                fs::write(tree.join(format!("{dir}/{file}")), vec![b'x'; 4096])?;
            }
        }
        let start = Instant::now();
        let usage = sync_tree(&tree, mode)?;
        println!("{mode:?}: {} inodes in {:?}", usage.inodes, start.elapsed());
        assert_eq!(usage.inodes, 2021);
    }
    Ok(())
}

/// Runs `f` on a new thread whose credentials (and only its: the raw syscalls are per thread,
/// unlike glibc's setuid wrappers) are dropped to `uid`:`uid`.
fn as_user<T: Send + 'static>(
    uid: u32,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Box<dyn std::error::Error>> {
    let handle = std::thread::spawn(move || {
        // SAFETY: plain syscalls with integer arguments; they affect the calling thread only.
        let ok = unsafe {
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) == 0
                && libc::syscall(libc::SYS_setresgid, uid, uid, uid) == 0
                && libc::syscall(libc::SYS_setresuid, uid, uid, uid) == 0
        };
        ok.then(f)
    });
    handle
        .join()
        .map_err(|_| "unprivileged thread panicked")?
        .ok_or_else(|| "could not drop privileges".into())
}

#[test]
fn unprivileged_copy_keeps_or_refuses() -> TestResult {
    if !is_root() {
        println!("skipped: setting up files for another user needs root");
        return Ok(());
    }
    const NOBODY: u32 = 65534;
    let tmp = tempfile::tempdir()?;
    fs::set_permissions(tmp.path(), Permissions::from_mode(0o755))?;
    let chown = |p: &Path| std::os::unix::fs::lchown(p, Some(NOBODY), Some(NOBODY));
    let out = tmp.path().join("out");
    fs::create_dir(&out)?;
    chown(&out)?;

    // Everything owned by the caller: copied faithfully, restrictive modes included (a 0500
    // directory only works if its mode is set after its contents were created).
    let good = tmp.path().join("good");
    fs::create_dir_all(good.join("locked"))?;
    fs::write(good.join("locked/secret"), b"s")?;
    xattr::set(good.join("locked/secret"), "user.k", b"v")?;
    symlink("locked/secret", good.join("link"))?;
    for p in ["", "locked", "locked/secret", "link"] {
        chown(&good.join(p))?;
    }
    fs::set_permissions(good.join("locked/secret"), Permissions::from_mode(0o400))?;
    fs::set_permissions(good.join("locked"), Permissions::from_mode(0o500))?;
    set_times(&good.join("locked/secret"), (1, 2), (3, 4))?;
    let (src, dst) = (good.clone(), out.join("good"));
    let copied = as_user(NOBODY, move || {
        cairn_driver::copy_tree(&src, &dst, SyncMode::PerFile).map_err(|e| e.to_string())
    })??;
    assert_eq!(copied.inodes, 4);
    let m = fs::symlink_metadata(out.join("good/locked/secret"))?;
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.mtime(), m.mtime_nsec()),
        (0o400, NOBODY, 3, 4)
    );
    assert_eq!(
        xattr::get(out.join("good/locked/secret"), "user.k")?,
        Some(b"v".to_vec())
    );
    assert_eq!(
        fs::symlink_metadata(out.join("good/locked"))?.mode() & 0o7777,
        0o500
    );

    // A file owned by someone else cannot be recreated unprivileged.
    let foreign = tmp.path().join("foreign");
    fs::create_dir(&foreign)?;
    fs::write(foreign.join("roots"), b"r")?;
    fs::set_permissions(foreign.join("roots"), Permissions::from_mode(0o644))?;
    chown(&foreign)?;
    let (src, dst) = (foreign.clone(), out.join("foreign"));
    let err = as_user(NOBODY, move || {
        cairn_driver::copy_tree(&src, &dst, SyncMode::Auto)
    })?
    .err()
    .ok_or("copied a root-owned file without root")?;
    match err {
        DriverError::ForeignOwner {
            path,
            uid: 0,
            gid: 0,
        } => {
            assert_eq!(path, foreign.join("roots"))
        }
        other => return Err(format!("expected ForeignOwner, got {other:?}").into()),
    }

    // Device nodes need root, and the error names the node.
    let devs = tmp.path().join("devs");
    fs::create_dir(&devs)?;
    mknod(
        &devs.join("null"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )?;
    chown(&devs)?;
    chown(&devs.join("null"))?;
    let (src, dst) = (devs.clone(), out.join("devs"));
    let err = as_user(NOBODY, move || {
        cairn_driver::copy_tree(&src, &dst, SyncMode::Auto)
    })?
    .err()
    .ok_or("copied a device node without root")?;
    match err {
        DriverError::DeviceNeedsRoot { path } => assert_eq!(path, devs.join("null")),
        other => return Err(format!("expected DeviceNeedsRoot, got {other:?}").into()),
    }
    Ok(())
}

/// An inline seal looks its snapshot's directory up only when the tree's root is missing: a
/// missing snapshot is still `SnapshotMissing`, a snapshot whose tree alone is gone is the
/// I/O error of its tree, and a present one seals.
#[test]
fn an_inline_seal_tells_a_missing_snapshot_from_a_missing_tree() -> TestResult {
    let dir = tempfile::tempdir()?;
    let d = open_vfs(dir.path())?;
    let made: Vec<NewTree> = [1, 2]
        .into_iter()
        .map(|i| NewTree {
            txid: TxId(i),
            id: SnapshotId(i),
            kind: Kind::Active,
            parent: None,
        })
        .collect();
    for r in d.create_many(&made) {
        r?;
    }
    fs::remove_dir(d.tree(SnapshotId(2)))?;
    let seals = [
        (SnapshotId(1), TxId(3)),
        (SnapshotId(2), TxId(4)),
        (SnapshotId(9), TxId(5)),
    ];
    let (_, sealed) = d.durable_many(&[], &seals);
    let [one, two, nine] = <[_; 3]>::try_from(sealed).map_err(|_| "three outcomes")?;
    let (usage, _digest) = one.ok_or("an empty tree seals inline")??;
    assert_eq!(usage.inodes, 1);
    assert!(
        matches!(
            two,
            Some(Err(DriverError::Io { ref source, .. }))
                if source.kind() == std::io::ErrorKind::NotFound
        ),
        "{two:?}"
    );
    assert!(
        matches!(
            nine,
            Some(Err(DriverError::SnapshotMissing {
                id: SnapshotId(9),
                ..
            }))
        ),
        "{nine:?}"
    );
    Ok(())
}
