//! The shared corpus through the whole store, on every driver: every layer imports and exports
//! byte for byte, the chain gets the expected ChainIDs and merged view, the three images load,
//! and every hostile input is refused or contained with the store unchanged.

#[path = "../../cairn-layer/tests/layer_common.rs"]
mod common;

use cairn_engine::{Engine, EngineHandle, EngineOptions, ImportOptions};
use cairn_state::types::DriverKind;
use common::{corpus, is_root, tree_listing, uncompressed, Sink};
use std::path::Path;

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
        ..EngineOptions::default()
    };
    Engine::open(root, options).expect("open").0
}

fn manifest(corpus: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(corpus.join("MANIFEST.tsv"))
        .expect("manifest")
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some((
                f.next()?.to_owned(),
                f.next()?.to_owned(),
                f.next()?.to_owned(),
            ))
        })
        .collect()
}

fn import_file(
    engine: &EngineHandle,
    path: &Path,
    parent: Option<&str>,
) -> Result<cairn_engine::Imported, cairn_engine::EngineError> {
    let file = std::fs::File::open(path).expect("open layer");
    let options = ImportOptions {
        parent: parent.map(Into::into),
        pin: true,
        expected_diff_id: None,
    };
    engine.import_layer(Box::new(file), options)
}

fn export(engine: &EngineHandle, chain: &str) -> Vec<u8> {
    let sink = Sink::default();
    engine
        .export_layer(chain, Box::new(sink.clone()))
        .expect("export");
    let bytes = sink.0.lock().expect("sink").clone();
    bytes
}

/// The merged view of `chain`: a View on it, read through its mounts.
fn merged_view(engine: &EngineHandle, chain: &str, scratch: &Path) -> Vec<String> {
    let mounts = engine
        .view("merged-view", Some(chain), Default::default())
        .expect("view");
    let listing = if mounts.len() == 1 && mounts[0].kind == "bind" {
        tree_listing(&mounts[0].source)
    } else {
        let target = scratch.join("mnt");
        std::fs::create_dir_all(&target).expect("mkdir");
        cairn_driver::mount::mount_all(&mounts, &target).expect("mount");
        let listing = tree_listing(&target);
        cairn_driver::mount::unmount(&target).expect("unmount");
        listing
    };
    engine.remove("merged-view").expect("rm view");
    listing
}

#[test]
fn every_ok_layer_round_trips_through_the_store() {
    let Some(corpus) = corpus() else { return };
    for driver in drivers() {
        let tmp = scratch(driver);
        let engine = open(&tmp.path().join("root"), driver);
        for (file, expect, diff_id) in manifest(&corpus) {
            if expect != "ok" {
                continue;
            }
            let path = corpus.join(&file);
            let imported = import_file(&engine, &path, None)
                .unwrap_or_else(|e| panic!("{driver:?} {file}: {e}"));
            assert_eq!(imported.diff_id, diff_id, "{driver:?} {file}");
            let exported = export(&engine, &imported.chain_id);
            assert!(
                exported == uncompressed(&path),
                "{driver:?} {file}: export differs from the original"
            );
        }
        assert!(engine
            .verify(None)
            .expect("verify")
            .iter()
            .all(|v| v.problem.is_none()));
        let fsck = engine.fsck(false).expect("fsck");
        assert!(fsck.is_clean(), "{driver:?}: {fsck:?}");
    }
}

#[test]
fn chain_has_expected_chain_ids_and_merged_view() {
    let Some(corpus) = corpus() else { return };
    let expected_ids: Vec<String> =
        std::fs::read_to_string(corpus.join("chain/expected-chain-ids.txt"))
            .expect("ids")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| l.split('\t').nth(2).expect("chain id column").to_owned())
            .collect();
    let expected_tree: Vec<String> =
        std::fs::read_to_string(corpus.join("chain/expected-tree.txt"))
            .expect("tree")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(str::to_owned)
            .collect();
    for driver in drivers() {
        let tmp = scratch(driver);
        let engine = open(&tmp.path().join("root"), driver);
        let mut parent: Option<String> = None;
        let mut got = Vec::new();
        for name in ["0-base.tar", "1-whiteouts.tar", "2-top.tar"] {
            let imported =
                import_file(&engine, &corpus.join("chain").join(name), parent.as_deref())
                    .expect("import");
            got.push(imported.chain_id.clone());
            parent = Some(imported.chain_id);
        }
        assert_eq!(got, expected_ids, "{driver:?}");
        let top = parent.expect("top");
        assert_eq!(
            merged_view(&engine, &top, tmp.path()),
            expected_tree,
            "{driver:?}"
        );
    }
}

