//! Reading records back, in LSN order, each checked again as it is read.

use crate::error::{io_err, Damage, Result, WalError};
use crate::format::{decode_record, SegmentHeader, HEADER_BYTES};
use crate::lsn::{Lsn, StoreId};
use crate::segment::SegmentInfo;
use crate::storage::Storage;
use std::sync::Arc;

/// A record: its LSN and its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub lsn: Lsn,
    /// The highest LSN already durable when this record was written.
    pub acked: Lsn,
    pub payload: Vec<u8>,
}

/// An iterator over the records `[from, end)`. It reads one segment at a time (at most the
/// segment size in memory) and stops after the first error, which it yields.
#[derive(Debug)]
pub struct Records {
    storage: Arc<dyn Storage>,
    segments: Vec<SegmentInfo>,
    store_id: StoreId,
    max_payload: u32,
    /// LSN of the next record to decode.
    next: Lsn,
    /// Records below this are decoded (to find their successors) but not yielded.
    from: Lsn,
    end: Lsn,
    /// Index of the segment to load when `data` is used up.
    seg: usize,
    data: Vec<u8>,
    pos: usize,
    failed: bool,
}

impl Records {
    pub(crate) fn new(
        storage: Arc<dyn Storage>,
        segments: Vec<SegmentInfo>,
        store_id: StoreId,
        max_payload: u32,
        from: Lsn,
        end: Lsn,
    ) -> Records {
        let seg = segments
            .iter()
            .rposition(|s| s.first_lsn <= from)
            .unwrap_or(0);
        let next = segments.get(seg).map_or(from, |s| s.first_lsn);
        Records {
            storage,
            segments,
            store_id,
            max_payload,
            next,
            from,
            end,
            seg,
            data: Vec::new(),
            pos: 0,
            failed: false,
        }
    }

    /// Records the iterator will still yield at most.
    pub fn remaining(&self) -> u64 {
        self.end.0.saturating_sub(self.next.max(self.from).0)
    }

    fn load_segment(&mut self) -> Result<()> {
        let Some(info) = self.segments.get(self.seg) else {
            // The log said more records exist than its segments hold: a segment vanished.
            let path = self
                .segments
                .last()
                .map(|s| s.path.clone())
                .unwrap_or_default();
            return Err(WalError::MissingSegment {
                path,
                expected: self.next,
                found: self.end,
            });
        };
        let file = self
            .storage
            .open(&info.path)
            .map_err(io_err("open segment", &info.path))?;
        self.data.resize(info.end_offset as usize, 0);
        file.read_exact_at(&mut self.data, 0)
            .map_err(io_err("read segment", &info.path))?;
        let header = SegmentHeader::decode(&self.data).map_err(|reason| WalError::BadHeader {
            path: info.path.clone(),
            reason,
        })?;
        if header.store_id != self.store_id {
            return Err(WalError::ForeignSegment {
                path: info.path.clone(),
                expected: self.store_id,
                found: header.store_id,
            });
        }
        if header.first_lsn != self.next {
            return Err(WalError::MissingSegment {
                path: info.path.clone(),
                expected: self.next,
                found: header.first_lsn,
            });
        }
        self.pos = HEADER_BYTES;
        self.seg += 1;
        Ok(())
    }

    fn step(&mut self) -> Result<Option<Record>> {
        while self.next < self.end {
            if self.pos >= self.data.len() {
                self.load_segment()?;
                continue;
            }
            let path = &self.segments[self.seg - 1].path;
            let rec = decode_record(&self.data[self.pos..], self.store_id, self.max_payload)
                .map_err(|e| WalError::Corrupt {
                    path: path.clone(),
                    offset: self.pos as u64,
                    lsn: self.next,
                    damage: Damage::Frame(e),
                })?;
            if rec.lsn != self.next {
                return Err(WalError::Corrupt {
                    path: path.clone(),
                    offset: self.pos as u64,
                    lsn: self.next,
                    damage: Damage::OutOfSequence { found: rec.lsn },
                });
            }
            self.pos += rec.span;
            self.next = self.next.next();
            if rec.lsn >= self.from {
                return Ok(Some(Record {
                    lsn: rec.lsn,
                    acked: rec.acked,
                    payload: rec.payload.to_vec(),
                }));
            }
        }
        Ok(None)
    }
}

impl Iterator for Records {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(Some(rec)) => Some(Ok(rec)),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}
