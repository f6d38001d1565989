//! `cairn --driver block` with the image options of a new root (`--block-fs`,
//! `--block-size-bytes`), on a loop-mounted xfs with reflink made by the test (root; CI).
//! Unprivileged runs print `skipped: <reason>`.
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_cairn");

fn cairn(root: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("CAIRN_BLOCK_SIZE_BYTES")
        .env("CAIRN_LOCK_TIMEOUT", "5")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn block_fs_and_size_are_set_at_creation_and_kept() {
    // Bad values are refused by the parser, before any root exists (no root needed for that).
    let tmp = tempfile::tempdir().unwrap();
    let nowhere = tmp.path().join("never");
    let (code, _, err) = cairn(
        &nowhere,
        &["--block-size-bytes", "10 parsecs", "snapshot", "ls"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("10 parsecs") && err.contains("K, M, G or T"),
        "{err}"
    );
    let (code, _, err) = cairn(&nowhere, &["--block-fs", "btrfs", "snapshot", "ls"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("btrfs") && err.contains("xfs"), "{err}");
    assert!(!nowhere.exists(), "a refused option made no root");

    if let Some(reason) = cairn_driver::scratch::unavailable() {
        println!("skipped: block_fs_and_size_are_set_at_creation_and_kept: {reason}");
        return;
    }
    let x = cairn_driver::scratch::ReflinkFs::make("blockdrv-cli-", 2 << 30).unwrap();
    let root = x.path().join("root");
    // Too small for xfs: a clear error, nothing created.
    let (code, _, err) = cairn(
        &root,
        &[
            "--driver",
            "block",
            "--block-fs",
            "xfs",
            "--block-size-bytes",
            "100M",
            "snapshot",
            "ls",
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("314572800"), "names the minimum: {err}");
    let create = [
        "--driver",
        "block",
        "--block-fs",
        "xfs",
        "--block-size-bytes",
        "320M",
        "--json",
        "snapshot",
        "prepare",
        "a",
    ];
    let (code, out, err) = cairn(&root, &create);
    assert_eq!(code, 0, "{err}");
    let mounts: serde_json::Value = serde_json::from_str(&out).unwrap();
    let text = mounts.to_string();
    assert!(
        text.contains("\"xfs\""),
        "mounts data of an xfs image: {text}"
    );
    assert!(text.contains("nouuid") && text.contains("\"rw\""), "{text}");
    assert_eq!(
        std::fs::metadata(root.join("block.base")).unwrap().len(),
        320 << 20
    );
    // Reopened without the flags: the recorded xfs images.
    let (code, out, err) = cairn(&root, &["--json", "snapshot", "view", "v", "a"]);
    assert_ne!(code, 0, "a is Active, not a parent: {out}");
    let _ = err;
    let (code, out, err) = cairn(&root, &["--json", "snapshot", "prepare", "b"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"xfs\""), "{out}");
    // Reopened asking for ext4: refused, saying what the root was created with.
    let (code, _, err) = cairn(&root, &["--block-fs", "ext4", "snapshot", "ls"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("created with xfs images of 335544320 bytes"),
        "{err}"
    );
    // The same flags again are fine.
    let (code, _, err) = cairn(
        &root,
        &[
            "--block-fs",
            "xfs",
            "--block-size-bytes",
            "320MiB",
            "snapshot",
            "ls",
        ],
    );
    assert_eq!(code, 0, "{err}");
}
