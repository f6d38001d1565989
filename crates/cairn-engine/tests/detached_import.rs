//! Detached layer imports (docs/parallel-import.md): the layers of one image extracted side by
//! side on overlay, recorded in chain order; a child whose parent failed is aborted whole; a
//! driver that copies the parent refuses them.

#![allow(clippy::unwrap_used)]

mod common;

use cairn_engine::{DetachedRefusal, EngineError, StageOptions};
use cairn_layer::Digest;
use cairn_state::types::DriverKind;
use cairn_state::{Labels, StateError};
use common::{is_root, new_fast_root, open, skip, Mounted};
use std::io::Cursor;

fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        b.append_data(&mut header, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Three layers: a base, one that changes and deletes (a whiteout), one on top.
fn image() -> Vec<Vec<u8>> {
    vec![
        tar_of(&[
            ("etc/os-release", b"ID=base\n"),
            ("etc/gone", b"deleted above"),
        ]),
        tar_of(&[("etc/os-release", b"ID=second\n"), ("etc/.wh.gone", b"")]),
        tar_of(&[("usr/bin/tool", b"#!/bin/sh\n")]),
    ]
}

fn input(tar: &[u8]) -> Box<dyn std::io::Read + Send> {
    Box::new(Cursor::new(tar.to_vec()))
}

fn overlay_or_skip() -> bool {
    if !is_root() {
        skip("the overlay driver needs root to mount");
        return false;
    }
    true
}

#[test]
fn a_driver_that_copies_the_parent_refuses_detached_imports() {
    let (_tmp, root) = new_fast_root();
    let h = open(&root, DriverKind::Vfs);
    assert!(!h.extracts_without_parent().unwrap());
    let e = h
        .stage_layer(input(&image()[0]), StageOptions::default())
        .unwrap_err();
    assert!(
        matches!(
            e,
            EngineError::Detached(DetachedRefusal::Unsupported { .. })
        ),
        "{e}"
    );
    assert!(h.layers().unwrap().is_empty());
    assert!(h.fsck(false).unwrap().is_clean());
}

#[test]
fn layers_staged_side_by_side_are_recorded_in_chain_order_as_a_serial_import_would() {
    if !overlay_or_skip() {
        return;
    }
    let (tmp, root) = new_fast_root();
    let h = open(&root, DriverKind::Overlay);
    assert!(h.extracts_without_parent().unwrap());
    let tars = image();
    let diff_ids: Vec<Digest> = tars.iter().map(|t| Digest::of(t)).collect();
    // Stage all three at once, the top one first.
    let staged: Vec<_> = std::thread::scope(|s| {
        let jobs: Vec<_> = tars
            .iter()
            .zip(&diff_ids)
            .rev()
            .map(|(tar, diff_id)| {
                let h = h.clone();
                s.spawn(move || {
                    let options = StageOptions {
                        pin: false,
                        expected_diff_id: Some(*diff_id),
                    };
                    h.stage_layer(input(tar), options).unwrap()
                })
            })
            .collect();
        let mut staged: Vec<_> = jobs.into_iter().map(|j| j.join().unwrap()).collect();
        staged.reverse();
        staged
    });
    assert!(
        h.layers().unwrap().is_empty(),
        "nothing is a layer before it is attached"
    );
    let mut parent: Option<String> = None;
    let mut chain = Vec::new();
    for (s, diff_id) in staged.into_iter().zip(&diff_ids) {
        assert_eq!(s.diff_id(), diff_id.to_string());
        let imported = h.attach_layer(s, parent.as_deref()).unwrap();
        let want = cairn_layer::chain_id(
            parent
                .as_ref()
                .map(|p| p.parse::<Digest>().unwrap())
                .as_ref(),
            diff_id,
        );
        assert_eq!(imported.chain_id, want.to_string());
        assert!(!imported.existed);
        chain.push(imported.chain_id.clone());
        parent = Some(imported.chain_id);
    }
    let top = parent.unwrap();
    let info = h.layer(&top).unwrap();
    assert_eq!(info.parent.as_deref(), Some(chain[1].as_str()));
    // Each layer exports back to its own tar, byte for byte.
    for (chain_id, tar) in chain.iter().zip(&tars) {
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        h.export_layer(chain_id, Box::new(Shared(out.clone())))
            .unwrap();
        assert_eq!(&*out.lock().unwrap(), tar, "export of {chain_id}");
    }
    // The image as a container sees it: the whiteout hides the base's file.
    let mounts = h.view("look", Some(&top), Labels::new()).unwrap();
    let m = Mounted::must(&mounts, tmp.path());
    let os = std::fs::read(m.path().join("etc/os-release")).unwrap();
    assert_eq!(os, b"ID=second\n");
    assert!(!m.path().join("etc/gone").exists());
    assert!(m.path().join("usr/bin/tool").exists());
    m.unmount();
    h.remove("look").unwrap();
    assert!(h.fsck(false).unwrap().is_clean());
}

#[test]
fn a_child_of_a_failed_parent_is_aborted_whole_and_dropped_staging_is_aborted() {
    if !overlay_or_skip() {
        return;
    }
    let (_tmp, root) = new_fast_root();
    let h = open(&root, DriverKind::Overlay);
    let tars = image();
    let wrong = Digest::of(b"not this layer");
    // The parent's DiffID does not match: its staging fails and it is aborted.
    let e = h
        .stage_layer(
            input(&tars[0]),
            StageOptions {
                pin: false,
                expected_diff_id: Some(wrong),
            },
        )
        .unwrap_err();
    assert!(matches!(e, EngineError::DiffIdMismatch { .. }), "{e}");
    let child = h
        .stage_layer(input(&tars[1]), StageOptions::default())
        .unwrap();
    // Its expected parent never became a layer: the child is refused and aborted.
    let parent = cairn_layer::chain_id(None, &Digest::of(&tars[0])).to_string();
    let e = h.attach_layer(child, Some(&parent)).unwrap_err();
    assert!(
        matches!(e, EngineError::State(StateError::NotFound { ref key }) if *key == parent),
        "{e}"
    );
    // Attached out of order (before its parent), a child is refused and aborted too.
    let first = h
        .stage_layer(input(&tars[0]), StageOptions::default())
        .unwrap();
    let second = h
        .stage_layer(input(&tars[1]), StageOptions::default())
        .unwrap();
    assert!(h.attach_layer(second, Some(&parent)).is_err());
    // Dropped without an attach: aborted.
    let txid = first.txid();
    drop(first);
    assert!(h.layers().unwrap().is_empty());
    assert!(h.fsck(false).unwrap().is_clean());
    h.close().unwrap();
    let staging: Vec<_> = std::fs::read_dir(root.join("staging"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(staging.is_empty(), "staging of {txid} left: {staging:?}");
    // Nothing was pending at close: reopening drops nothing.
    let (h, report) =
        cairn_engine::Engine::open(&root, common::options(DriverKind::Overlay)).unwrap();
    assert!(report.dropped.is_empty(), "{report:?}");
    h.close().unwrap();
}
