//! Injected IO failures: a failed sync poisons the log for good; a failed write acknowledges
//! nothing of its batch; bad requests are refused without touching the log.

use cairn_wal::storage::{SimFaults, SimStorage, Storage};
use cairn_wal::{Lsn, Wal, WalError, WalOptions};
use std::path::Path;
use std::sync::Arc;

fn open(sim: &SimStorage, opts: WalOptions) -> (Wal, Vec<Vec<u8>>) {
    let storage: Arc<dyn Storage> = Arc::new(sim.clone());
    let (wal, records, _) = Wal::open(storage, Path::new("/w"), opts).expect("open");
    let payloads = records.map(|r| r.expect("record").payload).collect();
    (wal, payloads)
}

fn small() -> WalOptions {
    WalOptions {
        segment_size_bytes: 1024,
        max_record_bytes: 256,
        ..WalOptions::default()
    }
}

#[test]
fn failed_sync_poisons_and_is_never_retried() {
    let sim = SimStorage::new();
    let (mut wal, _) = open(&sim, small());
    wal.append(b"acked").expect("append");
    wal.sync().expect("sync");
    wal.append(b"never acked").expect("append");
    sim.set_faults(SimFaults {
        fail_sync_after: Some(0),
        ..SimFaults::default()
    });
    assert!(matches!(
        wal.sync(),
        Err(WalError::Io {
            op: "fdatasync segment",
            ..
        })
    ));
    assert!(wal.is_poisoned());
    assert_eq!(wal.synced_lsn(), Lsn(1));
    // Every later call refuses, even though the fault fired once and a retry would "succeed".
    assert!(matches!(wal.sync(), Err(WalError::Poisoned { .. })));
    assert!(matches!(wal.append(b"x"), Err(WalError::Poisoned { .. })));
    assert!(matches!(
        wal.append_batch([b"y"]),
        Err(WalError::Poisoned { .. })
    ));
    assert!(matches!(
        wal.truncate_before(Lsn(1)),
        Err(WalError::Poisoned { .. })
    ));
    drop(wal);
    sim.power_cut(7);
    let (_, records) = open(&sim, small());
    assert_eq!(records[0], b"acked");
    assert!(records.len() <= 2);
}

#[test]
fn write_error_mid_batch_acknowledges_nothing_of_it() {
    for budget in [0u64, 10, 40, 100, 300, 700, 1500] {
        let sim = SimStorage::new();
        let (mut wal, _) = open(&sim, small());
        for i in 0..5u8 {
            wal.append(&[i; 30]).expect("append");
        }
        wal.sync().expect("sync");
        sim.set_faults(SimFaults {
            write_budget_bytes: Some(budget),
            ..SimFaults::default()
        });
        let batch: Vec<Vec<u8>> = (0..12u8).map(|i| vec![100 + i; 90]).collect();
        let err = wal.append_batch(&batch).expect_err("the write fails");
        assert!(matches!(err, WalError::Io { .. }), "budget {budget}: {err}");
        assert!(wal.is_poisoned(), "budget {budget}");
        assert_eq!(wal.synced_lsn(), Lsn(5));
        assert!(matches!(wal.sync(), Err(WalError::Poisoned { .. })));
        drop(wal);
        for cut in [false, true] {
            if cut {
                sim.power_cut(budget);
            }
            let (_, records) = open(&sim, small());
            assert!(
                records.len() >= 5,
                "budget {budget}: acknowledged records lost"
            );
            for (i, r) in records.iter().enumerate() {
                let expected = if i < 5 {
                    vec![i as u8; 30]
                } else {
                    batch[i - 5].clone()
                };
                assert_eq!(
                    r, &expected,
                    "budget {budget}: record {i} is not a prefix of the batch"
                );
            }
        }
    }
}

#[test]
fn failed_directory_sync_during_rotation_poisons() {
    let sim = SimStorage::new();
    let (mut wal, _) = open(&sim, small());
    sim.set_faults(SimFaults {
        fail_dir_sync_after: Some(0),
        ..SimFaults::default()
    });
    let mut failed = false;
    for i in 0..40u8 {
        match wal.append(&[i; 100]) {
            Ok(_) => {}
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        WalError::Io {
                            op: "fsync directory",
                            ..
                        }
                    ),
                    "{e}"
                );
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "rotation never happened");
    assert!(wal.is_poisoned());
    assert!(matches!(wal.sync(), Err(WalError::Poisoned { .. })));
}

#[test]
fn oversized_record_is_refused_and_changes_nothing() {
    let sim = SimStorage::new();
    let (mut wal, _) = open(&sim, small());
    wal.append(b"a").expect("append");
    let err = wal
        .append_batch([&b"ok"[..], &[0u8; 257][..]])
        .expect_err("too large");
    assert!(matches!(
        err,
        WalError::RecordTooLarge { len: 257, max: 256 }
    ));
    assert!(!wal.is_poisoned());
    assert_eq!(
        wal.next_lsn(),
        Lsn(2),
        "no part of the refused batch was appended"
    );
    wal.sync().expect("sync");
    drop(wal);
    let (_, records) = open(&sim, small());
    assert_eq!(records, vec![b"a".to_vec()]);
}

#[test]
fn invalid_options_are_refused() {
    let sim = SimStorage::new();
    let storage: Arc<dyn Storage> = Arc::new(sim);
    let bad = WalOptions {
        segment_size_bytes: 1024,
        max_record_bytes: 4096,
        ..WalOptions::default()
    };
    assert!(matches!(
        Wal::open(Arc::clone(&storage), Path::new("/w"), bad),
        Err(WalError::InvalidOptions(_))
    ));
    let bad = WalOptions {
        first_lsn: Lsn(0),
        ..small()
    };
    assert!(matches!(
        Wal::open(storage, Path::new("/w"), bad),
        Err(WalError::InvalidOptions(_))
    ));
}
