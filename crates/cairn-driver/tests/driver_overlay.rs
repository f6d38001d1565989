//! overlay driver: real mounts of snapshot chains. Needs root; prints a skip line otherwise.

use cairn_driver::{mount, open_driver, Driver, DriverError, OverlayDriver, WhiteoutStyle};
use cairn_state::types::{DriverKind, Kind, SnapshotId, TxId};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    println!("skipped: {test} needs root to mount overlayfs");
    false
}

/// Stages snapshot `id` (staged and installed under txid = id) with the given files.
fn add(
    d: &dyn Driver,
    id: u64,
    kind: Kind,
    parent: Option<u64>,
    files: &[(&str, &str)],
) -> TestResult {
    d.stage(TxId(id), kind, parent.map(SnapshotId))?;
    let tree = d.staged_tree(TxId(id));
    for (name, content) in files {
        let path = tree.join(name);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(path, content)?;
    }
    d.sync_staged(TxId(id))?;
    d.install(TxId(id), SnapshotId(id))?;
    Ok(())
}

/// Runs `check` with `mounts` mounted on `target`, unmounting whatever `check` returns.
fn with_mounted(
    d: &dyn Driver,
    id: u64,
    kind: Kind,
    parents: &[u64],
    target: &Path,
    check: impl FnOnce() -> TestResult,
) -> TestResult {
    let parents: Vec<SnapshotId> = parents.iter().copied().map(SnapshotId).collect();
    let mounts = d.mounts(SnapshotId(id), kind, &parents)?;
    mount::mount_all(&mounts, target)?;
    let result = check();
    mount::unmount(target)?;
    result
}

#[test]
fn chain_mounts_with_whiteouts_in_the_upper() -> TestResult {
    if !root_or_skip("chain_mounts_with_whiteouts_in_the_upper") {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let d = open_driver(DriverKind::Overlay, &tmp.path().join("root"))?;
    assert_eq!(d.kind(), DriverKind::Overlay);
    assert_eq!(d.whiteout_style(), WhiteoutStyle::OverlayCharDevice);
    add(
        &*d,
        1,
        Kind::Active,
        None,
        &[("a.txt", "a from 1"), ("dir/b.txt", "b from 1")],
    )?;
    d.seal(SnapshotId(1), TxId(101))?;
    add(
        &*d,
        2,
        Kind::Active,
        Some(1),
        &[("c.txt", "c from 2"), ("a.txt", "a from 2")],
    )?;
    d.seal(SnapshotId(2), TxId(102))?;
    // Overlay stages nothing of the parent: the child's own tree is empty.
    add(&*d, 3, Kind::Active, Some(2), &[])?;
    assert_eq!(fs::read_dir(d.tree(SnapshotId(3)))?.count(), 0);
    assert!(tmp.path().join("root/snapshots/3/work").is_dir());

    let target = tmp.path().join("mnt");
    fs::create_dir(&target)?;
    let mounts = d.mounts(SnapshotId(3), Kind::Active, &[SnapshotId(2), SnapshotId(1)])?;
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].kind, "overlay");
    let lower = format!(
        "lowerdir={}:{}",
        d.tree(SnapshotId(2)).display(),
        d.tree(SnapshotId(1)).display()
    );
    assert!(
        mounts[0].options.contains(&lower),
        "{:?}",
        mounts[0].options
    );
    let upper = format!("upperdir={}", d.tree(SnapshotId(3)).display());
    assert!(
        mounts[0].options.contains(&upper),
        "{:?}",
        mounts[0].options
    );
    let index_param = Path::new("/sys/module/overlay/parameters/index").exists();
    assert_eq!(
        mounts[0].options.first().map(String::as_str) == Some("index=off"),
        index_param
    );

    with_mounted(&*d, 3, Kind::Active, &[2, 1], &target, || {
        assert_eq!(
            fs::read(target.join("a.txt"))?,
            b"a from 2",
            "nearest parent wins"
        );
        assert_eq!(fs::read(target.join("dir/b.txt"))?, b"b from 1");
        assert_eq!(fs::read(target.join("c.txt"))?, b"c from 2");
        fs::write(target.join("new.txt"), b"written in 3")?;
        fs::remove_file(target.join("dir/b.txt"))?;
        fs::remove_file(target.join("c.txt"))?;
        assert!(!target.join("c.txt").exists());
        Ok(())
    })?;

    let upper = d.tree(SnapshotId(3));
    assert_eq!(fs::read(upper.join("new.txt"))?, b"written in 3");
    let mut whiteout_inodes = std::collections::HashSet::new();
    for whiteout in ["c.txt", "dir/b.txt"] {
        let m = fs::symlink_metadata(upper.join(whiteout))?;
        assert!(
            m.file_type().is_char_device(),
            "{whiteout} is not a whiteout"
        );
        assert_eq!(m.rdev(), 0, "{whiteout} whiteout must be device 0:0");
        whiteout_inodes.insert(m.ino());
    }
    // Lowers untouched.
    assert_eq!(fs::read(d.tree(SnapshotId(2)).join("c.txt"))?, b"c from 2");
    assert_eq!(
        fs::read(d.tree(SnapshotId(1)).join("dir/b.txt"))?,
        b"b from 1"
    );

    // seal counts the upper only: root, dir, new.txt and the whiteouts, which recent kernels
    // create as hardlinks of one shared inode (counted once).
    let usage = d.seal(SnapshotId(3), TxId(103))?;
    assert_eq!(usage.inodes, 3 + whiteout_inodes.len() as u64);
    assert_eq!(usage.size_bytes, 12);
    assert_eq!(
        d.inventory()?.installed.get(&SnapshotId(3)),
        Some(&Some(TxId(103)))
    );

    // The mount is gone: the target is an empty directory again.
    assert_eq!(fs::read_dir(&target)?.count(), 0);
    Ok(())
}

