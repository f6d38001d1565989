//! `fsck --verify` (issue 8, item 5): every layer is hashed against its DiffID and every
//! committed snapshot's tree against the digest journaled with its commit.

use cairn_engine::{Engine, EngineHandle, EngineOptions, ImportOptions, Problem};
use cairn_state::Op;
use std::path::Path;
use std::process::Command;

fn options() -> EngineOptions {
    EngineOptions {
        workers: 2,
        lock_timeout_ms: 0,
        ..EngineOptions::default()
    }
}

fn open(root: &Path) -> EngineHandle {
    Engine::open(root, options()).expect("open").0
}

fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        b.append_data(&mut header, name, *data).expect("append");
    }
    b.into_inner().expect("tar")
}

/// The committed tree of snapshot `key`, read through a View (vfs binds the committed tree).
fn committed_tree(h: &EngineHandle, key: &str) -> std::path::PathBuf {
    let m = h
        .view("probe", Some(key), Default::default())
        .expect("view");
    h.remove("probe").expect("remove probe");
    m[0].source.clone()
}

#[test]
fn the_commit_journals_the_digest_of_the_tree_it_made_durable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let h = open(&root);
    let tree = h.prepare("a", None, Default::default()).expect("prepare")[0]
        .source
        .clone();
    std::fs::create_dir(tree.join("etc")).expect("mkdir");
    std::fs::write(tree.join("etc/hosts"), b"127.0.0.1 localhost\n").expect("write");
    let before = cairn_driver::tree_digest(&tree).expect("digest");
    h.commit("c", "a", Default::default()).expect("commit");
    h.close().expect("close");
    let journaled: Vec<Option<String>> = cairn_engine::read_journal(&root)
        .expect("journal")
        .filter_map(|e| match e.expect("entry").record.op {
            Op::Complete {
                usage: Some(_),
                digest,
                ..
            } => Some(digest),
            _ => None,
        })
        .collect();
    assert_eq!(journaled, vec![Some(before)]);
}

#[test]
fn verify_finds_a_changed_committed_tree_and_a_changed_layer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let h = open(&root);
    let tree = h.prepare("a", None, Default::default()).expect("prepare")[0]
        .source
        .clone();
    std::fs::write(tree.join("data"), b"committed bytes").expect("write");
    h.commit("c", "a", Default::default()).expect("commit");
    let layer = layer_tar(&[("bin/sh", b"#!/bin/true\n"), ("etc/os-release", b"ID=t\n")]);
    let imported = h
        .import_layer(
            Box::new(std::io::Cursor::new(layer)),
            ImportOptions {
                pin: true,
                ..ImportOptions::default()
            },
        )
        .expect("import");
    let clean = h.fsck_with(false, true).expect("fsck --verify");
    assert!(clean.is_clean(), "{clean:?}");
    assert_eq!((clean.layers_verified, clean.trees_verified), (1, 1));
    // The digest lives in the state: it survives a checkpoint and a reopen.
    h.checkpoint().expect("checkpoint");
    h.close().expect("close");
    let h = open(&root);
    assert_eq!(h.fsck_with(false, true).expect("fsck").trees_verified, 1);

    // Silent damage: the same length, other bytes, written behind the engine's back.
    let committed = committed_tree(&h, "c");
    std::fs::write(committed.join("data"), b"COMMITTED BYTES").expect("damage");
    let layer_tree = committed_tree(&h, &imported.chain_id);
    std::fs::write(layer_tree.join("bin/sh"), b"#!/bin/fals\n").expect("damage");
    assert!(
        h.fsck(false).expect("fsck").is_clean(),
        "plain fsck does not read contents"
    );
    let report = h.fsck_with(false, true).expect("fsck --verify");
    let problems: Vec<&Problem> = report.findings.iter().map(|f| &f.problem).collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, Problem::TreeDiffers { key, .. } if key == "c")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(
            |p| matches!(p, Problem::LayerDiffers { chain_id, .. } if *chain_id == imported.chain_id)
        ),
        "{problems:?}"
    );
    h.close().expect("close");

    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--root")
        .arg(&root)
        .args(["fsck", "--verify"])
        .output()
        .expect("cairn fsck --verify");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("TreeDiffers"), "{stdout}");
    assert!(stdout.contains("LayerDiffers"), "{stdout}");
    assert!(stdout.contains("1 layer and 1 tree verified"), "{stdout}");
}
