//! The on-disk format: the segment header and the record frame. One encoder and one decoder for
//! each; `docs/wal-format.md` is the byte-level specification they implement.

use crate::lsn::{Lsn, StoreId};

/// First bytes of every segment file.
pub const MAGIC: [u8; 8] = *b"CAIRNWAL";
/// The only format version this code reads and writes.
pub const VERSION: u16 = 1;
/// Size of the segment header; the first record starts right after it.
pub const HEADER_BYTES: usize = 64;
/// Size of a record's frame before its payload.
pub const RECORD_HEADER_BYTES: usize = 24;
/// Records start on multiples of this, so a scan for valid records after damage only has to try
/// one offset in eight.
pub const RECORD_ALIGN: usize = 8;
/// The highest LSN a segment may start at. Far below `u64::MAX`, so no LSN arithmetic on a
/// header read from disk can overflow (a segment holds fewer than 2^27 records).
pub const MAX_FIRST_LSN: u64 = 1 << 62;
/// The largest payload the format allows; `WalOptions::max_record_bytes` may lower it.
pub const MAX_PAYLOAD_BYTES: u32 = 64 << 20;

/// What a segment header holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub store_id: StoreId,
    pub first_lsn: Lsn,
}

/// Why a header failed to decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    Short {
        len: usize,
    },
    BadMagic,
    UnknownVersion {
        version: u16,
    },
    BadLength {
        len: u16,
    },
    Checksum {
        stored: u32,
        computed: u32,
    },
    /// Reserved bytes are not zero.
    Reserved,
    /// First LSN 0 or above [`MAX_FIRST_LSN`].
    FirstLsn {
        lsn: u64,
    },
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&VERSION.to_le_bytes());
        out[10..12].copy_from_slice(&(HEADER_BYTES as u16).to_le_bytes());
        // 12..16 reserved, zero.
        out[16..32].copy_from_slice(&self.store_id.0.to_le_bytes());
        out[32..40].copy_from_slice(&self.first_lsn.0.to_le_bytes());
        // 40..60 reserved, zero.
        let crc = crc32fast::hash(&out[..60]);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
        if bytes.len() < HEADER_BYTES {
            return Err(HeaderError::Short { len: bytes.len() });
        }
        let bytes = &bytes[..HEADER_BYTES];
        if bytes[0..8] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        let stored = u32::from_le_bytes(arr(&bytes[60..64]));
        let computed = crc32fast::hash(&bytes[..60]);
        if stored != computed {
            // A version we do not know may checksum differently; say so rather than "corrupt".
            if version != VERSION {
                return Err(HeaderError::UnknownVersion { version });
            }
            return Err(HeaderError::Checksum { stored, computed });
        }
        if version != VERSION {
            return Err(HeaderError::UnknownVersion { version });
        }
        let len = u16::from_le_bytes([bytes[10], bytes[11]]);
        if usize::from(len) != HEADER_BYTES {
            return Err(HeaderError::BadLength { len });
        }
        if bytes[12..16].iter().chain(&bytes[40..60]).any(|&b| b != 0) {
            return Err(HeaderError::Reserved);
        }
        let first_lsn = u64::from_le_bytes(arr(&bytes[32..40]));
        if first_lsn == 0 || first_lsn > MAX_FIRST_LSN {
            return Err(HeaderError::FirstLsn { lsn: first_lsn });
        }
        Ok(SegmentHeader {
            store_id: StoreId(u128::from_le_bytes(arr(&bytes[16..32]))),
            first_lsn: Lsn(first_lsn),
        })
    }
}

fn arr<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

/// Bytes a record with this payload occupies on disk, padding included.
pub fn record_span(payload_len: usize) -> usize {
    (RECORD_HEADER_BYTES + payload_len).next_multiple_of(RECORD_ALIGN)
}

/// The checksum of a record: CRC-32 (IEEE, crc32fast) over the store id's 16
/// little-endian bytes followed by everything after the checksum field (LSN, acked LSN, payload).
fn record_crc(store_id: StoreId, after_crc: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&store_id.0.to_le_bytes());
    hasher.update(after_crc);
    hasher.finalize()
}

