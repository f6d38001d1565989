//! block driver on a loop-mounted xfs with reflink=1 made by each test (root; CI). Unprivileged
//! runs print `skipped: <reason>`.

use cairn_driver::loopdev::attached;
use cairn_driver::scratch::{unavailable, ReflinkFs};
use cairn_driver::{mount, BlockDriver, BlockFs, BlockOptions, Driver, DriverError};
use cairn_state::types::{Kind, SnapshotId, TxId};
use std::fs;
use std::path::{Path, PathBuf};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const IMAGE_BYTES: u64 = 256 << 20;

fn scratch(test: &str) -> Option<ReflinkFs> {
    if let Some(reason) = unavailable() {
        println!("skipped: {test}: {reason}");
        return None;
    }
    match ReflinkFs::make(&format!("block-{test}-"), 2 << 30) {
        Ok(fs) => Some(fs),
        Err(e) => panic!("making the scratch xfs for {test}: {e}"),
    }
}

fn open(fs: &ReflinkFs) -> Result<BlockDriver, DriverError> {
    BlockDriver::open(
        &fs.path().join("root"),
        BlockOptions {
            size_bytes: IMAGE_BYTES,
            ..BlockOptions::default()
        },
    )
}

/// Every `image` file under `root` (base excluded), sorted.
fn images(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for top in ["staging", "snapshots", "trash"] {
        let Ok(entries) = fs::read_dir(root.join(top)) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().join("image").exists() {
                found.push(e.path().join("image"));
            }
        }
    }
    found.sort();
    found
}

/// Stages, fills through a writable mount of the staged image (as a layer import does),
/// syncs and installs snapshot `id` under txid `id`.
fn add(d: &BlockDriver, id: u64, parent: Option<u64>, files: &[(&str, &[u8])]) -> TestResult {
    d.stage(TxId(id), Kind::Active, parent.map(SnapshotId))?;
    d.attach_staged(TxId(id))?;
    let tree = d.staged_tree(TxId(id));
    for (name, content) in files {
        fs::write(tree.join(name), content)?;
    }
    d.sync_staged(TxId(id))?;
    d.install(TxId(id), SnapshotId(id))?;
    Ok(())
}

#[test]
fn clone_chain_reads_and_writes_through_loop_mounts() -> TestResult {
    let Some(x) = scratch("clone_chain") else {
        return Ok(());
    };
    let d = open(&x)?;
    add(&d, 1, None, &[("a", b"one"), ("big", &vec![7u8; 4 << 20])])?;
    d.seal(SnapshotId(1), TxId(11))?;
    // The installed tree is an empty mount point; its contents are in the image.
    assert_eq!(fs::read_dir(d.tree(SnapshotId(1)))?.count(), 0);
    {
        let view = d.open_tree(SnapshotId(1))?;
        assert_eq!(fs::read(view.path().join("a"))?, b"one");
        let names: Vec<_> = fs::read_dir(view.path())?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "no lost+found in a snapshot: {names:?}");
    }
    // A child is a clone: it sees the parent's files, and its writes stay its own.
    d.stage(TxId(2), Kind::Active, Some(SnapshotId(1)))?;
    d.install(TxId(2), SnapshotId(2))?;
    let mounts = d.mounts(SnapshotId(2), Kind::Active, &[SnapshotId(1)])?;
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].kind, "ext4");
    assert_eq!(mounts[0].source, d.image(SnapshotId(2)));
    assert_eq!(&mounts[0].options[..2], ["loop", "rw"]);
    let target = x.path().join("target");
    fs::create_dir(&target)?;
    mount::mount_all(&mounts, &target)?;
    assert_eq!(fs::read(target.join("a"))?, b"one");
    fs::write(target.join("a"), b"changed")?;
    fs::write(target.join("b"), b"new")?;
    // Sealing while it is mounted read-write is refused, and changes nothing.
    let refused = d.seal(SnapshotId(2), TxId(12));
    assert!(
        matches!(refused, Err(DriverError::ImageInUse { .. })),
        "{refused:?}"
    );
    mount::unmount(&target)?;
    assert_eq!(
        attached(&d.image(SnapshotId(2)))?,
        None,
        "the loop device auto-cleared"
    );
    let usage = d.seal(SnapshotId(2), TxId(12))?;
    assert_eq!(usage.inodes, 4, "root, a, big, b: {usage:?}");
    let apparent = fs::metadata(d.image(SnapshotId(2)))?.len();
    assert!(
        usage.size_bytes > 4 << 20 && usage.size_bytes < apparent / 4,
        "usage is allocated bytes, not the image's {apparent} apparent bytes: {usage:?}"
    );
    let committed = d.mounts(SnapshotId(2), Kind::Committed, &[])?;
    assert_eq!(&committed[0].options[..], ["loop", "ro"]);
    mount::mount_all(&committed, &target)?;
    let ro = fs::write(target.join("c"), b"x");
    assert!(ro.is_err(), "a committed snapshot's mount is read-only");
    assert_eq!(fs::read(target.join("b"))?, b"new");
    mount::unmount(&target)?;
    let parent = d.open_tree(SnapshotId(1))?;
    assert_eq!(
        fs::read(parent.path().join("a"))?,
        b"one",
        "the parent is unchanged"
    );
    assert!(!parent.path().join("b").exists());
    Ok(())
}

