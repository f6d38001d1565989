//! `cairn snapshot changes` and `cairn snapshot usage` end to end on vfs (no root needed):
//! the text `docker diff` prints, the JSON, and aufs' DiffSize beside the whole tree's size.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn cairn(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .env_remove("CAIRN_ROOT")
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap()
}

fn ok(root: &Path, args: &[&str]) -> String {
    let out = cairn(root, args);
    assert!(out.status.success(), "{args:?}: {out:?}");
    assert!(out.stderr.is_empty(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn json(root: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(root, &all)).unwrap()
}

#[test]
fn changes_print_as_docker_diff_and_usage_has_diff_and_tree_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let base = json(&root, &["snapshot", "prepare", "base-a"]);
    let b = Path::new(base["mounts"][0]["source"].as_str().unwrap()).to_path_buf();
    std::fs::create_dir_all(b.join("etc")).unwrap();
    std::fs::write(b.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
    std::fs::write(b.join("etc/motd"), b"hi").unwrap();
    std::fs::write(b.join("old"), b"old").unwrap();
    ok(&root, &["snapshot", "commit", "base", "base-a"]);
    let child = json(&root, &["snapshot", "prepare", "c", "base"]);
    let c = Path::new(child["mounts"][0]["source"].as_str().unwrap()).to_path_buf();
    std::fs::write(c.join("etc/hosts"), b"10.0.0.1 cairn\n").unwrap();
    std::fs::remove_file(c.join("old")).unwrap();
    std::fs::create_dir(c.join("tmp")).unwrap();
    std::fs::write(c.join("tmp/new"), b"new!").unwrap();

    assert_eq!(
        ok(&root, &["snapshot", "changes", "c"]),
        "C /etc\nC /etc/hosts\nD /old\nA /tmp\nA /tmp/new\n"
    );
    assert_eq!(
        json(&root, &["snapshot", "changes", "c"]),
        serde_json::json!([
            {"kind": "C", "path": "/etc"},
            {"kind": "C", "path": "/etc/hosts"},
            {"kind": "D", "path": "/old"},
            {"kind": "A", "path": "/tmp"},
            {"kind": "A", "path": "/tmp/new"},
        ])
    );
    let u = json(&root, &["snapshot", "usage", "c"]);
    assert_eq!(u["key"], "c");
    assert_eq!(u["diff_size"], 15 + 4, "etc/hosts and tmp/new");
    assert_eq!(u["tree_size"], 15 + 2 + 4, "the whole tree");
    assert_eq!(u["tree_inodes"], 5);
    assert_eq!(u["size"], u["tree_size"], "vfs keeps the whole tree");
    let text = ok(&root, &["snapshot", "usage"]);
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["KEY", "SIZE", "INODES", "DIFF", "TREE"]);
    assert_eq!(text.lines().count(), 3, "{text}");

    let out = cairn(&root, &["snapshot", "changes", "missing"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}
