//! Through the real `cairn` binary: a snapshot under a layer's ChainID is refused with exit 2
//! (the layer store owns those keys), and the layer's import then proceeds (it used to panic
//! the engine thread).

use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;

fn layer_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let data = b"hello";
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_600_000_000);
    h.set_cksum();
    b.append_data(&mut h, "etc/hello", &data[..])
        .expect("append");
    b.into_inner().expect("finish")
}

/// A base layer's ChainID is its DiffID: the sha256 of the tar.
fn chain_id_of(tar: &[u8]) -> String {
    let hex: String = Sha256::digest(tar)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn cairn(root: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .expect("run cairn")
}

#[test]
fn cli_refuses_a_layer_key_and_imports_the_layer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let tar = layer_tar();
    let chain = chain_id_of(&tar);
    let file = tmp.path().join("layer.tar");
    std::fs::write(&file, &tar).expect("write tar");
    let out = cairn(&root, &["snapshot", "prepare", &chain]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "invalid-argument: {stderr}");
    assert!(stderr.contains("ChainID"), "{stderr}");
    let out = cairn(&root, &["layer", "import", file.to_str().expect("path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), chain);
    let out = cairn(&root, &["snapshot", "prepare", "after", &chain]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
