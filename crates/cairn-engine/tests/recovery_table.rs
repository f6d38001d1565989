//! The recovery decision table of docs/recovery.md, one test per row: each constructs the
//! row's on-disk state directly, opens the root, and checks the action taken (the
//! `RecoveryReport` and the disk). Row ids are stable; the tests are named after them.

#![allow(clippy::unwrap_used)]

mod common;

use cairn_engine::journal;
use cairn_engine::{Engine, EngineError, EngineHandle, EngineOptions, RecoveryReport, Row};
use cairn_state::types::{DriverKind, Kind, SnapshotId, TxId};
use cairn_state::{Labels, Op, Record};
use cairn_wal::storage::FsStorage;
use cairn_wal::{StoreId, Wal, WalOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::new_root;

/// A committed snapshot's mounts, read through a View: containerd (and cairn) refuse `mounts`
/// of a committed snapshot. On vfs the View binds the committed tree itself.
fn committed_tree(h: &EngineHandle, key: &str) -> Vec<cairn_state::types::Mount> {
    let m = h
        .view("__committed_tree", Some(key), Labels::new())
        .unwrap();
    h.remove("__committed_tree").unwrap();
    m
}

fn open(root: &Path) -> Result<(EngineHandle, RecoveryReport), EngineError> {
    Engine::open(root, EngineOptions::default())
}

/// Asserts that recovery fired `row`. Every row of the table must be named in a call of
/// `fired` or `refused` in this file (`every_row_has_a_test_that_fires_it`).
fn fired(report: &RecoveryReport, row: Row) {
    assert!(
        report.rows.contains(&row),
        "row {row:?} did not fire: {:?}",
        report.rows
    );
}

/// Asserts that opening the root was refused as row `row` says; returns the error.
fn refused<T>(result: Result<T, EngineError>, row: Row) -> EngineError {
    match result {
        Err(e) => {
            assert_eq!(e.recovery_row(), Some(row), "{e}");
            e
        }
        Ok(_) => panic!("row {row:?}: the open was not refused"),
    }
}

fn store_id(root: &Path) -> StoreId {
    let meta = std::fs::read(root.join("cairn.meta")).unwrap();
    StoreId(u128::from_le_bytes(meta[16..32].try_into().unwrap()))
}

/// Append records to a closed root's journal, as the engine would have.
fn append(root: &Path, records: &[Record]) {
    let options = WalOptions {
        store_id: Some(store_id(root)),
        create_if_missing: false,
        ..WalOptions::default()
    };
    let (mut wal, _, _) = Wal::open(Arc::new(FsStorage), &root.join("wal"), options).unwrap();
    let payloads: Vec<Vec<u8>> = records.iter().map(journal::encode).collect();
    wal.append_batch(&payloads).unwrap();
    wal.sync().unwrap();
}

fn append_raw(root: &Path, payload: &[u8]) {
    let options = WalOptions {
        store_id: Some(store_id(root)),
        create_if_missing: false,
        ..WalOptions::default()
    };
    let (mut wal, _, _) = Wal::open(Arc::new(FsStorage), &root.join("wal"), options).unwrap();
    wal.append(payload).unwrap();
    wal.sync().unwrap();
}

/// A closed root holding committed `base` (id 1, with file `f`), txids 1..=4: BeginCreate,
/// Complete, BeginCommit, Complete. Next txid 5, next snapshot id 2.
fn root_with_base(root: &Path) {
    let (h, _) = open(root).unwrap();
    let m = h.prepare("base-a", None, Labels::new()).unwrap();
    std::fs::write(m[0].source.join("f"), b"base contents").unwrap();
    h.commit("base", "base-a", Labels::new()).unwrap();
    h.close().unwrap();
}

fn begin_create(txid: u64, key: &str, parent: Option<&str>, id: u64) -> Record {
    Record {
        txid: TxId(txid),
        op: Op::BeginCreate {
            key: key.into(),
            parent: parent.map(Into::into),
            kind: Kind::Active,
            id: SnapshotId(id),
            labels: Labels::new(),
            time_ns: 1,
        },
    }
}

fn complete(txid: u64, of: u64) -> Record {
    Record {
        txid: TxId(txid),
        op: Op::Complete {
            of: TxId(of),
            usage: None,
            digest: None,
        },
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Every file of the root but the lock and the derived index, for "nothing changed".
fn durable_files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn go(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            if rel == "LOCK" || rel.starts_with("index") {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                go(base, &p, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, root, &mut out);
    out
}

fn clean(h: &EngineHandle) {
    let fsck = h.fsck(false).unwrap();
    assert!(fsck.is_clean(), "{fsck:?}");
}

#[test]
fn r01_new_root_is_created() {
    let (_t, root) = new_root();
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R1);
    assert_eq!(report.rows, [Row::R1].into());
    assert_eq!(
        report,
        RecoveryReport {
            index_rebuilt: report.index_rebuilt,
            rows: report.rows.clone(),
            ..RecoveryReport::default()
        }
    );
    clean(&h);
    h.close().unwrap();
    for name in [
        "cairn.meta",
        "wal",
        "snapshots",
        "staging",
        "trash",
        "index",
        "LOCK",
    ] {
        assert!(root.join(name).exists(), "{name} missing");
    }
}

#[test]
fn r02_clean_root_replays_and_does_nothing_else() {
    let (_t, root) = new_root();
    root_with_base(&root);
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R2);
    // Nothing else: root_with_base's records before its checkpoint are skipped (R8).
    assert!(
        report.rows.iter().all(|r| [Row::R2, Row::R8].contains(r)),
        "{:?}",
        report.rows
    );
    assert!(report.dropped.is_empty() && report.installed.is_empty() && report.lost.is_empty());
    assert!(
        report.orphans_removed.is_empty()
            && report.staging_removed.is_empty()
            && report.trash_purged.is_empty()
    );
    assert!(!report.index_rebuilt, "{report:?}");
    assert_eq!(report.checkpoint_lsn, 4);
    assert_eq!(h.stat("base").unwrap().kind, Kind::Committed);
    clean(&h);
}

#[test]
fn r03_log_without_meta_adopts_the_logs_store() {
    let (_t, root) = new_root();
    let (h, _) = open(&root).unwrap();
    h.close().unwrap();
    let id = store_id(&root);
    std::fs::remove_file(root.join("cairn.meta")).unwrap();
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R3);
    assert_eq!(report.replayed_records, 0);
    clean(&h);
    h.close().unwrap();
    assert_eq!(store_id(&root), id, "the meta file names the log's store");
}

#[test]
fn r04_leftover_temporaries_are_removed() {
    let (_t, root) = new_root();
    root_with_base(&root);
    std::fs::write(root.join("checkpoint.tmp"), b"half a checkpoint").unwrap();
    std::fs::write(root.join("cairn.meta.tmp"), b"half a meta").unwrap();
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R4);
    assert!(!root.join("checkpoint.tmp").exists() && !root.join("cairn.meta.tmp").exists());
    assert_eq!(h.stat("base").unwrap().kind, Kind::Committed);
    clean(&h);
}

