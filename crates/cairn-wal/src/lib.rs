//! cairn's write-ahead log.
//!
//! A log is a directory of segment files, each a 64-byte header and then records, every record
//! framed with its length, a CRC-32 (seeded with the store id), its LSN and the highest LSN
//! already durable when it was written. A record is acknowledged only after [`Wal::sync`];
//! recovery ([`Wal::open`]) returns every acknowledged record, cuts a torn tail, and refuses
//! (changing nothing) when damage cannot be a torn write. `docs/wal-format.md` is the spec.
//!
//! All IO goes through [`storage::Storage`], so crash tests can run the same code on
//! [`storage::SimStorage`] and cut power anywhere.

mod error;
pub mod format;
mod lsn;
mod options;
mod reader;
mod scan;
mod segment;
pub mod storage;
mod wal;

pub use error::{Damage, Result, WalError};
pub use lsn::{Lsn, StoreId};
pub use options::{WalOptions, MAX_SEGMENT_BYTES, MIN_SEGMENT_BYTES};
pub use reader::{Record, Records};
pub use scan::{inspect, Inspection};
pub use wal::{RecoveryReport, TornTail, Wal};
