//! `snapshot diff`: the changes of an Active snapshot against its parent, as a layer tar.
//! Round trip on both drivers: a base layer is imported, an Active snapshot on it is changed
//! (add, modify, delete file and dir, dir replaced by a file, chmod, chown, symlink,
//! hardlinks, xattr, fifo, same-size rewrite with the old mtime), diffed, the diff imported
//! on the base layer, and a View of the new layer must list exactly the Active tree.

#[path = "../../cairn-layer/tests/layer_common.rs"]
mod common;

use cairn_engine::{Engine, EngineError, EngineHandle, EngineOptions, ImportOptions};
use cairn_state::types::{DriverKind, Mount};
use cairn_state::{Precondition, StateError};
use common::{is_root, Sink};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

fn drivers() -> Vec<DriverKind> {
    let mut drivers = if is_root() {
        vec![DriverKind::Vfs, DriverKind::Overlay]
    } else {
        println!("skipped: the overlay variant needs root");
        vec![DriverKind::Vfs]
    };
    match cairn_loopfs::btrfs() {
        Ok(_) => drivers.push(DriverKind::Btrfs),
        Err(reason) => println!("skipped: the btrfs variant: {reason}"),
    }
    drivers
}

/// A scratch directory on the file system `driver` needs.
fn scratch(driver: DriverKind) -> cairn_loopfs::Scratch {
    cairn_loopfs::Scratch::new(driver == DriverKind::Btrfs, "cairn-").expect("scratch dir")
}

fn open(root: &Path, driver: DriverKind) -> EngineHandle {
    let options = EngineOptions {
        driver: Some(driver),
        workers: 2,
        ..EngineOptions::default()
    };
    Engine::open(root, options).expect("open").0
}

fn import(engine: &EngineHandle, tar: Vec<u8>, parent: Option<&str>) -> String {
    let options = ImportOptions {
        parent: parent.map(Into::into),
        pin: true,
        expected_diff_id: None,
    };
    engine
        .import_layer(Box::new(std::io::Cursor::new(tar)), options)
        .expect("import")
        .chain_id
}

fn diff(engine: &EngineHandle, key: &str) -> (String, Vec<u8>) {
    let sink = Sink::default();
    let id = engine.diff(key, Box::new(sink.clone())).expect("diff");
    let bytes = sink.0.lock().expect("sink").clone();
    (id, bytes)
}

/// The base layer: directories, files, a hardlink pair, a symlink.
fn base_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (name, _) in files {
        let mut p = Path::new(name).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_path_buf());
            p = d.parent();
        }
    }
    for d in &dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o755);
        h.set_mtime(1_600_000_000);
        b.append_data(&mut h, d, std::io::empty()).expect("dir");
    }
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        b.append_data(&mut h, name, *data).expect("file");
    }
    b.into_inner().expect("finish")
}

/// Runs `f` on the tree the mounts expose (bind: its source; overlay: mounted on `scratch`).
fn with_tree<T>(mounts: &[Mount], scratch: &Path, f: impl FnOnce(&Path) -> T) -> T {
    if mounts.len() == 1 && mounts[0].kind == "bind" {
        return f(&mounts[0].source);
    }
    let target = scratch.join("mnt");
    fs::create_dir_all(&target).expect("mkdir");
    cairn_driver::mount::mount_all(mounts, &target).expect("mount");
    let r = f(&target);
    cairn_driver::mount::unmount(&target).expect("unmount");
    r
}

/// One line per entry: type, path, permission bits, owner, content or target or device,
/// user xattrs, and for a file with several links the first name of its inode.
fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut inodes = HashMap::new();
    walk(root, Path::new(""), &mut out, &mut inodes);
    out
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<String>, inodes: &mut HashMap<u64, String>) {
    let mut names: Vec<_> = fs::read_dir(root.join(rel))
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    for name in names {
        let r = rel.join(&name);
        let p = root.join(&r);
        let md = fs::symlink_metadata(&p).expect("lstat");
        let ft = md.file_type();
        let shown = r.display().to_string();
        let what = if ft.is_dir() {
            "d".to_owned()
        } else if ft.is_symlink() {
            format!("l -> {}", fs::read_link(&p).expect("readlink").display())
        } else if ft.is_file() {
            let data = fs::read(&p).expect("read");
            let mut s = format!("f {:?}", String::from_utf8_lossy(&data));
            if md.nlink() > 1 {
                let first = inodes.entry(md.ino()).or_insert_with(|| shown.clone());
                s.push_str(&format!(" links={} first={first}", md.nlink()));
            }
            s
        } else if ft.is_fifo() {
            "p".to_owned()
        } else {
            format!("? rdev={}", md.rdev())
        };
        let mut xattrs: Vec<String> = if ft.is_symlink() {
            Vec::new()
        } else {
            xattr::list(&p)
                .expect("listxattr")
                .filter(|n| n.to_string_lossy().starts_with("user."))
                .map(|n| {
                    let v = xattr::get(&p, &n).expect("getxattr").unwrap_or_default();
                    format!("{}={}", n.to_string_lossy(), String::from_utf8_lossy(&v))
                })
                .collect()
        };
        xattrs.sort();
        let mode = if ft.is_symlink() {
            0
        } else {
            md.mode() & 0o7777
        };
        out.push(format!(
            "{shown} {what} mode={mode:o} owner={}:{} xattrs={xattrs:?}",
            md.uid(),
            md.gid()
        ));
        if ft.is_dir() {
            walk(root, &r, out, inodes);
        }
    }
}

