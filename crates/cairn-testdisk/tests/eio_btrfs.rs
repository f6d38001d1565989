//! EIO at the block layer under the btrfs driver on a real btrfs (the cases of eio.rs): for
//! prepare and view (a subvolume snapshot, committed inside the ioctl), commit (the tree's
//! sync, the read-only flag and the transaction commit), remove (the subvolume deletion and
//! its commit), layer import (a new subvolume, its sync and commit) and a checkpoint, the test
//! disk fails the j-th write or flush the command causes (once). The client must get a typed
//! error or a true answer, the engine stays up (no panic on its thread), a commit whose sync
//! failed is refused again on its retry (never acknowledged over dropped pages); after a heal
//! and a power cut after the last flush the root recovers to the promise, with no orphan
//! subvolume and `btrfs check --readonly` clean.
//!
//! Prints one line per case and `eio_cases_checked: N (btrfs)`; `CAIRN_SEED` replays which
//! write of a command fails.

mod support;

use cairn_state::types::DriverKind;
use cairn_testdisk::FsKind;
use support::eio_cases::Kind;

fn btrfs_steps(k: &Kind) -> bool {
    matches!(
        k.name,
        "prepare" | "view" | "commit" | "commit_syncfs" | "remove" | "import" | "checkpoint"
    )
}

#[test]
fn eio_btrfs() {
    support::eio_cases::eio(FsKind::Btrfs, &[DriverKind::Btrfs], true, btrfs_steps);
}
