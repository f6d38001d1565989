//! Import edge cases: content that must be inlined, changes detected at export, bounds,
//! hostile streams, overlay whiteouts, and the committed metadata fixture.

#[path = "layer_common.rs"]
mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use cairn_layer::meta::{MetaReader, Record};
use cairn_layer::{export, Digest, ExtractOptions, LayerError, WhiteoutStyle};
use common::*;

fn opts() -> ExtractOptions {
    ExtractOptions {
        whiteouts: WhiteoutStyle::Delete,
        same_owner: true,
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
    b.append_data(&mut h, path, data).expect("append");
}

fn dir(b: &mut tar::Builder<Vec<u8>>, path: &str) {
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    b.append_data(&mut h, path, &[][..]).expect("append");
}

fn records(meta: &[u8]) -> Vec<Record> {
    let mut r = MetaReader::new(meta).expect("meta header");
    let mut out = Vec::new();
    while let Some(rec) = r.next_record().expect("record") {
        out.push(rec);
    }
    out
}

fn roundtrip_in(tar: &[u8], dir: &Path) -> (Digest, Vec<u8>) {
    let (ex, meta) = extract_bytes(tar, dir, &opts()).expect("import");
    let mut out = Vec::new();
    export(&meta[..], dir, &mut out, &ex.diff_id).expect("export");
    assert!(out == tar, "export differs");
    (ex.diff_id, meta)
}

#[test]
fn overwritten_and_whited_out_content_is_inlined() {
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "a", b"FIRST-VERSION");
    file(&mut b, "a", b"second");
    dir(&mut b, "d");
    file(&mut b, "d/x", b"WHITED-OUT-IN-SAME-LAYER");
    file(&mut b, "d/.wh.x", b"");
    file(&mut b, "d/sub/y", b"REPLACED-BY-FILE");
    file(&mut b, "d/sub", b"now a file");
    file(&mut b, "kept", b"KEPT-ON-DISK");
    let tar = b.into_inner().expect("tar");
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_, meta) = roundtrip_in(&tar, tmp.path());
    assert_eq!(fs::read(tmp.path().join("a")).expect("a"), b"second");
    assert!(!tmp.path().join("d/x").exists());
    assert_eq!(
        fs::read(tmp.path().join("d/sub")).expect("sub"),
        b"now a file"
    );
    let find = |needle: &[u8]| meta.windows(needle.len()).any(|w| w == needle);
    assert!(find(b"FIRST-VERSION"));
    assert!(find(b"WHITED-OUT-IN-SAME-LAYER"));
    assert!(find(b"REPLACED-BY-FILE"));
    assert!(
        !find(b"KEPT-ON-DISK"),
        "content on disk must be a reference"
    );
    let files: Vec<Vec<u8>> = records(&meta)
        .into_iter()
        .filter_map(|r| match r {
            Record::File { path, .. } => Some(path),
            _ => None,
        })
        .collect();
    assert_eq!(
        files,
        vec![b"a".to_vec(), b"d/sub".to_vec(), b"kept".to_vec()]
    );
}

#[test]
fn hardlinks_carry_no_content_and_survive_overwrite_of_their_target() {
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "orig", b"ORIGINAL");
    let mut h = header(tar::EntryType::Link, 0o644, 0);
    b.append_link(&mut h, "ln", "orig").expect("link");
    file(&mut b, "orig", b"new");
    let tar = b.into_inner().expect("tar");
    let tmp = tempfile::tempdir().expect("tempdir");
    roundtrip_in(&tar, tmp.path());
    assert_eq!(fs::read(tmp.path().join("ln")).expect("ln"), b"ORIGINAL");
    assert_eq!(fs::read(tmp.path().join("orig")).expect("orig"), b"new");
}

fn small_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    dir(&mut b, "etc");
    file(&mut b, "etc/hosts", b"127.0.0.1 localhost\n");
    file(&mut b, "etc/big", &vec![7u8; 3000]);
    file(&mut b, &format!("etc/{}", "long".repeat(40)), b"long\n");
    b.into_inner().expect("tar")
}

