//! prepare of a child of a big committed snapshot: the btrfs driver (a subvolume snapshot)
//! against vfs (a full copy), in one run, at two parent sizes to show btrfs does not depend on
//! the parent's size.
//!
//! `cargo bench --bench btrfs_prepare` (root: the btrfs is a loop device made by the run; vfs
//! runs on a fresh loop ext4, the project's usual bench disk, and also on the same btrfs, where
//! its copy clones each file). Prints, per parent size (`20mb`: 700 entries, `200mb`: 7,000):
//! `prepare_child_ms_<driver>_<size>` (median of 5 prepares, each durable on return) and
//! `prepare_child_ratio_btrfs_to_vfs_<size>`.

use cairn_engine::{Engine, EngineHandle, EngineOptions};
use cairn_state::types::DriverKind;
use cairn_state::Labels;
use std::path::Path;
use std::time::Instant;

#[path = "../../cairn-wal/benches/support.rs"]
mod support;
use support::{figure, BenchFs};

const RUNS: usize = 5;
const FILE_BYTES: usize = 29 * 1024;
/// Files per directory; every layer is `dirs` directories of this many files.
const PER_DIR: usize = 69;

fn open(root: &Path, driver: DriverKind) -> EngineHandle {
    let options = EngineOptions {
        driver: Some(driver),
        ..EngineOptions::default()
    };
    Engine::open(root, options).expect("open").0
}

/// A committed snapshot "base" of `dirs` x `PER_DIR` files of `FILE_BYTES` (distinct contents).
fn make_parent(engine: &EngineHandle, dirs: usize) {
    let mounts = engine
        .prepare("base-active", None, Labels::default())
        .expect("prepare base");
    // The bind source is the snapshot's own tree: written directly, as without root.
    let tree = &mounts[0].source;
    let mut block = vec![0u8; FILE_BYTES];
    for d in 0..dirs {
        let dir = tree.join(format!("d{d:03}"));
        std::fs::create_dir(&dir).expect("mkdir");
        for f in 0..PER_DIR {
            for (i, b) in block.iter_mut().enumerate() {
                *b = (i as u64 * 31 + d as u64 * 7 + f as u64) as u8;
            }
            std::fs::write(dir.join(format!("f{f:02}")), &block).expect("write");
        }
    }
    engine
        .commit("base", "base-active", Labels::default())
        .expect("commit base");
}

/// Median ms of `RUNS` prepares of a child of "base".
fn prepare_child_ms(engine: &EngineHandle) -> f64 {
    let mut times = Vec::with_capacity(RUNS);
    for run in 0..RUNS {
        let key = format!("child-{run}");
        let start = Instant::now();
        engine
            .prepare(&key, Some("base"), Labels::default())
            .expect("prepare child");
        times.push(start.elapsed().as_secs_f64() * 1e3);
        engine.remove(&key).expect("remove child");
    }
    times.sort_by(f64::total_cmp);
    times[RUNS / 2]
}

fn measure(dir: &Path, driver: DriverKind, dirs: usize) -> f64 {
    let root = dir.join(format!("root-{}-{dirs}", driver.name()));
    let engine = open(&root, driver);
    make_parent(&engine, dirs);
    let ms = prepare_child_ms(&engine);
    engine.close().expect("close");
    ms
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let btrfs = match cairn_loopfs::Scratch::new(true, "bench-") {
        Ok(dir) => dir,
        Err(reason) => {
            println!("skipped: btrfs_prepare: {reason}");
            return;
        }
    };
    let ext4 = BenchFs::new("btrfs-prepare");
    for (size, dirs) in [("20mb", 10usize), ("200mb", 100)] {
        let vfs = measure(ext4.path(), DriverKind::Vfs, dirs);
        let vfs_on_btrfs = measure(btrfs.path(), DriverKind::Vfs, dirs);
        let on_btrfs = measure(btrfs.path(), DriverKind::Btrfs, dirs);
        figure(&format!("prepare_child_ms_vfs_{size}"), vfs, 2);
        figure(
            &format!("prepare_child_ms_vfs_on_btrfs_{size}"),
            vfs_on_btrfs,
            2,
        );
        figure(&format!("prepare_child_ms_btrfs_{size}"), on_btrfs, 2);
        figure(
            &format!("prepare_child_ratio_btrfs_to_vfs_{size}"),
            on_btrfs / vfs,
            4,
        );
        figure(
            &format!("prepare_child_ratio_btrfs_to_vfs_on_btrfs_{size}"),
            on_btrfs / vfs_on_btrfs,
            4,
        );
    }
}
