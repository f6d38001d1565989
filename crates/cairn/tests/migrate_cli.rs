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

/// `cairn migrate docker` killed (SIGKILL) at seeded random moments, inside layer imports
/// too, then run to the end: every layer and image is there once, `verify` and `fsck` are
/// clean. `CAIRN_SEED=<seed>` replays a run.
#[test]
fn migrate_killed_at_random_points_then_finishes() {
    use rand::{Rng, RngCore, SeedableRng};
    let Some(corpus) = corpus() else { return };
    let seed: u64 = match std::env::var("CAIRN_SEED") {
        Ok(s) => s.parse().expect("CAIRN_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    };
    println!(
        "migrate_killed_at_random_points_then_finishes: seed {seed} (replay: CAIRN_SEED={seed})"
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("docker");
    // A layer big enough that a kill often lands inside its import.
    let mut big = vec![0u8; 6 << 20];
    rng.fill_bytes(&mut big);
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(big.len() as u64);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, "big.bin", &big[..])
        .expect("tar");
    let big_tar = builder.into_inner().expect("tar");
    let chain: Vec<Vec<u8>> = ["0-base", "1-whiteouts", "2-top"]
        .iter()
        .map(|n| std::fs::read(corpus.join(format!("chain/{n}.tar"))).expect("tar"))
        .collect();
    let written = write_root(
        &src,
        Driver::Aufs,
        &[
            ImageSpec {
                name: "cairn/big:1",
                layers: vec![big_tar],
            },
            ImageSpec {
                name: "cairn/chain:latest",
                layers: chain,
            },
        ],
    );
    let total = written.layers.len();
    let s = src.to_str().expect("path");
    let args = ["--json", "migrate", "docker", s];

    // How long a whole run takes here, to aim the kills inside one.
    let started = std::time::Instant::now();
    let (code, _, err) = cairn(&tmp.path().join("timing"), &args);
    assert_eq!(code, 0, "{err}");
    let full_ms = started.elapsed().as_millis().max(50) as u64;

    let root = tmp.path().join("cairn");
    let mut kills = 0;
    for _ in 0..5 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("--root")
            .arg(&root)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(std::time::Duration::from_millis(rng.gen_range(0..full_ms)));
        if child.try_wait().expect("wait").is_none() {
            child.kill().expect("kill");
            kills += 1;
        }
        child.wait().expect("wait");
    }
    println!("killed {kills} of 5 runs (a full run takes {full_ms} ms)");
    let (code, out, err) = cairn(&root, &args);
    assert_eq!(code, 0, "seed {seed}: {out}{err}");
    let summary: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let present = summary["layers_present"].as_u64().expect("present");
    let moved = summary["layers_moved"].as_u64().expect("moved");
    assert_eq!(present + moved, total as u64, "seed {seed}: {summary}");
    let images = summary["images_moved"].as_u64().unwrap_or(0)
        + summary["images_present"].as_u64().unwrap_or(0);
    assert_eq!(images, 2, "seed {seed}: {summary}");
    let (_, out, _) = cairn(&root, &["--json", "layer", "ls"]);
    let layers: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(
        layers.as_array().map(Vec::len),
        Some(total),
        "seed {seed}: {layers}"
    );
    let (code, out, err) = cairn(&root, &["verify"]);
    assert_eq!(code, 0, "seed {seed}: {out}{err}");
    let (code, out, err) = cairn(&root, &["fsck"]);
    assert_eq!(code, 0, "seed {seed}: {out}{err}");
}