#[test]
fn r05_locked_root_is_refused_naming_the_holder() {
    let (_t, root) = new_root();
    let (h, _) = open(&root).unwrap();
    let no_wait = EngineOptions {
        lock_timeout_ms: 0,
        ..EngineOptions::default()
    };
    match refused(Engine::open(&root, no_wait), Row::R5) {
        EngineError::Locked { pid, .. } => assert_eq!(pid, std::process::id().to_string()),
        other => panic!("expected Locked, got {other}"),
    }
    h.close().unwrap();
    // The lock goes with its holder.
    let (h, _) = open(&root).unwrap();
    h.close().unwrap();
}

#[test]
fn r06_driver_mismatch_is_refused() {
    let (_t, root) = new_root();
    root_with_base(&root);
    let before = durable_files(&root);
    let opts = EngineOptions {
        driver: Some(DriverKind::Overlay),
        ..EngineOptions::default()
    };
    refused(Engine::open(&root, opts), Row::R6);
    assert_eq!(durable_files(&root), before);
}

#[test]
fn r07_damaged_meta_is_refused() {
    let (_t, root) = new_root();
    root_with_base(&root);
    let mut meta = std::fs::read(root.join("cairn.meta")).unwrap();
    meta[20] ^= 0xff;
    std::fs::write(root.join("cairn.meta"), &meta).unwrap();
    let before = durable_files(&root);
    refused(open(&root), Row::R7);
    assert_eq!(durable_files(&root), before);
}

#[test]
fn r08_records_covered_by_the_checkpoint_are_skipped() {
    let (_t, root) = new_root();
    let (h, _) = open(&root).unwrap();
    h.prepare("a", None, Labels::new()).unwrap();
    // Checkpoint at LSN 2; the segment holding LSNs 1-2 stays (as after a crash between the
    // checkpoint's rename and the truncation).
    h.checkpoint().unwrap();
    h.close().unwrap();
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R8);
    assert_eq!(report.checkpoint_lsn, 2);
    assert_eq!(report.skipped_records, 2, "{report:?}");
    assert_eq!(report.replayed_records, 0);
    assert_eq!(h.stat("a").unwrap().kind, Kind::Active);
    clean(&h);
}

#[test]
fn r09_log_starting_after_the_checkpoint_is_a_gap() {
    let (_t, root) = new_root();
    root_with_base(&root);
    let id = store_id(&root);
    std::fs::remove_dir_all(root.join("wal")).unwrap();
    let options = WalOptions {
        store_id: Some(id),
        create_if_missing: true,
        first_lsn: cairn_wal::Lsn(10),
        segment_size_bytes: cairn_engine::ENGINE_SEGMENT_BYTES,
        max_record_bytes: 1 << 20,
        ..WalOptions::default()
    };
    let (mut wal, _, _) = Wal::open(Arc::new(FsStorage), &root.join("wal"), options).unwrap();
    wal.append(&journal::encode(&begin_create(5, "x", None, 2)))
        .unwrap();
    wal.sync().unwrap();
    drop(wal);
    let before = durable_files(&root);
    refused(open(&root), Row::R9);
    assert_eq!(
        durable_files(&root),
        before,
        "a refused open changes nothing"
    );
}

#[test]
fn r10_damaged_checkpoint_is_an_error_and_nothing_changes() {
    let (_t, root) = new_root();
    root_with_base(&root);
    let mut cp = std::fs::read(root.join("checkpoint")).unwrap();
    let last = cp.len() - 1;
    cp[last] ^= 0x55;
    std::fs::write(root.join("checkpoint"), &cp).unwrap();
    let before = durable_files(&root);
    refused(open(&root), Row::R10);
    assert_eq!(durable_files(&root), before);
}

#[test]
fn r11_undecodable_record_is_an_error_and_nothing_changes() {
    let (_t, root) = new_root();
    root_with_base(&root);
    append_raw(
        &root,
        &[
            1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ],
    );
    let before = durable_files(&root);
    refused(open(&root), Row::R11);
    assert_eq!(durable_files(&root), before);
    // An unknown record version too.
    let (_t2, root2) = new_root();
    root_with_base(&root2);
    append_raw(&root2, &[9, 0]);
    refused(open(&root2), Row::R11);
}

#[test]
fn r12_txid_out_of_sequence_is_an_error_and_nothing_changes() {
    let (_t, root) = new_root();
    root_with_base(&root);
    append(&root, &[begin_create(4, "x", None, 2)]);
    let before = durable_files(&root);
    refused(open(&root), Row::R12);
    assert_eq!(durable_files(&root), before);
    // A snapshot id out of sequence too.
    let (_t2, root2) = new_root();
    root_with_base(&root2);
    append(&root2, &[begin_create(5, "x", None, 7)]);
    refused(open(&root2), Row::R12);
}

#[test]
fn r13_record_that_does_not_apply_is_an_error_and_nothing_changes() {
    let (_t, root) = new_root();
    root_with_base(&root);
    append(&root, &[complete(5, 3)]);
    let before = durable_files(&root);
    refused(open(&root), Row::R13);
    assert_eq!(durable_files(&root), before);
}

