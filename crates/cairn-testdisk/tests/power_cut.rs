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

use cairn_testdisk::FsKind;
use support::steps::*;
use support::Step;

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

fn power_cuts(fs: FsKind) {
    support::cuts::power_cuts(fs, &support::drivers(), &workload(), 4);
}

#[test]
fn power_cuts_ext4() {
    power_cuts(FsKind::Ext4);
}

#[test]
fn power_cuts_xfs() {
    power_cuts(FsKind::Xfs);
}
