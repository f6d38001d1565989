//! Identifiers the log is built on: log sequence numbers and the store id.

use std::fmt;

/// A log sequence number: the position of a record in the log. The first record of a new log
/// is `Lsn(1)`; `Lsn(0)` means "none" (nothing durable yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const NONE: Lsn = Lsn(0);
    pub const FIRST: Lsn = Lsn(1);

    pub fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Chosen at random when a log is created and written into every segment header and mixed into
/// every record checksum, so a segment or record copied from another store is never taken for
/// one of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StoreId(pub u128);

impl StoreId {
    /// A fresh random id from the operating system's generator.
    pub fn random() -> Result<StoreId, getrandom::Error> {
        let mut bytes = [0u8; 16];
        getrandom::getrandom(&mut bytes)?;
        Ok(StoreId(u128::from_le_bytes(bytes)))
    }
}

impl fmt::Display for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}
