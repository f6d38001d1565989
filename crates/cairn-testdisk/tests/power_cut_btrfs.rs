//! Power cuts at the block layer under the btrfs driver on a real btrfs (the test disk formatted
//! with mkfs.btrfs): every kind of driver step — a subvolume created for a new snapshot, a
//! snapshot of a committed parent for prepare and for a view, a layer extracted into a new
//! subvolume or into a snapshot of its parent, a commit's read-only flag and transaction commit,
//! a removal's rename and subvolume deletion — runs through the engine handle, and a crash
//! image is cut after **every** flush of the disk (and at seeded random ones, with another
//! subset of the unflushed writes kept, dropped or torn at 4 KiB: btrfs needs its device to
//! write its 4 KiB superblock whole, docs/drivers.md "Known limits").
//!
//! Each image is mounted on its own (the live disk is unmounted first and every btrfs loop
//! device is forgotten by the kernel as it is released: the images share one fsid), the root
//! recovered, and it must show every acknowledged snapshot and layer with its exact bytes, the
//! command in flight wholly there or wholly gone, `fsck --verify` clean, no name under the root
//! the state does not hold, no orphan subvolume (`btrfs subvolume list`: each subvolume is a
//! snapshot's tree), and `btrfs check --readonly` clean after unmounting.
//!
//! Prints `crash_states_checked: N (btrfs)` and the seed; `CAIRN_SEED` replays the fates,
//! `CAIRN_POWER_CUT_STRIDE=<n>` cuts after every n-th flush only (default 1: every flush).

mod support;

use cairn_state::types::DriverKind;
use cairn_testdisk::FsKind;
use support::steps::*;

/// prepare (a new subvolume, and snapshots of a committed parent), view (a read-only
/// snapshot), commit (read-only flag + transaction commit), remove (of an active snapshot, a
/// view and a committed one), import (a new subvolume; a gzip layer on a parent: a snapshot of
/// it, whiteouts applied), a layer rm cascade, checkpoints.
fn workload() -> Vec<support::Step> {
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
        p("d", Some("c1")),
        w("d", "h1", 2000),
        rm("d"),
        rm("c1"),
        p("e", Some("base")),
        w("e", "h2", 2000),
        lrm("L1"),
        checkpoint(),
    ]
}

#[test]
fn power_cuts_btrfs() {
    support::cuts::power_cuts(FsKind::Btrfs, &[DriverKind::Btrfs], &workload(), 1);
}