#[test]
fn r14_torn_tail_is_cut() {
    let (_t, root) = new_root();
    root_with_base(&root);
    let mut labels = Labels::new();
    labels.insert("marker".into(), "TORN-TAIL-LABEL".into());
    append(
        &root,
        &[Record {
            txid: TxId(5),
            op: Op::Update {
                key: "base".into(),
                labels,
                time_ns: 2,
            },
        }],
    );
    // Damage the last record's payload: a write torn by the crash.
    let seg = root
        .join("wal")
        .join(names(&root.join("wal")).pop().unwrap());
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes
        .windows(15)
        .position(|w| w == b"TORN-TAIL-LABEL")
        .unwrap();
    bytes[at + 3] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R14);
    assert!(report.torn_tail.is_some(), "{report:?}");
    assert!(
        h.stat("base").unwrap().labels.is_empty(),
        "the torn update is gone"
    );
    clean(&h);
    h.close().unwrap();
    let (_h, report) = open(&root).unwrap();
    assert!(report.torn_tail.is_none(), "cut once");
}

#[test]
fn r15_pending_create_with_staging_is_dropped() {
    let (_t, root) = new_root();
    root_with_base(&root);
    append(&root, &[begin_create(5, "x", Some("base"), 2)]);
    std::fs::create_dir_all(root.join("staging/5/fs")).unwrap();
    std::fs::write(root.join("staging/5/fs/f"), b"half a copy").unwrap();
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R15);
    assert!(!report.rows.contains(&Row::R21), "{:?}", report.rows);
    assert_eq!(report.dropped, vec![TxId(5)]);
    assert_eq!(report.staging_removed, vec![TxId(5)]);
    assert!(h.stat("x").is_err());
    assert!(names(&root.join("staging")).is_empty());
    clean(&h);
    // The abort is journaled: the next open finds nothing pending.
    h.close().unwrap();
    let (_h, report) = open(&root).unwrap();
    assert!(report.dropped.is_empty(), "{report:?}");
}

#[test]
fn r16_pending_create_without_staging_is_dropped() {
    let (_t, root) = new_root();
    root_with_base(&root);
    append(&root, &[begin_create(5, "x", None, 2)]);
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R16);
    assert_eq!(report.dropped, vec![TxId(5)]);
    assert!(report.staging_removed.is_empty());
    assert!(h.stat("x").is_err());
    // The key is free again.
    h.prepare("x", None, Labels::new()).unwrap();
    clean(&h);
}

#[test]
fn r17_pending_commit_is_aborted_and_stays_active() {
    let (_t, root) = new_root();
    root_with_base(&root);
    let (h, _) = open(&root).unwrap();
    let m = h.prepare("act", Some("base"), Labels::new()).unwrap(); // txids 5, 6; id 2
    std::fs::write(m[0].source.join("g"), b"active data").unwrap();
    h.close().unwrap();
    append(
        &root,
        &[Record {
            txid: TxId(7),
            op: Op::BeginCommit {
                key: "act".into(),
                name: "done".into(),
                labels: Labels::new(),
                time_ns: 3,
            },
        }],
    );
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R17);
    assert_eq!(report.dropped, vec![TxId(7)]);
    assert_eq!(h.stat("act").unwrap().kind, Kind::Active);
    assert!(h.stat("done").is_err());
    let m = h.mounts("act").unwrap();
    assert_eq!(
        std::fs::read(m[0].source.join("g")).unwrap(),
        b"active data"
    );
    clean(&h);
    h.commit("done", "act", Labels::new()).unwrap();
}

#[test]
fn r18_completed_create_still_in_staging_is_installed() {
    let (_t, root) = new_root();
    root_with_base(&root);
    append(&root, &[begin_create(5, "x", None, 2), complete(6, 5)]);
    std::fs::create_dir_all(root.join("staging/5/fs")).unwrap();
    std::fs::write(root.join("staging/5/fs/f"), b"staged").unwrap();
    std::fs::write(
        root.join("staging/5/txid"),
        cairn_driver::marker::encode(TxId(5)),
    )
    .unwrap();
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R18);
    assert_eq!(report.installed, vec![SnapshotId(2)]);
    let m = h.mounts("x").unwrap();
    assert_eq!(std::fs::read(m[0].source.join("f")).unwrap(), b"staged");
    assert!(names(&root.join("staging")).is_empty());
    clean(&h);
}

#[test]
fn r19_tree_missing_entirely_is_reported_lost() {
    let (_t, root) = new_root();
    root_with_base(&root);
    std::fs::remove_dir_all(root.join("snapshots/1")).unwrap();
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R19);
    assert_eq!(report.lost, vec![SnapshotId(1)]);
    // Reported, not repaired: the snapshot stays in the state and fsck names it.
    assert_eq!(h.stat("base").unwrap().kind, Kind::Committed);
    let fsck = h.fsck(false).unwrap();
    assert!(
        fsck.findings
            .iter()
            .any(|f| matches!(f.problem, cairn_engine::Problem::TreeMissing { .. })),
        "{fsck:?}"
    );
}

#[test]
fn r20_tree_without_snapshot_is_removed() {
    let (_t, root) = new_root();
    root_with_base(&root);
    std::fs::create_dir_all(root.join("snapshots/9/fs")).unwrap();
    std::fs::write(root.join("snapshots/9/fs/junk"), b"orphan").unwrap();
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R20);
    assert!(
        !report.rows.contains(&Row::R40),
        "a foreign tree has no marker"
    );
    assert_eq!(report.orphans_removed, vec![SnapshotId(9)]);
    assert_eq!(names(&root.join("snapshots")), vec!["1"]);
    assert!(names(&root.join("trash")).is_empty());
    clean(&h);
}

/// An inline creation's tree, as `create_many` leaves it before the batch's journal sync: its
/// marker the directory's xattr, or (`marker_file`, as on a file system without user xattrs)
/// the `txid` file.
fn inline_tree(root: &Path, id: u64, txid: u64, marker_file: bool) {
    let dir = root.join("snapshots").join(id.to_string());
    std::fs::create_dir_all(dir.join("fs")).unwrap();
    let marker = cairn_driver::marker::encode(TxId(txid));
    let in_xattr = !marker_file
        && match xattr::set(&dir, cairn_driver::marker::MARKER_XATTR, &marker) {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => false,
            Err(e) => panic!("setxattr {}: {e}", dir.display()),
        };
    if !in_xattr {
        std::fs::write(dir.join("txid"), marker).unwrap();
    }
}

