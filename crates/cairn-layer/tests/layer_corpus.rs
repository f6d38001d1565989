//! The shared corpus: real layers round-trip byte for byte, the chain merges as expected,
//! hostile inputs are refused or contained.

#[path = "layer_common.rs"]
mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use cairn_layer::{chain_id, export, extract, Digest, ExtractOptions, LayerError, WhiteoutStyle};
use common::*;

fn manifest(corpus: &Path) -> Vec<(String, String, String)> {
    let text = fs::read_to_string(corpus.join("MANIFEST.tsv")).expect("MANIFEST.tsv");
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 3, "bad manifest line {l:?}");
            (f[0].to_string(), f[1].to_string(), f[2].to_string())
        })
        .collect()
}

fn opts() -> ExtractOptions {
    ExtractOptions {
        whiteouts: WhiteoutStyle::Delete,
        same_owner: true,
    }
}

#[test]
fn ok_layers_import_and_export_byte_identical() {
    let Some(corpus) = corpus() else { return };
    let mut seen = 0;
    for (file, expect, diff_id) in manifest(&corpus) {
        if expect != "ok" {
            continue;
        }
        let path = corpus.join(&file);
        let want: Digest = diff_id.parse().expect("manifest digest");
        let tmp = tempfile::tempdir().expect("tempdir");
        let target = tmp.path().join("t");
        fs::create_dir(&target).expect("mkdir");
        let mut meta = Vec::new();
        let input = fs::File::open(&path).expect("open layer");
        let ex = extract(input, &target, &opts(), &mut meta)
            .unwrap_or_else(|e| panic!("{file}: import failed: {e}"));
        assert_eq!(ex.diff_id, want, "{file}: DiffID");
        let plain = uncompressed(&path);
        assert_eq!(ex.size_bytes, plain.len() as u64, "{file}: size");
        let mut out = Vec::new();
        let got = export(&meta[..], &target, &mut out, &want)
            .unwrap_or_else(|e| panic!("{file}: export failed: {e}"));
        assert_eq!(got, want, "{file}");
        assert!(
            out == plain,
            "{file}: exported tar differs from the original"
        );
        println!(
            "{file}: ok ({} entries, {} bytes of metadata)",
            ex.entries,
            meta.len()
        );
        seen += 1;
    }
    assert!(seen >= 12, "only {seen} ok layers in the manifest");
}

#[test]
fn python_pax_details_reach_the_disk() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path().join("t");
    fs::create_dir(&t).expect("mkdir");
    let tar = fs::read(corpus.join("layers/python-pax.tar")).expect("read");
    extract_bytes(&tar, &t, &opts()).expect("import");
    assert_eq!(
        fs::read(t.join("opt/dup.txt")).expect("dup"),
        b"second wins\n"
    );
    assert_eq!(
        fs::read(t.join("opt/café-漢字.txt")).expect("unicode"),
        b"unicode\n"
    );
    let md = fs::metadata(t.join("opt/xattr.txt")).expect("stat");
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_700_000_000, 123_456_789));
    match xattr::get(t.join("opt/xattr.txt"), "user.cairn") {
        Ok(v) => assert_eq!(v.as_deref(), Some(&b"v1"[..])),
        Err(e) => println!("skipped: user xattrs not supported here: {e}"),
    }
    let fifo = fs::symlink_metadata(t.join("opt/fifo")).expect("fifo");
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fifo.file_type()));
    if is_root() {
        let md = fs::metadata(t.join("opt/bigid.txt")).expect("stat");
        assert_eq!((md.uid(), md.gid()), (3_000_000, 3_000_000));
    } else {
        println!("skipped: chown to uid 3000000 needs root");
    }
}

#[test]
fn sparse_file_is_really_sparse() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path().join("t");
    fs::create_dir(&t).expect("mkdir");
    let tar = fs::read(corpus.join("layers/sparse.tar")).expect("read");
    extract_bytes(&tar, &t, &opts()).expect("import");
    let mut found = false;
    for line in tree_listing(&t) {
        println!("{}", line.chars().take(80).collect::<String>());
    }
    for e in walkdir(&t) {
        let md = fs::symlink_metadata(&e).expect("stat");
        if md.is_file() && md.len() == 8 << 20 {
            found = true;
            assert!(
                md.blocks() * 512 < 1 << 20,
                "{}: {} blocks allocated",
                e.display(),
                md.blocks()
            );
            let data = fs::read(&e).expect("read");
            let nonzero = data.iter().filter(|&&b| b != 0).count();
            assert!((1..=8).contains(&nonzero), "{nonzero} non-zero bytes");
        }
    }
    assert!(found, "no 8 MiB file in the sparse layer");
}

