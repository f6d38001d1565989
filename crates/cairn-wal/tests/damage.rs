//! Damage to a closed log: every byte of every segment, a bit flipped or the byte replaced.
//!
//! Each case is exactly one of: harmless (unused space: padding or zeros past the last record;
//! every record comes back), a torn tail where the rule in docs/wal-format.md puts it (damage
//! in record k of the last segment that no later record proves durable: records from k on are
//! cut), or a typed error that changes nothing on disk. Never a panic, never a wrong record.

use cairn_wal::format::{decode_record, HEADER_BYTES, MAX_PAYLOAD_BYTES};
use cairn_wal::storage::{SimStorage, Storage};
use cairn_wal::{Lsn, StoreId, Wal, WalError, WalOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const STORE: StoreId = StoreId(0xfeed_beef_0000_1111_2222_3333_4444_5555);

fn options(preallocate: bool) -> WalOptions {
    WalOptions {
        segment_size_bytes: 1024,
        max_record_bytes: 700,
        preallocate,
        store_id: Some(STORE),
        ..WalOptions::default()
    }
}

/// One record's place on disk.
struct Placed {
    segment: usize,
    /// Frame: header and payload, without padding.
    start: usize,
    end: usize,
    lsn: u64,
    acked: u64,
}

struct Original {
    files: Vec<(PathBuf, Vec<u8>)>,
    records: Vec<Placed>,
    payloads: Vec<Vec<u8>>,
}

fn build(preallocate: bool) -> Original {
    let sim = SimStorage::new();
    let storage: Arc<dyn Storage> = Arc::new(sim.clone());
    let (mut wal, _, _) =
        Wal::open(storage, Path::new("/w"), options(preallocate)).expect("create");
    let mut payloads = Vec::new();
    for i in 0..36usize {
        let len = [0, 3, 17, 64, 130, 9][i % 6];
        let p: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8 | 1).collect();
        wal.append(&p).expect("append");
        payloads.push(p);
        // Syncs every few records, so `acked` varies and later records prove earlier ones.
        if i % 4 == 3 {
            wal.sync().expect("sync");
        }
    }
    wal.sync().expect("final sync");
    drop(wal);
    let files: Vec<(PathBuf, Vec<u8>)> = sim
        .files()
        .into_iter()
        .map(|p| {
            let bytes = sim.read_file(&p).expect("read");
            (p, bytes)
        })
        .collect();
    assert!(files.len() >= 3, "the test needs several segments");
    let mut records = Vec::new();
    for (segment, (_, bytes)) in files.iter().enumerate() {
        let mut pos = HEADER_BYTES;
        while let Ok(rec) = decode_record(&bytes[pos..], STORE, MAX_PAYLOAD_BYTES) {
            records.push(Placed {
                segment,
                start: pos,
                end: pos + 24 + rec.payload.len(),
                lsn: rec.lsn.0,
                acked: rec.acked.0,
            });
            pos += rec.span;
        }
    }
    assert_eq!(records.len(), payloads.len());
    Original {
        files,
        records,
        payloads,
    }
}

enum Expect {
    Harmless,
    Torn { lsn: u64 },
    Error,
}

fn expectation(orig: &Original, segment: usize, offset: usize) -> Expect {
    if offset < HEADER_BYTES {
        return Expect::Error;
    }
    let last = segment + 1 == orig.files.len();
    match orig
        .records
        .iter()
        .find(|r| r.segment == segment && (r.start..r.end).contains(&offset))
    {
        None => Expect::Harmless,
        Some(_) if !last => Expect::Error,
        Some(hit) => {
            let proved = orig
                .records
                .iter()
                .any(|r| r.segment == segment && r.lsn > hit.lsn && r.acked >= hit.lsn);
            if proved {
                Expect::Error
            } else {
                Expect::Torn { lsn: hit.lsn }
            }
        }
    }
}