#[test]
fn r37_inline_creation_not_journaled_is_removed() {
    // Its BeginCreate journaled (pending), its Complete not.
    let (_t, root) = new_root();
    root_with_base(&root);
    append(&root, &[begin_create(5, "x", None, 2)]);
    inline_tree(&root, 2, 5, false);
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R40);
    fired(&report, Row::R16);
    assert_eq!(report.dropped, vec![TxId(5)]);
    assert_eq!(report.orphans_removed, vec![SnapshotId(2)]);
    assert!(h.stat("x").is_err());
    assert_eq!(names(&root.join("snapshots")), vec!["1"]);
    h.prepare("x", None, Labels::new()).unwrap();
    clean(&h);
    h.close().unwrap();
    // Its BeginCreate lost with it: the id was never allocated.
    let (_t2, root) = new_root();
    root_with_base(&root);
    inline_tree(&root, 2, 5, true);
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R40);
    assert!(report.dropped.is_empty(), "{report:?}");
    assert_eq!(report.orphans_removed, vec![SnapshotId(2)]);
    assert_eq!(names(&root.join("snapshots")), vec!["1"]);
    // The id is allocated afresh and its tree made anew.
    h.prepare("y", None, Labels::new()).unwrap();
    clean(&h);
}

#[test]
fn r21_stray_staging_is_removed() {
    let (_t, root) = new_root();
    root_with_base(&root);
    std::fs::create_dir_all(root.join("staging/3/fs")).unwrap();
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R21);
    assert_eq!(report.staging_removed, vec![TxId(3)]);
    assert!(names(&root.join("staging")).is_empty());
    clean(&h);
}

#[test]
fn r22_trash_is_purged() {
    let (_t, root) = new_root();
    root_with_base(&root);
    std::fs::create_dir_all(root.join("trash/7/fs/deep")).unwrap();
    std::fs::write(root.join("trash/7/fs/deep/x"), b"removed").unwrap();
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R22);
    assert_eq!(report.trash_purged, vec![SnapshotId(7)]);
    assert!(names(&root.join("trash")).is_empty());
    clean(&h);
}

/// A closed root with `base` (id 1) and active `act` (id 2, txids 5, 6), a `BeginCommit` of
/// `act` at txid 7 and, if `aborted`, its `Abort` at 8; `snapshots/2/txid.tmp` as the seal
/// left it.
fn root_with_cut_seal(root: &Path, aborted: bool) {
    root_with_base(root);
    let (h, _) = open(root).unwrap();
    h.prepare("act", Some("base"), Labels::new()).unwrap();
    h.close().unwrap();
    let mut records = vec![Record {
        txid: TxId(7),
        op: Op::BeginCommit {
            key: "act".into(),
            name: "done".into(),
            labels: Labels::new(),
            time_ns: 3,
        },
    }];
    if aborted {
        records.push(Record {
            txid: TxId(8),
            op: Op::Abort { of: TxId(7) },
        });
    }
    append(root, &records);
    std::fs::write(
        root.join("snapshots/2/txid.tmp"),
        cairn_driver::marker::encode(TxId(7)),
    )
    .unwrap();
}

#[test]
fn r23_marker_temporary_is_removed() {
    // The seal cut while its commit was pending, and cut in a recovery that had already
    // journaled the abort (or a seal that failed while the engine ran).
    for aborted in [false, true] {
        let (_t, root) = new_root();
        root_with_cut_seal(&root, aborted);
        let (h, report) = open(&root).unwrap();
        fired(&report, Row::R23);
        assert_eq!(
            report.marker_tmp_removed,
            vec![SnapshotId(2)],
            "aborted {aborted}"
        );
        assert!(!root.join("snapshots/2/txid.tmp").exists());
        assert_eq!(
            cairn_driver::marker::read(&root.join("snapshots/2")).unwrap(),
            Some(TxId(5)),
            "the marker itself is kept"
        );
        assert_eq!(h.stat("act").unwrap().kind, Kind::Active);
        clean(&h);
        h.commit("done", "act", Labels::new()).unwrap();
        h.close().unwrap();
        let (h, report) = open(&root).unwrap();
        assert!(report.marker_tmp_removed.is_empty(), "{report:?}");
        clean(&h);
    }
}

fn set_index_txid(root: &Path, value: Option<&[u8]>) {
    // sled releases its file lock from a background thread a moment after the engine closed
    // it; wait for that as the engine's own index open does (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let db = loop {
        match sled::open(root.join("index")) {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => break other.unwrap(),
        }
    };
    match value {
        Some(v) => db.insert(b"meta/applied_txid", v).unwrap(),
        None => db.remove(b"meta/applied_txid").unwrap(),
    };
    db.flush().unwrap();
}

fn index_rebuilt_after(root: &Path, row: Row) {
    let (h, report) = open(root).unwrap();
    fired(&report, row);
    assert!(report.index_rebuilt, "{report:?}");
    assert_eq!(h.walk(&[]).unwrap().len(), 1);
    clean(&h);
    h.close().unwrap();
    let (_h, report) = open(root).unwrap();
    assert!(!report.index_rebuilt, "rebuilt once: {report:?}");
}

#[test]
fn r24_index_behind_is_rebuilt() {
    let (_t, root) = new_root();
    root_with_base(&root);
    set_index_txid(&root, Some(&2u64.to_le_bytes()));
    index_rebuilt_after(&root, Row::R24);
}

#[test]
fn r25_index_ahead_is_rebuilt() {
    let (_t, root) = new_root();
    root_with_base(&root);
    set_index_txid(&root, Some(&40u64.to_le_bytes()));
    index_rebuilt_after(&root, Row::R25);
}

#[test]
fn r26_index_missing_is_rebuilt() {
    let (_t, root) = new_root();
    root_with_base(&root);
    std::fs::remove_dir_all(root.join("index")).unwrap();
    index_rebuilt_after(&root, Row::R26);
}

