//! Multi-layer images on overlay load with their layers extracted side by side
//! (docs/parallel-import.md): the same layers, ChainIDs and trees as a serial load; a layer
//! whose DiffID is wrong fails the load and leaves no child of it, nothing pending or staged.

use cairn_engine::{Engine, EngineHandle, EngineOptions};
use cairn_layer::Digest;
use cairn_state::types::DriverKind;
use std::path::{Path, PathBuf};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn open(root: &Path, driver: DriverKind) -> EngineHandle {
    let options = EngineOptions {
        driver: Some(driver),
        ..EngineOptions::default()
    };
    Engine::open(root, options).expect("open").0
}

fn append(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    header.set_cksum();
    b.append_data(&mut header, name, data).expect("append");
}

/// Layer `i` of `n`: a few hundred small files of its own, a change to a shared file, and
/// (above the base) a whiteout of one of the base's files.
fn layer(i: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for f in 0..300 {
        let body = format!("layer {i} file {f}\n").repeat(f % 17 + 1);
        append(&mut b, &format!("l{i}/d{}/f{f}", f % 10), body.as_bytes());
    }
    append(
        &mut b,
        "etc/os-release",
        format!("ID=layer{i}\n").as_bytes(),
    );
    if i == 0 {
        append(&mut b, "etc/gone", b"removed by layer 1");
    } else if i == 1 {
        append(&mut b, "etc/.wh.gone", b"");
    }
    b.into_inner().expect("tar")
}

/// A `docker save` archive of `layers`; the config lists `diff_ids` (the true ones unless a
/// test lies).
fn docker_save(path: &Path, layers: &[Vec<u8>], diff_ids: &[Digest]) {
    let ids: Vec<String> = diff_ids.iter().map(|d| format!("\"{d}\"")).collect();
    let config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[{}]}}}}",
        ids.join(",")
    );
    let config_name = format!(
        "{}.json",
        Digest::of(config.as_bytes())
            .to_string()
            .trim_start_matches("sha256:")
    );
    let names: Vec<String> = (0..layers.len())
        .map(|i| format!("l{i}/layer.tar"))
        .collect();
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    let manifest = format!(
        "[{{\"Config\":\"{config_name}\",\"RepoTags\":[\"test/multi:latest\"],\"Layers\":[{}]}}]",
        quoted.join(",")
    );
    let mut b = tar::Builder::new(Vec::new());
    append(&mut b, &config_name, config.as_bytes());
    for (name, tar) in names.iter().zip(layers) {
        append(&mut b, name, tar);
    }
    append(&mut b, "manifest.json", manifest.as_bytes());
    std::fs::write(path, b.into_inner().expect("archive")).expect("write archive");
}

fn image(dir: &Path, layers: &[Vec<u8>], diff_ids: &[Digest]) -> PathBuf {
    let path = dir.join("multi.docker.tar");
    docker_save(&path, layers, diff_ids);
    path
}

fn staging_is_empty(root: &Path) -> bool {
    std::fs::read_dir(root.join("staging"))
        .map(|d| d.count() == 0)
        .unwrap_or(true)
}

#[test]
fn a_four_layer_image_loads_in_parallel_as_it_loads_serially() {
    if !is_root() {
        println!("skipped: the overlay driver needs root to mount");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let layers: Vec<Vec<u8>> = (0..4).map(layer).collect();
    let diff_ids: Vec<Digest> = layers.iter().map(|l| Digest::of(l)).collect();
    let archive = image(tmp.path(), &layers, &diff_ids);
    let mut results = Vec::new();
    for parallel in [false, true] {
        let root = tmp.path().join(format!("root-{parallel}"));
        let engine = open(&root, DriverKind::Overlay);
        let events = std::sync::Mutex::new(Vec::new());
        let options = cairn_image::LoadOptions { parallel };
        let loaded = cairn_image::load_with(&engine, &archive, options, &|e| {
            let cairn_image::Event::Layer { index, .. } = e;
            events.lock().expect("events").push(index);
        })
        .expect("load");
        let mut seen = events.into_inner().expect("events");
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 2, 3], "one progress event per layer");
        assert_eq!(loaded[0].layers.len(), 4);
        assert_eq!(loaded[0].reused, 0);
        let top = loaded[0].top.clone();
        assert_eq!(
            engine.layer(&top).expect("top").parent.as_deref(),
            Some(loaded[0].layers[2].as_str())
        );
        let view = engine
            .view("look", Some(&top), Default::default())
            .expect("view");
        let mnt = tmp.path().join(format!("mnt-{parallel}"));
        std::fs::create_dir_all(&mnt).expect("mnt");
        cairn_driver::mount::mount_all(&view, &mnt).expect("mount");
        let os = std::fs::read(mnt.join("etc/os-release"));
        let gone = mnt.join("etc/gone").exists();
        let files = (0..4).all(|i| mnt.join(format!("l{i}/d3/f13")).exists());
        cairn_driver::mount::unmount(&mnt).expect("unmount");
        assert_eq!(os.expect("os-release"), b"ID=layer3\n");
        assert!(!gone, "the whiteout of layer 1 hides the base's file");
        assert!(files, "every layer's files are in the merged view");
        engine.remove("look").expect("rm view");
        // Loading again reuses every layer, reading none.
        let again = cairn_image::load_with(&engine, &archive, options, &|_| {}).expect("again");
        assert_eq!(again[0].reused, 4);
        let fsck = engine.fsck(false).expect("fsck");
        assert!(fsck.is_clean(), "{fsck:?}");
        engine.close().expect("close");
        assert!(staging_is_empty(&root));
        results.push(loaded);
    }
    assert_eq!(
        results[0], results[1],
        "serial and parallel loads record the same image"
    );
}

#[test]
fn a_layer_with_a_wrong_diff_id_fails_the_parallel_load_leaving_no_child_of_it() {
    if !is_root() {
        println!("skipped: the overlay driver needs root to mount");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let layers: Vec<Vec<u8>> = (0..4).map(layer).collect();
    let mut diff_ids: Vec<Digest> = layers.iter().map(|l| Digest::of(l)).collect();
    diff_ids[1] = Digest::of(b"not layer 1");
    let archive = image(tmp.path(), &layers, &diff_ids);
    let root = tmp.path().join("root");
    let engine = open(&root, DriverKind::Overlay);
    let e = cairn_image::load(&engine, &archive, &|_| {}).expect_err("a wrong DiffID");
    assert!(e.to_string().contains("DiffID"), "{e}");
    // At most the base made it; none of the layers above the failed one.
    let base = cairn_layer::chain_id(None, &diff_ids[0]).to_string();
    let left: Vec<String> = engine
        .layers()
        .expect("layers")
        .into_iter()
        .map(|l| l.chain_id)
        .collect();
    assert!(left.is_empty() || left == vec![base], "{left:?}");
    assert!(engine.images().expect("images").is_empty());
    let fsck = engine.fsck(false).expect("fsck");
    assert!(fsck.is_clean(), "{fsck:?}");
    engine.close().expect("close");
    assert!(staging_is_empty(&root), "an aborted layer left its staging");
    let (engine, report) = Engine::open(&root, EngineOptions::default()).expect("reopen");
    assert!(
        report.dropped.is_empty(),
        "nothing was left pending: {report:?}"
    );
    engine.close().expect("close");
}
