//! Committed fixtures pin the engine's on-disk formats (docs/engine-format.md): `cairn.meta`, the
//! `checkpoint` file and journal records. Today's code must write each fixture byte for byte and
//! read it back to the same value; a few fields are also decoded by hand at the offsets the spec
//! gives; and any flipped byte of a meta file or a checkpoint must be a typed error.
//!
//! After an intended format change, regenerate with
//! `CAIRN_BLESS=1 cargo test --test engine_format` and review the fixture diff with the spec.
//! Blessing also rewrites the `journal_replay` fuzz seeds (`fuzz/seeds/journal_replay/`) from a
//! real engine session.

use cairn_engine::checkpoint::{self, Checkpoint};
use cairn_engine::{
    journal, recovery, CheckpointProblem, Engine, EngineOptions, RootMeta, RootProblem,
};
use cairn_state::types::{DriverKind, Kind, SnapshotId, TxId, Usage};
use cairn_state::{Labels, Op, Record, State};
use cairn_wal::storage::FsStorage;
use cairn_wal::{Lsn, StoreId, Wal, WalOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const STORE: StoreId = StoreId(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff);
/// 2023-11-14T22:13:20Z, in nanoseconds.
const T0: i64 = 1_700_000_000_000_000_000;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/engine")
}

fn blessing() -> bool {
    std::env::var_os("CAIRN_BLESS").is_some_and(|v| v == "1")
}

/// Compare `bytes` with the committed fixture `name`, or write it when blessing.
fn check_fixture(name: &str, bytes: &[u8]) -> Vec<u8> {
    let path = fixtures().join(name);
    if blessing() {
        std::fs::create_dir_all(fixtures()).expect("create the fixture dir");
        std::fs::write(&path, bytes).expect("write the fixture");
        return bytes.to_vec();
    }
    let fixture = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "read {}: {e}; create it with CAIRN_BLESS=1 cargo test --test engine_format",
            path.display()
        )
    });
    assert!(
        fixture == bytes,
        "{name}: today's encoding differs from the committed fixture"
    );
    fixture
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The tree digest the fixture's commit records (any well-formed digest: the format is what
/// is pinned here, not the hash of a real tree).
const FIXTURE_DIGEST: &str =
    "sha256:abababababababababababababababababababababababababababababababab";

/// A `sha256:` digest of 32 bytes `b`.
fn digest(b: u8) -> String {
    format!("sha256:{}", format!("{b:02x}").repeat(32))
}

/// The fixture journal: at least one record of every `Op` variant (kept so by
/// `journal_fixture_has_every_op`), leaving a create and a commit pending, exactly as the
/// engine would journal them (ids and times chosen up front).
/// The config kept with the fixture's `kept:1`: its DiffIDs are layer 0x22's chain.
fn kept_config() -> Vec<u8> {
    format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["A=1"]}},"rootfs":{{"type":"layers","diff_ids":["{}","{}"]}}}}"#,
        digest(0x11),
        digest(0xa2)
    )
    .into_bytes()
}

fn kept_manifest() -> Vec<u8> {
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#.to_vec()
}

/// Records of the fixture journal written before checkpoint v4: `checkpoint-v3` is their state.
const V3_RECORDS: usize = 52;