#[test]
fn reopen_keeps_everything_and_removal_leaves_no_image() -> TestResult {
    let Some(x) = scratch("reopen") else {
        return Ok(());
    };
    let root = x.path().join("root");
    {
        let d = open(&x)?;
        add(&d, 1, None, &[("f", b"1")])?;
        add(&d, 2, Some(1), &[("g", b"2")])?;
        d.seal(SnapshotId(2), TxId(5))?;
        // A staged clone that never got its completion (a crash before it was journaled).
        d.stage(TxId(9), Kind::Active, Some(SnapshotId(2)))?;
        // An import that died while its image was mounted on the staged tree.
        d.stage(TxId(10), Kind::Active, None)?;
        d.attach_staged(TxId(10))?;
        fs::write(d.staged_tree(TxId(10)).join("half"), b"half")?;
    }
    let d = open(&x)?;
    let inv = d.inventory()?;
    assert_eq!(
        inv.installed.keys().copied().collect::<Vec<_>>(),
        [SnapshotId(1), SnapshotId(2)]
    );
    assert_eq!(
        inv.installed[&SnapshotId(2)],
        Some(TxId(5)),
        "the device's transaction id"
    );
    assert_eq!(inv.staging, [TxId(9), TxId(10)]);
    assert!(inv.unexpected.is_empty(), "{:?}", inv.unexpected);
    // What recovery does with staging whose completion is not durable.
    for txid in inv.staging {
        d.discard(txid)?;
    }
    let view = d.open_tree(SnapshotId(2))?;
    assert_eq!(fs::read(view.path().join("f"))?, b"1");
    assert_eq!(fs::read(view.path().join("g"))?, b"2");
    drop(view);
    d.remove(SnapshotId(2))?;
    d.remove(SnapshotId(1))?;
    d.purge_trash()?;
    assert_eq!(
        images(&root),
        Vec::<PathBuf>::new(),
        "no image outlives its snapshot"
    );
    let views: Vec<_> = fs::read_dir(root.join("block.views"))?.collect();
    assert!(views.is_empty(), "no view mount left: {views:?}");
    Ok(())
}

#[test]
fn refuses_a_root_that_cannot_reflink() -> TestResult {
    if let Some(reason) = unavailable() {
        println!("skipped: refuses_a_root_that_cannot_reflink: {reason}");
        return Ok(());
    }
    let tmp = tempfile::tempdir_in("/var/tmp")?;
    let mnt = tmp.path().join("tmpfs");
    fs::create_dir(&mnt)?;
    nix::mount::mount(
        Some("tmpfs"),
        &mnt,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=64m"),
    )?;
    let opened = BlockDriver::open(&mnt.join("root"), BlockOptions::default());
    mount::unmount(&mnt)?;
    assert!(
        matches!(opened, Err(DriverError::ReflinkUnsupported { .. })),
        "{opened:?}"
    );
    Ok(())
}

#[test]
fn prepare_time_does_not_grow_with_the_parent() -> TestResult {
    let Some(x) = scratch("constant") else {
        return Ok(());
    };
    let d = open(&x)?;
    add(&d, 1, None, &[("small", b"s")])?;
    let big: Vec<u8> = (0..64u32 << 20).map(|i| (i % 251) as u8).collect();
    add(&d, 2, None, &[("big", &big)])?;
    // Both clones share every extent with their parents: no data is copied.
    let before = fs4_free(x.path())?;
    for (txid, parent) in [(3, 1), (4, 2)] {
        d.stage(TxId(txid), Kind::Active, Some(SnapshotId(parent)))?;
    }
    let after = fs4_free(x.path())?;
    assert!(
        before.saturating_sub(after) < 8 << 20,
        "cloning a 64 MiB image took {} bytes",
        before - after
    );
    Ok(())
}

fn fs4_free(path: &Path) -> Result<u64, Box<dyn std::error::Error>> {
    let s = nix::sys::statvfs::statvfs(path)?;
    Ok(s.blocks_free() as u64 * s.fragment_size() as u64)
}

