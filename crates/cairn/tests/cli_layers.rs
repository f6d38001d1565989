//! The layer store's commands through the real `cairn` binary: image load and ls, layer ls,
//! inspect, export, import, rm, container create and rm, snapshot diff, verify; errors and exit
//! codes for bad input.

use std::path::Path;
use std::process::{Command, Output};

fn cairn(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .expect("run cairn")
}

fn ok(root: &Path, args: &[&str]) -> String {
    let out = cairn(root, args);
    assert!(
        out.status.success(),
        "cairn {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn json(root: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(ok(root, &all).trim()).expect("json")
}

#[test]
fn load_list_export_import_container_diff_verify() {
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-oci");
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let loaded = ok(&root, &["image", "load", image.to_str().expect("path")]);
    assert!(loaded.contains("loaded hello:1: 2 layers"), "{loaded}");
    let images = json(&root, &["image", "ls"]);
    assert_eq!(images[0]["name"], "hello:1");
    let top = images[0]["top"].as_str().expect("top").to_owned();
    let layers = json(&root, &["layer", "ls"]);
    assert_eq!(layers.as_array().expect("array").len(), 2);
    let inspect = json(&root, &["layer", "inspect", &top]);
    assert_eq!(inspect["holders"], 1, "the image holds its top layer");

    // Export is byte for byte; importing it again is recognised.
    let exported = tmp.path().join("top.tar");
    let diff_id = ok(
        &root,
        &[
            "layer",
            "export",
            &top,
            "-o",
            exported.to_str().expect("path"),
        ],
    );
    assert_eq!(
        diff_id.trim(),
        inspect["diff_id"].as_str().expect("diff id")
    );
    let parent = inspect["parent"].as_str().expect("parent").to_owned();
    let again = ok(
        &root,
        &[
            "layer",
            "import",
            exported.to_str().expect("path"),
            "--parent",
            &parent,
        ],
    );
    assert_eq!(again.trim(), top);

    // A container on the image, its diff, and the diff imported as a layer.
    let mounts = json(&root, &["container", "create", "web", "--image", "hello:1"]);
    let rw = Path::new(mounts[0]["source"].as_str().expect("source")).to_path_buf();
    std::fs::write(rw.join("added"), b"new").expect("write");
    let diff = tmp.path().join("web.tar");
    ok(
        &root,
        &[
            "snapshot",
            "diff",
            "web",
            "-o",
            diff.to_str().expect("path"),
        ],
    );
    let listing = Command::new("tar")
        .arg("tf")
        .arg(&diff)
        .output()
        .expect("tar");
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("added"), "{listing}");
    let containers = json(&root, &["container", "ls"]);
    assert_eq!(containers[0]["ready"], true);

    let verify = ok(&root, &["verify"]);
    assert!(verify.contains("0 differ"), "{verify}");
    // Held layers are refused with failed-precondition (exit 5).
    assert_eq!(cairn(&root, &["layer", "rm", &top]).status.code(), Some(5));
    ok(&root, &["container", "rm", "web"]);
    ok(&root, &["image", "rm", "hello:1"]);
    // The user pinned the top by importing it; releasing it releases the base too.
    ok(&root, &["layer", "rm", &top]);
    assert_eq!(
        json(&root, &["layer", "ls"])
            .as_array()
            .expect("array")
            .len(),
        0
    );
    assert!(ok(&root, &["fsck"]).contains("clean"));
}

#[test]
fn bad_input_is_one_error_line_and_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let junk = tmp.path().join("junk.tar");
    std::fs::write(&junk, b"definitely not a tar".repeat(50)).expect("write");
    let out = cairn(&root, &["layer", "import", junk.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2), "invalid-argument");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("cairn: "), "{stderr}");
    let out = cairn(&root, &["image", "load", junk.to_str().expect("path")]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        cairn(&root, &["layer", "inspect", "sha256:0000"])
            .status
            .code(),
        Some(3)
    );
    assert_eq!(
        json(&root, &["layer", "ls"])
            .as_array()
            .expect("array")
            .len(),
        0
    );
    assert!(ok(&root, &["fsck"]).contains("clean"));
}

#[test]
fn importing_a_stored_layer_file_again_is_a_no_op() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "hello", &b"world"[..])
        .expect("append");
    let layer = tmp.path().join("layer.tar");
    std::fs::write(&layer, b.into_inner().expect("tar")).expect("write");
    let path = layer.to_str().expect("path");
    let first = json(&root, &["layer", "import", path]);
    assert_eq!(first["existed"], false);
    let walk_before = ok(&root, &["snapshot", "ls"]);
    let wal_before = ok(&root, &["wal", "dump"]);
    let again = json(&root, &["layer", "import", path]);
    assert_eq!(again["existed"], true);
    assert_eq!(again["chain_id"], first["chain_id"]);
    assert_eq!(ok(&root, &["snapshot", "ls"]), walk_before);
    assert_eq!(
        ok(&root, &["wal", "dump"]),
        wal_before,
        "nothing was journaled"
    );
}