fn journal_records() -> Vec<Record> {
    let ops = vec![
        Op::BeginCreate {
            key: "base-active".into(),
            parent: None,
            kind: Kind::Active,
            id: SnapshotId(1),
            labels: labels(&[("a", "1")]),
            time_ns: T0,
        },
        Op::Complete {
            of: TxId(1),
            usage: None,
            digest: None,
        },
        Op::BeginCommit {
            key: "base-active".into(),
            name: "base".into(),
            labels: labels(&[("containerd.io/gc.root", "2023-11-14")]),
            time_ns: T0 + 1,
        },
        Op::Complete {
            of: TxId(3),
            usage: Some(Usage {
                size_bytes: 4096,
                inodes: 3,
            }),
            digest: Some(FIXTURE_DIGEST.into()),
        },
        Op::BeginCreate {
            key: "view".into(),
            parent: Some("base".into()),
            kind: Kind::View,
            id: SnapshotId(2),
            labels: Labels::new(),
            time_ns: T0 + 2,
        },
        Op::Complete {
            of: TxId(5),
            usage: None,
            digest: None,
        },
        Op::Update {
            key: "view".into(),
            labels: labels(&[("k", "v")]),
            time_ns: T0 + 3,
        },
        Op::BeginCreate {
            key: "doomed".into(),
            parent: None,
            kind: Kind::Active,
            id: SnapshotId(3),
            labels: Labels::new(),
            time_ns: T0 + 4,
        },
        Op::Abort { of: TxId(8) },
        Op::BeginCreate {
            key: "work".into(),
            parent: Some("base".into()),
            kind: Kind::Active,
            id: SnapshotId(4),
            labels: Labels::new(),
            time_ns: T0 + 5,
        },
        Op::Complete {
            of: TxId(10),
            usage: None,
            digest: None,
        },
        Op::Remove { key: "view".into() },
        Op::BeginCreate {
            key: "pending".into(),
            parent: None,
            kind: Kind::Active,
            id: SnapshotId(5),
            labels: Labels::new(),
            time_ns: T0 + 6,
        },
        Op::BeginCommit {
            key: "work".into(),
            name: "work-committed".into(),
            labels: Labels::new(),
            time_ns: -1,
        },
        // The layer store, while the create and the commit above stay pending: a pinned base
        // layer, a layer on it that an image holds, a pinned layer removed again, a layer nothing
        // holds (an interrupted image load) collected, a container created and removed, an
        // image put and removed.
        Op::BeginImport {
            id: SnapshotId(6),
            parent: None,
            pin: true,
            time_ns: T0 + 7,
        },
        Op::CompleteImport {
            of: TxId(15),
            diff_id: digest(0x11),
            chain_id: digest(0x11),
            size_bytes: 2048,
            usage: Usage {
                size_bytes: 4096,
                inodes: 2,
            },
        },
        Op::BeginImport {
            id: SnapshotId(7),
            parent: Some(digest(0x11)),
            pin: false,
            time_ns: T0 + 8,
        },
        Op::CompleteImport {
            of: TxId(17),
            diff_id: digest(0xa2),
            chain_id: digest(0x22),
            size_bytes: 1024,
            usage: Usage {
                size_bytes: 4096,
                inodes: 1,
            },
        },
        Op::PutImage {
            name: "hello:1".into(),
            top: digest(0x22),
            manifest_digest: digest(0xd1),
            config_digest: digest(0xc1),
            time_ns: T0 + 9,
        },
        Op::BeginImport {
            id: SnapshotId(8),
            parent: Some(digest(0x11)),
            pin: true,
            time_ns: T0 + 10,
        },
        Op::CompleteImport {
            of: TxId(20),
            diff_id: digest(0xa3),
            chain_id: digest(0x33),
            size_bytes: 512,
            usage: Usage {
                size_bytes: 4096,
                inodes: 1,
            },
        },
        Op::RemoveLayer {
            chain_id: digest(0x33),
        },
        Op::BeginImport {
            id: SnapshotId(9),
            parent: Some(digest(0x11)),
            pin: false,
            time_ns: T0 + 11,
        },
        Op::CompleteImport {
            of: TxId(23),
            diff_id: digest(0xa4),
            chain_id: digest(0x44),
            size_bytes: 512,
            usage: Usage {
                size_bytes: 4096,
                inodes: 1,
            },
        },
        Op::CollectLayers,
        Op::BeginContainer {
            name: "web".into(),
            layer: digest(0x22),
            init_id: SnapshotId(10),
            time_ns: T0 + 12,
        },
        // Completes the init snapshot and begins the read-write one (txid 27, id 11).
        Op::Complete {
            of: TxId(26),
            usage: None,
            digest: None,
        },
        Op::Complete {
            of: TxId(27),
            usage: None,
            digest: None,
        },
        Op::PutImage {
            name: "old:1".into(),
            top: digest(0x22),
            manifest_digest: digest(0xd2),
            config_digest: digest(0xc2),
            time_ns: T0 + 13,
        },
        Op::RemoveImage {
            name: "old:1".into(),
        },
        // Reference-counted mounts of the container's read-write snapshot (txids 31-41): a
        // first mount completed, a second reference, two releases (the last unmounts), a first
        // mount aborted, one completed and found gone by recovery.
        Op::Mount {
            key: "web".into(),
            target: "/mnt/web".into(),
        },
        Op::Complete {
            of: TxId(31),
            usage: None,
            digest: None,
        },
        Op::Mount {
            key: "web".into(),
            target: "/mnt/web".into(),
        },
        Op::Unmount {
            target: "/mnt/web".into(),
        },
        Op::Unmount {
            target: "/mnt/web".into(),
        },
        Op::Complete {
            of: TxId(35),
            usage: None,
            digest: None,
        },
        Op::Mount {
            key: "web".into(),
            target: "/mnt/web".into(),
        },
        Op::Abort { of: TxId(37) },
        Op::Mount {
            key: "web".into(),
            target: "/mnt/web".into(),
        },
        Op::Complete {
            of: TxId(39),
            usage: None,
            digest: None,
        },
        Op::MountGone {
            target: "/mnt/web".into(),
        },
        Op::RemoveContainer { name: "web".into() },
        // A view left mounted once and with a second first mount in flight (txids 43-47).
        Op::BeginCreate {
            key: "seen".into(),
            parent: Some("base".into()),
            kind: Kind::View,
            id: SnapshotId(12),
            labels: Labels::new(),
            time_ns: T0 + 14,
        },
        Op::Complete {
            of: TxId(43),
            usage: None,
            digest: None,
        },
        Op::Mount {
            key: "seen".into(),
            target: "/mnt/a".into(),
        },
        Op::Complete {
            of: TxId(45),
            usage: None,
            digest: None,
        },
        Op::Mount {
            key: "seen".into(),
            target: "/mnt/b".into(),
        },
        // A pull's layer, completed with its hold image in the same record (txids 48-49).
        Op::BeginImport {
            id: SnapshotId(13),
            parent: Some(digest(0x11)),
            pin: false,
            time_ns: T0 + 15,
        },
        Op::CompleteImportHeld {
            of: TxId(48),
            diff_id: digest(0xa5),
            chain_id: digest(0x55),
            size_bytes: 256,
            usage: Usage {
                size_bytes: 4096,
                inodes: 1,
            },
            hold: "hello:2#partial".into(),
            time_ns: T0 + 16,
        },
        // A parallel image load (txids 50-52): two detached imports, the first completed on
        // the base layer, the second left in flight.
        Op::BeginDetachedImport {
            id: SnapshotId(14),
            pin: false,
            time_ns: T0 + 17,
        },
        Op::BeginDetachedImport {
            id: SnapshotId(15),
            pin: true,
            time_ns: T0 + 18,
        },
        Op::CompleteDetachedImport {
            of: TxId(50),
            parent: Some(digest(0x11)),
            diff_id: digest(0xa6),
            chain_id: digest(0x66),
            size_bytes: 256,
            usage: Usage {
                size_bytes: 4096,
                inodes: 1,
            },
        },
        // An image with its kept config and manifest (txids 53-54, checkpoint v4).
        Op::PutImage {
            name: "kept:1".into(),
            top: digest(0x22),
            manifest_digest: cairn_state::sha256_digest(&kept_manifest()),
            config_digest: cairn_state::sha256_digest(&kept_config()),
            time_ns: T0 + 19,
        },
        Op::PutImageConfig {
            name: "kept:1".into(),
            config: kept_config(),
            manifest: Some(kept_manifest()),
        },
        // The same image recorded with its config kept in one record (txid 55).
        Op::PutImageKept {
            name: "kept:2".into(),
            top: digest(0x22),
            manifest_digest: cairn_state::sha256_digest(&kept_manifest()),
            config_digest: cairn_state::sha256_digest(&kept_config()),
            time_ns: T0 + 20,
            config: kept_config(),
            manifest: Some(kept_manifest()),
        },
    ];
    ops.into_iter()
        .zip(1u64..)
        .map(|(op, txid)| Record {
            txid: TxId(txid),
            op,
        })
        .collect()
}