#[test]
fn export_names_the_file_that_changed() {
    let tar = small_layer();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (id, meta) = roundtrip_in(&tar, tmp.path());
    let hosts = tmp.path().join("etc/hosts");
    let again = |what: &str| {
        let mut out = Vec::new();
        let e = export(&meta[..], tmp.path(), &mut out, &id).expect_err(what);
        println!("{what}: {e}");
        e
    };
    fs::write(&hosts, b"127.0.0.1 localhosX\n").expect("write");
    assert!(
        matches!(again("same size"), LayerError::ContentChanged { path, .. } if path == "etc/hosts")
    );
    fs::write(&hosts, b"longer than it was before\n").expect("write");
    assert!(
        matches!(again("longer"), LayerError::SizeChanged { path, expected: 20, .. } if path == "etc/hosts")
    );
    fs::write(&hosts, b"short").expect("write");
    assert!(
        matches!(again("shorter"), LayerError::SizeChanged { path, actual: 5, .. } if path == "etc/hosts")
    );
    fs::remove_file(&hosts).expect("rm");
    assert!(matches!(again("missing"), LayerError::Fs { path, .. } if path == "etc/hosts"));
    fs::write(&hosts, b"127.0.0.1 localhost\n").expect("write");
    let mut out = Vec::new();
    assert_eq!(
        export(&meta[..], tmp.path(), &mut out, &id).expect("restored"),
        id
    );
    let other = Digest::of(b"other");
    assert!(matches!(
        export(&meta[..], tmp.path(), &mut Vec::new(), &other),
        Err(LayerError::DigestMismatch { .. })
    ));
    let mut bad = meta.clone();
    let n = bad.len();
    bad[n / 2] ^= 1;
    assert!(matches!(
        export(&bad[..], tmp.path(), &mut Vec::new(), &id),
        Err(LayerError::BadMeta { .. })
    ));
}

/// A parent, a target inside it, and the assertion that nothing but the target appeared.
struct Jail {
    parent: tempfile::TempDir,
    target: PathBuf,
}

impl Jail {
    fn new() -> Jail {
        let parent = tempfile::tempdir().expect("tempdir");
        let target = parent.path().join("target");
        fs::create_dir(&target).expect("mkdir");
        Jail { parent, target }
    }
    fn check(&self, what: &str) {
        assert_eq!(names(self.parent.path()), vec!["target"], "{what}: escaped");
    }
}

#[test]
fn every_cut_and_every_flipped_byte_is_a_typed_error_or_contained() {
    let tar = small_layer();
    for cut in (0..tar.len()).step_by(97) {
        let j = Jail::new();
        let r = extract_bytes(&tar[..cut], &j.target, &opts());
        // Cuts on a header boundary are valid (shorter) archives, and after the first zero
        // block everything is kept verbatim as trailer; anything else must fail.
        if cut % 512 != 0 && cut < tar.len() - 1024 {
            assert!(r.is_err(), "cut at {cut} accepted");
        }
        j.check("cut");
    }
    for i in (0..tar.len()).step_by(13) {
        let mut t = tar.clone();
        t[i] ^= 0x5a;
        let j = Jail::new();
        let _ = extract_bytes(&t, &j.target, &opts());
        j.check("flip");
    }
}

#[test]
fn huge_claims_fail_cleanly() {
    // 1 TiB of data announced, 512 bytes present.
    let mut h = header(tar::EntryType::Regular, 0o644, 1 << 40);
    h.set_path("huge").expect("path");
    h.set_cksum();
    let mut tar = h.as_bytes().to_vec();
    tar.extend_from_slice(&[1u8; 512]);
    let j = Jail::new();
    let e = extract_bytes(&tar, &j.target, &opts()).expect_err("1 TiB claim");
    assert!(
        matches!(e, LayerError::Truncated { ref path, .. } if path == "huge"),
        "{e:?}"
    );
    j.check("huge");
    // A PAX header of 1 GiB is refused before anything is read or allocated.
    let mut h = header(tar::EntryType::XHeader, 0o644, 1 << 30);
    h.set_path("pax").expect("path");
    h.set_cksum();
    let tar = h.as_bytes().to_vec();
    let e = extract_bytes(&tar, &j.target, &opts()).expect_err("huge pax");
    assert!(matches!(e, LayerError::TooLarge { .. }), "{e:?}");
}

#[test]
fn devices_need_root_and_overlay_style_makes_whiteout_devices() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Char, 0o600, 0);
    h.set_device_major(1).expect("major");
    h.set_device_minor(3).expect("minor");
    b.append_data(&mut h, "dev/null", &[][..]).expect("append");
    dir(&mut b, "o");
    file(&mut b, "o/.wh..wh..opq", b"");
    file(&mut b, "o/.wh.gone", b"");
    let tar = b.into_inner().expect("tar");
    let j = Jail::new();
    let overlay = ExtractOptions {
        whiteouts: WhiteoutStyle::OverlayCharDevice,
        same_owner: true,
    };
    let r = extract_bytes(&tar, &j.target, &overlay);
    if !is_root() {
        assert!(matches!(r, Err(LayerError::NotPermitted { .. })), "{r:?}");
        println!("skipped: devices and overlay whiteouts need root");
        return;
    }
    let (ex, meta) = r.expect("import as root");
    let listing = tree_listing(&j.target);
    assert!(
        listing.contains(&"c dev/null 1:3".to_string()),
        "{listing:?}"
    );
    assert!(listing.contains(&"c o/gone 0:0".to_string()), "{listing:?}");
    assert_eq!(
        xattr::get(j.target.join("o"), "trusted.overlay.opaque")
            .expect("xattr")
            .as_deref(),
        Some(&b"y"[..])
    );
    let mut out = Vec::new();
    export(&meta[..], &j.target, &mut out, &ex.diff_id).expect("export");
    assert!(out == tar);
    j.check("overlay");
}

