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
use cairn_wal::format::{decode_record, SegmentHeader, HEADER_BYTES, MAX_PAYLOAD_BYTES};
use cairn_wal::storage::{FsStorage, Storage};
use cairn_wal::{Lsn, StoreId};
use std::path::{Path, PathBuf};

/// One journal record as found in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    pub lsn: Lsn,
    /// The highest LSN durable when this record was written.
    pub acked: Lsn,
    pub record: Record,
}

/// Where the scan of the last segment stopped on bytes that are not zeros and not a record:
/// a torn write (the next open of the root cuts it) or damage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalTail {
    pub segment: PathBuf,
    pub offset: u64,
    /// The LSN the next record would carry.
    pub lsn: Lsn,
    pub reason: String,
}

/// A root's journal, opened read-only.
#[derive(Debug)]
pub struct JournalDump {
    pub driver: DriverKind,
    pub store_id: StoreId,
    /// Records up to this LSN are also in the checkpoint (the log keeps them until their
    /// segment is dropped).
    pub checkpoint_lsn: Lsn,
    segments: Vec<(Lsn, PathBuf)>,
    seg: usize,
    data: Vec<u8>,
    pos: usize,
    next: Option<Lsn>,
    done: bool,
    tail: Option<JournalTail>,
}

/// Open `root`'s journal read-only. Fails if `root` is not a cairn root.
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
    let names = storage
        .list_dir(&dir)
        .map_err(EngineError::io("list", &dir))?;
    let mut segments: Vec<(Lsn, PathBuf)> = names
        .iter()
        .filter_map(|name| {
            let name = name.to_str()?;
            let stem = name.strip_suffix(".wal")?;
            if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((Lsn(stem.parse().ok()?), dir.join(name)))
        })
        .collect();
    segments.sort();
    Ok(JournalDump {
        driver: meta.driver,
        store_id: meta.store_id,
        checkpoint_lsn,
        segments,
        seg: 0,
        data: Vec::new(),
        pos: 0,
        next: None,
        done: false,
        tail: None,
    })
}

impl JournalDump {
    /// After the iteration: where the last segment ended in something that is not a record.
    pub fn tail(&self) -> Option<&JournalTail> {
        self.tail.as_ref()
    }

    fn corrupt(path: &Path, offset: u64, lsn: Lsn, what: String) -> EngineError {
        EngineError::Io {
            op: "read journal",
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("at offset {offset} (LSN {lsn}): {what}"),
            ),
        }
    }

    fn load(&mut self) -> Result<bool, EngineError> {
        let Some((name_lsn, path)) = self.segments.get(self.seg).cloned() else {
            return Ok(false);
        };
        let file = FsStorage
            .open(&path)
            .map_err(EngineError::io("open", &path))?;
        let len = file.size_bytes().map_err(EngineError::io("stat", &path))?;
        self.data = vec![0; usize::try_from(len).unwrap_or(usize::MAX)];
        file.read_exact_at(&mut self.data, 0)
            .map_err(EngineError::io("read", &path))?;
        let header = SegmentHeader::decode(&self.data)
            .map_err(|e| Self::corrupt(&path, 0, name_lsn, format!("bad segment header: {e:?}")))?;
        if header.store_id != self.store_id {
            return Err(Self::corrupt(
                &path,
                0,
                name_lsn,
                format!(
                    "segment of store {}, not {}",
                    header.store_id, self.store_id
                ),
            ));
        }
        if header.first_lsn != name_lsn || self.next.is_some_and(|n| n != name_lsn) {
            let expected = self.next.unwrap_or(name_lsn);
            return Err(Self::corrupt(
                &path,
                0,
                expected,
                format!("segment starts at LSN {}", header.first_lsn),
            ));
        }
        self.next = Some(header.first_lsn);
        self.pos = HEADER_BYTES;
        self.seg += 1;
        Ok(true)
    }

    fn step(&mut self) -> Result<Option<JournalEntry>, EngineError> {
        loop {
            if self.seg == 0 && !self.load()? {
                return Ok(None);
            }
            let (_, path) = self.segments[self.seg - 1].clone();
            let next = self.next.unwrap_or(Lsn::FIRST);
            let is_last = self.seg == self.segments.len();
            match decode_record(&self.data[self.pos..], self.store_id, MAX_PAYLOAD_BYTES) {
                Ok(rec) if rec.lsn == next => {
                    let record = journal::decode(rec.lsn, rec.payload)?;
                    let entry = JournalEntry {
                        lsn: rec.lsn,
                        acked: rec.acked,
                        record,
                    };
                    self.pos += rec.span;
                    self.next = Some(next.next());
                    return Ok(Some(entry));
                }
                outcome => {
                    // The end of this segment's records.
                    let rest = &self.data[self.pos..];
                    if !is_last {
                        // A sealed segment: whatever follows is unused space if the successor
                        // starts where its records end.
                        if self.segments[self.seg].0 == next {
                            self.load()?;
                            continue;
                        }
                        let what = match outcome {
                            Ok(rec) => format!("record with LSN {}", rec.lsn),
                            Err(e) => format!("{e:?}"),
                        };
                        return Err(Self::corrupt(&path, self.pos as u64, next, what));
                    }
                    if rest.iter().any(|&b| b != 0) {
                        let reason = match outcome {
                            Ok(rec) => {
                                format!("a record with LSN {} where {next} belongs", rec.lsn)
                            }
                            Err(e) => format!("{e:?}"),
                        };
                        self.tail = Some(JournalTail {
                            segment: path,
                            offset: self.pos as u64,
                            lsn: next,
                            reason,
                        });
                    }
                    return Ok(None);
                }
            }
        }
    }
}

impl Iterator for JournalDump {
    type Item = Result<JournalEntry, EngineError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(entry)) => Some(Ok(entry)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