#[test]
fn r27_index_txid_garbage_is_rebuilt() {
    let (_t, root) = new_root();
    root_with_base(&root);
    set_index_txid(&root, Some(b"garbage"));
    index_rebuilt_after(&root, Row::R27);
}

#[test]
fn r28_index_files_garbage_is_rebuilt() {
    let (_t, root) = new_root();
    root_with_base(&root);
    fn scribble(dir: &Path) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                scribble(&p);
            } else {
                std::fs::write(&p, vec![0xa5u8; 4096]).unwrap();
            }
        }
    }
    scribble(&root.join("index"));
    index_rebuilt_after(&root, Row::R28);
}

#[test]
fn r29_unexpected_names_are_reported_and_left_alone() {
    let (_t, root) = new_root();
    root_with_base(&root);
    std::fs::write(root.join("snapshots/notes.txt"), b"mine").unwrap();
    std::fs::create_dir_all(root.join("staging/007")).unwrap();
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R29);
    assert_eq!(report.unexpected.len(), 2, "{report:?}");
    assert!(root.join("snapshots/notes.txt").exists() && root.join("staging/007").exists());
    let fsck = h.fsck(false).unwrap();
    assert_eq!(fsck.findings.len(), 2, "{fsck:?}");
}

#[test]
fn r30_leftover_segment_temporary_is_removed() {
    let (_t, root) = new_root();
    root_with_base(&root);
    let tmp = root.join("wal/00000000000000000099.wal.tmp");
    std::fs::write(&tmp, b"half a segment").unwrap();
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R30);
    assert!(!tmp.exists());
    clean(&h);
}

#[test]
fn r31_completed_create_installed_and_in_staging_keeps_the_installed_tree() {
    // A crash after install's rename on a filesystem that journals the two directories apart
    // can show both names; install treats the installed tree as done and the staging area is a
    // stray. Constructed directly: the installed tree wins, staging is removed.
    let (_t, root) = new_root();
    root_with_base(&root);
    std::fs::create_dir_all(root.join("staging/1/fs")).unwrap();
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R31);
    assert!(report.installed.is_empty());
    assert_eq!(report.staging_removed, vec![TxId(1)]);
    let m = committed_tree(&h, "base");
    assert_eq!(
        std::fs::read(m[0].source.join("f")).unwrap(),
        b"base contents"
    );
    clean(&h);
}

/// Recovery interrupted at each of its failpoints (and at the driver steps it runs) recovers
/// correctly when run again: every row with recovery work is built, a child opens it with the
/// failpoint armed and dies there, then the parent opens it and checks the row's outcome.
#[cfg(feature = "failpoints")]
mod interrupted {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn recovery_child() {
        let Ok(root) = std::env::var("CAIRN_TABLE_CHILD_ROOT") else {
            return;
        };
        std::panic::set_hook(Box::new(|info| {
            eprintln!("child panic: {info}");
            std::process::abort();
        }));
        std::mem::forget(fail::FailScenario::setup());
        let (h, _) = open(Path::new(&root)).expect("open");
        h.close().expect("close");
        std::process::exit(0);
    }

    /// A root with every kind of recovery work at once: a pending commit of `act` (7) whose
    /// seal left a marker temporary in snapshots/2, a pending create with staging (8), a
    /// completed create still staged (9 → id 4), an orphan tree (9), a stray staging area
    /// (3), trash (8).
    fn busy_root(root: &Path) {
        root_with_cut_seal(root, false);
        append(
            root,
            &[
                begin_create(8, "pending", Some("base"), 3),
                begin_create(9, "staged", None, 4),
                complete(10, 9),
            ],
        );
        std::fs::create_dir_all(root.join("staging/8/fs")).unwrap();
        std::fs::create_dir_all(root.join("staging/9/fs")).unwrap();
        std::fs::write(root.join("staging/9/fs/s"), b"staged file").unwrap();
        std::fs::write(
            root.join("staging/9/txid"),
            cairn_driver::marker::encode(TxId(9)),
        )
        .unwrap();
        std::fs::create_dir_all(root.join("staging/3/fs")).unwrap();
        std::fs::create_dir_all(root.join("snapshots/9/fs")).unwrap();
        std::fs::create_dir_all(root.join("trash/8/fs")).unwrap();
    }

    fn check_busy_root(root: &Path) {
        let (h, report) = open(root).unwrap();
        assert!(report.lost.is_empty(), "{report:?}");
        assert!(h.stat("pending").is_err());
        assert_eq!(
            std::fs::read(h.mounts("staged").unwrap()[0].source.join("s")).unwrap(),
            b"staged file"
        );
        assert_eq!(
            std::fs::read(committed_tree(&h, "base")[0].source.join("f")).unwrap(),
            b"base contents"
        );
        assert_eq!(names(&root.join("snapshots")), vec!["1", "2", "4"]);
        assert_eq!(names(&root.join("snapshots/2")), vec!["fs", "txid"]);
        assert_eq!(h.stat("act").unwrap().kind, Kind::Active);
        assert!(names(&root.join("staging")).is_empty() && names(&root.join("trash")).is_empty());
        clean(&h);
        h.close().unwrap();
        let (h, report) = open(root).unwrap();
        assert!(
            report.dropped.is_empty()
                && report.installed.is_empty()
                && report.staging_removed.is_empty(),
            "{report:?}"
        );
        clean(&h);
    }

