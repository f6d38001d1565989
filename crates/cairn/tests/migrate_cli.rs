//! `cairn migrate docker DIR` from the command line: the summary (text and `--json`), the exit
//! codes (0 when everything moved, 1 when something was skipped, 5 when `--strict` refused), and
//! the images it names, on an aufs data root written as Docker writes it.

#[path = "../../cairn-migrate/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use support::{corpus, write_root, Driver, ImageSpec};

fn cairn(root: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .expect("run cairn");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn migrate_docker_from_the_cli() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("docker");
    let layers: Vec<Vec<u8>> = ["0-base", "1-whiteouts", "2-top"]
        .iter()
        .map(|n| std::fs::read(corpus.join(format!("chain/{n}.tar"))).expect("tar"))
        .collect();
    let written = write_root(
        &src,
        Driver::Aufs,
        &[ImageSpec {
            name: "cairn/chain:latest",
            layers,
        }],
    );
    let s = src.to_str().expect("path");

    // Tampered: `--strict` refuses (exit 5) and imports nothing.
    let conf = written.layers[2].2.join("app/replaced");
    let good = std::fs::read(&conf).expect("read");
    std::fs::write(&conf, b"tampered!!\n").expect("tamper");
    let strict = tmp.path().join("strict");
    let (code, _, err) = cairn(&strict, &["migrate", "docker", s, "--strict"]);
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("refused") && err.contains("app/replaced"),
        "{err}"
    );
    let (_, out, _) = cairn(&strict, &["--json", "layer", "ls"]);
    assert_eq!(out.trim(), "[]", "--strict imported a layer");

    // Without it: two layers moved, the top one and the image skipped and named; exit 1.
    let root = tmp.path().join("cairn");
    let (code, out, err) = cairn(&root, &["migrate", "docker", s]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.starts_with("moved 2 layers"), "{out}");
    assert!(
        out.contains(&format!("skipped layer {}", written.layers[2].0)),
        "{out}"
    );
    assert!(out.contains("app/replaced"), "{out}");
    assert!(
        out.contains(&format!("skipped image {}", written.images[0])),
        "{out}"
    );

    // Put right, run again: only the missing layer moves, the image is named; exit 0.
    std::fs::write(&conf, good).expect("restore");
    let (code, out, err) = cairn(
        &root,
        &["--json", "migrate", "docker", s, "--storage-driver", "aufs"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let summary: serde_json::Value = serde_json::from_str(out.trim()).expect("json summary");
    assert_eq!(summary["layers_moved"], 1, "{summary}");
    assert_eq!(summary["layers_present"], 2, "{summary}");
    assert_eq!(summary["images_moved"], 1, "{summary}");
    assert_eq!(summary["names"], serde_json::json!(["cairn/chain:latest"]));
    assert_eq!(summary["skipped"], serde_json::json!([]));
    let (code, out, _) = cairn(&root, &["image", "ls"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("cairn/chain:latest") && out.contains(&written.layers[2].0),
        "{out}"
    );

    // Not a Docker root: a clear error, exit 2.
    let (code, _, err) = cairn(
        &root,
        &["migrate", "docker", tmp.path().to_str().expect("path")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a Docker data root"), "{err}");
}
