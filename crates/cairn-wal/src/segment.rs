//! Segment files: their names, and the scan that recovery runs over each one.

use crate::error::{Damage, Result, WalError};
use crate::format::{decode_record, SegmentHeader, HEADER_BYTES, RECORD_ALIGN};
use crate::lsn::{Lsn, StoreId};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

const SUFFIX: &str = ".wal";
const TEMP_SUFFIX: &str = ".wal.tmp";

/// `<first LSN, 20 digits>.wal`: names sort in LSN order.
pub(crate) fn segment_name(first_lsn: Lsn) -> String {
    format!("{:020}{SUFFIX}", first_lsn.0)
}

pub(crate) fn temp_name(first_lsn: Lsn) -> String {
    format!("{:020}{TEMP_SUFFIX}", first_lsn.0)
}

/// What a directory entry is to the log.
pub(crate) enum EntryKind {
    Segment(Lsn),
    /// A segment still being created when the process stopped; never holds a record.
    Temp,
    Other,
}

pub(crate) fn classify(name: &OsStr) -> EntryKind {
    let Some(name) = name.to_str() else {
        return EntryKind::Other;
    };
    if let Some(stem) = name.strip_suffix(TEMP_SUFFIX) {
        if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
            return EntryKind::Temp;
        }
    }
    if let Some(stem) = name.strip_suffix(SUFFIX) {
        if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = stem.parse::<u64>() {
                return EntryKind::Segment(Lsn(n));
            }
        }
    }
    EntryKind::Other
}

/// A segment the log knows, with the byte offset just past its last record.
#[derive(Clone, Debug)]
pub(crate) struct SegmentInfo {
    pub path: PathBuf,
    pub first_lsn: Lsn,
    pub end_offset: u64,
}

/// What the scan of one segment found.
#[derive(Debug)]
pub(crate) struct Scanned {
    pub header: SegmentHeader,
    /// LSN the next record after this segment's valid records would carry.
    pub next_lsn: Lsn,
    /// Byte offset just past the last valid record.
    pub end_offset: u64,
    pub tail: Tail,
}

/// What follows the last valid record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Tail {
    /// Nothing, or zeros only.
    Clean,
    /// Damage at `offset` that nothing proves was ever durable: a torn write. `dirty_end` is
    /// the offset just past the last non-zero byte, the extent recovery must zero.
    Torn {
        offset: u64,
        damage: Damage,
        dirty_end: u64,
    },
}

/// Decode the header, then every record in sequence, then classify what follows them.
///
/// The rule (docs/wal-format.md, "Torn tail or corruption"): after the last record that decodes
/// with the expected LSN, either only zeros follow (clean), or some damaged bytes do. Damage is a
/// torn tail unless a valid record of this store further on carries an acknowledged LSN at or
/// past the damaged one, which proves the damaged record was durable before it was written:
/// that is corruption, reported, and nothing is changed.
pub(crate) fn scan(
    data: &[u8],
    path: &Path,
    store_id: Option<StoreId>,
    max_payload: u32,
) -> Result<Scanned> {
    let header = SegmentHeader::decode(data).map_err(|reason| match reason {
        crate::format::HeaderError::UnknownVersion { version } => WalError::UnknownVersion {
            path: path.to_path_buf(),
            version,
        },
        reason => WalError::BadHeader {
            path: path.to_path_buf(),
            reason,
        },
    })?;
    if let Some(expected) = store_id {
        if header.store_id != expected {
            return Err(WalError::ForeignSegment {
                path: path.to_path_buf(),
                expected,
                found: header.store_id,
            });
        }
    }
    let mut pos = HEADER_BYTES;
    let mut next = header.first_lsn;
    let damage = loop {
        match decode_record(&data[pos..], header.store_id, max_payload) {
            Ok(rec) if rec.lsn == next => {
                pos += rec.span;
                next = next.next();
            }
            Ok(rec) => break Damage::OutOfSequence { found: rec.lsn },
            Err(e) => break Damage::Frame(e),
        }
    };
    if is_zero(&data[pos..]) {
        return Ok(Scanned {
            header,
            next_lsn: next,
            end_offset: pos as u64,
            tail: Tail::Clean,
        });
    }
    if let Some(by) = later_proof(data, pos, header.store_id, max_payload, next) {
        return Err(WalError::Corrupt {
            path: path.to_path_buf(),
            offset: pos as u64,
            lsn: next,
            damage: Damage::ProvedDurable { by },
        });
    }
    let dirty_end = data.iter().rposition(|&b| b != 0).map_or(pos, |i| i + 1);
    Ok(Scanned {
        header,
        next_lsn: next,
        end_offset: pos as u64,
        tail: Tail::Torn {
            offset: pos as u64,
            damage,
            dirty_end: dirty_end as u64,
        },
    })
}

/// Look past damage at `bad` for a valid record written after record `lsn` was durable.
/// Aligned all-zero words are skipped: no record starts with a zero length and a zero checksum
/// (except an empty record whose checksum happens to be zero, one chance in 2^32, which is then
/// not seen as proof; the damage is treated as torn).
fn later_proof(
    data: &[u8],
    bad: usize,
    store_id: StoreId,
    max_payload: u32,
    lsn: Lsn,
) -> Option<Lsn> {
    let mut q = bad + RECORD_ALIGN;
    while q + crate::format::RECORD_HEADER_BYTES <= data.len() {
        if data[q..q + 8] == [0u8; 8] {
            q += RECORD_ALIGN;
            continue;
        }
        match decode_record(&data[q..], store_id, max_payload) {
            Ok(rec) if rec.acked >= lsn => return Some(rec.lsn),
            Ok(rec) => q += rec.span,
            Err(_) => q += RECORD_ALIGN,
        }
    }
    None
}

fn is_zero(bytes: &[u8]) -> bool {
    let words = bytes.chunks_exact(8);
    let rest = words.remainder();
    words.into_iter().all(|w| w == [0u8; 8]) && rest.iter().all(|&b| b == 0)
}
