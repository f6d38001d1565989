//! Throughput of the log against its peer, plain `write` + `fdatasync`.
//!
//! `cargo bench -p cairn-wal` prints one `name: value` line per figure on stdout (where the run
//! happened, and anything else, goes to stderr). Every figure is measured in the same run, in the
//! same directory, so they compare: a tempdir under `$CAIRN_BENCH_DIR`, else under the cargo
//! target dir. Not `/tmp`, which may be tmpfs, where `fdatasync` is free and the numbers lie.
//!
//! Each timed figure runs for [`MEASURE`] after a [`WARM_UP`] of the same loop; the whole bench
//! takes about half a minute.

use cairn_wal::storage::FsStorage;
use cairn_wal::{Lsn, Wal, WalOptions};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support.rs"]
mod support;
use support::{bench_base_dir, figure, fs_type_of};

const MEASURE: Duration = Duration::from_secs(2);
/// Long enough for the file to have its first blocks and the disk queue to be in steady state.
const WARM_UP: Duration = Duration::from_millis(300);
const SMALL_RECORD: usize = 128;
const BATCH: usize = 16;
const LARGE_RECORD: usize = 4096;
const LARGE_TOTAL_BYTES: usize = 64 << 20;
const REPLAY_RECORDS: u64 = 1_000_000;
const REPLAY_RECORD: usize = 64;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing. Under test, only
    // check that the bench still builds: running it would take half a minute per test run.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let base = bench_base_dir();
    std::fs::create_dir_all(&base).expect("create the bench base directory");
    let root = tempfile::Builder::new()
        .prefix("cairn-wal-bench-")
        .tempdir_in(&base)
        .expect("create the bench tempdir");
    let fs_type = fs_type_of(root.path()).unwrap_or_else(|| "unknown".to_string());
    eprintln!("bench dir: {} ({fs_type})", root.path().display());
    if fs_type == "tmpfs" || fs_type == "ramfs" {
        eprintln!("warning: {fs_type} ignores fdatasync; set CAIRN_BENCH_DIR to a real disk");
    }

    let raw = raw_fdatasync_ops_per_s(&root.path().join("raw"));
    figure("raw_fdatasync_ops_per_s", raw, 0);

    let sync_append = wal_sync_append_ops_per_s(&root.path().join("sync-append"), true);
    figure("wal_sync_append_ops_per_s", sync_append, 0);

    let sync_append_noprealloc =
        wal_sync_append_ops_per_s(&root.path().join("sync-append-noprealloc"), false);
    figure(
        "wal_sync_append_noprealloc_ops_per_s",
        sync_append_noprealloc,
        0,
    );

    let batch = wal_batch_records_per_s(&root.path().join("batch16"));
    figure("wal_batch16_records_per_s", batch, 0);

    let mb = wal_append_mb_per_s(&root.path().join("append-mb"));
    figure("wal_append_mb_per_s", mb, 1);

    let replay = wal_replay_records_per_s(&root.path().join("replay"));
    figure("wal_replay_records_per_s", replay, 0);

    figure("ratio_sync_append_vs_raw", sync_append / raw, 2);
    figure("ratio_batch16_vs_sync_append", batch / sync_append, 2);
}

/// Run `op` (which returns how many units it did) for the warm-up, then for [`MEASURE`]; units
/// per second of the measured part.
fn rate(mut op: impl FnMut() -> u64) -> f64 {
    let start = Instant::now();
    while start.elapsed() < WARM_UP {
        op();
    }
    let start = Instant::now();
    let mut units = 0u64;
    while start.elapsed() < MEASURE {
        units += op();
    }
    units as f64 / start.elapsed().as_secs_f64()
}

/// The peer: what any append-only file with per-write durability costs on this disk. The file
/// grows with every write, as a plain log's would.
fn raw_fdatasync_ops_per_s(path: &Path) -> f64 {
    let file = File::create(path).expect("create the raw file");
    let record = [0x5au8; SMALL_RECORD];
    let mut end = 0u64;
    rate(|| {
        file.write_all_at(&record, end).expect("raw write");
        end += SMALL_RECORD as u64;
        file.sync_data().expect("raw fdatasync");
        1
    })
}

