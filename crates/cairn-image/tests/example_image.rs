//! The image that ships in examples/ (the README's main job) loads, and its layers come back
//! byte for byte. Needs nothing outside the repository.

#[path = "../../cairn-layer/tests/layer_common.rs"]
mod common;

use cairn_engine::{Engine, EngineOptions};
use common::Sink;
use std::io::Read;
use std::path::Path;

#[test]
fn hello_image_loads_and_exports_its_layers() {
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-oci");
    let tmp = tempfile::tempdir().expect("tempdir");
    let (engine, _) =
        Engine::open(&tmp.path().join("root"), EngineOptions::default()).expect("open");
    let loaded = cairn_image::load(&engine, &image, &|_| {}).expect("load");
    assert_eq!(loaded[0].names, vec!["hello:1".to_owned()]);
    assert_eq!(loaded[0].layers.len(), 2);
    let top = loaded[0].top.clone();

    let view = engine
        .view("look", Some(&top), Default::default())
        .expect("view");
    let tree = &view[0].source;
    let hello = std::fs::read_to_string(tree.join("bin/hello")).expect("hello");
    assert!(hello.contains("hello again from cairn"), "{hello}");
    assert!(
        !tree.join("tmp/scratch").exists(),
        "the whiteout removed it"
    );
    assert!(tree.join("etc/os-release").exists());

    // Each layer exports as its uncompressed blob: DiffID and bytes both.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.join("index.json")).expect("index"))
            .expect("json");
    let manifest_digest = index["manifests"][0]["digest"].as_str().expect("digest");
    let blob = |d: &str| {
        std::fs::read(
            image
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
        .expect("blob")
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(manifest_digest)).expect("manifest");
    for (i, chain) in loaded[0].layers.iter().enumerate() {
        let raw = blob(
            manifest["layers"][i]["digest"]
                .as_str()
                .expect("layer digest"),
        );
        let mut expected = Vec::new();
        if raw.starts_with(&[0x1f, 0x8b]) {
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_end(&mut expected)
                .expect("gunzip");
        } else {
            expected = raw;
        }
        let sink = Sink::default();
        engine
            .export_layer(chain, Box::new(sink.clone()))
            .expect("export");
        assert!(
            *sink.0.lock().expect("sink") == expected,
            "layer {i} differs"
        );
    }
    engine.remove("look").expect("rm view");
    let fsck = engine.fsck(false).expect("fsck");
    assert!(fsck.is_clean(), "{fsck:?}");
}
