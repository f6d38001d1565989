//! Import -> export is byte-identical for tars written by real tools and by a random
//! generator; the extracted tree matches a model of the entries.

#[path = "layer_common.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use cairn_layer::{export, ExtractOptions, WhiteoutStyle};
use common::*;
use proptest::prelude::*;

fn opts() -> ExtractOptions {
    ExtractOptions {
        whiteouts: WhiteoutStyle::Delete,
        same_owner: true,
    }
}

/// Imports `tar` into a fresh dir, exports it again and demands the same bytes.
fn roundtrip(tar: &[u8], what: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (ex, meta) = extract_bytes(tar, tmp.path(), &opts())
        .unwrap_or_else(|e| panic!("{what}: import failed: {e}"));
    assert_eq!(ex.size_bytes, tar.len() as u64, "{what}");
    let mut out = Vec::new();
    let got = export(&meta[..], tmp.path(), &mut out, &ex.diff_id)
        .unwrap_or_else(|e| panic!("{what}: export failed: {e}"));
    assert_eq!(got, ex.diff_id);
    assert!(out == tar, "{what}: export differs from the original tar");
    tmp
}

/// A tree with every kind of entry the tools can write. `long_component` adds a file name
/// over 100 bytes (ustar cannot store it).
fn build_tree(root: &Path, long_component: bool) {
    let w = |p: &str, data: &[u8]| {
        let p = root.join(p);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, data).expect("write");
    };
    w("etc/hostname", b"cairn\n");
    w("etc/empty", b"");
    w("usr/lib/libx.so.1", &vec![0xabu8; 70_000]);
    w(
        "deep/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t/u/v/w/x/y/z/0/1/2/3/4/5/6/7/8/9/file",
        b"deep",
    );
    w("unicode/café-漢字-ü.txt", b"unicode\n");
    if long_component {
        w(&format!("long/{}", "n".repeat(150)), b"long name\n");
    }
    fs::create_dir_all(root.join("emptydir")).expect("mkdir");
    fs::hard_link(root.join("etc/hostname"), root.join("etc/hostname.link")).expect("link");
    std::os::unix::fs::symlink("usr/lib", root.join("lib")).expect("symlink");
    std::os::unix::fs::symlink("/etc/hostname", root.join("abs-link")).expect("symlink");
    nix::unistd::mkfifo(
        &root.join("etc/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .expect("mkfifo");
    let _ = xattr::set(root.join("etc/hostname"), "user.cairn", b"xv");
    fs::set_permissions(
        root.join("etc/empty"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .expect("chmod");
    // Nanosecond mtimes, set last so nothing disturbs them.
    let t = nix::sys::time::TimeSpec::new(1_700_000_000, 123_456_789);
    for p in ["etc/hostname", "usr/lib/libx.so.1", "etc/fifo"] {
        nix::sys::stat::utimensat(
            None,
            &root.join(p),
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .expect("utimensat");
    }
}

fn run(cmd: &mut Command) -> bool {
    match cmd.status() {
        Ok(s) if s.success() => true,
        Ok(s) => panic!("{cmd:?} failed: {s}"),
        Err(e) => {
            println!("skipped: {cmd:?} not runnable: {e}");
            false
        }
    }
}

#[test]
fn tool_written_tars_roundtrip() {
    let src = tempfile::tempdir().expect("tempdir");
    let src_ustar = tempfile::tempdir().expect("tempdir");
    build_tree(src.path(), true);
    build_tree(src_ustar.path(), false);
    let out = tempfile::tempdir().expect("tempdir");
    let mut made = Vec::new();
    for fmt in ["gnu", "posix", "ustar"] {
        let tree = if fmt == "ustar" {
            src_ustar.path()
        } else {
            src.path()
        };
        let f = out.path().join(format!("{fmt}.tar"));
        let mut c = Command::new("tar");
        c.arg(format!("--format={fmt}")).arg("-C").arg(tree);
        if fmt == "posix" {
            c.arg("--xattrs").arg("--xattrs-include=user.*");
        }
        c.arg("-cf").arg(&f).arg(".");
        if run(&mut c) {
            made.push((f, tree.to_path_buf(), fmt == "posix"));
        }
    }
    if Command::new("bsdtar").arg("--version").output().is_ok() {
        let f = out.path().join("bsdtar.tar");
        // Full pax: bsdtar's default "restricted pax" leaves sub-second times out.
        if run(Command::new("bsdtar")
            .arg("--format=pax")
            .arg("-C")
            .arg(src.path())
            .arg("-cf")
            .arg(&f)
            .arg("."))
        {
            made.push((f, src.path().to_path_buf(), true));
        }
    } else {
        println!("skipped: bsdtar is not installed");
    }
    for (fmt, name) in [("PAX_FORMAT", "py-pax"), ("GNU_FORMAT", "py-gnu")] {
        let f = out.path().join(format!("{name}.tar"));
        let script = format!(
            "import sys, tarfile\nt = tarfile.open(sys.argv[1], 'w', format=tarfile.{fmt})\nt.add(sys.argv[2], arcname='.')\nt.close()\n"
        );
        if run(Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&f)
            .arg(src.path()))
        {
            // tarfile keeps mtime as a float: sub-microsecond digits are lost.
            made.push((f, src.path().to_path_buf(), fmt == "PAX_FORMAT"));
        }
    }
    assert!(made.len() >= 3, "too few tools available");
    for (f, tree, nanos) in made {
        let what = f.file_name().expect("name").to_string_lossy().into_owned();
        let tar = fs::read(&f).expect("read tar");
        let got = roundtrip(&tar, &what);
        assert_eq!(
            tree_listing(got.path()),
            tree_listing(&tree),
            "{what}: tree"
        );
        let a = fs::symlink_metadata(got.path().join("usr/lib/libx.so.1")).expect("stat");
        let b = fs::symlink_metadata(tree.join("usr/lib/libx.so.1")).expect("stat");
        assert_eq!(a.mode(), b.mode(), "{what}: mode");
        assert_eq!(a.mtime(), b.mtime(), "{what}: mtime");
        if nanos {
            let tolerance = if what.starts_with("py-") { 1_000 } else { 0 };
            assert!(
                (a.mtime_nsec() - 123_456_789).abs() <= tolerance,
                "{what}: nanoseconds {}",
                a.mtime_nsec()
            );
        }
        let links = fs::symlink_metadata(got.path().join("etc/hostname")).expect("stat");
        assert_eq!(links.nlink(), 2, "{what}: hardlink");
        assert_eq!(
            fs::symlink_metadata(got.path().join("etc/empty"))
                .expect("stat")
                .mode()
                & 0o7777,
            0o4755,
            "{what}: setuid"
        );
        // GNU tar --xattrs and bsdtar write SCHILY.xattr records; tarfile does not.
        if what == "posix.tar" || what == "bsdtar.tar" {
            match xattr::get(tree.join("etc/hostname"), "user.cairn") {
                Ok(Some(v)) => assert_eq!(
                    xattr::get(got.path().join("etc/hostname"), "user.cairn").expect("getxattr"),
                    Some(v),
                    "{what}: xattr"
                ),
                _ => println!("skipped: {what}: user xattrs not supported on this file system"),
            }
        }
        println!("{what}: ok");
    }
}

// ---- generated layers against a model --------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Node {
    File(Vec<u8>, u32),
    Dir,
    Link(String),
}

#[derive(Clone, Debug)]
enum Op {
    File(usize, usize, usize),
    Dir(usize),
    Symlink(usize, usize),
    Hardlink(usize, usize),
    Whiteout(usize),
    Opaque(usize),
}

fn names() -> Vec<String> {
    vec![
        "a".into(),
        "b".into(),
        "d".into(),
        "d/a".into(),
        "d/b".into(),
        "d/e".into(),
        "d/e/f".into(),
        "ü-名".into(),
        "L".repeat(120),
        format!("d/{}", "M".repeat(110)),
    ]
}

/// File modes, setuid and read-only included (nothing unreadable: export must read back).
const MODES: &[u32] = &[0o644, 0o600, 0o755, 0o4755, 0o2750, 0o400];

const TARGETS: &[&str] = &["a", "d/b", "/etc/passwd", "../../x", "ü-名"];

fn op_strategy() -> impl Strategy<Value = Op> {
    let n = names().len();
    prop_oneof![
        4 => (0..n, 0..4usize, 0..MODES.len()).prop_map(|(p, c, m)| Op::File(p, c, m)),
        2 => (0..n).prop_map(Op::Dir),
        1 => (0..n, 0..TARGETS.len()).prop_map(|(p, t)| Op::Symlink(p, t)),
        1 => (0..n, 0..n).prop_map(|(p, t)| Op::Hardlink(p, t)),
        1 => (0..n).prop_map(Op::Whiteout),
        1 => (0..n).prop_map(Op::Opaque),
    ]
}

fn ancestors(p: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let parts: Vec<&str> = p.split('/').collect();
    for part in &parts[..parts.len() - 1] {
        if !cur.is_empty() {
            cur.push('/');
        }
        cur.push_str(part);
        out.push(cur.clone());
    }
    out
}

fn parents_usable(m: &BTreeMap<String, Node>, p: &str) -> bool {
    ancestors(p)
        .iter()
        .all(|a| matches!(m.get(a), None | Some(Node::Dir)))
}

fn remove_subtree(m: &mut BTreeMap<String, Node>, p: &str) {
    let pre = format!("{p}/");
    m.retain(|k, _| k != p && !k.starts_with(&pre));
}

fn content(c: usize) -> Vec<u8> {
    match c {
        0 => Vec::new(),
        1 => b"one\n".to_vec(),
        2 => vec![b'x'; 1000],
        _ => (0..5000u32).map(|i| (i % 251) as u8).collect(),
    }
}

/// Builds one layer from `ops` with the `tar` crate, applying it to `m` (the merged tree)
/// as the spec says: later entries win, whiteouts delete, opaque keeps this layer's entries.
fn build_layer(ops: &[Op], m: &mut BTreeMap<String, Node>) -> Vec<u8> {
    let names = names();
    let mut b = tar::Builder::new(Vec::new());
    let mut touched: BTreeSet<String> = BTreeSet::new();
    let mut layer_files: BTreeSet<String> = BTreeSet::new();
    let touch = |p: &str, touched: &mut BTreeSet<String>| {
        touched.extend(ancestors(p));
        touched.insert(p.to_string());
    };
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    for op in ops {
        match op {
            Op::File(p, _, _) | Op::Hardlink(p, _) => {
                let path = &names[*p];
                if !parents_usable(m, path) {
                    continue;
                }
                let node = match op {
                    Op::Hardlink(_, t) => {
                        let target = &names[*t];
                        let Some(node @ Node::File(..)) =
                            m.get(target).filter(|_| layer_files.contains(target))
                        else {
                            continue;
                        };
                        // A link replacing a directory that holds its own target: refused
                        // (the target is gone once the directory is), not modeled.
                        if target == path || target.starts_with(&format!("{path}/")) {
                            continue;
                        }
                        let node = node.clone();
                        let mut h = header(tar::EntryType::Link, 0o644, 0);
                        b.append_link(&mut h, path, target).expect("append");
                        node
                    }
                    Op::File(_, c, mode) => {
                        let d = content(*c);
                        let mut h = header(tar::EntryType::Regular, MODES[*mode], d.len() as u64);
                        b.append_data(&mut h, path, &d[..]).expect("append");
                        Node::File(d, MODES[*mode])
                    }
                    _ => continue,
                };
                remove_subtree(m, path);
                for a in ancestors(path) {
                    m.entry(a).or_insert(Node::Dir);
                }
                m.insert(path.clone(), node);
                touch(path, &mut touched);
                layer_files.insert(path.clone());
            }
            Op::Dir(p) => {
                let path = &names[*p];
                if !parents_usable(m, path) {
                    continue;
                }
                let mut h = header(tar::EntryType::Directory, 0o755, 0);
                b.append_data(&mut h, path, &[][..]).expect("append");
                if m.get(path) != Some(&Node::Dir) {
                    remove_subtree(m, path);
                }
                for a in ancestors(path) {
                    m.entry(a).or_insert(Node::Dir);
                }
                m.insert(path.clone(), Node::Dir);
                touch(path, &mut touched);
            }
            Op::Symlink(p, t) => {
                let path = &names[*p];
                if !parents_usable(m, path) {
                    continue;
                }
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                b.append_link(&mut h, path, TARGETS[*t]).expect("append");
                remove_subtree(m, path);
                for a in ancestors(path) {
                    m.entry(a).or_insert(Node::Dir);
                }
                m.insert(path.clone(), Node::Link(TARGETS[*t].to_string()));
                touch(path, &mut touched);
            }
            Op::Whiteout(p) => {
                let path = &names[*p];
                // A whiteout under a symlink would follow it (inside the root): not modeled.
                if ancestors(path)
                    .iter()
                    .any(|a| matches!(m.get(a), Some(Node::Link(_))))
                {
                    continue;
                }
                let (dir, base) = path
                    .rsplit_once('/')
                    .map_or(("", path.as_str()), |(d, b)| (d, b));
                let wh = if dir.is_empty() {
                    format!(".wh.{base}")
                } else {
                    format!("{dir}/.wh.{base}")
                };
                let mut h = header(tar::EntryType::Regular, 0o644, 0);
                b.append_data(&mut h, wh, &[][..]).expect("append");
                remove_subtree(m, path);
            }
            Op::Opaque(p) => {
                let dir = &names[*p];
                if !parents_usable(m, dir) || m.get(dir) != Some(&Node::Dir) {
                    continue;
                }
                let mut h = header(tar::EntryType::Regular, 0o644, 0);
                b.append_data(&mut h, format!("{dir}/.wh..wh..opq"), &[][..])
                    .expect("append");
                let pre = format!("{dir}/");
                m.retain(|k, _| !k.starts_with(&pre) || touched.contains(k));
            }
        }
    }
    b.into_inner().expect("finish tar")
}

fn model_listing(m: &BTreeMap<String, Node>) -> Vec<String> {
    let mut v: Vec<(String, String)> = m
        .iter()
        .map(|(k, n)| {
            let line = match n {
                Node::Dir => format!("d {k}"),
                Node::Link(t) => format!("l {k} -> {t}"),
                Node::File(d, _) => {
                    let text = String::from_utf8_lossy(d);
                    format!("f {k} {}", text.strip_suffix('\n').unwrap_or(&text))
                }
            };
            (line, k.clone())
        })
        .collect();
    v.sort_by(|a, b| a.1.cmp(&b.1));
    v.into_iter().map(|(l, _)| l).collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn generated_layers_roundtrip_and_match_the_model(
        base in prop::collection::vec(op_strategy(), 0..14),
        top in prop::collection::vec(op_strategy(), 0..14),
    ) {
        let mut model = BTreeMap::new();
        let base_tar = build_layer(&base, &mut model);
        let top_tar = build_layer(&top, &mut model);
        // Each layer alone: byte-identical export (content overwritten or whited out in
        // the same layer must come from the metadata).
        roundtrip(&base_tar, "base");
        roundtrip(&top_tar, "top");
        // Both in order into one directory: the merged view.
        let tmp = tempfile::tempdir().expect("tempdir");
        extract_bytes(&base_tar, tmp.path(), &opts()).expect("base import");
        extract_bytes(&top_tar, tmp.path(), &opts()).expect("top import");
        prop_assert_eq!(tree_listing(tmp.path()), model_listing(&model));
        for (path, node) in &model {
            if let Node::File(_, mode) = node {
                let md = std::fs::symlink_metadata(tmp.path().join(path)).expect("stat");
                prop_assert_eq!(md.mode() & 0o7777, *mode, "mode of {}", path);
            }
        }
    }
}
