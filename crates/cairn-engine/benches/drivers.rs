//! Prepare of a child of a committed layer, and import of that layer, on every driver.
//!
//! `cargo bench -p cairn-engine --bench drivers` (root) prints, per driver `<d>`:
//! `import_ms_<d>` and `prepare_child_ms_<d>` for a 200 MB, ~7,000-entry layer, the same for a
//! 20 MB one of the same shape (`..._20mb`), and each driver's prepare as a ratio of vfs's
//! (`prepare_child_ratio_<d>_vs_vfs`): vfs copies the parent, overlay stacks it, block
//! reflinks its image. Every root is on one fresh xfs with reflink=1 made for the run on a
//! loop device, so all drivers meet the same disk. MB are 10^6 bytes of file content.
//! A driver whose file system or kernel support is missing is skipped with a printed reason.
//!
//! Each prepare figure is the best of [`ROUNDS`] prepares (each a new key, removed after);
//! an import is timed once per size (a second import of the same DiffID would be a dedupe).

use cairn_driver::scratch::{unavailable, ReflinkFs};
use cairn_engine::{Engine, EngineHandle, EngineOptions, ImportOptions};
use cairn_state::types::DriverKind;
use cairn_state::Labels;
use rand::{Rng, SeedableRng};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[path = "../../cairn-wal/benches/support.rs"]
mod support;
use support::figure;

const SEED: u64 = 0xd71e_25b0;
const ROUNDS: usize = 3;
/// Files per layer (plus directories, ~7,000 entries in all).
const FILES: usize = 6_900;
const DIRS: usize = 96;
/// The block driver's images: room for the 200 MB layer, sparse.
const BLOCK_IMAGE_BYTES: u64 = 2 << 30;

/// What a driver's root needs to be on. Adding a driver is one line in [`DRIVERS`] (and an
/// arm here if it needs a file system of its own).
#[derive(Clone, Copy)]
enum Needs {
    /// The run's xfs with reflink=1 (vfs, overlay and block all run there).
    ReflinkXfs,
}

const DRIVERS: &[(DriverKind, Needs)] = &[
    (DriverKind::Vfs, Needs::ReflinkXfs),
    (DriverKind::Overlay, Needs::ReflinkXfs),
    (DriverKind::Block, Needs::ReflinkXfs),
];

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: then only check
    // that the bench builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if let Some(reason) = unavailable() {
        println!("skipped: drivers bench: {reason}");
        return;
    }
    // 20 MB and 200 MB layers, plus room for a vfs copy of each and a few block images.
    let xfs = ReflinkFs::make("block-bench-", 8 << 30).expect("scratch xfs");
    let d = xfs.path();
    let layers: Vec<(&str, PathBuf)> = [("_20mb", 20_000_000u64), ("", 200_000_000)]
        .into_iter()
        .map(|(suffix, bytes)| {
            let tree = d.join(format!("tree{suffix}"));
            let t = Instant::now();
            let (entries, written) = generate_tree(&tree, bytes);
            let tar = d.join(format!("layer{suffix}.tar"));
            let status = Command::new("tar")
                .arg("--sort=name")
                .arg("-C")
                .arg(&tree)
                .arg("-cf")
                .arg(&tar)
                .arg(".")
                .status()
                .expect("run tar");
            assert!(status.success(), "tar: {status}");
            std::fs::remove_dir_all(&tree).expect("remove tree");
            eprintln!(
                "layer{suffix}: {entries} entries, {written} bytes of content, made in {:.1}s",
                t.elapsed().as_secs_f64()
            );
            (suffix, tar)
        })
        .collect();
    let mut vfs_prepare: Vec<(String, f64)> = Vec::new();
    for &(kind, needs) in DRIVERS {
        let base = match needs {
            Needs::ReflinkXfs => d.to_path_buf(),
        };
        let root = base.join(format!("root-{}", kind.name()));
        if kind == DriverKind::Block {
            // Read by the block driver when it creates the root's base image.
            std::env::set_var("CAIRN_BLOCK_SIZE_BYTES", BLOCK_IMAGE_BYTES.to_string());
        }
        let engine = match Engine::open(
            &root,
            EngineOptions {
                driver: Some(kind),
                ..EngineOptions::default()
            },
        ) {
            Ok((engine, _)) => engine,
            Err(e) => {
                println!("skipped: driver {}: {e}", kind.name());
                continue;
            }
        };
        for (suffix, tar) in &layers {
            let name = kind.name();
            let t = Instant::now();
            let chain_id = import(&engine, tar);
            figure(&format!("import_ms_{name}{suffix}"), ms(t), 1);
            let mut best = f64::MAX;
            for round in 0..ROUNDS {
                let key = format!("child{suffix}-{round}");
                let t = Instant::now();
                engine
                    .prepare(&key, Some(&chain_id), Labels::new())
                    .expect("prepare");
                best = best.min(ms(t));
                engine.remove(&key).expect("remove");
            }
            figure(&format!("prepare_child_ms_{name}{suffix}"), best, 2);
            if kind == DriverKind::Vfs {
                vfs_prepare.push((suffix.to_string(), best));
            } else if let Some((_, vfs)) = vfs_prepare.iter().find(|(s, _)| s == suffix) {
                figure(
                    &format!("prepare_child_ratio_{name}_vs_vfs{suffix}"),
                    best / vfs,
                    4,
                );
            }
        }
        engine.close().expect("close");
        std::fs::remove_dir_all(&root).expect("remove root");
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn import(engine: &EngineHandle, path: &Path) -> String {
    let f = File::open(path).expect("open layer");
    let options = ImportOptions {
        parent: None,
        pin: true,
        expected_diff_id: None,
    };
    engine
        .import_layer(Box::new(f), options)
        .expect("import")
        .chain_id
}

/// A seeded tree of [`DIRS`] directories and [`FILES`] files of `bytes` in all (sizes from a
/// fifth to 1.8 times the mean; one file in 100 ten times the mean). Returns (entries, bytes).
fn generate_tree(root: &Path, bytes: u64) -> (u64, u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(SEED);
    let dirs: Vec<PathBuf> = (0..DIRS)
        .map(|i| {
            root.join(format!("d{:02}", i / 6))
                .join(format!("s{}", i % 6))
        })
        .collect();
    for dir in &dirs {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    let weights: Vec<f64> = (0..FILES)
        .map(|i| {
            if i % 100 == 0 {
                10.0
            } else {
                rng.gen_range(0.2..1.8)
            }
        })
        .collect();
    let total: f64 = weights.iter().sum();
    let mut written = 0u64;
    let mut buf = Vec::new();
    for (i, w) in weights.iter().enumerate() {
        let size = (bytes as f64 * w / total) as usize;
        buf.resize(size, 0);
        rng.fill(&mut buf[..]);
        let dir = &dirs[rng.gen_range(0..dirs.len())];
        std::fs::write(dir.join(format!("f{i:05}.bin")), &buf).expect("write");
        written += size as u64;
    }
    ((FILES + DIRS + DIRS / 6) as u64, written)
}