#[test]
fn views_are_read_only() -> TestResult {
    if !root_or_skip("views_are_read_only") {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let d = open_driver(DriverKind::Overlay, &tmp.path().join("root"))?;
    add(&*d, 1, Kind::Active, None, &[("one", "1")])?;
    add(&*d, 2, Kind::Active, Some(1), &[("two", "2")])?;
    add(&*d, 3, Kind::View, Some(2), &[])?;
    add(&*d, 4, Kind::View, Some(1), &[])?;
    let target = tmp.path().join("mnt");
    fs::create_dir(&target)?;

    let m = d.mounts(SnapshotId(3), Kind::View, &[SnapshotId(2), SnapshotId(1)])?;
    assert_eq!(m[0].kind, "overlay");
    assert!(m[0].options.iter().all(|o| !o.starts_with("upperdir=")));
    let m = d.mounts(SnapshotId(4), Kind::View, &[SnapshotId(1)])?;
    assert_eq!(m[0].kind, "bind");
    assert_eq!(m[0].source, d.tree(SnapshotId(1)));

    for (id, parents) in [(3u64, vec![2u64, 1]), (4, vec![1])] {
        with_mounted(&*d, id, Kind::View, &parents, &target, || {
            assert_eq!(fs::read(target.join("one"))?, b"1");
            let err = fs::write(target.join("x"), b"x")
                .err()
                .ok_or("a view accepted a write")?;
            assert_eq!(err.raw_os_error(), Some(libc::EROFS), "view {id}");
            Ok(())
        })?;
    }
    // Committed snapshots bind read-only too.
    with_mounted(&*d, 1, Kind::Committed, &[], &target, || {
        let err = fs::remove_file(target.join("one"))
            .err()
            .ok_or("committed was writable")?;
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        Ok(())
    })?;
    // An Active without parents is a plain writable bind of its own tree.
    add(&*d, 5, Kind::Active, None, &[])?;
    with_mounted(&*d, 5, Kind::Active, &[], &target, || {
        fs::write(target.join("w"), b"w")?;
        Ok(())
    })?;
    assert_eq!(fs::read(d.tree(SnapshotId(5)).join("w"))?, b"w");
    Ok(())
}

#[test]
fn chain_of_130_layers_mounts() -> TestResult {
    if !root_or_skip("chain_of_130_layers_mounts") {
        return Ok(());
    }
    const LAYERS: u64 = 130;
    let tmp = tempfile::tempdir()?;
    // A long root makes sure the absolute lowerdir string is far over one page.
    let root = tmp
        .path()
        .join("a-deliberately-long-root-directory-name-for-cairn-layer-chains");
    let d = OverlayDriver::open(&root)?;
    add(
        &d,
        1,
        Kind::Active,
        None,
        &[("bottom.txt", "from the bottom layer")],
    )?;
    for id in 2..=LAYERS {
        add(
            &d,
            id,
            Kind::Active,
            Some(id - 1),
            &[(&format!("layer{id}"), "x")],
        )?;
    }
    add(&d, LAYERS + 1, Kind::Active, Some(LAYERS), &[])?;
    let parents: Vec<u64> = (1..=LAYERS).rev().collect();
    let ids: Vec<SnapshotId> = parents.iter().copied().map(SnapshotId).collect();
    let mounts = d.mounts(SnapshotId(LAYERS + 1), Kind::Active, &ids)?;
    let data_len = mounts[0].options.join(",").len();
    assert!(
        data_len > 4096,
        "test does not exercise shortening: {data_len} bytes"
    );

    let target = tmp.path().join("mnt");
    fs::create_dir(&target)?;
    with_mounted(&d, LAYERS + 1, Kind::Active, &parents, &target, || {
        assert_eq!(
            fs::read(target.join("bottom.txt"))?,
            b"from the bottom layer"
        );
        assert_eq!(fs::read(target.join("layer65"))?, b"x");
        assert_eq!(fs::read(target.join(format!("layer{LAYERS}")))?, b"x");
        fs::write(target.join("top"), b"t")?;
        Ok(())
    })?;
    assert_eq!(fs::read(d.tree(SnapshotId(LAYERS + 1)).join("top"))?, b"t");
    // The read-only view of the whole chain takes the same path.
    add(&d, LAYERS + 2, Kind::View, Some(LAYERS), &[])?;
    with_mounted(&d, LAYERS + 2, Kind::View, &parents, &target, || {
        assert_eq!(
            fs::read(target.join("bottom.txt"))?,
            b"from the bottom layer"
        );
        Ok(())
    })?;
    Ok(())
}

#[test]
fn unusable_roots_are_refused() -> TestResult {
    let tmp = tempfile::tempdir()?;
    match OverlayDriver::open(&tmp.path().join("bad:root")) {
        Err(DriverError::OverlayUnsupported { root, .. }) => {
            assert_eq!(root, tmp.path().join("bad:root"))
        }
        other => return Err(format!("expected OverlayUnsupported, got {other:?}").into()),
    }
    if !nix::unistd::geteuid().is_root() {
        let err = OverlayDriver::open(&tmp.path().join("root")).err();
        assert!(matches!(err, Some(DriverError::OverlayUnsupported { .. })));
    } else {
        // The probe cleans up after itself: only the driver directories remain.
        let root = tmp.path().join("root");
        OverlayDriver::open(&root)?;
        let mut names: Vec<String> = fs::read_dir(&root)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        assert_eq!(names, ["snapshots", "staging", "trash"]);
    }
    Ok(())
}

#[test]
fn stale_probe_dirs_are_cleared() -> TestResult {
    if !root_or_skip("stale_probe_dirs_are_cleared") {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("root");
    // Above any pid_max: no such process. And one of ours: after a reboot pids are reused, and
    // the caller owns the root, so any probe found at open is stale whoever's pid it names.
    let stale = root.join("overlay-probe.999999999.0");
    let own = root.join(format!("overlay-probe.{}.999", std::process::id()));
    fs::create_dir_all(stale.join("merged"))?;
    fs::create_dir_all(stale.join("lower"))?;
    fs::write(stale.join("lower/probe"), b"cairn")?;
    fs::create_dir_all(own.join("upper"))?;
    OverlayDriver::open(&root)?;
    assert!(!stale.exists(), "stale probe dir of a dead pid left behind");
    assert!(
        !own.exists(),
        "stale probe dir naming a live pid left behind"
    );
    let mut names: Vec<String> = fs::read_dir(&root)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    assert_eq!(names, ["snapshots", "staging", "trash"]);
    Ok(())
}