/// How many records the fixture journal has: the LSN and txid of the last.
const JOURNAL_RECORDS: u64 = 55;

/// Every `Op` variant is in the fixture journal. The match has no wildcard, so a new variant
/// does not compile until the fixture has a record of it (and the fixtures are re-blessed).
#[test]
fn journal_fixture_has_every_op() {
    let records = journal_records();
    assert_eq!(records.len() as u64, JOURNAL_RECORDS);
    let mut seen = std::collections::BTreeSet::new();
    for r in &records {
        seen.insert(match r.op {
            Op::BeginCreate { .. } => "BeginCreate",
            Op::BeginCommit { .. } => "BeginCommit",
            Op::Complete { .. } => "Complete",
            Op::Abort { .. } => "Abort",
            Op::Remove { .. } => "Remove",
            Op::Update { .. } => "Update",
            Op::BeginImport { .. } => "BeginImport",
            Op::CompleteImport { .. } => "CompleteImport",
            Op::RemoveLayer { .. } => "RemoveLayer",
            Op::PutImage { .. } => "PutImage",
            Op::RemoveImage { .. } => "RemoveImage",
            Op::CollectLayers => "CollectLayers",
            Op::BeginContainer { .. } => "BeginContainer",
            Op::RemoveContainer { .. } => "RemoveContainer",
            Op::Mount { .. } => "Mount",
            Op::Unmount { .. } => "Unmount",
            Op::MountGone { .. } => "MountGone",
            Op::CompleteImportHeld { .. } => "CompleteImportHeld",
            Op::BeginDetachedImport { .. } => "BeginDetachedImport",
            Op::CompleteDetachedImport { .. } => "CompleteDetachedImport",
            Op::PutImageConfig { .. } => "PutImageConfig",
            Op::PutImageKept { .. } => "PutImageKept",
        });
    }
    assert_eq!(seen.len(), 22, "one of each of the 22 variants: {seen:?}");
}