/// The merged view of layer `chain`.
fn view_listing(engine: &EngineHandle, chain: &str, scratch: &Path) -> Vec<String> {
    let mounts = engine
        .view("check-view", Some(chain), Default::default())
        .expect("view");
    let l = with_tree(&mounts, scratch, listing);
    engine.remove("check-view").expect("rm view");
    l
}

/// Diff `key`, import the diff on `base`, and check a View of it lists what `key` lists.
fn round_trip(engine: &EngineHandle, key: &str, base: &str, scratch: &Path) -> Vec<u8> {
    let mounts = engine.mounts(key).expect("mounts");
    let want = with_tree(&mounts, scratch, listing);
    let (diff_id, tar) = diff(engine, key);
    let (again_id, again) = diff(engine, key);
    assert_eq!(diff_id, again_id, "the diff is deterministic");
    assert!(tar == again, "the diff is deterministic");
    let options = ImportOptions {
        parent: Some(base.to_owned()),
        pin: true,
        expected_diff_id: None,
    };
    let imported = engine
        .import_layer(Box::new(std::io::Cursor::new(tar.clone())), options)
        .expect("import the diff");
    assert_eq!(imported.diff_id, diff_id, "the DiffID is the tar's sha256");
    let got = view_listing(engine, &imported.chain_id, scratch);
    if got != want {
        let entries: Vec<String> = tar::Archive::new(&tar[..])
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                format!(
                    "{:?} {}",
                    e.header().entry_type(),
                    e.path().expect("path").display()
                )
            })
            .collect();
        panic!(
            "the imported diff differs from the snapshot\nwant:\n{}\ngot:\n{}\ntar:\n{}",
            want.join("\n"),
            got.join("\n"),
            entries.join("\n")
        );
    }
    engine.remove_layer(&imported.chain_id).expect("rm layer");
    tar
}

