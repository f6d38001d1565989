//! Sizes read off disk are bounded (issue 8, item 6): a segment larger than the engine writes is
//! refused by `wal dump` and by recovery with a typed error, never read whole.

use cairn_engine::{read_journal, Engine, EngineError, EngineOptions, ENGINE_SEGMENT_BYTES};
use cairn_wal::WalError;

#[test]
fn an_oversized_segment_is_refused_by_dump_and_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let (h, _) = Engine::open(&root, EngineOptions::default()).expect("open");
    h.prepare("a", None, Default::default()).expect("prepare");
    h.close().expect("close");
    let segment = std::fs::read_dir(root.join("wal"))
        .expect("wal dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .expect("a segment");
    let grown = ENGINE_SEGMENT_BYTES + 1;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .and_then(|f| f.set_len(grown))
        .expect("grow the segment");
    // Refused when the journal is opened (the WAL's own scan), or at the latest while reading.
    let dumped: Result<Vec<_>, _> = read_journal(&root).and_then(|j| j.collect());
    match dumped {
        Err(EngineError::Wal(WalError::SegmentTooLarge {
            path,
            len_bytes,
            max_bytes,
        })) => {
            assert_eq!(path, segment);
            assert_eq!(len_bytes, grown);
            assert_eq!(max_bytes, ENGINE_SEGMENT_BYTES);
        }
        other => panic!("wal dump read an oversized segment: {other:?}"),
    }
    match Engine::open(&root, EngineOptions::default()) {
        Err(EngineError::Wal(WalError::SegmentTooLarge { len_bytes, .. })) => {
            assert_eq!(len_bytes, grown)
        }
        other => panic!(
            "recovery accepted an oversized segment: {:?}",
            other.map(|_| ())
        ),
    }
    let len = std::fs::metadata(&segment).expect("stat").len();
    assert_eq!(len, grown, "the refused segment was left as it was");
}