/// The state the fixture journal gives: what the fixture checkpoint holds.
fn journal_state() -> State {
    let mut state = State::new();
    for record in journal_records() {
        state.apply(&record).expect("the fixture journal applies");
    }
    state
}

/// Payloads as `u16 LE length, bytes` chunks: the `journal_replay` fuzz input layout.
fn chunked(payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in payloads {
        out.extend_from_slice(
            &u16::try_from(p.len())
                .expect("a small record")
                .to_le_bytes(),
        );
        out.extend_from_slice(p);
    }
    out
}

fn unchunk(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some((len, rest)) = bytes.split_first_chunk::<2>() {
        let (p, rest) = rest.split_at(usize::from(u16::from_le_bytes(*len)));
        out.push(p.to_vec());
        bytes = rest;
    }
    out
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

// ---- cairn.meta ----

#[test]
fn meta_fixture_is_byte_exact_and_reads_back() {
    for (name, driver) in [
        ("cairn.meta.vfs", DriverKind::Vfs),
        ("cairn.meta.overlay", DriverKind::Overlay),
        ("cairn.meta.block", DriverKind::Block),
        ("cairn.meta.btrfs", DriverKind::Btrfs),
    ] {
        let meta = RootMeta {
            driver,
            store_id: STORE,
        };
        let bytes = check_fixture(name, &meta.encode());
        assert_eq!(RootMeta::decode(&bytes).expect("decode the fixture"), meta);
        // The spec, by hand.
        assert_eq!(bytes.len(), 36);
        assert_eq!(&bytes[0..8], b"CAIRNROT");
        assert_eq!(le_u16(&bytes, 8), 1, "version");
        let code = match driver {
            DriverKind::Vfs => 0,
            DriverKind::Overlay => 1,
            DriverKind::Block => 2,
            DriverKind::Btrfs => 3,
        };
        assert_eq!(bytes[10], code, "driver");
        assert_eq!(&bytes[11..16], [0u8; 5], "reserved");
        assert_eq!(bytes[16..32], STORE.0.to_le_bytes(), "store id");
        assert_eq!(le_u32(&bytes, 32), crc32fast::hash(&bytes[..32]), "crc");
    }
}

#[test]
fn meta_damage_is_a_typed_error() {
    let good = RootMeta {
        driver: DriverKind::Overlay,
        store_id: STORE,
    }
    .encode();
    for at in 0..good.len() {
        for bit in 0..8 {
            let mut bad = good;
            bad[at] ^= 1 << bit;
            match RootMeta::decode(&bad) {
                Err(RootProblem::BadMeta | RootProblem::Version(_)) => {}
                Err(other) => panic!("byte {at} bit {bit} flipped: unexpected {other:?}"),
                Ok(v) => panic!("byte {at} bit {bit} flipped, decoded as {v:?}"),
            }
        }
    }
    for len in 0..good.len() {
        assert!(
            RootMeta::decode(&good[..len]).is_err(),
            "truncated to {len}"
        );
    }
    let mut longer = good.to_vec();
    longer.push(0);
    assert!(RootMeta::decode(&longer).is_err());
    // A future version with a correct CRC is refused by version, not as damage.
    let mut v2 = good;
    v2[8] = 2;
    let crc = crc32fast::hash(&v2[..32]);
    v2[32..36].copy_from_slice(&crc.to_le_bytes());
    assert!(matches!(
        RootMeta::decode(&v2),
        Err(RootProblem::Version(2))
    ));
}

// ---- checkpoint ----

fn fixture_checkpoint() -> Checkpoint {
    Checkpoint {
        lsn: Lsn(JOURNAL_RECORDS),
        state: journal_state(),
    }
}

#[test]
fn checkpoint_fixture_is_byte_exact_and_reads_back() {
    let cp = fixture_checkpoint();
    // The state covers every shape: committed, active, view, pending create, pending commit
    // and pending mount, a detached import in flight, layers (one pinned, one an image holds,
    // one a pull's hold image holds, one a detached import made), images and a counted mount.
    assert_eq!(cp.state.snapshots.len(), 7);
    assert_eq!(cp.state.pending.len(), 4);
    assert_eq!(cp.state.mounts.len(), 1);
    assert_eq!(cp.state.layers.len(), 4);
    assert_eq!(cp.state.images.len(), 4);
    for name in ["kept:1", "kept:2"] {
        let kept = cp.state.images[name].kept.as_ref().expect("kept");
        assert_eq!(kept.config, kept_config());
        assert_eq!(kept.manifest.as_deref(), Some(&kept_manifest()[..]));
    }
    assert!(cp.state.containers.is_empty());
    let bytes = check_fixture("checkpoint", &checkpoint::encode(STORE, &cp));
    assert_eq!(
        checkpoint::decode(STORE, &bytes).expect("decode the fixture"),
        cp
    );
    // The header, by hand.
    assert_eq!(&bytes[0..8], b"CAIRNCKP");
    assert_eq!(le_u16(&bytes, 8), 4, "version");
    assert_eq!(&bytes[10..16], [0u8; 6], "reserved");
    assert_eq!(bytes[16..32], STORE.0.to_le_bytes(), "store id");
    assert_eq!(le_u64(&bytes, 32), 55, "LSN covered");
    assert_eq!(le_u64(&bytes, 40), 55, "last txid");
    assert_eq!(
        le_u64(&bytes, 48),
        (bytes.len() - 64) as u64,
        "payload length"
    );
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[..56]);
    h.update(&bytes[64..]);
    assert_eq!(le_u32(&bytes, 56), h.finalize(), "crc");
    assert_eq!(&bytes[60..64], [0u8; 4], "reserved");
    // The payload starts with State's first two fields: last_txid 55, next_id 16 (varints).
    assert_eq!(&bytes[64..66], [55, 16]);
    assert_eq!(bytes[66], 7, "seven snapshots");
}

