//! A committed log file pins the on-disk format: today's code must write it byte for byte, read
//! it back, and the layout decoded by hand must match `docs/wal-format.md`.
//!
//! After an intended format change, regenerate it with
//! `CAIRN_BLESS=1 cargo test -p cairn-wal --test fixture` and review the diff of the fixture
//! together with the spec.

use cairn_wal::format::{decode_record, record_span, SegmentHeader, HEADER_BYTES, MAGIC};
use cairn_wal::storage::FsStorage;
use cairn_wal::{Lsn, StoreId, Wal, WalOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const STORE: StoreId = StoreId(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff);
const SEGMENT_NAME: &str = "00000000000000000001.wal";
/// The fixture's records in LSN order, starting at LSN 1.
const RECORD_COUNT: usize = 3;

fn payloads() -> [Vec<u8>; RECORD_COUNT] {
    [b"cairn".to_vec(), Vec::new(), (0..100u8).collect()]
}

fn options() -> WalOptions {
    WalOptions {
        segment_size_bytes: 4096,
        // The default (16 MiB) must fit in a segment, so a 4 KiB segment needs a smaller limit;
        // it is not written to disk and does not change the fixture.
        max_record_bytes: 1024,
        preallocate: false,
        store_id: Some(STORE),
        first_lsn: Lsn(1),
        ..WalOptions::default()
    }
}

fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(SEGMENT_NAME)
}

fn blessing() -> bool {
    std::env::var_os("CAIRN_BLESS").is_some_and(|v| v == "1")
}

/// The committed fixture; while blessing, the bytes being blessed (the tests run in parallel
/// and the file may not be written yet).
fn read_fixture() -> Vec<u8> {
    if blessing() {
        return build_segment();
    }
    let path = fixture_path();
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "read {}: {e}; create it with CAIRN_BLESS=1 cargo test -p cairn-wal --test fixture",
            path.display()
        )
    })
}

/// Build the fixture's log with today's code: one append, a batch of the other two, one sync.
fn build_segment() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("wal");
    let (mut wal, records, report) =
        Wal::open(Arc::new(FsStorage), &log, options()).expect("create the log");
    assert!(report.created);
    assert_eq!(records.count(), 0, "a new log is empty");
    let [first, second, third] = payloads();
    assert_eq!(wal.append(&first).expect("append"), Lsn(1));
    let batch = wal.append_batch([second, third]).expect("append batch");
    assert_eq!(batch, Lsn(2)..Lsn(4));
    wal.sync().expect("sync");
    drop(wal);
    let names: Vec<String> = std::fs::read_dir(&log)
        .expect("list the log")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [SEGMENT_NAME], "one segment, no leftovers");
    std::fs::read(log.join(SEGMENT_NAME)).expect("read the segment")
}

#[test]
fn todays_writer_produces_the_fixture() {
    let built = build_segment();
    if blessing() {
        let path = fixture_path();
        std::fs::create_dir_all(path.parent().expect("fixture dir")).expect("create fixture dir");
        // Written under another name and renamed, so a test reading it concurrently never sees
        // half a file.
        let temp = path.with_extension("wal.tmp");
        std::fs::write(&temp, &built).expect("write the fixture");
        std::fs::rename(&temp, &path).expect("rename the fixture");
        return;
    }
    let fixture = read_fixture();
    if let Some(at) = built.iter().zip(&fixture).position(|(a, b)| a != b) {
        panic!(
            "the writer's output differs from the fixture at byte {at} (built {:#04x}, fixture \
             {:#04x}); if the format change is intended, rerun with CAIRN_BLESS=1 and update \
             docs/wal-format.md",
            built[at], fixture[at]
        );
    }
    assert_eq!(
        built.len(),
        fixture.len(),
        "the writer's output and the fixture differ in length"
    );
}