#[test]
fn the_three_images_load_with_their_layers_and_names() {
    let Some(corpus) = corpus() else { return };
    let expected_ids: Vec<String> =
        std::fs::read_to_string(corpus.join("chain/expected-chain-ids.txt"))
            .expect("ids")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| l.split('\t').nth(2).expect("chain id column").to_owned())
            .collect();
    for driver in drivers() {
        for (image, name) in [
            ("images/chain.docker.tar", "docker.io/cairn/chain:latest"),
            ("images/chain.oci.tar", "chain"),
            ("images/chain-oci", "chain"),
        ] {
            let tmp = scratch(driver);
            let engine = open(&tmp.path().join("root"), driver);
            let loaded = cairn_image::load(&engine, &corpus.join(image), &|_| {})
                .unwrap_or_else(|e| panic!("{image}: {e}"));
            assert_eq!(loaded.len(), 1, "{image}");
            assert_eq!(loaded[0].layers, expected_ids, "{driver:?} {image}");
            let images = engine.images().expect("images");
            assert_eq!(
                images.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
                vec![name],
                "{image}"
            );
            assert_eq!(images[0].layers, expected_ids);
            // Loading again reuses every layer and changes nothing.
            let again = cairn_image::load(&engine, &corpus.join(image), &|_| {}).expect("again");
            assert_eq!(again[0].reused, 3, "{image}");
            assert_eq!(engine.layers().expect("layers").len(), 3);
            let fsck = engine.fsck(false).expect("fsck");
            assert!(fsck.is_clean(), "{driver:?} {image}: {fsck:?}");
            // Removing the image releases every layer it held.
            engine.remove_image(name).expect("rm image");
            assert!(engine.layers().expect("layers").is_empty(), "{image}");
        }
    }
}

#[test]
fn hostile_layers_are_refused_or_contained_and_change_nothing() {
    let Some(corpus) = corpus() else { return };
    for driver in drivers() {
        let tmp = scratch(driver);
        let root = tmp.path().join("root");
        let engine = open(&root, driver);
        let base = import_file(&engine, &corpus.join("chain/0-base.tar"), None).expect("base");
        for (file, expect, _) in manifest(&corpus) {
            if !file.starts_with("malicious/") {
                continue;
            }
            let layers_before = engine.layers().expect("layers");
            let walk_before = engine.walk(&[]).expect("walk");
            // On the base too, so symlinks and parents from a lower layer are in play.
            for parent in [None, Some(base.chain_id.as_str())] {
                let result = import_file(&engine, &corpus.join(&file), parent);
                match (expect.as_str(), &result) {
                    ("error", Ok(i)) => panic!("{driver:?} {file}: accepted as {}", i.chain_id),
                    ("contained", Ok(i)) => {
                        engine
                            .remove_layer(&i.chain_id)
                            .expect("rm contained layer");
                    }
                    _ => {}
                }
            }
            assert_eq!(
                engine.layers().expect("layers"),
                layers_before,
                "{driver:?} {file}"
            );
            assert_eq!(
                engine.walk(&[]).expect("walk"),
                walk_before,
                "{driver:?} {file}"
            );
            let names: Vec<_> = std::fs::read_dir(tmp.path())
                .expect("ls")
                .map(|e| e.expect("entry").file_name())
                .collect();
            assert_eq!(
                names,
                vec![std::ffi::OsString::from("root")],
                "{driver:?} {file}: something was written beside the root"
            );
            let fsck = engine.fsck(false).expect("fsck");
            assert!(fsck.is_clean(), "{driver:?} {file}: {fsck:?}");
        }
    }
}