    #[test]
    fn recovery_interrupted_at_each_failpoint_recovers_when_run_again() {
        let points = [
            "engine::recovery::after_replay",
            "engine::recovery::after_abort",
            "engine::recovery::after_install",
            "engine::recovery::after_reconcile",
            "driver::install::before_rename",
            "driver::install::after_rename",
            "driver::install::after_dir_sync",
            "driver::discard::before_remove",
            "driver::discard::after_remove",
            "driver::discard::after_dir_sync",
            "driver::remove::before_rename",
            "driver::remove::after_rename",
            "driver::remove::after_dir_sync",
            "driver::remove::after_delete",
        ];
        for fp in points {
            // Discard runs twice here (the aborted create's staging and the stray one).
            let ks: &[u32] = if fp.starts_with("driver::discard") {
                &[0, 1]
            } else {
                &[0]
            };
            for &k in ks {
                let (_t, root) = new_root();
                busy_root(&root);
                let spec = if k == 0 {
                    format!("{fp}=panic")
                } else {
                    format!("{fp}={k}*off->panic")
                };
                let out = std::process::Command::new(std::env::current_exe().unwrap())
                    .args([
                        "--exact",
                        "interrupted::recovery_child",
                        "--nocapture",
                        "--test-threads=1",
                    ])
                    .env("CAIRN_TABLE_CHILD_ROOT", &root)
                    .env("FAILPOINTS", &spec)
                    .output()
                    .unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr);
                let crashed = out.status.signal() == Some(libc::SIGABRT)
                    && stderr.contains(&format!("failpoint {fp} panic"));
                assert!(
                    crashed || out.status.success(),
                    "{spec}: child failed otherwise: {:?}\n{stderr}",
                    out.status
                );
                assert!(
                    crashed,
                    "{spec}: recovery of the busy root never reached it"
                );
                check_busy_root(&root);
            }
        }
    }
}

#[test]
fn r32_installed_tree_with_missing_or_damaged_marker_is_left_for_fsck() {
    let (_t, root) = new_root();
    root_with_base(&root);
    std::fs::write(root.join("snapshots/1/txid"), b"torn").unwrap();
    let (h, report) = open(&root).unwrap();
    assert!(
        report.lost.is_empty() && report.orphans_removed.is_empty(),
        "{report:?}"
    );
    assert_eq!(
        std::fs::read(committed_tree(&h, "base")[0].source.join("f")).unwrap(),
        b"base contents"
    );
    let fsck = h.fsck(false).unwrap();
    fsck_fired(&fsck, Row::R32);
    assert!(
        fsck.findings.iter().any(|f| matches!(
            f.problem,
            cairn_engine::Problem::MarkerMismatch { marker: None, .. }
        )),
        "{fsck:?}"
    );
}

/// The same row for an inline creation, whose marker is its directory's xattr: a damaged one is
/// found as a damaged file is, and a sound one is not.
#[test]
fn r32_a_damaged_xattr_marker_is_left_for_fsck() {
    let (_t, root) = new_root();
    let (h, _) = open(&root).unwrap();
    h.prepare("a", None, Labels::new()).unwrap();
    h.close().unwrap();
    let dir = root.join("snapshots/1");
    if xattr::get(&dir, cairn_driver::marker::MARKER_XATTR)
        .unwrap()
        .is_none()
    {
        // The marker fell back to the file: this file system keeps no user xattrs.
        assert!(dir.join("txid").exists());
        println!("skipped: the test root's file system keeps no user xattrs");
        return;
    }
    assert!(
        !dir.join("txid").exists(),
        "an inline creation writes no marker file"
    );
    let (h, _) = open(&root).unwrap();
    clean(&h);
    h.close().unwrap();
    xattr::set(&dir, cairn_driver::marker::MARKER_XATTR, b"torn").unwrap();
    let (h, report) = open(&root).unwrap();
    assert!(
        report.lost.is_empty() && report.orphans_removed.is_empty(),
        "{report:?}"
    );
    let fsck = h.fsck(false).unwrap();
    fsck_fired(&fsck, Row::R32);
}

/// For the rows recovery leaves to fsck: asserts an fsck finding of `row`.
fn fsck_fired(fsck: &cairn_engine::FsckReport, row: Row) {
    assert!(
        fsck.findings
            .iter()
            .any(|f| f.problem.recovery_row() == Some(row)),
        "no fsck finding of row {row:?}: {fsck:?}"
    );
}

fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        b.append_data(&mut header, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn r33_pending_import_is_dropped_with_its_staging() {
    let (_t, root) = new_root();
    root_with_base(&root);
    append(
        &root,
        &[Record {
            txid: TxId(5),
            op: Op::BeginImport {
                id: SnapshotId(2),
                parent: None,
                pin: true,
                time_ns: 3,
            },
        }],
    );
    std::fs::create_dir_all(root.join("staging/5/fs/etc")).unwrap();
    std::fs::write(root.join("staging/5/fs/etc/half"), b"half a layer").unwrap();
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R33);
    assert_eq!(report.dropped, vec![TxId(5)]);
    assert_eq!(report.staging_removed, vec![TxId(5)]);
    assert!(h.layers().unwrap().is_empty());
    assert!(names(&root.join("staging")).is_empty());
    clean(&h);
}

#[test]
fn r34_stranded_container_is_removed_whole() {
    let (_t, root) = new_root();
    let (h, _) = open(&root).unwrap();
    let layer = layer_tar(&[("etc/os-release", b"ID=test\n")]);
    let imported = h
        .import_layer(
            Box::new(std::io::Cursor::new(layer)),
            cairn_engine::ImportOptions {
                pin: true,
                ..Default::default()
            },
        )
        .unwrap();
    h.create_container("box", Some(&imported.chain_id), None)
        .unwrap();
    h.close().unwrap();
    // A container whose read-write step never began, with nothing pending: no journal can
    // produce it today (the init's completion begins that step in the same record), but a
    // checkpoint from an older build could hold one. Written into the checkpoint directly.
    let id = store_id(&root);
    let mut cp = cairn_engine::checkpoint::load(&FsStorage, &root, id)
        .unwrap()
        .unwrap();
    cp.state.containers.get_mut("box").unwrap().ready = false;
    cp.state.snapshots.remove("box");
    cairn_engine::checkpoint::store(&FsStorage, &root, id, &cp).unwrap();
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R34);
    assert_eq!(report.containers_removed, vec!["box".to_string()]);
    assert!(h.containers().unwrap().is_empty());
    assert!(
        h.stat("box-init").is_err(),
        "its init snapshot went with it"
    );
    assert_eq!(h.layers().unwrap().len(), 1, "the pinned layer stays");
    clean(&h);
}

