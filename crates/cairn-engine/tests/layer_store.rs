//! The layer store through the engine: import (plain, gzip, zstd), byte-identical export,
//! ChainIDs, dedupe, references and cascade removal, images, verify. Uses tars built here;
//! the shared corpus has its own tests.

#[path = "../../cairn-layer/tests/layer_common.rs"]
mod common;

use cairn_engine::{Engine, EngineError, EngineHandle, EngineOptions, ImportOptions};
use cairn_state::{Precondition, StateError};
use common::Sink;
use std::io::Write;
use std::path::Path;

fn tar_of(files: &[(&str, &[u8])], deleted: &[&str]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, *data).expect("append");
    }
    for name in deleted {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_cksum();
        let (dir, leaf) = name.rsplit_once('/').map_or(("", *name), |(d, l)| (d, l));
        let wh = if dir.is_empty() {
            format!(".wh.{leaf}")
        } else {
            format!("{dir}/.wh.{leaf}")
        };
        b.append_data(&mut h, wh, &[][..]).expect("append whiteout");
    }
    b.into_inner().expect("finish")
}

fn import(engine: &EngineHandle, bytes: Vec<u8>, parent: Option<&str>) -> cairn_engine::Imported {
    let options = ImportOptions {
        parent: parent.map(Into::into),
        pin: true,
        expected_diff_id: None,
    };
    engine
        .import_layer(Box::new(std::io::Cursor::new(bytes)), options)
        .expect("import")
}

fn export(engine: &EngineHandle, chain: &str) -> Vec<u8> {
    let sink = Sink::default();
    engine
        .export_layer(chain, Box::new(sink.clone()))
        .expect("export");
    let out = sink.0.lock().expect("sink").clone();
    out
}

fn open(root: &Path) -> EngineHandle {
    Engine::open(root, EngineOptions::default())
        .expect("open")
        .0
}

#[test]
fn import_export_chain_dedupe_and_cascade() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let engine = open(&root);
    let base = tar_of(&[("etc/conf", b"v1"), ("app/a.txt", b"a")], &[]);
    let top = tar_of(&[("etc/conf", b"v2")], &["app/a.txt"]);
    let l0 = import(&engine, base.clone(), None);
    assert!(!l0.existed);
    assert_eq!(
        l0.chain_id, l0.diff_id,
        "the base layer's ChainID is its DiffID"
    );
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&top).expect("gzip");
        e.finish().expect("gzip")
    };
    let l1 = import(&engine, gz, Some(&l0.chain_id));
    assert_ne!(l1.chain_id, l1.diff_id);
    // Export gives back the uncompressed tar, byte for byte.
    assert_eq!(export(&engine, &l0.chain_id), base);
    assert_eq!(export(&engine, &l1.chain_id), top);
    // The merged view of the top layer: the file replaced, the other deleted.
    let view = engine
        .view("look", Some(&l1.chain_id), Default::default())
        .expect("view");
    if view.len() == 1 && view[0].kind == "bind" {
        let tree = &view[0].source;
        assert_eq!(std::fs::read(tree.join("etc/conf")).expect("read"), b"v2");
        assert!(!tree.join("app/a.txt").exists());
    }
    engine.remove("look").expect("rm view");
    // The same layer again (zstd this time) is recognised and changes nothing.
    let zst = zstd::encode_all(&base[..], 3).expect("zstd");
    let again = import(&engine, zst, None);
    assert!(again.existed);
    assert_eq!(again.chain_id, l0.chain_id);
    assert_eq!(engine.layers().expect("ls").len(), 2);

    engine
        .put_image("demo:1", &l1.chain_id, "sha256:m", "sha256:c")
        .expect("image");
    let images = engine.images().expect("images");
    assert_eq!(
        images[0].layers,
        vec![l0.chain_id.clone(), l1.chain_id.clone()]
    );
    let refused = engine
        .remove_layer(&l1.chain_id)
        .expect_err("held by the image");
    assert!(matches!(
        refused,
        EngineError::State(StateError::FailedPrecondition {
            reason: Precondition::Referenced { .. },
            ..
        })
    ));
    assert!(engine
        .verify(None)
        .expect("verify")
        .iter()
        .all(|v| v.problem.is_none()));
    engine.close().expect("close");

    // Everything survives a reopen; removing the image and the pins cascades.
    let engine = open(&root);
    assert_eq!(export(&engine, &l1.chain_id), top);
    engine.remove_image("demo:1").expect("rm image");
    engine.remove_layer(&l1.chain_id).expect("rm top");
    assert_eq!(
        engine.layers().expect("ls").len(),
        1,
        "the base is still pinned"
    );
    engine.remove_layer(&l0.chain_id).expect("rm base");
    assert!(engine.layers().expect("ls").is_empty());
    assert!(engine.walk(&[]).expect("walk").is_empty());
    let fsck = engine.fsck(false).expect("fsck");
    assert!(fsck.is_clean(), "{fsck:?}");
}

#[test]
fn verify_names_a_changed_file_and_bad_input_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let engine = open(&tmp.path().join("root"));
    let l = import(&engine, tar_of(&[("f", b"original")], &[]), None);
    // A vfs View binds the layer's own tree: tamper with it there.
    let tree = engine
        .view("look", Some(&l.chain_id), Default::default())
        .expect("view")[0]
        .source
        .clone();
    engine.remove("look").expect("rm view");
    std::fs::write(tree.join("f"), b"tampered").expect("tamper");
    let v = engine.verify(Some(&l.chain_id)).expect("verify");
    let problem = v[0].problem.clone().expect("a difference");
    assert!(problem.contains('f'), "{problem}");

    let before = engine.walk(&[]).expect("walk");
    let err = engine
        .import_layer(
            Box::new(std::io::Cursor::new(b"this is not a tar at all".repeat(40))),
            ImportOptions::default(),
        )
        .expect_err("garbage");
    assert!(matches!(err, EngineError::Layer(_)), "{err}");
    assert_eq!(engine.walk(&[]).expect("walk"), before);
    let fsck = engine.fsck(false).expect("fsck");
    assert!(fsck.is_clean(), "nothing left behind: {fsck:?}");
}

#[test]
fn a_chain_deeper_than_125_layers_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let engine = open(&tmp.path().join("root"));
    let mut parent: Option<String> = None;
    for i in 0..cairn_state::MAX_LAYER_DEPTH {
        let name = format!("f{i}");
        let l = import(
            &engine,
            tar_of(&[(name.as_str(), b"x")], &[]),
            parent.as_deref(),
        );
        parent = Some(l.chain_id);
    }
    let before = engine.layers().expect("layers");
    assert_eq!(before.len(), cairn_state::MAX_LAYER_DEPTH);
    let options = ImportOptions {
        parent: parent.clone(),
        pin: true,
        expected_diff_id: None,
    };
    let tar = tar_of(&[("one-too-many", b"x")], &[]);
    let err = engine
        .import_layer(Box::new(std::io::Cursor::new(tar)), options)
        .expect_err("too deep");
    assert!(
        matches!(err, EngineError::State(StateError::InvalidArgument { .. })),
        "{err}"
    );
    assert_eq!(engine.layers().expect("layers"), before);
    let fsck = engine.fsck(false).expect("fsck");
    assert!(fsck.is_clean(), "{fsck:?}");
}