fn open_wal(dir: &Path, options: WalOptions) -> Wal {
    let (wal, records, report) =
        Wal::open(Arc::new(FsStorage), dir, options).expect("open the bench log");
    assert!(report.torn_tail.is_none(), "a bench log is never torn");
    drop(records);
    wal
}

fn wal_sync_append_ops_per_s(dir: &Path, preallocate: bool) -> f64 {
    let mut wal = open_wal(
        dir,
        WalOptions {
            preallocate,
            ..WalOptions::default()
        },
    );
    let record = [0x5au8; SMALL_RECORD];
    let ops = rate(|| {
        wal.append(&record).expect("append");
        wal.sync().expect("sync");
        1
    });
    // Every record counted was acknowledged: the log agrees with the count it was given.
    assert_eq!(wal.synced_lsn(), Lsn(wal.next_lsn().0 - 1));
    ops
}

fn wal_batch_records_per_s(dir: &Path) -> f64 {
    let mut wal = open_wal(dir, WalOptions::default());
    let record = [0x5au8; SMALL_RECORD];
    let batch = [&record[..]; BATCH];
    rate(|| {
        let lsns = wal.append_batch(batch).expect("append batch");
        assert_eq!(lsns.end.0 - lsns.start.0, BATCH as u64);
        wal.sync().expect("sync");
        BATCH as u64
    })
}

/// Payload MiB/s of 4 KiB records with one sync at the end. 64 MiB of records overflow the
/// first 64 MiB segment (headers and padding take room), so the timed part includes one
/// rotation, with the zero-fill of the next segment when preallocation is on: the same one
/// zero-fill per segment of data a long-running log pays.
fn wal_append_mb_per_s(dir: &Path) -> f64 {
    let record = vec![0x5au8; LARGE_RECORD];
    let records = LARGE_TOTAL_BYTES / LARGE_RECORD;
    // Warm-up in its own log, so the measured log starts like a fresh one.
    let mut warm = open_wal(&dir.join("warm-up"), WalOptions::default());
    for _ in 0..records / 8 {
        warm.append(&record).expect("append");
    }
    warm.sync().expect("sync");
    drop(warm);

    let mut wal = open_wal(&dir.join("measured"), WalOptions::default());
    let start = Instant::now();
    for _ in 0..records {
        wal.append(&record).expect("append");
    }
    wal.sync().expect("sync");
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(wal.synced_lsn(), Lsn(records as u64));
    assert!(
        wal.segment_count() >= 2,
        "the timed part was meant to rotate"
    );
    (LARGE_TOTAL_BYTES as f64 / f64::from(1u32 << 20)) / elapsed
}

/// Open (with recovery's full scan) and read every record of a log of a million small records,
/// repeated for [`MEASURE`]. The files are in the page cache: this is the CPU cost of recovery.
fn wal_replay_records_per_s(dir: &Path) -> f64 {
    {
        let mut wal = open_wal(dir, WalOptions::default());
        let record = [0x5au8; REPLAY_RECORD];
        let chunk = vec![&record[..]; 10_000];
        for _ in 0..REPLAY_RECORDS / chunk.len() as u64 {
            wal.append_batch(chunk.iter()).expect("append batch");
        }
        wal.sync().expect("sync");
    }
    let replay = || {
        let (wal, records, report) =
            Wal::open(Arc::new(FsStorage), dir, WalOptions::default()).expect("reopen");
        assert!(report.torn_tail.is_none());
        let mut count = 0u64;
        let mut last = Lsn::NONE;
        for record in records {
            let record = record.expect("replayed record");
            assert_eq!(record.payload.len(), REPLAY_RECORD);
            last = record.lsn;
            count += 1;
        }
        // A replay that stopped early or skipped would be fast for the wrong reason.
        assert_eq!((count, last), (REPLAY_RECORDS, Lsn(REPLAY_RECORDS)));
        drop(wal);
        count
    };
    // One replay pulls every file into the page cache; then time whole replays.
    replay();
    let start = Instant::now();
    let mut count = 0u64;
    while count == 0 || start.elapsed() < MEASURE {
        count += replay();
    }
    count as f64 / start.elapsed().as_secs_f64()
}
