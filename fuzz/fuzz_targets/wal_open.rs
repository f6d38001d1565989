//! Recovery on arbitrary directories: `Wal::open` over up to four arbitrary files must return a
//! log or a typed error, never panic; on error it must have changed nothing; on success every
//! record it promises must read back, the log must take an append, and a second open must
//! return exactly the same records (plus the appended one) with nothing left to cut.
//!
//! Input layout (all of it meaningful, so mutations stay structured):
//!
//! ```text
//! byte 0        bits 0-1: file count - 1 (1..=4)
//!               bit 2: WalOptions::preallocate
//!               bit 3: store_id = Some(STORE) (else None: take the files' id)
//! per file      kind byte, u16 LE length (the last file's length is ignored: it takes the rest)
//! then          the files' contents, in order
//! ```
//!
//! A kind byte's low two bits choose the file's name, in `/log`:
//! - 0: `<first LSN>.wal`, the LSN read from the content's header (bytes 32..40; 1 if shorter),
//!   so a mutated valid segment keeps a consistent name;
//! - 1: `<kind >> 2>.wal` (LSNs 0..=63, so names and headers can disagree, and LSN 0 exists);
//! - 2: `<kind >> 2>.wal.tmp`, a half-created segment;
//! - 3: `junk-<i>`, a name the log must ignore.
//!
//! Seeds, `fuzz/seeds/wal_open/` (run with that directory as a second corpus argument), were
//! written in this layout from real logs: logs built with `Wal` on `SimStorage` with these
//! options (segment 4096 bytes, max record 1024, no preallocation, `store_id` `STORE`), and
//! their segment files (read with `SimStorage::read_file`) each stored with kind 0:
//! - `three-segments`: 40 records of 0..200 bytes appended one or two at a time, synced every
//!   few records, rotating into three segments;
//! - `torn-tail`: one segment of 5 synced records, then 3 unsynced records, and a power cut
//!   (`SimStorage::power_cut`) with a seed that tore them, plus a `.wal.tmp` file (kind 2);
//! - `one-record`: a single segment with one 5-byte record, and a junk file (kind 3).
//!
//! `fuzz/regressions/wal_open/` holds hand-made inputs (headers and records with a correct
//! CRC-32) that panic in `cairn-wal` at the time of writing: a segment whose first LSN is 0
//! (`lsn-zero`), and first LSN `u64::MAX` with no record (`lsn-max-then-append`, panics on the
//! append) or with one (`lsn-max-record`, panics in the scan). Replay one with
//! `cargo fuzz run --sanitizer none wal_open regressions/wal_open/<name>`; once fixed, move them
//! into `seeds/wal_open/` so every run replays them.

#![no_main]

use cairn_wal::storage::{SimStorage, Storage};
use cairn_wal::{Record, StoreId, Wal, WalOptions};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const STORE: StoreId = StoreId(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff);
const MAX_FILES: usize = 4;
/// A payload the target appends after a successful open, to find again after the reopen.
const APPENDED: &[u8] = b"appended by the fuzz target";

struct Input<'a> {
    preallocate: bool,
    fixed_store: bool,
    files: Vec<(String, &'a [u8])>,
}

fn parse(data: &[u8]) -> Option<Input<'_>> {
    let (&config, mut rest) = data.split_first()?;
    let count = usize::from(config & 3) + 1;
    debug_assert!(count <= MAX_FILES);
    let mut specs = Vec::with_capacity(count);
    for _ in 0..count {
        let (spec, tail) = rest.split_first_chunk::<3>()?;
        specs.push((spec[0], usize::from(u16::from_le_bytes([spec[1], spec[2]]))));
        rest = tail;
    }
    let mut files = Vec::with_capacity(count);
    for (i, &(kind, len)) in specs.iter().enumerate() {
        let len = if i + 1 == count {
            rest.len()
        } else {
            len.min(rest.len())
        };
        let (content, tail) = rest.split_at(len);
        rest = tail;
        let name = match kind & 3 {
            0 => {
                let lsn = content
                    .get(32..40)
                    .and_then(|b| b.try_into().ok())
                    .map_or(1, u64::from_le_bytes);
                format!("{lsn:020}.wal")
            }
            1 => format!("{:020}.wal", kind >> 2),
            2 => format!("{:020}.wal.tmp", kind >> 2),
            _ => format!("junk-{i}"),
        };
        files.push((name, content));
    }
    Some(Input {
        preallocate: config & 4 != 0,
        fixed_store: config & 8 != 0,
        files,
    })
}

/// Every file and its written contents: what "open changed nothing" is checked against.
fn snapshot(storage: &SimStorage) -> BTreeMap<PathBuf, Vec<u8>> {
    storage
        .files()
        .into_iter()
        .map(|path| {
            let content = storage.read_file(&path).expect("a listed file reads");
            (path, content)
        })
        .collect()
}

fn read_all(records: cairn_wal::Records) -> Vec<Record> {
    // Recovery already checked every record it promises, so reading them back cannot fail.
    records
        .map(|r| r.unwrap_or_else(|e| panic!("open promised a record it cannot read: {e}")))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = parse(data) else {
        return;
    };
    let storage = SimStorage::new();
    let dir = Path::new("/log");
    storage.create_dir_all(dir).expect("sim mkdir");
    // Written durably, like a log that was closed cleanly (or cut and then restarted).
    for (name, content) in &input.files {
        let mut file = storage.create(&dir.join(name)).expect("sim create");
        file.write_all_at(content, 0).expect("sim write");
        file.sync_data().expect("sim fdatasync");
    }
    storage.sync_dir(dir).expect("sim dir fsync");

    let options = WalOptions {
        segment_size_bytes: 4096,
        max_record_bytes: 1024,
        preallocate: input.preallocate,
        store_id: input.fixed_store.then_some(STORE),
        ..WalOptions::default()
    };
    let shared: Arc<dyn Storage> = Arc::new(storage.clone());
    let before = snapshot(&storage);
    let (mut wal, records, report) = match Wal::open(Arc::clone(&shared), dir, options.clone()) {
        Ok(opened) => opened,
        Err(e) => {
            // Error messages are built from untrusted fields: formatting them must not panic.
            let _ = e.to_string();
            assert_eq!(
                snapshot(&storage),
                before,
                "a failed open changed the log: {e}"
            );
            return;
        }
    };
    let first = read_all(records);
    let lsns: Vec<u64> = first.iter().map(|r| r.lsn.0).collect();
    let expected: Vec<u64> = (report.first_lsn.0..report.next_lsn.0).collect();
    assert_eq!(lsns, expected, "records are not the report's LSN range");
    assert_eq!(wal.next_lsn(), report.next_lsn);

    let appended = wal.append(APPENDED).expect("append after recovery");
    assert_eq!(appended, report.next_lsn);
    wal.sync().expect("sync after recovery");
    let store = wal.store_id();
    drop(wal);

    let (wal, records, again) =
        Wal::open(Arc::clone(&shared), dir, options).expect("reopen a log this target opened");
    let second = read_all(records);
    assert_eq!(again.torn_tail, None, "recovery left something to cut");
    assert!(again.removed_temp_files.is_empty());
    assert!(!again.created);
    assert_eq!(again.first_lsn, report.first_lsn);
    assert_eq!(
        wal.store_id(),
        store,
        "the reopened log has another store id"
    );
    let (last, before_append) = second.split_last().expect("the appended record is there");
    assert_eq!(
        before_append,
        &first[..],
        "the reopened log returns other records"
    );
    assert_eq!((last.lsn, &last.payload[..]), (appended, APPENDED));
});