fn run_case(orig: &Original, preallocate: bool, segment: usize, offset: usize, new_byte: u8) {
    let sim = SimStorage::new();
    sim.create_dir_all(Path::new("/w")).expect("mkdir");
    let mut damaged_files = Vec::new();
    for (i, (path, bytes)) in orig.files.iter().enumerate() {
        let mut bytes = bytes.clone();
        if i == segment {
            bytes[offset] = new_byte;
        }
        let mut f = sim.create(path).expect("create");
        f.write_all_at(&bytes, 0).expect("write");
        f.sync_data().expect("sync");
        damaged_files.push((path.clone(), bytes));
    }
    sim.sync_dir(Path::new("/w")).expect("sync dir");
    let storage: Arc<dyn Storage> = Arc::new(sim.clone());
    let what =
        format!("segment {segment} byte {offset} -> {new_byte:#04x} (preallocate {preallocate})");
    let opened = Wal::open(storage, Path::new("/w"), options(preallocate));
    match (expectation(orig, segment, offset), opened) {
        (Expect::Error, Err(e)) => {
            assert!(
                matches!(
                    e,
                    WalError::Corrupt { .. }
                        | WalError::BadHeader { .. }
                        | WalError::UnknownVersion { .. }
                        | WalError::ForeignSegment { .. }
                        | WalError::MisnamedSegment { .. }
                        | WalError::MissingSegment { .. }
                ),
                "{what}: unexpected error kind {e}"
            );
            for (path, bytes) in &damaged_files {
                assert_eq!(
                    &sim.read_file(path).expect("read"),
                    bytes,
                    "{what}: {e} but {} changed",
                    path.display()
                );
            }
        }
        (Expect::Error, Ok(_)) => panic!("{what}: damage accepted, expected a typed error"),
        (_, Err(e)) => panic!("{what}: unexpected error {e}"),
        (expect, Ok((_wal, records, report))) => {
            let got: Vec<_> = records
                .map(|r| r.expect("recovered records read back"))
                .collect();
            for r in &got {
                assert_eq!(
                    r.payload,
                    orig.payloads[(r.lsn.0 - 1) as usize],
                    "{what}: wrong record {}",
                    r.lsn
                );
            }
            assert!(
                got.iter()
                    .enumerate()
                    .all(|(i, r)| r.lsn == Lsn(i as u64 + 1)),
                "{what}: gap"
            );
            match expect {
                Expect::Harmless => {
                    assert_eq!(got.len(), orig.payloads.len(), "{what}: records lost")
                }
                Expect::Torn { lsn } => {
                    assert_eq!(got.len() as u64, lsn - 1, "{what}: cut at the wrong place");
                    let tail = report
                        .torn_tail
                        .unwrap_or_else(|| panic!("{what}: no torn tail reported"));
                    assert_eq!(tail.lsn, Lsn(lsn), "{what}");
                }
                Expect::Error => unreachable!(),
            }
        }
    }
}

fn sweep(preallocate: bool) {
    let orig = build(preallocate);
    let (mut harmless, mut torn, mut errors) = (0, 0, 0);
    for (segment, (_, bytes)) in orig.files.iter().enumerate() {
        for (offset, &byte) in bytes.iter().enumerate() {
            match expectation(&orig, segment, offset) {
                Expect::Harmless => harmless += 1,
                Expect::Torn { .. } => torn += 1,
                Expect::Error => errors += 1,
            }
            let flipped = byte ^ (1 << (offset % 8));
            run_case(&orig, preallocate, segment, offset, flipped);
            let replaced = byte.wrapping_add(0x5b);
            run_case(&orig, preallocate, segment, offset, replaced);
        }
    }
    println!("damage (preallocate {preallocate}): {harmless} harmless, {torn} torn, {errors} error offsets");
    assert!(
        harmless > 0 && torn > 0 && errors > 0,
        "every outcome must be exercised"
    );
}

#[test]
fn every_byte_damaged_in_a_preallocated_log() {
    sweep(true);
}

#[test]
fn every_byte_damaged_in_a_log_without_preallocation() {
    sweep(false);
}
