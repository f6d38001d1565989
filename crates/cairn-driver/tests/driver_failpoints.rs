//! Interrupted driver steps (a failpoint panics mid-operation) leave states the next call
//! completes. Built only with `--features failpoints`; the process-abort crash tests live
//! elsewhere.
#![cfg(feature = "failpoints")]

use cairn_driver::open_driver;
use cairn_state::types::{DriverKind, Kind, SnapshotId, TxId};
use std::panic::{catch_unwind, AssertUnwindSafe};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Runs `f` with failpoint `name` set to panic; returns whether it panicked.
fn interrupted(name: &str, f: impl FnOnce()) -> Result<bool, Box<dyn std::error::Error>> {
    fail::cfg(name, "panic")?;
    let panicked = catch_unwind(AssertUnwindSafe(f)).is_err();
    fail::remove(name);
    Ok(panicked)
}

// One test function: failpoints are process-global, so parallel tests would trip each other.
#[test]
fn interrupted_steps_are_completed_by_a_retry() -> TestResult {
    let scenario = fail::FailScenario::setup();
    let tmp = tempfile::tempdir()?;
    let d = open_driver(DriverKind::Vfs, &tmp.path().join("root"))?;
    let root = tmp.path().join("root");

    d.stage(TxId(1), Kind::Active, None)?;
    std::fs::write(d.staged_tree(TxId(1)).join("f"), b"data")?;
    assert!(interrupted("driver::install::after_rename", || {
        let _ = d.install(TxId(1), SnapshotId(1));
    })?);
    let inv = d.inventory()?;
    assert!(
        inv.staging.is_empty(),
        "the rename happened before the failpoint"
    );
    assert_eq!(inv.installed.get(&SnapshotId(1)), Some(&Some(TxId(1))));
    d.install(TxId(1), SnapshotId(1))?;

    assert!(interrupted("driver::install::before_rename", || {
        d.stage(TxId(2), Kind::Active, None).ok();
        let _ = d.install(TxId(2), SnapshotId(2));
    })?);
    assert_eq!(d.inventory()?.staging, vec![TxId(2)]);
    d.install(TxId(2), SnapshotId(2))?;

    // A seal interrupted before the marker rename keeps the old marker intact.
    assert!(interrupted("driver::marker::before_rename", || {
        let _ = d.seal(SnapshotId(1), TxId(5));
    })?);
    assert_eq!(
        d.inventory()?.installed.get(&SnapshotId(1)),
        Some(&Some(TxId(1)))
    );
    assert!(root.join("snapshots/1/txid.tmp").exists());
    d.seal(SnapshotId(1), TxId(5))?;
    assert_eq!(
        d.inventory()?.installed.get(&SnapshotId(1)),
        Some(&Some(TxId(5)))
    );

    // A remove interrupted after the rename leaves the tree in trash; the retry deletes it.
    assert!(interrupted("driver::remove::after_rename", || {
        let _ = d.remove(SnapshotId(2));
    })?);
    let inv = d.inventory()?;
    assert!(!inv.installed.contains_key(&SnapshotId(2)));
    assert_eq!(inv.trash, vec![SnapshotId(2)]);
    d.remove(SnapshotId(2))?;
    assert!(d.inventory()?.trash.is_empty());

    // A stage interrupted after its copy is redone from scratch.
    assert!(interrupted("driver::stage::after_copy", || {
        let _ = d.stage(TxId(3), Kind::Active, Some(SnapshotId(1)));
    })?);
    assert_eq!(d.inventory()?.staging, vec![TxId(3)]);
    assert!(
        !root.join("staging/3/txid").exists(),
        "marker written before the copy was durable"
    );
    d.stage(TxId(3), Kind::Active, Some(SnapshotId(1)))?;
    assert_eq!(std::fs::read(d.staged_tree(TxId(3)).join("f"))?, b"data");
    scenario.teardown();
    Ok(())
}