#[test]
fn parent_layer_symlinks_resolve_inside_the_target() {
    let j = Jail::new();
    fs::create_dir_all(j.target.join("usr/lib")).expect("mkdir");
    std::os::unix::fs::symlink("usr/lib", j.target.join("lib")).expect("symlink");
    std::os::unix::fs::symlink("/", j.target.join("rootlink")).expect("symlink");
    std::os::unix::fs::symlink("../../..", j.target.join("up")).expect("symlink");
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "lib/libc.so", b"libc");
    file(&mut b, "rootlink/etc/x", b"x");
    file(&mut b, "up/y", b"y");
    let tar = b.into_inner().expect("tar");
    roundtrip_in(&tar, &j.target);
    assert_eq!(
        fs::read(j.target.join("usr/lib/libc.so")).expect("libc"),
        b"libc"
    );
    assert_eq!(fs::read(j.target.join("etc/x")).expect("x"), b"x");
    assert_eq!(fs::read(j.target.join("y")).expect("y"), b"y");
    j.check("symlinks");
}

#[test]
fn compressed_input_hashes_the_uncompressed_stream() {
    let tar = small_layer();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).expect("gz");
    let gz = gz.finish().expect("gz");
    let tmp = tempfile::tempdir().expect("tempdir");
    let (ex, _) = extract_bytes(&gz, tmp.path(), &opts()).expect("gz import");
    assert_eq!(ex.diff_id, Digest::of(&tar));
    let zst = zstd::encode_all(&tar[..], 3).expect("zstd");
    let tmp = tempfile::tempdir().expect("tempdir");
    let (ex, _) = extract_bytes(&zst, tmp.path(), &opts()).expect("zst import");
    assert_eq!(ex.diff_id, Digest::of(&tar));
    let j = Jail::new();
    let e = extract_bytes(&zst[..zst.len() - 5], &j.target, &opts()).expect_err("cut zstd");
    assert!(matches!(e, LayerError::Decompress { .. }), "{e:?}");
}

const FIXTURE_TAR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/layer/small.tar"
);
const FIXTURE_META: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/layer/small.meta"
);

/// The encoder must reproduce the committed metadata byte for byte: a format change shows
/// up here first. `CAIRN_BLESS=1` rewrites the fixture after a deliberate change.
#[test]
fn metadata_fixture_is_stable() {
    let tar = small_layer();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (id, meta) = roundtrip_in(&tar, tmp.path());
    if std::env::var("CAIRN_BLESS").as_deref() == Ok("1") {
        fs::write(FIXTURE_TAR, &tar).expect("write fixture");
        fs::write(FIXTURE_META, &meta).expect("write fixture");
    }
    let committed_tar = fs::read(FIXTURE_TAR).expect("fixture tar");
    let committed_meta = fs::read(FIXTURE_META).expect("fixture meta");
    assert!(committed_tar == tar, "the tar builder changed its output");
    // Import the committed tar itself: that is what the committed metadata describes.
    let tmp2 = tempfile::tempdir().expect("tempdir");
    let (_, meta2) = roundtrip_in(&committed_tar, tmp2.path());
    assert!(
        meta2 == committed_meta,
        "encoder output differs from the committed metadata"
    );
    assert!(meta == committed_meta);
    let recs = records(&committed_meta);
    assert!(matches!(recs.last(), Some(Record::End { diff_id, entries: 4, .. }) if *diff_id == id));
    let sizes: Vec<u64> = recs
        .iter()
        .filter_map(|r| match r {
            Record::File { size, .. } => Some(*size),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, vec![20, 3000, 5]);
    let mut out = Vec::new();
    export(&committed_meta[..], tmp2.path(), &mut out, &id).expect("export from fixture");
    assert!(out == committed_tar);
    let mut f = fs::File::open(FIXTURE_META).expect("open");
    let mut head = [0u8; 8];
    f.read_exact(&mut head).expect("magic");
    assert_eq!(&head, b"CAIRNTSM");
}

fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, target: &str) {
    let mut h = header(kind, 0o777, 0);
    b.append_link(&mut h, path, target).expect("append");
}

