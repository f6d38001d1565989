//! How a log is opened.

use crate::error::{Result, WalError};
use crate::format::{HEADER_BYTES, MAX_PAYLOAD_BYTES, RECORD_HEADER_BYTES};
use crate::lsn::{Lsn, StoreId};

#[derive(Clone, Debug)]
pub struct WalOptions {
    /// A segment is closed and a new one started when the next record would not fit.
    pub segment_size_bytes: u64,
    /// The largest payload `append` accepts (and the largest length recovery believes).
    pub max_record_bytes: u32,
    /// Write zeros over the whole segment when it is created, so appends overwrite allocated
    /// blocks and `fdatasync` has no file size or extent change to journal.
    pub preallocate: bool,
    /// Create a new, empty log when the directory holds none.
    pub create_if_missing: bool,
    /// For a new log: its id (random when `None`). For an existing log: if set, it must match.
    pub store_id: Option<StoreId>,
    /// For a new log: the LSN of its first record.
    pub first_lsn: Lsn,
}

impl Default for WalOptions {
    fn default() -> WalOptions {
        WalOptions {
            segment_size_bytes: 64 << 20,
            max_record_bytes: 16 << 20,
            preallocate: true,
            create_if_missing: true,
            store_id: None,
            first_lsn: Lsn::FIRST,
        }
    }
}

/// The smallest segment that still holds a header and a few records; tests use small segments
/// to exercise rotation.
pub const MIN_SEGMENT_BYTES: u64 = 512;
/// Segments are read whole during recovery; this bounds that allocation.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;

impl WalOptions {
    pub(crate) fn validate(&self) -> Result<()> {
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_size_bytes) {
            return Err(WalError::InvalidOptions(
                "segment_size_bytes must be between 512 bytes and 1 GiB",
            ));
        }
        if self.max_record_bytes > MAX_PAYLOAD_BYTES {
            return Err(WalError::InvalidOptions("max_record_bytes is over 64 MiB"));
        }
        let largest =
            (HEADER_BYTES + RECORD_HEADER_BYTES) as u64 + u64::from(self.max_record_bytes);
        if largest > self.segment_size_bytes {
            return Err(WalError::InvalidOptions(
                "a record of max_record_bytes must fit in one segment",
            ));
        }
        if self.first_lsn == Lsn::NONE || self.first_lsn.0 > crate::format::MAX_FIRST_LSN {
            return Err(WalError::InvalidOptions(
                "first_lsn must be between 1 and 2^62",
            ));
        }
        Ok(())
    }
}
