//! Reading a root's journal for inspection (`cairn wal dump`): strictly read-only and without
//! the root lock, so it works on a root a running engine holds and never changes the evidence
//! (it does not cut a torn tail or remove anything, unlike opening the log).
//!
//! It reads what is on disk now: against a running engine the last record may be half
//! written, which shows up as a torn tail, exactly as after a crash.

use super::checkpoint;
use super::error::EngineError;
use super::journal;
use super::rootmeta::RootMeta;
use cairn_state::types::DriverKind;
use cairn_state::Record;
use cairn_wal::storage::FsStorage;
use cairn_wal::{Lsn, Records, StoreId, WalError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One journal record as found in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    /// The record's LSN.
    pub lsn: Lsn,
    /// The highest LSN durable when this record was written.
    pub acked: Lsn,
    /// The decoded record.
    pub record: Record,
}

/// Where the scan of the last segment stopped on bytes that are not zeros and not a record:
/// a torn write (the next open of the root cuts it) or damage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalTail {
    /// The segment file.
    pub segment: PathBuf,
    /// Byte offset in it where the records stop.
    pub offset: u64,
    /// The LSN the next record would carry.
    pub lsn: Lsn,
    /// What the bytes there are (the damage, as the WAL classifies it).
    pub reason: String,
}

/// A root's journal, opened read-only: the WAL's own scan ([`cairn_wal::inspect`]), so the
/// dump calls torn exactly what opening the root would cut and refuses what it would refuse.
#[derive(Debug)]
pub struct JournalDump {
    /// The driver the root was created with.
    pub driver: DriverKind,
    /// The root's store id (it seeds every record's checksum).
    pub store_id: StoreId,
    /// Records up to this LSN are also in the checkpoint (the log keeps them until their
    /// segment is dropped).
    pub checkpoint_lsn: Lsn,
    /// `None`: the log holds no segment.
    records: Option<Records>,
    tail: Option<JournalTail>,
}

/// Open `root`'s journal read-only. Fails if `root` is not a cairn root, or if its log is
/// damaged where a torn write cannot explain it (the error opening the root would give).
pub fn read_journal(root: &Path) -> Result<JournalDump, EngineError> {
    let storage = FsStorage;
    let meta = RootMeta::load(&storage, root)?.ok_or_else(|| EngineError::Io {
        op: "read the meta file of",
        path: root.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a cairn root"),
    })?;
    let checkpoint_lsn =
        checkpoint::load(&storage, root, meta.store_id)?.map_or(Lsn::NONE, |cp| cp.lsn);
    let dir = root.join("wal");
    let max_record_bytes = super::EngineOptions::default().wal.max_record_bytes;
    let (records, tail) = match cairn_wal::inspect(
        Arc::new(storage),
        &dir,
        Some(meta.store_id),
        max_record_bytes,
    ) {
        Ok((inspection, records)) => {
            let tail = inspection.torn_tail.map(|t| JournalTail {
                segment: t.path,
                offset: t.offset,
                lsn: t.lsn,
                reason: t.damage.to_string(),
            });
            (Some(records), tail)
        }
        Err(WalError::NotFound { .. }) => (None, None),
        Err(e) => return Err(e.into()),
    };
    Ok(JournalDump {
        driver: meta.driver,
        store_id: meta.store_id,
        checkpoint_lsn,
        records,
        tail,
    })
}

impl JournalDump {
    /// Where the last segment ends in something that is not a record (a torn write, which
    /// the next open of the root cuts), if it does.
    pub fn tail(&self) -> Option<&JournalTail> {
        self.tail.as_ref()
    }
}

impl Iterator for JournalDump {
    type Item = Result<JournalEntry, EngineError>;

    fn next(&mut self) -> Option<Self::Item> {
        let records = self.records.as_mut()?;
        let entry = match records.next()? {
            Ok(rec) => journal::decode(rec.lsn, &rec.payload).map(|record| JournalEntry {
                lsn: rec.lsn,
                acked: rec.acked,
                record,
            }),
            Err(e) => Err(e.into()),
        };
        if entry.is_err() {
            // Stop after the first error, as the log's own reader does.
            self.records = None;
        }
        Some(entry)
    }
}