/// A version 3 checkpoint (committed before v4 existed) still opens: the state of the journal's
/// first records, its images without kept configs.
#[test]
fn checkpoint_v3_fixture_still_reads() {
    let bytes = std::fs::read(fixtures().join("checkpoint-v3")).expect("read checkpoint-v3");
    assert_eq!(le_u16(&bytes, 8), 3, "a version 3 file");
    let cp = checkpoint::decode(STORE, &bytes).expect("decode v3");
    let mut state = State::new();
    for record in journal_records().into_iter().take(V3_RECORDS) {
        state.apply(&record).expect("applies");
    }
    assert_eq!(cp.lsn, Lsn(V3_RECORDS as u64));
    assert_eq!(cp.state, state);
    assert!(cp.state.images.values().all(|i| i.kept.is_none()));
    // Written again it is a version 4 file of the same state.
    let again = checkpoint::encode(STORE, &cp);
    assert_eq!(le_u16(&again, 8), 4);
    assert_eq!(checkpoint::decode(STORE, &again).expect("decode v4"), cp);
}

#[test]
fn checkpoint_damage_is_a_typed_error() {
    let good = checkpoint::encode(STORE, &fixture_checkpoint());
    for at in 0..good.len() {
        for bit in [0, 3, 7] {
            let mut bad = good.clone();
            bad[at] ^= 1 << bit;
            match checkpoint::decode(STORE, &bad) {
                Err(e) => {
                    let _ = e.to_string();
                }
                Ok(v) => panic!("byte {at} bit {bit} flipped, decoded as {v:?}"),
            }
        }
    }
    for len in 0..good.len() {
        assert!(
            checkpoint::decode(STORE, &good[..len]).is_err(),
            "truncated to {len}"
        );
    }
    let mut longer = good.clone();
    longer.push(0);
    assert!(checkpoint::decode(STORE, &longer).is_err());
    assert!(matches!(
        checkpoint::decode(StoreId(1), &good),
        Err(CheckpointProblem::Store { expected: 1, found }) if found == STORE.0
    ));
}

