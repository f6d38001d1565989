//! btrfs driver usage from qgroups: a test binary of its own, because it enables quotas on its
//! process's loop btrfs (the other btrfs tests expect the walk's figures).

use cairn_driver::open_driver;
use cairn_state::types::{DriverKind, Kind, SnapshotId, TxId};
use std::fs;
use std::process::Command;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn usage_is_the_qgroup_exclusive_bytes_where_quotas_are_on() -> TestResult {
    let base = match cairn_loopfs::btrfs() {
        Ok(dir) => dir,
        Err(reason) => {
            println!("skipped: usage_is_the_qgroup_exclusive_bytes: {reason}");
            return Ok(());
        }
    };
    let tmp = cairn_loopfs::btrfs_tempdir("qgroup-")?;
    let d = open_driver(DriverKind::Btrfs, &tmp.path().join("root"))?;
    // Quotas off: the walk (the parent's 8 MiB file counted in the child too).
    d.stage(TxId(1), Kind::Active, None)?;
    fs::write(d.staged_tree(TxId(1)).join("big"), vec![5u8; 8 << 20])?;
    d.sync_staged(TxId(1))?;
    d.install(TxId(1), SnapshotId(1))?;
    d.seal(SnapshotId(1), TxId(2))?;
    d.stage(TxId(3), Kind::Active, Some(SnapshotId(1)))?;
    d.install(TxId(3), SnapshotId(3))?;
    let walked = d.usage(SnapshotId(3))?;
    assert_eq!((walked.size_bytes, walked.inodes), (8 << 20, 2));

    let enabled = Command::new("btrfs")
        .args(["quota", "enable"])
        .arg(base)
        .status();
    if !matches!(enabled, Ok(s) if s.success()) {
        println!("skipped: usage_is_the_qgroup_exclusive_bytes: `btrfs quota enable` failed");
        return Ok(());
    }
    // Wait for the initial rescan, so the figures are consistent.
    let _ = Command::new("btrfs")
        .args(["quota", "rescan", "-w"])
        .arg(base)
        .status();
    // The child wrote 1 MiB of its own: its exclusive bytes are about that, not the 9 MiB tree.
    fs::write(d.tree(SnapshotId(3)).join("own"), vec![6u8; 1 << 20])?;
    let sealed = d.seal(SnapshotId(3), TxId(4))?;
    assert_eq!(sealed.inodes, 3, "inodes are still counted by the walk");
    assert!(
        sealed.size_bytes >= 1 << 20 && sealed.size_bytes < 2 << 20,
        "exclusive bytes of the child: {}",
        sealed.size_bytes
    );
    assert_eq!(d.usage(SnapshotId(3))?, sealed);
    let _ = Command::new("btrfs")
        .args(["quota", "disable"])
        .arg(base)
        .status();
    Ok(())
}