/// An import the engine never finished (it stopped, or closed, between `attach_staged` and
/// `sync_staged`) leaves its staged image mounted; dropping the driver lets go of it, and the
/// loop device with it, so a closed engine holds nothing on the root.
#[test]
fn dropping_the_driver_unmounts_an_unfinished_import() -> TestResult {
    let Some(x) = scratch("drop-attached") else {
        return Ok(());
    };
    let d = open(&x)?;
    d.stage(TxId(7), Kind::Active, None)?;
    d.attach_staged(TxId(7))?;
    let tree = d.staged_tree(TxId(7));
    fs::write(tree.join("half"), b"an import in progress")?;
    let image = x.path().join("root/staging/7/image");
    assert_eq!(attached(&image)?, Some(true), "the staged image is mounted");
    drop(d);
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    let tree = fs::canonicalize(&tree)?;
    assert!(
        !info
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(tree.to_string_lossy().as_ref())),
        "the staged tree is still mounted after the driver was dropped"
    );
    let mut bound = attached(&image)?;
    for _ in 0..50 {
        if bound.is_none() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        bound = attached(&image)?;
    }
    assert_eq!(bound, None, "a loop device is still bound to the image");
    // The next open's recovery (here: the driver's discard) removes the staging.
    let d = open(&x)?;
    d.discard(TxId(7))?;
    assert!(images(&x.path().join("root")).is_empty());
    Ok(())
}

/// A root created with xfs images: its mounts are `{type: xfs, options: [loop, rw|ro,
/// nouuid]}` (every clone carries the base's UUID), clones read and write as with ext4, usage
/// counts the inodes in use, and a reopen uses the recorded file system and size whatever it
/// is asked, unless asked strictly, which is refused with a clear error.
#[test]
fn xfs_images_are_recorded_at_creation_and_used_on_reopen() -> TestResult {
    let Some(x) = scratch("xfs-images") else {
        return Ok(());
    };
    let root = x.path().join("root");
    let xfs = BlockOptions {
        size_bytes: 320 << 20,
        fs: BlockFs::Xfs,
    };
    let d = BlockDriver::open(&root, xfs)?;
    assert_eq!(d.fs(), BlockFs::Xfs);
    add(&d, 1, None, &[("a", b"one")])?;
    let usage = d.seal(SnapshotId(1), TxId(11))?;
    assert_eq!(usage.inodes, 2, "root and a: {usage:?}");
    d.stage(TxId(2), Kind::Active, Some(SnapshotId(1)))?;
    d.install(TxId(2), SnapshotId(2))?;
    let mounts = d.mounts(SnapshotId(2), Kind::Active, &[SnapshotId(1)])?;
    assert_eq!(mounts[0].kind, "xfs");
    assert_eq!(&mounts[0].options[..], ["loop", "rw", "nouuid"]);
    // The parent's view and the child's writable mount at once: two file systems, one UUID.
    let parent = d.open_tree(SnapshotId(1))?;
    let target = x.path().join("target");
    fs::create_dir(&target)?;
    mount::mount_all(&mounts, &target)?;
    assert_eq!(fs::read(target.join("a"))?, b"one");
    fs::write(target.join("b"), b"new")?;
    mount::unmount(&target)?;
    assert!(!parent.path().join("b").exists(), "the parent is unchanged");
    drop(parent);
    assert_eq!(
        &d.mounts(SnapshotId(2), Kind::View, &[])?[0].options[..],
        ["loop", "ro", "nouuid"]
    );
    drop(d);
    // Reopened with the default options: the recorded ones win.
    let d = BlockDriver::open(&root, BlockOptions::default())?;
    assert_eq!(d.fs(), BlockFs::Xfs);
    assert_eq!(fs::metadata(root.join("block.base"))?.len(), 320 << 20);
    assert_eq!(BlockOptions::recorded(&root.join("block.base"))?, xfs);
    drop(d);
    // Asked strictly for other options (the CLI's flags on an existing root): refused.
    let refused = BlockDriver::open_with(&root, BlockOptions::default(), true);
    assert!(
        matches!(&refused, Err(DriverError::BlockOptionsMismatch { recorded, .. }) if recorded.contains("xfs")),
        "{refused:?}"
    );
    BlockDriver::open_with(&root, xfs, true)?;
    // Too small for xfs: a clear error before anything is made.
    let small = BlockDriver::open(
        &x.path().join("small"),
        BlockOptions {
            size_bytes: 100 << 20,
            fs: BlockFs::Xfs,
        },
    );
    assert!(
        matches!(small, Err(DriverError::BadImageSize { min_bytes, .. }) if min_bytes == 300 << 20),
        "{small:?}"
    );
    assert!(!x.path().join("small").exists());
    Ok(())
}