#[test]
fn fixture_opens_with_its_three_records() {
    let fixture = read_fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let segment = dir.path().join(SEGMENT_NAME);
    std::fs::write(&segment, &fixture).expect("copy the fixture");
    let (wal, records, report) = Wal::open(
        Arc::new(FsStorage),
        dir.path(),
        WalOptions {
            // An existing log must be found, not replaced by a new one.
            create_if_missing: false,
            ..options()
        },
    )
    .expect("open the fixture");
    let records: Vec<_> = records
        .map(|r| r.expect("record"))
        .map(|r| (r.lsn, r.payload))
        .collect();
    let expected: Vec<_> = (1u64..).map(Lsn).zip(payloads()).collect();
    assert_eq!(records, expected);
    assert_eq!(report.segments, 1);
    assert_eq!(report.first_lsn, Lsn(1));
    assert_eq!(report.next_lsn, Lsn(4));
    assert_eq!(report.torn_tail, None);
    assert!(report.removed_temp_files.is_empty());
    assert!(!report.created);
    assert_eq!(wal.store_id(), STORE);
    assert_eq!(wal.next_lsn(), Lsn(4));
    assert_eq!(wal.synced_lsn(), Lsn(3));
    drop(wal);
    // Recovery of a clean log changes nothing.
    assert_eq!(std::fs::read(&segment).expect("reread"), fixture);
}

fn le_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2 bytes"))
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// The layout of docs/wal-format.md, checked field by field at fixed offsets, independently of
/// the crate's decoder, then against it.
#[test]
fn fixture_layout_matches_the_spec() {
    let bytes = read_fixture();

    // Header: 64 bytes.
    assert_eq!(HEADER_BYTES, 64);
    assert_eq!(&bytes[0..8], b"CAIRNWAL");
    assert_eq!(MAGIC, *b"CAIRNWAL");
    assert_eq!(le_u16(&bytes, 8), 1, "version");
    assert_eq!(le_u16(&bytes, 10), 64, "header length");
    assert_eq!(&bytes[12..16], [0u8; 4], "reserved");
    assert_eq!(
        &bytes[16..32],
        [
            0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22,
            0x11, 0x00
        ],
        "store id, u128 little-endian"
    );
    assert_eq!(le_u64(&bytes, 32), 1, "first LSN");
    assert_eq!(&bytes[40..60], [0u8; 20], "reserved");
    assert_eq!(
        le_u32(&bytes, 60),
        crc32fast::hash(&bytes[..60]),
        "header crc"
    );
    let header = SegmentHeader::decode(&bytes).expect("header decodes");
    assert_eq!(
        header,
        SegmentHeader {
            store_id: STORE,
            first_lsn: Lsn(1)
        }
    );

    // Records, each: u32 len, u32 crc, u64 LSN, u64 acked LSN, payload, zeros to a multiple of 8.
    let mut pos = 64;
    for (i, payload) in payloads().iter().enumerate() {
        let lsn = i as u64 + 1;
        assert_eq!(pos % 8, 0, "record {lsn} is 8-aligned");
        let len = le_u32(&bytes, pos) as usize;
        assert_eq!(len, payload.len(), "record {lsn} length");
        let end = pos + 24 + len;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&STORE.0.to_le_bytes());
        crc.update(&bytes[pos + 8..end]);
        assert_eq!(le_u32(&bytes, pos + 4), crc.finalize(), "record {lsn} crc");
        assert_eq!(le_u64(&bytes, pos + 8), lsn, "record {lsn} LSN");
        // Nothing was durable before the one sync, so every record carries acked LSN 0.
        assert_eq!(le_u64(&bytes, pos + 16), 0, "record {lsn} acked LSN");
        assert_eq!(&bytes[pos + 24..end], &payload[..], "record {lsn} payload");
        let padded = end.next_multiple_of(8);
        assert!(
            bytes[end..padded].iter().all(|&b| b == 0),
            "record {lsn} padding is zeros"
        );

        let rec = decode_record(&bytes[pos..], STORE, 1 << 20).expect("record decodes");
        assert_eq!(rec.lsn, Lsn(lsn));
        assert_eq!(rec.acked, Lsn::NONE);
        assert_eq!(rec.payload, &payload[..]);
        assert_eq!(rec.span, padded - pos);
        assert_eq!(rec.span, record_span(payload.len()));
        // The checksum is seeded with the store id: another store's reader rejects the record.
        assert!(decode_record(&bytes[pos..], StoreId(STORE.0 ^ 1), 1 << 20).is_err());
        pos = padded;
    }
    // 64 + 32 + 24 + 128: without preallocation the file ends right after the last record.
    assert_eq!(pos, 248);
    assert_eq!(bytes.len(), pos, "nothing after the last record");
}
