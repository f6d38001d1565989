//! The power-cut runner shared by the `power_cut*` suites: a workload run on a fresh test disk,
//! then a crash image after every `stride`-th flush (and at seeded random ones), each checked
//! against what was acknowledged.

use super::{check_image, driver_name, expect_at, run_steps, skip, suite_name, Step};
use cairn_engine::Engine;
use cairn_state::types::DriverKind;
use cairn_testdisk::{missing, CrashImages, FsKind, TestDisk};
use rand::{Rng, SeedableRng};

/// The tear unit of btrfs crash images: 4 KiB, a disk with 4 KiB physical sectors.
const BTRFS_TEAR_BYTES: usize = 4096;

/// Cuts after every `stride`-th flush (from a seeded phase); 1 cuts after every flush (soak).
/// `CAIRN_POWER_CUT_STRIDE`, else the suite's own default.
fn stride(default: usize) -> usize {
    std::env::var("CAIRN_POWER_CUT_STRIDE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .max(1)
}

fn random_cuts() -> usize {
    std::env::var("CAIRN_POWER_CUT_RANDOM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

/// Runs the workload on a fresh disk, then checks crash states; returns (states, failures).
pub fn cut_workload(
    fs: FsKind,
    driver: DriverKind,
    workload: &[Step],
    seed: u64,
    default_stride: usize,
) -> (usize, Vec<String>) {
    let mut disk = TestDisk::format(super::server(), fs, fs.image_bytes(), "powercut")
        .expect("format the test disk");
    let root = disk.mountpoint().join("root");
    let (h, _) = Engine::open(&root, super::crashkit::options(driver)).expect("open the root");
    let ran = run_steps(&disk, &h, workload);
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
    if driver == DriverKind::Block {
        // Its images are loop-mounted while the workload reads and writes them.
        super::crashkit::check_nothing_attached(&root);
    }
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
    if fs == FsKind::Btrfs {
        // btrfs requires its device to write its 4 KiB superblock atomically (checksummed, no
        // automatic fallback to a mirror). At 512-byte tears the kernel refuses the torn
        // superblock, and the mirror `btrfs rescue super-recover` falls back to is not updated
        // by log-tree fsyncs, so btrfs itself loses fsynced data (docs/drivers.md, "Known
        // limits"). The model here is a disk with 4 KiB physical sectors.
        images = images.with_sector_bytes(BTRFS_TEAR_BYTES);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    // Every stride-th flush once (every flush with stride 1), plus random ones with another
    // subset of the unflushed writes.
    let stride = stride(default_stride);
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

/// Runs `workload` on each of `drivers` on `fs`, cutting after every `default_stride`-th flush
/// (`CAIRN_POWER_CUT_STRIDE` overrides), and fails with every broken crash state.
pub fn power_cuts(fs: FsKind, drivers: &[DriverKind], workload: &[Step], default_stride: usize) {
    if let Some(why) = missing(fs) {
        return skip(&why);
    }
    let seed = super::seed();
    println!(
        "power_cut {}: seed {seed} (replay: CAIRN_SEED={seed})",
        fs.name()
    );
    let mut states = 0;
    let mut failures = Vec::new();
    for &driver in drivers {
        let (n, f) = cut_workload(fs, driver, workload, seed, default_stride);
        states += n;
        failures.extend(f);
    }
    println!(
        "crash_states_checked: {states} ({})",
        suite_name(fs, drivers)
    );
    if fs == FsKind::Btrfs {
        println!(
            "btrfs_torn_superblocks_recovered: {} (crash images mounted after `btrfs rescue super-recover`)",
            super::SUPERBLOCKS_RECOVERED.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    if fs == FsKind::Ext4 {
        println!(
            "ext4_torn_superblocks_repaired: {} (crash images mounted after e2fsck from a backup superblock)",
            super::SUPERBLOCKS_RECOVERED.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    for f in &failures {
        println!("FAILED: {f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {states} crash states of {} on {} failed (seed {seed}; replay: CAIRN_SEED={seed}); first: {}",
        failures.len(),
        suite_name(fs, drivers),
        fs.name(),
        failures[0]
    );
}
