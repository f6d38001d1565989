//! Journal records as WAL payloads: one version byte, then the postcard encoding of
//! [`Record`]. The byte layout is specified in docs/engine-format.md.

use super::error::{EngineError, RecordProblem};
use cairn_state::Record;
use cairn_wal::Lsn;

/// 3: `Mount`, `Unmount` and `MountGone` (issue 13); 2: `Complete` carries the committed
/// tree's digest (issue 8). Older records are refused, as the checkpoint of the same change is.
const RECORD_VERSION: u8 = 3;

/// A record's journal payload: a version byte, then the postcard record.
pub fn encode(record: &Record) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    // postcard only fails on types it cannot encode, and Record has none.
    let body = postcard::to_stdvec(record).expect("a Record always encodes");
    out.extend_from_slice(&body);
    out
}

/// Decode a payload read from the log. Lengths inside are bounded by the payload itself, which
/// the log bounds by `max_record_bytes`.
pub fn decode(lsn: Lsn, payload: &[u8]) -> Result<Record, EngineError> {
    let bad = |reason| EngineError::BadRecord { lsn, reason };
    let (&version, body) = payload
        .split_first()
        .ok_or_else(|| bad(RecordProblem::Empty))?;
    if version != RECORD_VERSION {
        return Err(bad(RecordProblem::Version(version)));
    }
    let (record, rest) =
        postcard::take_from_bytes::<Record>(body).map_err(|e| bad(RecordProblem::Decode(e)))?;
    if !rest.is_empty() {
        return Err(bad(RecordProblem::Decode(
            postcard::Error::DeserializeBadEncoding,
        )));
    }
    Ok(record)
}