/// The other side of R35: a layer whose import completed with its hold
/// (`import_layer_held`, one `CompleteImportHeld` record, as a registry pull imports) is held
/// from the moment it exists, so no crash leaves it for `CollectLayers`; the hold moves up the
/// chain as the next layer comes in.
#[test]
fn r35_a_layer_imported_with_its_hold_is_never_collected() {
    let (_t, root) = new_root();
    let (h, _) = open(&root).unwrap();
    let base = h
        .import_layer_held(
            Box::new(std::io::Cursor::new(layer_tar(&[(
                "bin/true",
                b"#!/bin/sh\n",
            )]))),
            cairn_engine::ImportOptions::default(),
            "reg/img:1#partial",
        )
        .unwrap();
    // A hold that is not a valid image name is refused before anything is read or journaled.
    let refused = h.import_layer_held(
        Box::new(std::io::Cursor::new(layer_tar(&[("x", b"x")]))),
        cairn_engine::ImportOptions::default(),
        "",
    );
    assert!(refused.is_err());
    h.close().unwrap();
    let (h, report) = open(&root).unwrap();
    assert!(!report.layers_collected, "{report:?}");
    assert!(!report.rows.contains(&Row::R35), "{report:?}");
    let images = h.images().unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(
        (images[0].name.as_str(), images[0].top.as_str()),
        ("reg/img:1#partial", base.chain_id.as_str())
    );
    let top = h
        .import_layer_held(
            Box::new(std::io::Cursor::new(layer_tar(&[("etc/hostname", b"x\n")]))),
            cairn_engine::ImportOptions {
                parent: Some(base.chain_id.clone()),
                ..Default::default()
            },
            "reg/img:1#partial",
        )
        .unwrap();
    h.close().unwrap();
    let (h, report) = open(&root).unwrap();
    assert!(!report.layers_collected, "{report:?}");
    assert_eq!(h.layers().unwrap().len(), 2);
    let images = h.images().unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].top, top.chain_id, "the hold moved to the new top");
    assert_eq!(h.layer(&base.chain_id).unwrap().holders, 0);
    h.remove_image("reg/img:1#partial").unwrap();
    assert!(
        h.layers().unwrap().is_empty(),
        "the hold was all that kept them"
    );
    clean(&h);
}

#[test]
fn r35_layers_nothing_holds_are_collected() {
    let (_t, root) = new_root();
    let (h, _) = open(&root).unwrap();
    // Imported unpinned, as an image load does before it records the image.
    let layer = layer_tar(&[("bin/true", b"#!/bin/sh\n")]);
    h.import_layer(
        Box::new(std::io::Cursor::new(layer)),
        cairn_engine::ImportOptions::default(),
    )
    .unwrap();
    h.close().unwrap();
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R35);
    assert!(report.layers_collected);
    assert!(h.layers().unwrap().is_empty());
    h.close().unwrap();
    let (h, report) = open(&root).unwrap();
    assert!(!report.layers_collected, "collected once: {report:?}");
    assert!(
        names(&root.join("snapshots")).is_empty(),
        "the tree went too"
    );
    clean(&h);
}

#[test]
fn r36_damaged_or_oversized_segment_is_refused_and_nothing_changes() {
    let (_t, root) = new_root();
    root_with_base(&root);
    let seg = root
        .join("wal")
        .join(names(&root.join("wal")).pop().unwrap());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(cairn_engine::ENGINE_SEGMENT_BYTES + 4096)
        .unwrap();
    let before = durable_files(&root);
    refused(open(&root), Row::R36);
    assert_eq!(durable_files(&root), before);
}

/// docs/recovery.md carries the table generated from the code. `CAIRN_BLESS=1` rewrites it.
#[test]
fn the_table_in_docs_is_the_one_in_the_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/recovery.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let begin = doc.find("<!-- rows:begin").expect("rows:begin marker");
    let begin = begin + doc[begin..].find("-->\n").expect("end of the begin marker") + 4;
    let end = doc.find("<!-- rows:end -->").expect("rows:end marker");
    let table = Row::markdown_table();
    if doc[begin..end] != table {
        if std::env::var_os("CAIRN_BLESS").is_some() {
            std::fs::write(&path, format!("{}{}{}", &doc[..begin], table, &doc[end..])).unwrap();
            return;
        }
        panic!("docs/recovery.md's table differs from Row::markdown_table(); run with CAIRN_BLESS=1 to regenerate it");
    }
}

/// Every row is fired by a test: its id appears in a `fired`, `refused` or `fsck_fired` call of
/// this file (each of which asserts, when it runs, that the row fired).
#[test]
fn every_row_has_a_test_that_fires_it() {
    let source = include_str!("recovery_table.rs");
    let calls: Vec<&str> = source
        .lines()
        .map(str::trim)
        .filter(|l| {
            [
                "fired(&",
                "refused(",
                "index_rebuilt_after(&",
                "fsck_fired(&",
            ]
            .iter()
            .any(|c| l.starts_with(c) || l.contains(&format!(" {c}")))
        })
        .filter(|l| !l.starts_with("fn ") && !l.starts_with("///"))
        .collect();
    let missing: Vec<Row> = Row::ALL
        .into_iter()
        .filter(|row| {
            let name = format!("Row::{row:?})");
            !calls.iter().any(|l| l.contains(&name))
        })
        .collect();
    assert!(missing.is_empty(), "rows no test fires: {missing:?}");
}

/// A closed root with `base` and Active `a` on it (id 2); next txid 7. Returns a plain
/// directory (never a mount point) and a directory that always is one (`/proc`).
fn root_with_active(root: &Path) -> (PathBuf, String) {
    root_with_base(root);
    let (h, _) = open(root).unwrap();
    h.prepare("a", Some("base"), Labels::new()).unwrap();
    h.close().unwrap();
    let plain = root.parent().unwrap().join("not-a-mount-point");
    std::fs::create_dir_all(&plain).unwrap();
    (plain, "/proc".to_owned())
}

fn mount_op(txid: u64, key: &str, target: &str) -> Record {
    Record {
        txid: TxId(txid),
        op: Op::Mount {
            key: key.into(),
            target: target.into(),
        },
    }
}

fn unmount_op(txid: u64, target: &str) -> Record {
    Record {
        txid: TxId(txid),
        op: Op::Unmount {
            target: target.into(),
        },
    }
}

