//! The write log: every write and flush the disk received since its base, in arrival order.
//!
//! Format (little endian), one record after another, nothing else:
//! `kind: u8` (1 write, 2 zero range, 3 flush), `offset_bytes: u64`, `len_bytes: u64`, then for a
//! write `len_bytes` bytes of data. A flush has offset and length 0. The server appends a record
//! with one `write` call before it answers the request, so the log is complete whenever the test
//! reads it between requests.

use crate::DiskError;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const KIND_WRITE: u8 = 1;
pub const KIND_ZERO: u8 = 2;
pub const KIND_FLUSH: u8 = 3;
pub const RECORD_HEADER_BYTES: usize = 17;

/// A write is at most this long (the server's `max_write`); a longer length read off the log is
/// a damaged log, not an allocation.
pub const MAX_WRITE_BYTES: u64 = 16 << 20;

/// Encodes a record's header.
pub fn header(kind: u8, offset_bytes: u64, len_bytes: u64) -> [u8; RECORD_HEADER_BYTES] {
    let mut h = [0u8; RECORD_HEADER_BYTES];
    h[0] = kind;
    h[1..9].copy_from_slice(&offset_bytes.to_le_bytes());
    h[9..17].copy_from_slice(&len_bytes.to_le_bytes());
    h
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Write,
    Zero,
}

/// One write (or zeroed range) of the log; its data stays in the log file.
#[derive(Clone, Copy, Debug)]
pub struct Write {
    pub kind: RecordKind,
    pub offset_bytes: u64,
    pub len_bytes: u64,
    /// Where the data starts in the log file (writes only).
    pub data_at: u64,
}

/// The log, read: the writes between flushes ("epochs"). `epochs[0]` holds the writes before
/// the first flush, `epochs[k]` those between flush `k` and flush `k + 1`; the last epoch holds
/// the writes after the last flush.
#[derive(Debug)]
pub struct Log {
    path: PathBuf,
    pub epochs: Vec<Vec<Write>>,
}

impl Log {
    pub fn read(path: &Path) -> Result<Log, DiskError> {
        let io = |e| DiskError::Io {
            op: "read the write log",
            path: path.to_path_buf(),
            source: e,
        };
        let file = File::open(path).map_err(io)?;
        let total = file.metadata().map_err(io)?.len();
        let mut r = BufReader::new(file);
        let mut epochs = Vec::new();
        let mut open = Vec::new();
        let mut at = 0u64;
        while at < total {
            let mut h = [0u8; RECORD_HEADER_BYTES];
            r.read_exact(&mut h).map_err(io)?;
            let mut word = [0u8; 8];
            word.copy_from_slice(&h[1..9]);
            let offset_bytes = u64::from_le_bytes(word);
            word.copy_from_slice(&h[9..17]);
            let len_bytes = u64::from_le_bytes(word);
            at += RECORD_HEADER_BYTES as u64;
            let bad = |why: &'static str| DiskError::BadLog {
                path: path.to_path_buf(),
                at_bytes: at,
                why,
            };
            match h[0] {
                KIND_WRITE => {
                    if len_bytes > MAX_WRITE_BYTES || at + len_bytes > total {
                        return Err(bad("write longer than the log or max_write"));
                    }
                    let w = Write {
                        kind: RecordKind::Write,
                        offset_bytes,
                        len_bytes,
                        data_at: at,
                    };
                    open.push(w);
                    r.seek(SeekFrom::Current(len_bytes as i64)).map_err(io)?;
                    at += len_bytes;
                }
                KIND_ZERO => {
                    let w = Write {
                        kind: RecordKind::Zero,
                        offset_bytes,
                        len_bytes,
                        data_at: 0,
                    };
                    open.push(w);
                }
                KIND_FLUSH => epochs.push(std::mem::take(&mut open)),
                _ => return Err(bad("unknown record kind")),
            }
        }
        epochs.push(open);
        Ok(Log {
            path: path.to_path_buf(),
            epochs,
        })
    }

    /// How many flushes completed.
    pub fn flushes(&self) -> usize {
        self.epochs.len() - 1
    }

    /// Writes in all.
    pub fn writes(&self) -> usize {
        self.epochs.iter().map(Vec::len).sum()
    }

    /// Applies `sectors` of write `w` (all when `None`; else a mask over its sectors of
    /// `sector_bytes` each) to `image`.
    pub fn apply(
        &self,
        image: &File,
        w: &Write,
        sectors: Option<&[bool]>,
        sector_bytes: usize,
    ) -> Result<(), DiskError> {
        let io = |e| DiskError::Io {
            op: "replay a write into a crash image",
            path: self.path.clone(),
            source: e,
        };
        let data = match w.kind {
            RecordKind::Write => {
                let mut data = vec![0u8; w.len_bytes as usize];
                File::open(&self.path)
                    .and_then(|f| f.read_exact_at(&mut data, w.data_at))
                    .map_err(io)?;
                data
            }
            RecordKind::Zero => vec![0u8; w.len_bytes as usize],
        };
        match sectors {
            None => image.write_all_at(&data, w.offset_bytes).map_err(io)?,
            Some(mask) => {
                for (i, chunk) in data.chunks(sector_bytes).enumerate() {
                    if mask.get(i).copied().unwrap_or(false) {
                        let off = w.offset_bytes + (i * sector_bytes) as u64;
                        image.write_all_at(chunk, off).map_err(io)?;
                    }
                }
            }
        }
        Ok(())
    }
}
