//! EIO at the block layer during the block driver's fsyncs: its root on the test disk's xfs
//! (`-m reflink=1`). For each command whose durable steps are block's own (prepare and view:
//! the clone's fsync; commit: the image's fsync before the marker; import and container
//! create: the syncfs of the image's loop mount and the image's fsync; remove), the disk fails
//! the j-th flush or write the command causes (once). The answer must be a typed error or
//! success, never a panic of the engine thread; the engine stays up (it answers a walk and the
//! same command sent again after the disk healed); a commit whose image fsync failed is never
//! acknowledged by a retry over the same dirty pages (the image is marked `sync-failed`). Then
//! the power is cut after the last flush and the root must show every acknowledged command,
//! an unacknowledged one wholly there or gone, no orphan image, nothing attached, fsck clean.
//!
//! Prints one line per case and `eio_cases_checked: N (block)`; the seed (which write of a
//! command fails) is printed and replayed with `CAIRN_SEED`. The cases and their check are the
//! shared runner's (`support::eio_cases`), with block's own checks there.

mod support;

use cairn_state::types::DriverKind;
use cairn_testdisk::FsKind;
use support::eio_cases::Kind;
use support::skip;

/// The commands whose durable steps are block's own.
fn block_steps(k: &Kind) -> bool {
    matches!(
        k.name,
        "prepare" | "view" | "commit" | "remove" | "import" | "container_create"
    )
}

#[test]
fn eio_block_xfs() {
    if let Some(why) = support::block_suite() {
        return skip(&why);
    }
    support::eio_cases::eio(FsKind::Xfs, &[DriverKind::Block], true, block_steps);
}
