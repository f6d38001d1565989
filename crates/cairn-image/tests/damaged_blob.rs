//! A layer blob whose bytes do not match its digest is refused, and the load changes nothing:
//! for a gzip blob the blob digest catches it as the blob streams; for an uncompressed blob,
//! whose digest is its DiffID and is hashed once, the import's DiffID check does.

use cairn_engine::{Engine, EngineOptions};
use std::path::Path;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).expect("copy");
        }
    }
}

/// The offset of the first byte of file content in a plain tar.
fn first_content_byte(tar_bytes: &[u8]) -> usize {
    let mut archive = tar::Archive::new(tar_bytes);
    for e in archive.entries().expect("entries") {
        let e = e.expect("entry");
        if e.header().size().expect("size") > 0 {
            return usize::try_from(e.raw_file_position()).expect("offset");
        }
    }
    panic!("the plain layer has no file content");
}

#[test]
fn a_damaged_layer_blob_is_refused_and_changes_nothing() {
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-oci");
    let blobs: Vec<_> = std::fs::read_dir(image.join("blobs/sha256"))
        .expect("blobs")
        .map(|e| e.expect("entry").path())
        .collect();
    // The layers: the gzip blob and the plain tar (the other blobs are JSON).
    let layers: Vec<_> = blobs
        .iter()
        .filter(|p| {
            let b = std::fs::read(p).expect("blob");
            !b.starts_with(b"{")
        })
        .collect();
    assert_eq!(layers.len(), 2, "hello-oci has a gzip and a plain layer");
    let mut kinds = Vec::new();
    for layer in layers {
        let tmp = tempfile::tempdir().expect("tempdir");
        let copy = tmp.path().join("image");
        copy_dir(&image, &copy);
        let victim = copy
            .join("blobs/sha256")
            .join(layer.file_name().expect("name"));
        let mut bytes = std::fs::read(&victim).expect("blob");
        let gzip = bytes.starts_with(&[0x1f, 0x8b]);
        kinds.push(gzip);
        // A byte inside a file's content (the plain tar) or inside the deflate stream's
        // trailer CRC (gzip): the blob still parses as far as the damage.
        let at = if gzip {
            bytes.len() - 6
        } else {
            first_content_byte(&bytes)
        };
        bytes[at] ^= 0x20;
        std::fs::write(&victim, &bytes).expect("write");

        let (engine, _) =
            Engine::open(&tmp.path().join("root"), EngineOptions::default()).expect("open");
        let err =
            cairn_image::load(&engine, &copy, &|_| {}).expect_err("a damaged blob must not load");
        let text = err.to_string();
        assert!(
            text.contains("digest") || text.contains("DiffID") || text.contains("crc"),
            "gzip {gzip}: {text}"
        );
        assert!(engine.images().expect("images").is_empty(), "gzip {gzip}");
        // The damaged layer is not in the store (a layer before it may be: it is whole).
        let damaged_loaded = engine.layers().expect("layers").len();
        assert!(damaged_loaded <= 1, "gzip {gzip}: {damaged_loaded} layers");
        assert!(
            engine.fsck(false).expect("fsck").is_clean(),
            "gzip {gzip}: fsck"
        );
    }
    kinds.sort();
    assert_eq!(kinds, vec![false, true]);
}