fn counts(h: &EngineHandle) -> Vec<(String, String, u64)> {
    h.mount_refs()
        .unwrap()
        .into_iter()
        .map(|m| (m.target, m.key, m.count))
        .collect()
}

#[test]
fn r37_pending_first_mount_completes_if_mounted_and_aborts_if_not() {
    // Not mounted (the crash came between the journal and the mount(2)): aborted.
    let (_t, root) = new_root();
    let (plain, _) = root_with_active(&root);
    let plain = plain.to_str().unwrap().to_owned();
    append(&root, &[mount_op(7, "a", &plain)]);
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R37);
    assert_eq!(report.mount_steps_aborted, vec![TxId(7)]);
    assert!(counts(&h).is_empty(), "nothing counted");
    h.remove("a").unwrap();
    clean(&h);
    h.close().unwrap();

    // Mounted (the crash came between the mount(2) and its Complete): completed, once.
    let (_t, root) = new_root();
    let (_, mounted) = root_with_active(&root);
    append(&root, &[mount_op(7, "a", &mounted)]);
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R37);
    assert_eq!(report.mount_steps_completed, vec![TxId(7)]);
    assert_eq!(counts(&h), vec![(mounted.clone(), "a".into(), 1)]);
    let e = h.remove("a").unwrap_err();
    assert!(
        matches!(
            e,
            EngineError::State(cairn_state::StateError::FailedPrecondition {
                reason: cairn_state::Precondition::Mounted { .. },
                ..
            })
        ),
        "{e}"
    );
    h.close().unwrap();
    let (h, report) = open(&root).unwrap();
    assert!(report.mount_steps_completed.is_empty() && report.mounts_gone.is_empty());
    assert_eq!(counts(&h), vec![(mounted, "a".into(), 1)], "decided once");
}

#[test]
fn r38_pending_last_unmount_aborts_if_still_mounted_and_completes_if_not() {
    // Still mounted (the crash came before the umount(2)): aborted, the reference stays.
    let (_t, root) = new_root();
    let (_, mounted) = root_with_active(&root);
    append(
        &root,
        &[
            mount_op(7, "a", &mounted),
            complete(8, 7),
            unmount_op(9, &mounted),
        ],
    );
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R38);
    assert_eq!(report.mount_steps_aborted, vec![TxId(9)]);
    assert_eq!(counts(&h), vec![(mounted, "a".into(), 1)]);
    h.close().unwrap();

    // Not mounted any more (the crash came after the umount(2)): completed.
    let (_t, root) = new_root();
    let (plain, _) = root_with_active(&root);
    let plain = plain.to_str().unwrap().to_owned();
    append(
        &root,
        &[
            mount_op(7, "a", &plain),
            complete(8, 7),
            unmount_op(9, &plain),
        ],
    );
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R38);
    assert_eq!(report.mount_steps_completed, vec![TxId(9)]);
    assert!(report.mounts_gone.is_empty(), "decided as the unmount");
    assert!(counts(&h).is_empty());
    h.remove("a").unwrap();
    clean(&h);
}

#[test]
fn r39_counted_mount_with_nothing_mounted_is_dropped() {
    let (_t, root) = new_root();
    let (plain, _) = root_with_active(&root);
    let plain = plain.to_str().unwrap().to_owned();
    // Counted twice; then a reboot (or an unmount behind cairn's back) took the mount away.
    append(
        &root,
        &[
            mount_op(7, "a", &plain),
            complete(8, 7),
            mount_op(9, "a", &plain),
        ],
    );
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R39);
    assert_eq!(report.mounts_gone, vec![plain]);
    assert!(counts(&h).is_empty());
    h.remove("a").unwrap();
    clean(&h);
    h.close().unwrap();
    let (_h, report) = open(&root).unwrap();
    assert!(report.mounts_gone.is_empty(), "dropped once");
}

fn begin_detached(txid: u64, id: u64) -> Record {
    Record {
        txid: TxId(txid),
        op: Op::BeginDetachedImport {
            id: SnapshotId(id),
            pin: false,
            time_ns: 3,
        },
    }
}

#[test]
fn r41_pending_detached_imports_are_dropped_and_no_child_outlives_its_parent() {
    // Two layers of a parallel load in flight: one extracted and durable, one half written.
    let (_t, root) = new_root();
    root_with_base(&root);
    append(&root, &[begin_detached(5, 2), begin_detached(6, 3)]);
    std::fs::create_dir_all(root.join("staging/5/fs/etc")).unwrap();
    std::fs::write(root.join("staging/5/fs/etc/whole"), b"a whole layer").unwrap();
    std::fs::create_dir_all(root.join("staging/6/fs/usr")).unwrap();
    std::fs::write(root.join("staging/6/fs/usr/half"), b"half a layer").unwrap();
    let (h, report) = open(&root).unwrap();
    fired(&report, Row::R41);
    assert_eq!(report.dropped, vec![TxId(5), TxId(6)]);
    assert_eq!(report.staging_removed, vec![TxId(5), TxId(6)]);
    assert!(h.layers().unwrap().is_empty());
    assert!(names(&root.join("staging")).is_empty());
    clean(&h);
    h.close().unwrap();

    // A child's completion naming a parent that never became a layer cannot be in a log the
    // engine wrote (the state refuses it); found anyway, the open refuses it (R13).
    let (_t2, root2) = new_root();
    root_with_base(&root2);
    let parent = format!("sha256:{}", "a".repeat(64));
    let child = Record {
        txid: TxId(6),
        op: Op::CompleteDetachedImport {
            of: TxId(5),
            parent: Some(parent.clone()),
            diff_id: format!("sha256:{}", "b".repeat(64)),
            chain_id: format!("sha256:{}", "c".repeat(64)),
            size_bytes: 1,
            usage: cairn_state::types::Usage {
                size_bytes: 1,
                inodes: 1,
            },
        },
    };
    append(&root2, &[begin_detached(5, 2), child]);
    let before = durable_files(&root2);
    let e = refused(open(&root2), Row::R13);
    assert!(e.to_string().contains(&parent), "{e}");
    assert_eq!(durable_files(&root2), before);
}