fn walkdir(d: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(d).expect("read_dir") {
        let p = e.expect("entry").path();
        if fs::symlink_metadata(&p).expect("lstat").is_dir() {
            out.extend(walkdir(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn chain_merges_to_expected_tree_and_chain_ids() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path().join("t");
    fs::create_dir(&t).expect("mkdir");
    let ids = fs::read_to_string(corpus.join("chain/expected-chain-ids.txt")).expect("ids");
    let mut parent: Option<Digest> = None;
    let mut n = 0;
    for line in ids.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let tar = fs::read(corpus.join("chain").join(f[0])).expect("layer");
        let (ex, _) = extract_bytes(&tar, &t, &opts()).expect("import");
        assert_eq!(ex.diff_id.to_string(), f[1], "{} DiffID", f[0]);
        let c = chain_id(parent.as_ref(), &ex.diff_id);
        assert_eq!(c.to_string(), f[2], "{} ChainID", f[0]);
        parent = Some(c);
        n += 1;
    }
    assert_eq!(n, 3);
    let expected: Vec<String> = fs::read_to_string(corpus.join("chain/expected-tree.txt"))
        .expect("tree")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(str::to_string)
        .collect();
    assert_eq!(tree_listing(&t), expected);
}

/// Files a hostile layer may try to create outside its target, by absolute path.
const ESCAPES: &[&str] = &[
    "/tmp/escaped-absolute.txt",
    "/tmp/escaped.txt",
    "/escaped.txt",
];

#[test]
fn malicious_layers_are_refused_or_contained() {
    let Some(corpus) = corpus() else { return };
    let existed: Vec<bool> = ESCAPES.iter().map(|p| Path::new(p).exists()).collect();
    let passwd_before = fs::read("/etc/passwd").ok();
    let mut seen = 0;
    for (file, expect, _) in manifest(&corpus) {
        if !file.starts_with("malicious/") {
            continue;
        }
        seen += 1;
        let tmp = tempfile::tempdir().expect("tempdir");
        let target = tmp.path().join("target");
        let sentinel = tmp.path().join("sentinel");
        fs::create_dir(&target).expect("mkdir");
        fs::create_dir(&sentinel).expect("mkdir");
        fs::write(sentinel.join("keep"), b"untouched").expect("write");
        // A parent-layer symlink to the sentinel: following it would change the sentinel.
        std::os::unix::fs::symlink(&sentinel, target.join("sentinel-link")).expect("symlink");
        let input = fs::File::open(corpus.join(&file)).expect("open");
        let mut meta = Vec::new();
        let res = extract(input, &target, &opts(), &mut meta);
        match (&res, expect.as_str()) {
            (Err(e), _) => {
                println!("{file}: refused: {e}");
                check_variant(&file, e);
            }
            (Ok(_), "contained") => println!("{file}: imported, contained"),
            (Ok(_), _) => panic!("{file}: expected an error, import succeeded"),
        }
        assert_eq!(
            names(tmp.path()),
            vec!["sentinel", "target"],
            "{file}: something escaped"
        );
        assert_eq!(names(&sentinel), vec!["keep"], "{file}: sentinel changed");
        assert_eq!(fs::read(sentinel.join("keep")).expect("read"), b"untouched");
        for (p, before) in ESCAPES.iter().zip(&existed) {
            if !before {
                assert!(!Path::new(p).exists(), "{file}: created {p}");
            }
        }
        assert_eq!(
            fs::read("/etc/passwd").ok(),
            passwd_before,
            "{file}: /etc/passwd changed"
        );
    }
    assert_eq!(seen, 14);
}

/// Each refused file fails for its own reason, not by accident.
fn check_variant(file: &str, e: &LayerError) {
    let ok = match file {
        "malicious/bad-crc.tar.gz" | "malicious/truncated.tar.gz" => {
            matches!(e, LayerError::Decompress { .. })
        }
        "malicious/bad-header-checksum.tar" => matches!(e, LayerError::BadChecksum { .. }),
        "malicious/dotdot.tar" | "malicious/nested-dotdot.tar" => {
            matches!(e, LayerError::UnsafePath { path, .. } if path.contains("escaped"))
        }
        "malicious/whiteout-dotdot.tar" => {
            matches!(e, LayerError::UnsafePath { path, .. } if path.contains(".wh."))
        }
        "malicious/hardlink-missing.tar" | "malicious/hardlink-outside.tar" => {
            matches!(e, LayerError::BadHardlink { .. })
        }
        "malicious/huge-claim.tar" => {
            matches!(e, LayerError::Truncated { path, .. } if path == "huge.bin")
        }
        "malicious/truncated.tar" => {
            matches!(e, LayerError::Truncated { path, .. } if path == "big.bin")
        }
        "malicious/not-a-tar.bin" => matches!(
            e,
            LayerError::BadChecksum { .. }
                | LayerError::BadHeader { .. }
                | LayerError::Truncated { .. }
        ),
        _ => true,
    };
    assert!(ok, "{file}: unexpected error kind: {e:?}");
}

#[test]
fn chain_layers_import_into_empty_targets_with_overlay_whiteouts() {
    let Some(corpus) = corpus() else { return };
    if !is_root() {
        println!("skipped: overlay whiteouts need root (mknod, trusted.* xattrs)");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path().join("t");
    fs::create_dir(&t).expect("mkdir");
    let tar = fs::read(corpus.join("chain/1-whiteouts.tar")).expect("read");
    let o = ExtractOptions {
        whiteouts: WhiteoutStyle::OverlayCharDevice,
        same_owner: true,
    };
    let (ex, meta) = extract_bytes(&tar, &t, &o).expect("import");
    let listing = tree_listing(&t);
    assert!(
        listing.contains(&"c app/gone.txt 0:0".to_string()),
        "{listing:?}"
    );
    assert!(
        listing.contains(&"c app/replaced 0:0".to_string()),
        "{listing:?}"
    );
    match xattr::get(t.join("app/old"), "trusted.overlay.opaque") {
        Ok(v) => assert_eq!(v.as_deref(), Some(&b"y"[..])),
        Err(e) => println!("skipped: trusted xattrs not supported here: {e}"),
    }
    let mut out = Vec::new();
    export(&meta[..], &t, &mut out, &ex.diff_id).expect("export");
    assert!(out == tar);
}