// ---- journal records ----

#[test]
fn journal_fixture_is_byte_exact_and_reads_back() {
    let records = journal_records();
    let payloads: Vec<Vec<u8>> = records.iter().map(journal::encode).collect();
    let bytes = check_fixture("journal", &chunked(&payloads));
    let read = unchunk(&bytes);
    assert_eq!(read.len(), records.len());
    for (i, (payload, record)) in read.iter().zip(&records).enumerate() {
        let lsn = Lsn(i as u64 + 1);
        assert_eq!(
            &journal::decode(lsn, payload).expect("decode a fixture record"),
            record
        );
    }
    // The fixture journal replays through recovery's path to the fixture checkpoint's state.
    let mut state = State::new();
    for (i, payload) in read.iter().enumerate() {
        let record = journal::decode(Lsn(i as u64 + 1), payload).expect("decode");
        state.apply(&record).expect("apply");
    }
    assert_eq!(state, journal_state());
}

/// Each `Op` variant spelled out byte by byte, as docs/engine-format.md describes it.
#[test]
fn journal_records_match_the_spec_by_hand() {
    let r = journal_records();
    let enc = |i: usize| journal::encode(&r[i]);
    // Complete { of: 1, usage: None, digest: None } at txid 2: version, txid, tag 2, of, None,
    // None.
    assert_eq!(enc(1), [0x03, 0x02, 0x02, 0x01, 0x00, 0x00]);
    // Complete { of: 3, usage: Some(4096 bytes, 3 inodes), digest: Some(71-byte string) } at
    // txid 4; 4096 = 0x80 0x20.
    let mut want = vec![0x03, 0x04, 0x02, 0x03, 0x01, 0x80, 0x20, 0x03, 0x01, 71];
    want.extend_from_slice(FIXTURE_DIGEST.as_bytes());
    assert_eq!(enc(3), want);
    // Abort { of: 8 } at txid 9: tag 3.
    assert_eq!(enc(8), [0x03, 0x09, 0x03, 0x08]);
    // Remove { key: "view" } at txid 12: tag 4, string = varint length + UTF-8.
    assert_eq!(enc(11), [0x03, 0x0c, 0x04, 0x04, b'v', b'i', b'e', b'w']);
    // BeginCommit at txid 14 with time_ns -1: zigzag(-1) = 1.
    let mut want = vec![0x03, 0x0e, 0x01, 0x04];
    want.extend_from_slice(b"work");
    want.push(14);
    want.extend_from_slice(b"work-committed");
    want.extend_from_slice(&[0x00, 0x01]);
    assert_eq!(enc(13), want);
    // Update { key: "view", labels: {k: v}, time_ns: T0 + 3 } at txid 7: tag 5, map = count then
    // (key, value) pairs in key order, i64 = zigzag LEB128.
    let mut want = vec![0x03, 0x07, 0x05, 0x04];
    want.extend_from_slice(b"view");
    want.extend_from_slice(&[0x01, 0x01, b'k', 0x01, b'v']);
    want.extend_from_slice(&leb128((T0 as u64 + 3) << 1));
    assert_eq!(enc(6), want);
    // BeginCreate { key: "view", parent: Some("base"), kind: View, id: 2, labels: {}, time_ns }
    // at txid 5: tag 0; Option = 0x00 / 0x01 + value; Kind View = 1.
    let mut want = vec![0x03, 0x05, 0x00, 0x04];
    want.extend_from_slice(b"view");
    want.extend_from_slice(&[0x01, 0x04]);
    want.extend_from_slice(b"base");
    want.extend_from_slice(&[0x01, 0x02, 0x00]);
    want.extend_from_slice(&leb128((T0 as u64 + 2) << 1));
    assert_eq!(enc(4), want);
    // Mount { key: "web", target: "/mnt/web" } at txid 31: tag 0x0e, two strings.
    let mut want = vec![0x03, 31, 0x0e, 0x03];
    want.extend_from_slice(b"web");
    want.push(0x08);
    want.extend_from_slice(b"/mnt/web");
    assert_eq!(enc(30), want);
    // Unmount { target: "/mnt/web" } at txid 34: tag 0x0f.
    let mut want = vec![0x03, 34, 0x0f, 0x08];
    want.extend_from_slice(b"/mnt/web");
    assert_eq!(enc(33), want);
    // MountGone { target: "/mnt/web" } at txid 41: tag 0x10.
    let mut want = vec![0x03, 41, 0x10, 0x08];
    want.extend_from_slice(b"/mnt/web");
    assert_eq!(enc(40), want);
}

