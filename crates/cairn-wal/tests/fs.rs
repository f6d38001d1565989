//! The log on the real file system: create, reopen, rotate, truncate, refuse what is not ours.

use cairn_wal::storage::{FsStorage, Storage};
use cairn_wal::{Lsn, StoreId, Wal, WalError, WalOptions};
use std::path::Path;
use std::sync::Arc;

fn fs() -> Arc<dyn Storage> {
    Arc::new(FsStorage)
}

fn small() -> WalOptions {
    WalOptions {
        segment_size_bytes: 4096,
        max_record_bytes: 1024,
        ..WalOptions::default()
    }
}

fn collect(dir: &Path, opts: WalOptions) -> (Wal, Vec<(Lsn, Vec<u8>)>) {
    let (wal, records, _) = Wal::open(fs(), dir, opts).expect("open");
    let records = records
        .map(|r| r.map(|r| (r.lsn, r.payload)).expect("read"))
        .collect();
    (wal, records)
}

#[test]
fn reopen_rotate_and_truncate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("wal");
    let (mut wal, records) = collect(&dir, small());
    assert!(records.is_empty());
    let store = wal.store_id();
    for i in 0..200u32 {
        let lsn = wal.append(&i.to_le_bytes().repeat(20)).expect("append");
        assert_eq!(lsn, Lsn(u64::from(i) + 1));
    }
    wal.sync().expect("sync");
    let segments = wal.segment_count();
    assert!(segments > 3, "expected rotation, got {segments} segments");
    drop(wal);

    let (mut wal, records) = collect(&dir, small());
    assert_eq!(wal.store_id(), store);
    assert_eq!(records.len(), 200);
    assert_eq!(records[199], (Lsn(200), 199u32.to_le_bytes().repeat(20)));
    let removed = wal.truncate_before(Lsn(150)).expect("truncate");
    assert!(removed > 0);
    let first = wal.first_lsn();
    assert!(first <= Lsn(150) && first > Lsn(1));
    wal.append(b"after truncation").expect("append");
    wal.sync().expect("sync");
    drop(wal);

    let (wal, records) = collect(&dir, small());
    assert_eq!(wal.first_lsn(), first);
    assert_eq!(records.first().map(|r| r.0), Some(first));
    assert_eq!(
        records.last(),
        Some(&(Lsn(201), b"after truncation".to_vec()))
    );
}

#[test]
fn refuses_missing_log_and_foreign_store() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("wal");
    let no_create = WalOptions {
        create_if_missing: false,
        ..small()
    };
    assert!(matches!(
        Wal::open(fs(), &dir, no_create.clone()),
        Err(WalError::NotFound { .. })
    ));
    let (mut wal, _) = collect(&dir, small());
    wal.append(b"x").expect("append");
    wal.sync().expect("sync");
    drop(wal);
    let other = WalOptions {
        store_id: Some(StoreId(42)),
        ..small()
    };
    let err = Wal::open(fs(), &dir, other).expect_err("foreign");
    assert!(matches!(err, WalError::ForeignSegment { .. }), "{err}");
    assert!(
        err.to_string().contains("00000000000000000001.wal"),
        "error names the segment: {err}"
    );
    collect(&dir, no_create);
}

#[test]
fn half_created_segment_is_removed_and_missing_segment_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("wal");
    let (mut wal, _) = collect(&dir, small());
    for i in 0..100u32 {
        wal.append(&i.to_le_bytes().repeat(30)).expect("append");
    }
    wal.sync().expect("sync");
    drop(wal);
    let temp = dir.join("00000000000000099999.wal.tmp");
    std::fs::write(&temp, b"half a header").expect("write temp");
    let (wal, report) = {
        let (wal, _, report) = Wal::open(fs(), &dir, small()).expect("open");
        (wal, report)
    };
    assert_eq!(report.removed_temp_files, vec![temp.clone()]);
    assert!(!temp.exists());
    drop(wal);

    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    assert!(names.len() >= 3);
    let before: Vec<_> = names
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    std::fs::remove_file(&names[1]).expect("remove a middle segment");
    let err = Wal::open(fs(), &dir, small()).expect_err("gap");
    assert!(matches!(err, WalError::MissingSegment { .. }), "{err}");
    // Refusal changed nothing.
    for (p, b) in names.iter().zip(before) {
        if p != &names[1] {
            assert_eq!(std::fs::read(p).expect("read"), b);
        }
    }
}
