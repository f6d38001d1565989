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
//! `CAIRN_POWER_CUT_STRIDE` / `CAIRN_POWER_CUT_RANDOM` as in `power_cut.rs` (the shared runner,
//! `support::cuts`).

mod support;

use cairn_state::types::DriverKind;
use cairn_testdisk::FsKind;
use support::steps::*;
use support::{skip, Step};

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

#[test]
fn power_cuts_block_xfs() {
    if let Some(why) = support::block_suite() {
        return skip(&why);
    }
    support::cuts::power_cuts(FsKind::Xfs, &[DriverKind::Block], &workload(), 4);
}
