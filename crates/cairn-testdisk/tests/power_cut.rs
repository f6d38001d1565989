//! Power cuts at the block layer under real ext4 and xfs: a workload covering every command
//! kind runs through the engine handle on the test disk; then, for a cut after every flush and
//! at seeded random flushes, a crash image keeps a seeded subset of the unflushed writes (kept,
//! dropped or torn at 512 bytes), and the root in it must open with every acknowledged command
//! there with its exact bytes, the command in flight wholly there or wholly gone, fsck clean,
//! nothing under the root that the state does not name, and the file system clean.
//!
//! Prints `crash_states_checked: N` per file system and the seed; `CAIRN_SEED` replays a run,
//! `CAIRN_POWER_CUT_STRIDE=1` cuts after every flush (CI: every 4th, from a seeded phase) and
//! `CAIRN_POWER_CUT_RANDOM=<n>` sets the random cuts per workload (a soak sets both).

mod support;

use cairn_engine::Engine;
use cairn_state::types::DriverKind;
use cairn_testdisk::{missing, CrashImages, FsKind, TestDisk};
use rand::{Rng, SeedableRng};
use support::steps::*;
use support::{check_image, driver_name, expect_at, run_steps, skip, Step};

/// Every command kind: prepare, view, commit, remove; plain and gzip imports; an image load;
/// image put and rm; container create and rm; a layer rm cascade; checkpoints and WAL rotation
/// (16 KiB segments, filled by big labels).
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
        checkpoint(),
        imp("L0", false),
        imp_gz("L1", true),
        Step::LoadImage,
        img("im", "L1"),
        ctr("ctr", "im"),
        p_big("big1", 3000),
        p_big("big2", 3000),
        p_big("big3", 3000),
        p_big("big4", 3000),
        p_big("big5", 3000),
        crm("ctr"),
        irm("im"),
        lrm("L1"),
        rm("c1"),
        p("d", Some("base")),
        w("d", "h1", 2000),
        checkpoint(),
        rm("big1"),
    ]
}

/// Cuts after every `stride`-th flush (from a seeded phase); 1 cuts after every flush (soak).
fn stride() -> usize {
    std::env::var("CAIRN_POWER_CUT_STRIDE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
        .max(1)
}

fn random_cuts() -> usize {
    std::env::var("CAIRN_POWER_CUT_RANDOM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

/// Runs the workload on a fresh disk, then checks crash states; returns (states, failures).
fn cut_workload(fs: FsKind, driver: DriverKind, seed: u64) -> (usize, Vec<String>) {
    let mut disk = TestDisk::format(support::server(), fs, fs.image_bytes(), "powercut")
        .expect("format the test disk");
    let root = disk.mountpoint().join("root");
    let (h, _) = Engine::open(&root, support::crashkit::options(driver)).expect("open the root");
    let ran = run_steps(&disk, &h, &workload());
    for r in &ran {
        if let Err(e) = &r.result {
            panic!(
                "{}: step {} failed on a healthy disk: {e}",
                fs.name(),
                r.step.name()
            );
        }
    }
    h.close().expect("close");
    disk.unmount().expect("unmount");
    let log = disk.log().expect("read the log");
    let flushes = log.flushes();
    println!(
        "{} {}: workload of {} steps: {} writes, {flushes} flushes",
        fs.name(),
        driver_name(driver),
        ran.len(),
        log.writes()
    );
    let scratch = disk.scratch();
    let mut images = CrashImages::new(&disk.base_image(), log, &scratch).expect("crash images");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    // Every stride-th flush once (every flush with stride 1), plus random ones with another
    // subset of the unflushed writes.
    let stride = stride();
    let phase = rng.gen_range(0..stride);
    let mut cuts: Vec<usize> = (0..=flushes).filter(|k| k % stride == phase).collect();
    cuts.extend((0..random_cuts()).map(|_| rng.gen_range(0..=flushes)));
    cuts.sort_unstable();
    let mut failures = Vec::new();
    let img = scratch.join("crash.img");
    for (i, &k) in cuts.iter().enumerate() {
        let fates = images
            .image(k, &mut rng, false, &img)
            .expect("build a crash image");
        let expect = expect_at(driver, &ran, k as u64);
        let r = check_image(fs, &img, &scratch.join("mnt"), driver, &expect, false);
        if let Err(e) = r {
            let kept = fates
                .iter()
                .filter(|f| **f == cairn_testdisk::Fate::Kept)
                .count();
            let torn = fates
                .iter()
                .filter(|f| matches!(f, cairn_testdisk::Fate::Torn(_)))
                .count();
            let last_acked = ran
                .iter()
                .rfind(|r| r.acked_at_flush <= k as u64)
                .map(|r| r.step.name());
            failures.push(format!(
                "{} {} cut {i} after flush {k}/{flushes} ({} unflushed writes: {kept} kept, {torn} torn; last acknowledged: {last_acked:?}; in flight: {:?}): {e}",
                fs.name(),
                driver_name(driver),
                fates.len(),
                expect.inflight.as_ref().map(|(n, _)| n.clone())
            ));
        }
    }
    (cuts.len(), failures)
}

fn power_cuts(fs: FsKind) {
    if let Some(why) = missing(fs) {
        return skip(&why);
    }
    let seed = support::seed();
    println!(
        "power_cut {}: seed {seed} (replay: CAIRN_SEED={seed})",
        fs.name()
    );
    let mut states = 0;
    let mut failures = Vec::new();
    for driver in support::drivers() {
        let (n, f) = cut_workload(fs, driver, seed);
        states += n;
        failures.extend(f);
    }
    println!("crash_states_checked: {states} ({})", fs.name());
    for f in &failures {
        println!("FAILED: {f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {states} crash states on {} failed (seed {seed}; replay: CAIRN_SEED={seed}); first: {}",
        failures.len(),
        fs.name(),
        failures[0]
    );
}

#[test]
fn power_cuts_ext4() {
    power_cuts(FsKind::Ext4);
}

#[test]
fn power_cuts_xfs() {
    power_cuts(FsKind::Xfs);
}