/// Append one record, padded to [`RECORD_ALIGN`], to `out`.
///
/// `acked` is the highest LSN already durable when this record is written: recovery uses it to
/// tell damage to an acknowledged record from a torn, never-acknowledged tail.
pub fn encode_record(out: &mut Vec<u8>, store_id: StoreId, lsn: Lsn, acked: Lsn, payload: &[u8]) {
    debug_assert!(
        acked < lsn,
        "a record cannot be acknowledged before it is written"
    );
    let len = u32::try_from(payload.len()).expect("payload length checked by the caller");
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&lsn.0.to_le_bytes());
    out.extend_from_slice(&acked.0.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = record_crc(store_id, &out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.resize(start + record_span(payload.len()), 0);
}

/// A record read back and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodedRecord<'a> {
    pub lsn: Lsn,
    pub acked: Lsn,
    pub payload: &'a [u8],
    /// Bytes the record occupies, padding included.
    pub span: usize,
}

/// Why the bytes at an offset are not a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// Fewer bytes than a record header.
    TruncatedHeader,
    /// The length field is over the limit, or the record with its padding runs past the end
    /// of the data.
    Length { len: u32 },
    /// The checksum does not match.
    Checksum { stored: u32, computed: u32 },
    /// The acked LSN is not below the record's own LSN: no encoder writes that, and believing
    /// it would let the frame "prove" later damage durable.
    AckedNotBelow { lsn: u64, acked: u64 },
}

/// Decode and check the record at the start of `bytes`. `max_payload` bounds the length field,
/// so nothing is ever allocated or read from a length that was not checked.
pub fn decode_record(
    bytes: &[u8],
    store_id: StoreId,
    max_payload: u32,
) -> Result<DecodedRecord<'_>, RecordError> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return Err(RecordError::TruncatedHeader);
    }
    let len = u32::from_le_bytes(arr(&bytes[0..4]));
    // The padding must be there too: it is written with the record, so a record without it
    // was torn, never synced, and accepting it would leave the next record misaligned.
    if len > max_payload || bytes.len() < record_span(len as usize) {
        return Err(RecordError::Length { len });
    }
    let end = RECORD_HEADER_BYTES + len as usize;
    let stored = u32::from_le_bytes(arr(&bytes[4..8]));
    let computed = record_crc(store_id, &bytes[8..end]);
    if stored != computed {
        return Err(RecordError::Checksum { stored, computed });
    }
    let lsn = u64::from_le_bytes(arr(&bytes[8..16]));
    let acked = u64::from_le_bytes(arr(&bytes[16..24]));
    if acked >= lsn {
        return Err(RecordError::AckedNotBelow { lsn, acked });
    }
    Ok(DecodedRecord {
        lsn: Lsn(lsn),
        acked: Lsn(acked),
        payload: &bytes[RECORD_HEADER_BYTES..end],
        span: record_span(len as usize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let header = SegmentHeader {
            store_id: StoreId(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            first_lsn: Lsn(42),
        };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        for i in 0..HEADER_BYTES {
            let mut damaged = bytes;
            damaged[i] ^= 0x10;
            assert!(
                SegmentHeader::decode(&damaged).is_err(),
                "flip at byte {i} accepted"
            );
        }
    }

    #[test]
    fn record_round_trips_and_checks_store() {
        let store = StoreId(7);
        let mut out = Vec::new();
        encode_record(&mut out, store, Lsn(5), Lsn(3), b"hello");
        assert_eq!(out.len(), record_span(5));
        assert_eq!(out.len() % RECORD_ALIGN, 0);
        let rec = decode_record(&out, store, MAX_PAYLOAD_BYTES).expect("valid");
        assert_eq!(
            (rec.lsn, rec.acked, rec.payload),
            (Lsn(5), Lsn(3), &b"hello"[..])
        );
        assert!(matches!(
            decode_record(&out, StoreId(8), MAX_PAYLOAD_BYTES),
            Err(RecordError::Checksum { .. })
        ));
        assert_eq!(
            decode_record(&out, store, 4),
            Err(RecordError::Length { len: 5 })
        );
        assert_eq!(
            decode_record(&out[..10], store, MAX_PAYLOAD_BYTES),
            Err(RecordError::TruncatedHeader)
        );
        // A frame whose padding was torn off is not a record.
        assert_eq!(
            decode_record(&out[..out.len() - 1], store, MAX_PAYLOAD_BYTES),
            Err(RecordError::Length { len: 5 })
        );
    }
}