fn set_mtime(p: &Path, secs: i64, nsec: i64) {
    let t = nix::sys::time::TimeSpec::new(secs, nsec);
    nix::sys::stat::utimensat(
        None,
        p,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .expect("utimensat");
}

fn change_everything(t: &Path) {
    // add
    fs::create_dir_all(t.join("new/dir")).expect("mkdir");
    fs::write(t.join("new/dir/file.txt"), b"fresh").expect("write");
    fs::write(t.join("etc/added"), b"added").expect("write");
    // modify
    fs::write(t.join("etc/conf"), b"v2 longer").expect("write");
    // same size and mtime, other content: only the content comparison sees it
    let same = t.join("data/same");
    let md = fs::metadata(&same).expect("stat");
    fs::write(&same, b"BBBB").expect("write");
    set_mtime(&same, md.mtime(), md.mtime_nsec());
    // delete a file, delete a dir
    fs::remove_file(t.join("app/a.txt")).expect("rm");
    fs::remove_dir_all(t.join("gone")).expect("rm -r");
    // replace a dir by a file, a file by a dir
    fs::remove_dir_all(t.join("swap")).expect("rm -r");
    fs::write(t.join("swap"), b"now a file").expect("write");
    fs::remove_file(t.join("etc/todir")).expect("rm");
    fs::create_dir(t.join("etc/todir")).expect("mkdir");
    fs::write(t.join("etc/todir/inside"), b"in").expect("write");
    // a directory emptied and refilled (overlay: opaque)
    fs::remove_dir_all(t.join("app/sub")).expect("rm -r");
    fs::create_dir(t.join("app/sub")).expect("mkdir");
    fs::write(t.join("app/sub/other"), b"other").expect("write");
    // chmod, chown
    fs::set_permissions(t.join("bin/tool"), fs::Permissions::from_mode(0o4755)).expect("chmod");
    fs::set_permissions(t.join("app"), fs::Permissions::from_mode(0o750)).expect("chmod");
    if is_root() {
        std::os::unix::fs::lchown(t.join("etc/keep"), Some(1234), Some(5678)).expect("chown");
    }
    // symlinks: new, and a file replaced by one
    std::os::unix::fs::symlink("etc/conf", t.join("link-to-conf")).expect("symlink");
    fs::remove_file(t.join("data/tolink")).expect("rm");
    std::os::unix::fs::symlink("../etc/keep", t.join("data/tolink")).expect("symlink");
    // hardlinks: to an unchanged lower file, and between new files
    fs::hard_link(t.join("hl/orig"), t.join("hl/second")).expect("link");
    fs::write(t.join("new/n1"), b"linked").expect("write");
    fs::hard_link(t.join("new/n1"), t.join("new/n2")).expect("link");
    // xattr
    xattr::set(t.join("etc/keep"), "user.cairn", b"yes").expect("setxattr");
    // fifo
    nix::unistd::mkfifo(
        &t.join("new/pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .expect("mkfifo");
}

fn base_files() -> Vec<(&'static str, &'static [u8])> {
    vec![
        ("etc/conf", b"v1"),
        ("etc/keep", b"keep"),
        ("etc/todir", b"file to become a dir"),
        ("app/a.txt", b"a"),
        ("app/b.txt", b"b"),
        ("app/sub/deep.txt", b"deep"),
        ("gone/x", b"x"),
        ("gone/y/z", b"z"),
        ("swap/inner", b"inner"),
        ("bin/tool", b"#!/bin/sh"),
        ("data/same", b"AAAA"),
        ("data/tolink", b"to become a link"),
        ("hl/orig", b"hardlinked"),
    ]
}

#[test]
fn diff_round_trips_every_kind_of_change() {
    for driver in drivers() {
        let tmp = scratch(driver);
        let engine = open(&tmp.path().join("root"), driver);
        let base = import(&engine, base_tar(&base_files()), None);
        let mounts = engine
            .prepare("work", Some(&base), Default::default())
            .expect("prepare");
        with_tree(&mounts, tmp.path(), change_everything);
        let tar = round_trip(&engine, "work", &base, tmp.path());
        let names: Vec<String> = tar::Archive::new(&tar[..])
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        assert!(names.iter().any(|n| n == "app/.wh.a.txt"), "{names:?}");
        assert!(names.iter().any(|n| n == ".wh.gone"), "{names:?}");
        assert!(
            !names.iter().any(|n| n.starts_with("gone/")),
            "nothing below a deleted dir: {names:?}"
        );
        if driver == DriverKind::Overlay {
            assert!(
                names.iter().any(|n| n == "app/sub/.wh..wh..opq"),
                "{names:?}"
            );
        }
        assert!(names.iter().any(|n| n == "data/same"), "{names:?}");
        assert!(
            !names.iter().any(|n| n == "app/b.txt" || n == "hl"),
            "unchanged entries stay out: {names:?}"
        );
        // Entries sorted by path, every directory before its contents.
        let mut seen_dirs = std::collections::BTreeSet::new();
        for e in tar::Archive::new(&tar[..]).entries().expect("entries") {
            let e = e.expect("entry");
            let p = e.path().expect("path").into_owned();
            if e.header().entry_type().is_dir() {
                seen_dirs.insert(p.clone());
            }
            if let Some(parent) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                let changed_parent_later = names
                    .iter()
                    .skip_while(|n| Path::new(n) != p)
                    .any(|n| Path::new(n.trim_end_matches('/')) == parent);
                assert!(!changed_parent_later, "{} before its parent", p.display());
            }
        }
        // A hardlink to a lower file brings both names, as a tar hardlink.
        let links: Vec<(String, String)> = tar::Archive::new(&tar[..])
            .entries()
            .expect("entries")
            .filter_map(|e| {
                let e = e.expect("entry");
                (e.header().entry_type() == tar::EntryType::Link).then(|| {
                    (
                        e.path().expect("path").display().to_string(),
                        e.link_name()
                            .expect("link")
                            .expect("link")
                            .display()
                            .to_string(),
                    )
                })
            })
            .collect();
        assert!(
            links.contains(&("hl/second".to_owned(), "hl/orig".to_owned())),
            "{driver:?} {links:?}"
        );
        assert!(
            links.contains(&("new/n2".to_owned(), "new/n1".to_owned())),
            "{driver:?} {links:?}"
        );

        // An unchanged snapshot: an empty layer, just the end-of-archive.
        engine
            .prepare("clean", Some(&base), Default::default())
            .expect("prepare");
        let (_, empty) = diff(&engine, "clean");
        assert_eq!(empty, vec![0u8; 1024], "{driver:?}");

        // No parent: the whole tree.
        let mounts = engine
            .prepare("scratch", None, Default::default())
            .expect("prepare");
        with_tree(&mounts, tmp.path(), |t| {
            fs::create_dir(t.join("d")).expect("mkdir");
            fs::write(t.join("d/f"), b"whole").expect("write");
        });
        let (_, whole) = diff(&engine, "scratch");
        let names: Vec<String> = tar::Archive::new(&whole[..])
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(names, vec!["d/", "d/f"], "{driver:?}");

        // Views cannot be diffed; unknown keys are not found.
        engine
            .view("a-view", Some(&base), Default::default())
            .expect("view");
        let err = engine
            .diff("a-view", Box::new(std::io::sink()))
            .expect_err("a view has no changes of its own");
        assert!(
            matches!(
                err,
                EngineError::State(StateError::FailedPrecondition {
                    reason: Precondition::NotActive,
                    ..
                })
            ),
            "{err}"
        );
        let err = engine
            .diff("nope", Box::new(std::io::sink()))
            .expect_err("unknown");
        assert!(
            matches!(err, EngineError::State(StateError::NotFound { .. })),
            "{err}"
        );
        engine.close().expect("close");
    }
}

/// Random changes on a random base tree (vfs), seeded and printed so a failure replays.
fn random_round_trip(seed: u64) {
    println!("snapshot_diff proptest seed {seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().expect("tempdir");
    let engine = open(&tmp.path().join("root"), DriverKind::Vfs);
    let dirs = ["a", "a/b", "c", "c/d/e"];
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..rng.gen_range(3..20) {
        let d = dirs[rng.gen_range(0..dirs.len())];
        let len = rng.gen_range(0..3000);
        let data: Vec<u8> = (0..len).map(|_| rng.gen::<u8>()).collect();
        files.push((format!("{d}/f{i}"), data));
    }
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let base = import(&engine, base_tar(&refs), None);
    let mounts = engine
        .prepare("work", Some(&base), Default::default())
        .expect("prepare");
    let t: PathBuf = mounts[0].source.clone();
    let all = |t: &Path| -> Vec<PathBuf> {
        let mut v = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(r) = stack.pop() {
            let Ok(rd) = fs::read_dir(t.join(&r)) else {
                continue;
            };
            for e in rd {
                let e = e.expect("entry");
                let rr = r.join(e.file_name());
                if e.file_type().expect("type").is_dir() {
                    stack.push(rr.clone());
                }
                v.push(rr);
            }
        }
        v.sort();
        v
    };
    for step in 0..rng.gen_range(1..12) {
        let entries = all(&t);
        let pick = |rng: &mut rand_chacha::ChaCha8Rng| -> Option<PathBuf> {
            (!entries.is_empty()).then(|| entries[rng.gen_range(0..entries.len())].clone())
        };
        let op = rng.gen_range(0..9);
        let Some(target) = pick(&mut rng) else {
            break;
        };
        let p = t.join(&target);
        let md = fs::symlink_metadata(&p).expect("lstat");
        match op {
            0 => {
                // add a file in a directory
                let dir = if md.is_dir() { p.clone() } else { t.clone() };
                let _ = fs::write(dir.join(format!("new{step}")), vec![b'n'; step * 100]);
            }
            1 if md.is_file() => {
                let _ = fs::write(&p, format!("modified {step}"));
            }
            2 => {
                if md.is_dir() {
                    fs::remove_dir_all(&p).expect("rm -r");
                } else {
                    fs::remove_file(&p).expect("rm");
                }
            }
            3 if md.is_dir() => {
                fs::remove_dir_all(&p).expect("rm -r");
                fs::write(&p, b"was a dir").expect("write");
            }
            4 if !md.file_type().is_symlink() => {
                let mode = [0o700, 0o755, 0o640, 0o1777, 0o2755][rng.gen_range(0..5)];
                fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
            }
            5 => {
                let _ = std::os::unix::fs::symlink(&target, t.join(format!("sym{step}")));
            }
            6 if md.is_file() => {
                let _ = fs::hard_link(&p, t.join(format!("hard{step}")));
            }
            7 if !md.file_type().is_symlink() => {
                xattr::set(&p, format!("user.k{step}"), format!("v{step}").as_bytes())
                    .expect("setxattr");
            }
            8 if md.is_file() && md.len() > 0 => {
                // Same size, same mtime, different content.
                let mut data = fs::read(&p).expect("read");
                data[0] ^= 0xff;
                fs::write(&p, &data).expect("write");
                set_mtime(&p, md.mtime(), md.mtime_nsec());
            }
            _ => {}
        }
    }
    round_trip(&engine, "work", &base, tmp.path());
    engine.close().expect("close");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_changes_round_trip_on_vfs(seed in any::<u64>()) {
        random_round_trip(seed);
    }
}
