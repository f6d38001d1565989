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

fn config_for(diff_ids: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": [{ "created_by": "test" }],
    }))
    .expect("config")
}

/// `PutImageConfig` through the engine: every refusal changes nothing; the kept config and
/// manifest survive a reopen, a checkpoint and a reopen from it.
#[test]
fn kept_image_config_refusals_change_nothing_and_it_survives_reopen_and_checkpoint() {
    let d = tempfile::tempdir().expect("tempdir");
    let root = d.path().join("root");
    let engine = open(&root);
    let l0 = import(&engine, tar_of(&[("a", b"base")], &[]), None);
    let l1 = import(&engine, tar_of(&[("b", b"top")], &[]), Some(&l0.chain_id));
    let config = config_for(&[&l0.diff_id, &l1.diff_id]);
    let manifest = br#"{"schemaVersion":2,"layers":[]}"#.to_vec();
    let config_digest = cairn_state::sha256_digest(&config);
    let manifest_digest = cairn_state::sha256_digest(&manifest);
    engine
        .put_image("kept:1", &l1.chain_id, &manifest_digest, &config_digest)
        .expect("put image");
    assert_eq!(engine.image_kept("kept:1").expect("kept"), None);
    let before = engine.images().expect("images");

    let refused = |r: Result<(), EngineError>| match r {
        Err(EngineError::State(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    // An unknown image.
    assert!(matches!(
        refused(engine.put_image_config("nope", &config, None)),
        StateError::NotFound { .. }
    ));
    // A config over the bound.
    let huge = vec![b' '; cairn_state::MAX_KEPT_CONFIG_BYTES + 1];
    assert!(matches!(
        refused(engine.put_image_config("kept:1", &huge, None)),
        StateError::InvalidArgument {
            reason: cairn_state::Invalid::KeptTooLarge {
                field: "config",
                ..
            }
        }
    ));
    let huge = vec![b' '; cairn_state::MAX_KEPT_MANIFEST_BYTES + 1];
    assert!(matches!(
        refused(engine.put_image_config("kept:1", &config, Some(&huge))),
        StateError::InvalidArgument {
            reason: cairn_state::Invalid::KeptTooLarge {
                field: "manifest",
                ..
            }
        }
    ));
    // Another config than the image records.
    let other = config_for(&[&l0.diff_id]);
    assert!(matches!(
        refused(engine.put_image_config("kept:1", &other, None)),
        StateError::InvalidArgument {
            reason: cairn_state::Invalid::KeptDigest { what: "config", .. }
        }
    ));
    assert!(matches!(
        refused(engine.put_image_config("kept:1", &config, Some(b"{}"))),
        StateError::InvalidArgument {
            reason: cairn_state::Invalid::KeptDigest {
                what: "manifest",
                ..
            }
        }
    ));
    // The image's own digest, but DiffIDs that are not its layers.
    engine
        .put_image(
            "short:1",
            &l1.chain_id,
            "",
            &cairn_state::sha256_digest(&other),
        )
        .expect("put short");
    assert!(matches!(
        refused(engine.put_image_config("short:1", &other, None)),
        StateError::InvalidArgument {
            reason: cairn_state::Invalid::ConfigLayers { .. }
        }
    ));
    engine.remove_image("short:1").expect("rm short");
    assert_eq!(engine.images().expect("images"), before);
    assert_eq!(engine.image_kept("kept:1").expect("kept"), None);

    engine
        .put_image_config("kept:1", &config, Some(&manifest))
        .expect("keep");
    let kept = cairn_state::Kept {
        config: config.clone(),
        manifest: Some(manifest.clone()),
    };
    assert_eq!(
        engine.image_kept("kept:1").expect("kept"),
        Some(kept.clone())
    );
    engine.close().expect("close");

    // From the journal, then from a checkpoint (v4).
    let engine = open(&root);
    assert_eq!(
        engine.image_kept("kept:1").expect("kept"),
        Some(kept.clone())
    );
    engine.checkpoint().expect("checkpoint");
    engine.close().expect("close");
    let bytes = std::fs::read(root.join("checkpoint")).expect("read checkpoint");
    assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 4, "checkpoint v4");
    let engine = open(&root);
    assert_eq!(engine.image_kept("kept:1").expect("kept"), Some(kept));
    // Replacing the image drops what was kept with the old one.
    engine
        .put_image("kept:1", &l1.chain_id, &manifest_digest, &config_digest)
        .expect("replace");
    assert_eq!(engine.image_kept("kept:1").expect("kept"), None);
    let fsck = engine.fsck(false).expect("fsck");
    assert!(fsck.is_clean(), "{fsck:?}");
}

/// `PutImageKept` through the engine: the image and its kept config in one record. A refusal
/// of either half records nothing (no image without its config); an accepted one survives a
/// reopen from the journal.
#[test]
fn an_image_recorded_with_its_config_in_one_record_is_whole_or_absent() {
    let d = tempfile::tempdir().expect("tempdir");
    let root = d.path().join("root");
    let engine = open(&root);
    let l0 = import(&engine, tar_of(&[("a", b"base")], &[]), None);
    let l1 = import(&engine, tar_of(&[("b", b"top")], &[]), Some(&l0.chain_id));
    let config = config_for(&[&l0.diff_id, &l1.diff_id]);
    let manifest = br#"{"schemaVersion":2,"layers":[]}"#.to_vec();
    let config_digest = cairn_state::sha256_digest(&config);
    let manifest_digest = cairn_state::sha256_digest(&manifest);
    let before = engine.images().expect("images");
    let refused = |r: Result<(), EngineError>| match r {
        Err(EngineError::State(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    // The config half refused (its DiffIDs are one layer short): no image either.
    let short = config_for(&[&l0.diff_id]);
    assert!(matches!(
        refused(engine.put_image_kept(
            "kept:1",
            &l1.chain_id,
            &manifest_digest,
            &cairn_state::sha256_digest(&short),
            &short,
            Some(&manifest),
        )),
        StateError::InvalidArgument {
            reason: cairn_state::Invalid::ConfigLayers { .. }
        }
    ));
    // A digest that is not the config's.
    assert!(matches!(
        refused(engine.put_image_kept(
            "kept:1",
            &l1.chain_id,
            &manifest_digest,
            &manifest_digest,
            &config,
            Some(&manifest),
        )),
        StateError::InvalidArgument {
            reason: cairn_state::Invalid::KeptDigest { what: "config", .. }
        }
    ));
    // The image half refused (an unknown top layer).
    assert!(matches!(
        refused(engine.put_image_kept(
            "kept:1",
            "sha256:0000",
            &manifest_digest,
            &config_digest,
            &config,
            None,
        )),
        StateError::NotFound { .. }
    ));
    assert_eq!(engine.images().expect("images"), before);
    assert!(
        matches!(
            engine.image_kept("kept:1"),
            Err(EngineError::State(StateError::NotFound { .. }))
        ),
        "a refused PutImageKept recorded no image"
    );

    engine
        .put_image_kept(
            "kept:1",
            &l1.chain_id,
            &manifest_digest,
            &config_digest,
            &config,
            Some(&manifest),
        )
        .expect("put image kept");
    let kept = cairn_state::Kept {
        config: config.clone(),
        manifest: Some(manifest.clone()),
    };
    assert_eq!(
        engine.image_kept("kept:1").expect("kept"),
        Some(kept.clone())
    );
    assert_eq!(engine.images().expect("images").len(), before.len() + 1);
    // Dropped without close: the next open replays it from the journal.
    drop(engine);
    let engine = open(&root);
    assert_eq!(engine.image_kept("kept:1").expect("kept"), Some(kept));
    let fsck = engine.fsck(false).expect("fsck");
    assert!(fsck.is_clean(), "{fsck:?}");
}
