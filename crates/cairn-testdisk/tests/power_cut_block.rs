//! Power cuts at the block layer under the block driver: its root on the test disk's xfs
//! (`-m reflink=1`), every snapshot an ext4 image cloned with FICLONE, a layer extracted into
//! a clone through a loop mount. A workload of block's durable steps (the base image made at
//! root creation, prepare from the base and from a parent, view, writes through the image's
//! loop mount, commit, remove, plain and gzip imports, a container, a checkpoint) runs on the
//! disk; then for a cut after every `stride`-th flush and at seeded random flushes, the crash
//! image is mounted and the root in it must show every acknowledged snapshot with its files
//! (read through a loop mount of its image), the command in flight wholly there or gone, no
//! orphan image (no `rm-<id>`, no copy of an interrupted transaction: nothing under the root
//! the state does not name), no mount or loop device left on anything under it, fsck clean and
//! `xfs_repair -n` clean.
//!
//! Prints `crash_states_checked: N (block)` and the seed; `CAIRN_SEED` replays the fates,
//! `CAIRN_POWER_CUT_STRIDE` / `CAIRN_POWER_CUT_RANDOM` as in `power_cut.rs`.

mod support;

use cairn_engine::Engine;
use cairn_state::types::DriverKind;
use cairn_testdisk::{missing, CrashImages, FsKind, TestDisk};
use rand::{Rng, SeedableRng};
use support::steps::*;
use support::{check_image, expect_at, run_steps, skip, Step};

/// The apparent size of every image (the driver's minimum): the test disk's xfs is 320 MiB.
pub const IMAGE_BYTES: &str = "67108864";

fn workload() -> Vec<Step> {
    vec![
        p("a", None),
        w("a", "f1", 6000),
        w("a", "f2", 300),
        c("base", "a"),
        p("b", Some("base")),
        w("b", "g1", 9000),
        v("v0", "base"),
        c("c1", "b"),
        rm("v0"),
        imp("L0", false),
        imp_gz("L1", true),
        img("im", "L1"),
        ctr("ctr", "im"),
        checkpoint(),
        crm("ctr"),
        irm("im"),
        rm("c1"),
        p("d", Some("base")),
        w("d", "h1", 2000),
        rm("d"),
        p("e", None),
        c("E", "e"),
        rm("E"),
    ]
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn power_cuts_block_xfs() {
    let fs = FsKind::Xfs;
    if let Some(why) = missing(fs) {
        return skip(&why);
    }
    if let Some(why) = cairn_driver::scratch::unavailable() {
        return skip(&format!("the block driver {why}"));
    }
    // The only test of this binary: no other thread reads the environment while it is set.
    std::env::set_var("CAIRN_BLOCK_SIZE_BYTES", IMAGE_BYTES);
    let seed = support::seed();
    println!("power_cut block xfs: seed {seed} (replay: CAIRN_SEED={seed})");
    let driver = DriverKind::Block;
    let mut disk = TestDisk::format(support::server(), fs, fs.image_bytes(), "blockdrv-powercut")
        .expect("format the test disk");
    let root = disk.mountpoint().join("root");
    let (h, _) = Engine::open(&root, support::crashkit::options(driver)).expect("open the root");
    let ran = run_steps(&disk, &h, &workload());
    for r in &ran {
        if let Err(e) = &r.result {
            panic!("step {} failed on a healthy disk: {e}", r.step.name());
        }
    }
    h.close().expect("close");
    support::crashkit::check_nothing_attached(&root);
    disk.unmount().expect("unmount");
    let log = disk.log().expect("read the log");
    let flushes = log.flushes();
    println!(
        "xfs block: workload of {} steps: {} writes, {flushes} flushes",
        ran.len(),
        log.writes()
    );
    let scratch = disk.scratch();
    let mut images = CrashImages::new(&disk.base_image(), log, &scratch).expect("crash images");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let stride = env_usize("CAIRN_POWER_CUT_STRIDE", 4).max(1);
    let phase = rng.gen_range(0..stride);
    let mut cuts: Vec<usize> = (0..=flushes).filter(|k| k % stride == phase).collect();
    cuts.extend((0..env_usize("CAIRN_POWER_CUT_RANDOM", 6)).map(|_| rng.gen_range(0..=flushes)));
    cuts.sort_unstable();
    let mut failures = Vec::new();
    let img = scratch.join("crash.img");
    for (i, &k) in cuts.iter().enumerate() {
        let fates = images
            .image(k, &mut rng, false, &img)
            .expect("build a crash image");
        let expect = expect_at(driver, &ran, k as u64);
        if let Err(e) = check_image(fs, &img, &scratch.join("mnt"), driver, &expect, false) {
            let last_acked = ran
                .iter()
                .rfind(|r| r.acked_at_flush <= k as u64)
                .map(|r| r.step.name());
            failures.push(format!(
                "xfs block cut {i} after flush {k}/{flushes} ({} unflushed writes; last acknowledged: {last_acked:?}; in flight: {:?}): {e}",
                fates.len(),
                expect.inflight.as_ref().map(|(n, _)| n.clone())
            ));
        }
    }
    println!("crash_states_checked: {} (block)", cuts.len());
    for f in &failures {
        println!("FAILED: {f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} crash states of block on xfs failed (seed {seed}; replay: CAIRN_SEED={seed}); first: {}",
        failures.len(),
        cuts.len(),
        failures[0]
    );
}