fn leb128(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

#[test]
fn journal_decoder_refuses_bad_payloads() {
    let good = journal::encode(&journal_records()[0]);
    assert!(journal::decode(Lsn(1), &[]).is_err(), "empty");
    for version in [0u8, 1, 2, 4] {
        let mut other = good.clone();
        other[0] = version;
        assert!(
            matches!(
                journal::decode(Lsn(1), &other),
                Err(cairn_engine::EngineError::BadRecord {
                    reason: cairn_engine::RecordProblem::Version(v),
                    ..
                }) if v == version
            ),
            "version {version}"
        );
    }
    let mut longer = good.clone();
    longer.push(0);
    assert!(journal::decode(Lsn(1), &longer).is_err(), "trailing byte");
    for len in 1..good.len() {
        assert!(
            journal::decode(Lsn(1), &good[..len]).is_err(),
            "truncated to {len}"
        );
    }
    // Unknown Op tag.
    assert!(journal::decode(Lsn(1), &[0x03, 0x01, 0x20]).is_err());
}

// ---- fuzz seeds: real journals ----

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/journal_replay")
}

/// The payloads of a real engine session on vfs, read back from the root's log.
fn session_payloads() -> Vec<Vec<u8>> {
    let tmp = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("tempdir");
    let root = tmp.path().join("root");
    let (engine, _) = Engine::open(&root, EngineOptions::default()).expect("open");
    engine
        .prepare("a", None, labels(&[("x", "1")]))
        .expect("prepare a");
    engine
        .commit("base", "a", Labels::new())
        .expect("commit base");
    engine.view("v", Some("base"), Labels::new()).expect("view");
    engine
        .prepare("b", Some("base"), Labels::new())
        .expect("prepare b");
    let info = engine.stat("b").expect("stat");
    engine.update(info, &[]).expect("update");
    engine.remove("v").expect("remove v");
    engine
        .commit("top", "b", labels(&[("y", "2")]))
        .expect("commit top");
    engine.close().expect("close");
    let options = WalOptions {
        create_if_missing: false,
        ..WalOptions::default()
    };
    let (_, records, _) =
        Wal::open(Arc::new(FsStorage), &root.join("wal"), options).expect("open the log");
    records.map(|r| r.expect("record").payload).collect()
}

#[test]
fn fuzz_seeds_are_real_journals_that_replay() {
    if blessing() {
        let session = session_payloads();
        // Cut after the second prepare's BeginCreate (record 7): left pending.
        let pending: Vec<Vec<u8>> = session[..7].to_vec();
        std::fs::create_dir_all(seeds_dir()).expect("seed dir");
        for (name, payloads) in [
            ("session", &session[..]),
            ("pending", &pending[..]),
            ("one-prepare", &session[..2]),
        ] {
            std::fs::write(seeds_dir().join(name), chunked(payloads)).expect("write seed");
        }
        std::fs::write(
            seeds_dir().join("fixture-journal"),
            chunked(
                &journal_records()
                    .iter()
                    .map(journal::encode)
                    .collect::<Vec<_>>(),
            ),
        )
        .expect("write seed");
    }
    for name in ["session", "pending", "one-prepare", "fixture-journal"] {
        let bytes = std::fs::read(seeds_dir().join(name)).expect("read a seed");
        let mut state = State::new();
        for (i, payload) in unchunk(&bytes).iter().enumerate() {
            let record = journal::decode(Lsn(i as u64 + 1), payload).expect("decode a seed record");
            state.apply(&record).expect("a seed applies");
        }
        let aborts = recovery::abort_pending(&mut state, Lsn(1000)).expect("abort pending");
        assert!(state.pending.is_empty());
        if name == "pending" || name == "fixture-journal" {
            assert!(!aborts.is_empty(), "{name} leaves transactions pending");
        }
    }
}