/// moby's breakout cases, rebuilt: every one must be refused or land inside the target.
#[test]
fn breakout_attempts_stay_inside() {
    let outside = tempfile::tempdir().expect("tempdir");
    let victim = outside.path().join("victim");
    fs::write(&victim, b"VICTIM").expect("write");
    let victim_dir = outside.path().to_string_lossy().into_owned();
    type Case = Box<dyn Fn(&mut tar::Builder<Vec<u8>>)>;
    let cases: Vec<(&str, Case)> = vec![
        ("write through absolute symlink", {
            let v = victim_dir.clone();
            Box::new(move |b| {
                link(b, tar::EntryType::Symlink, "s", &v);
                file(b, "s/victim", b"PWNED");
            })
        }),
        ("hardlink to a symlink, then write through it", {
            let v = victim_dir.clone();
            Box::new(move |b| {
                link(b, tar::EntryType::Symlink, "s", &v);
                link(b, tar::EntryType::Link, "h", "s");
                file(b, "h/victim", b"PWNED");
            })
        }),
        ("relative symlink climbing out", {
            let up = format!("../../../../../../../..{victim_dir}");
            Box::new(move |b| {
                link(b, tar::EntryType::Symlink, "s", &up);
                file(b, "s/victim", b"PWNED");
            })
        }),
        ("symlink replaced by a file of the same name", {
            let v = victim.to_string_lossy().into_owned();
            Box::new(move |b| {
                link(b, tar::EntryType::Symlink, "f", &v);
                file(b, "f", b"PWNED");
            })
        }),
        ("whiteout through a symlink", {
            let v = victim_dir.clone();
            Box::new(move |b| {
                link(b, tar::EntryType::Symlink, "s", &v);
                file(b, "s/.wh.victim", b"");
            })
        }),
        ("opaque dir through a symlink", {
            let v = victim_dir.clone();
            Box::new(move |b| {
                link(b, tar::EntryType::Symlink, "s", &v);
                file(b, "s/.wh..wh..opq", b"");
            })
        }),
        (
            "symlink loop as parent",
            Box::new(|b| {
                link(b, tar::EntryType::Symlink, "loop", "loop");
                file(b, "loop/x", b"x");
            }),
        ),
    ];
    for (what, build) in cases {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let tar = b.into_inner().expect("tar");
        let j = Jail::new();
        let r = extract_bytes(&tar, &j.target, &opts());
        println!("{what}: {:?}", r.as_ref().map(|(ex, _)| ex.entries));
        j.check(what);
        assert_eq!(fs::read(&victim).expect("victim"), b"VICTIM", "{what}");
        assert_eq!(names(outside.path()), vec!["victim"], "{what}");
    }
}

/// The fuzz target's property on seeded random mutations, so it runs without nightly:
/// import fails cleanly or succeeds, a success exports back to the same DiffID, and nothing
/// appears beside the target.
#[test]
fn mutated_layers_import_cleanly_or_fail_typed() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("CAIRN_MUTATION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1a7e5);
    println!("mutation seed {seed} (set CAIRN_MUTATION_SEED to replay)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut base = tar::Builder::new(Vec::new());
    dir(&mut base, "d");
    file(&mut base, "d/a", b"alpha");
    link(&mut base, tar::EntryType::Symlink, "d/s", "/etc");
    link(&mut base, tar::EntryType::Link, "d/h", "d/a");
    file(&mut base, "d/.wh.a", b"");
    file(&mut base, "d/a", b"again");
    let base = base.into_inner().expect("tar");
    // Header blocks of the original: mutated headers get a fixed checksum half the time,
    // so the mutation reaches the parser instead of stopping at the checksum.
    let headers: Vec<usize> = (0..base.len() / 512)
        .map(|b| b * 512)
        .filter(|&o| {
            let blk: &[u8; 512] = base[o..o + 512].try_into().expect("block");
            blk.iter().any(|&c| c != 0) && cairn_layer::header::verify_checksum(blk).is_ok()
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..400 {
        let mut t = base.clone();
        for _ in 0..rng.gen_range(1..4) {
            let i = rng.gen_range(0..t.len());
            t[i] = rng.gen();
        }
        if rng.gen_bool(0.5) {
            for &o in &headers {
                let blk = &mut t[o..o + 512];
                blk[148..156].copy_from_slice(b"        ");
                let sum: u32 = blk.iter().map(|&c| u32::from(c)).sum();
                blk[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            }
        }
        let j = Jail::new();
        match extract_bytes(&t, &j.target, &opts()) {
            Ok((ex, meta)) => {
                let mut out = Vec::new();
                let got = export(&meta[..], &j.target, &mut out, &ex.diff_id)
                    .unwrap_or_else(|e| panic!("seed {seed}: export after import failed: {e}"));
                assert_eq!(got, ex.diff_id);
                assert!(out == t, "seed {seed}: export differs");
                ok += 1;
            }
            Err(_) => failed += 1,
        }
        j.check("mutation");
    }
    println!("{ok} imported, {failed} refused");
    assert!(ok > 0 && failed > 0, "mutations should both pass and fail");
}
