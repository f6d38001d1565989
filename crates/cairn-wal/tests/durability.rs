//! Regressions for what `Wal::open` must make durable before it acknowledges anything, and for
//! the sizes it reads off disk (issue 8, items 1 and 6).

mod common;

use cairn_wal::storage::{SimFaults, SimStorage, Storage};
use cairn_wal::{Wal, WalError, WalOptions};
use std::path::Path;
use std::sync::Arc;

fn options() -> WalOptions {
    WalOptions {
        segment_size_bytes: 1024,
        max_record_bytes: 200,
        preallocate: false,
        ..WalOptions::default()
    }
}

fn open(sim: &SimStorage, dir: &Path) -> Result<(Wal, Vec<Vec<u8>>), WalError> {
    let storage: Arc<dyn Storage> = Arc::new(sim.clone());
    let (wal, records, _) = Wal::open(storage, dir, options())?;
    let records = records
        .map(|r| r.map(|r| r.payload))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((wal, records))
}

fn record(i: usize) -> Vec<u8> {
    format!("record {i:04} ").repeat(6).into_bytes()
}

/// A rotation's rename lands, its directory fsync fails; the process reopens the log (no power
/// cut) and acknowledges records in the new segment. A power cut then must not lose them.
#[test]
fn records_acknowledged_after_a_failed_rotation_survive_a_power_cut() {
    common::run_seeds("durability", 48, 0x8_0001, |seed| {
        let sim = SimStorage::new();
        let dir = Path::new("/root/wal");
        sim.create_dir_all(Path::new("/root")).expect("mkdir");
        sim.sync_dir(Path::new("/")).expect("sync");
        let (mut wal, _) = open(&sim, dir).expect("create");
        let mut acked: Vec<Vec<u8>> = Vec::new();
        // Fill the first segment (about 90 bytes a record, 1024-byte segments).
        for i in 0..8 {
            wal.append(&record(i)).expect("append");
            wal.sync().expect("sync");
            acked.push(record(i));
        }
        let segments = wal.segment_count();
        // The next rotation's rename is pending, its directory fsync fails.
        sim.set_faults(SimFaults {
            fail_dir_sync_after: Some(0),
            ..SimFaults::default()
        });
        let mut i = acked.len();
        let failed = loop {
            match wal.append(&record(i)) {
                Ok(_) => match wal.sync() {
                    Ok(()) => acked.push(record(i)),
                    Err(e) => break e,
                },
                Err(e) => break e,
            }
            i += 1;
            assert!(i < 64, "no rotation happened");
        };
        assert!(
            matches!(
                failed,
                WalError::Io {
                    op: "fsync directory",
                    ..
                }
            ),
            "{failed}"
        );
        drop(wal);
        // The process goes on: it reopens the log, which finds the new segment by its
        // (volatile) name, and acknowledges more records into it.
        let (mut wal, found) = open(&sim, dir).expect("reopen");
        assert!(wal.segment_count() > segments, "the new segment is in use");
        assert!(found.starts_with(&acked));
        acked = found;
        for j in 100..103 {
            wal.append(&record(j)).expect("append");
            wal.sync().expect("sync");
            acked.push(record(j));
        }
        drop(wal);
        sim.power_cut(seed);
        let (_, after) = open(&sim, dir).expect("open after the power cut");
        assert_eq!(
            after.len(),
            acked.len(),
            "acknowledged records lost in a power cut (seed {seed})"
        );
        assert_eq!(after, acked, "seed {seed}");
    });
}

/// A fresh log's first records: its directory was created by this open and must survive a
/// power cut with them.
#[test]
fn a_fresh_logs_directory_survives_a_power_cut() {
    common::run_seeds("durability", 32, 0x8_0002, |seed| {
        let sim = SimStorage::new();
        // The host directory exists and is durable; the log creates root/ and root/wal/.
        sim.create_dir_all(Path::new("/host")).expect("mkdir");
        sim.sync_dir(Path::new("/")).expect("sync");
        let dir = Path::new("/host/root/wal");
        let (mut wal, _) = open(&sim, dir).expect("create");
        for i in 0..3 {
            wal.append(&record(i)).expect("append");
        }
        wal.sync().expect("sync");
        let store = wal.store_id();
        drop(wal);
        sim.power_cut(seed);
        let (wal, after) = open(&sim, dir).expect("open after the power cut");
        assert_eq!(
            wal.store_id(),
            store,
            "a new log replaced the acknowledged one"
        );
        assert_eq!(after, (0..3).map(record).collect::<Vec<_>>(), "seed {seed}");
    });
}

/// A segment longer than the log ever writes is refused with a typed error, not read whole.
#[test]
fn a_segment_over_the_segment_size_is_refused() {
    let sim = SimStorage::new();
    let dir = Path::new("/w");
    let (mut wal, _) = open(&sim, dir).expect("create");
    wal.append(b"one").expect("append");
    wal.sync().expect("sync");
    drop(wal);
    let segment = sim
        .files()
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .expect("a segment");
    let mut grown = sim.read_file(&segment).expect("read");
    grown.resize(options().segment_size_bytes as usize + 1, 0);
    sim.write_file_durable(&segment, &grown).expect("grow");
    match open(&sim, dir) {
        Err(WalError::SegmentTooLarge {
            path,
            len_bytes,
            max_bytes,
        }) => {
            assert_eq!(path, segment);
            assert_eq!(len_bytes, 1025);
            assert_eq!(max_bytes, 1024);
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a 1025-byte segment was accepted with 1024-byte segments"),
    }
    // Nothing was changed: the segment is still there, as it was.
    assert_eq!(sim.read_file(&segment).expect("read"), grown);
}
