//! The log: one owner (`&mut self`), appends, group sync, rotation, truncation, recovery on open.

use crate::error::{io_err, Damage, Result, WalError};
use crate::format::{encode_record, record_span, SegmentHeader, HEADER_BYTES};
use crate::lsn::{Lsn, StoreId};
use crate::options::WalOptions;
use crate::reader::Records;
use crate::scan::{scan_log, LogScan};
use crate::segment::{segment_name, temp_name, SegmentInfo, Tail};
use crate::storage::{Storage, StorageFile};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What recovery found and did when the log was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    /// LSN of the first record in the log (equal to `next_lsn` when it is empty).
    pub first_lsn: Lsn,
    pub next_lsn: Lsn,
    /// The torn tail cut off, if there was one.
    pub torn_tail: Option<TornTail>,
    /// Half-created segment files removed.
    pub removed_temp_files: Vec<PathBuf>,
    /// True when this open created a new, empty log.
    pub created: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub path: PathBuf,
    pub offset: u64,
    /// The LSN the first lost record would have had.
    pub lsn: Lsn,
    /// Damaged bytes zeroed.
    pub bytes: u64,
    pub damage: Damage,
}

/// The write-ahead log. Records become durable at [`Wal::sync`]; only then may their effects be
/// acknowledged to anyone.
#[derive(Debug)]
pub struct Wal {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    options: WalOptions,
    store_id: StoreId,
    /// Oldest first; the last one is the active segment.
    segments: Vec<SegmentInfo>,
    active: Box<dyn StorageFile>,
    next_lsn: Lsn,
    /// Highest LSN made durable by a sync (or by recovery).
    synced_lsn: Lsn,
    poisoned: Option<(&'static str, PathBuf)>,
    buf: Vec<u8>,
}

impl Wal {
    /// Open (recovering) or create the log in `dir`. Returns the log and a reader over every
    /// record in it, all durable, in LSN order.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        options: WalOptions,
    ) -> Result<(Wal, Records, RecoveryReport)> {
        options.validate()?;
        let mut report = RecoveryReport::default();
        let names = match storage.list_dir(dir) {
            Ok(names) => names,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && options.create_if_missing => {
                storage
                    .create_dir_all(dir)
                    .map_err(io_err("create directory", dir))?;
                Vec::new()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(WalError::NotFound {
                    dir: dir.to_path_buf(),
                })
            }
            Err(e) => return Err(io_err("list", dir)(e)),
        };
        // Read and check every segment before changing anything, so a corruption error leaves
        // the directory exactly as it was.
        let LogScan {
            store_id,
            mut segments,
            temps,
            next_lsn: expected,
            last_tail,
        } = scan_log(
            storage.as_ref(),
            dir,
            &names,
            options.store_id,
            options.max_record_bytes,
        )?;

        for temp in temps {
            storage
                .remove_file(&temp)
                .map_err(io_err("remove half-created segment", &temp))?;
            report.removed_temp_files.push(temp);
        }
        if !report.removed_temp_files.is_empty() {
            storage
                .sync_dir(dir)
                .map_err(io_err("fsync directory", dir))?;
        }

        let (store_id, active) = if let Some(last) = segments.last() {
            let store_id = store_id.expect("set by the scan of the first segment");
            let mut active = storage
                .open(&last.path)
                .map_err(io_err("open segment", &last.path))?;
            if let Tail::Torn {
                offset,
                damage,
                dirty_end,
            } = last_tail
            {
                zero_range(active.as_mut(), &last.path, offset, dirty_end)?;
                let lsn = expected.expect("segments is not empty");
                tracing::warn!(
                    segment = %last.path.display(), offset, lsn = lsn.0, bytes = dirty_end - offset,
                    %damage, "cut a torn tail: these bytes were never acknowledged"
                );
                report.torn_tail = Some(TornTail {
                    path: last.path.clone(),
                    offset,
                    lsn,
                    bytes: dirty_end - offset,
                    damage,
                });
            }
            // Whatever recovery returns must be durable before anyone acts on it: a process
            // that died (without a power cut) may have left unsynced records in the page cache.
            active
                .sync_data()
                .map_err(io_err("fdatasync segment", &last.path))?;
            (store_id, active)
        } else {
            if !options.create_if_missing {
                return Err(WalError::NotFound {
                    dir: dir.to_path_buf(),
                });
            }
            let store_id = match options.store_id {
                Some(id) => id,
                None => StoreId::random().map_err(WalError::Random)?,
            };
            let first = options.first_lsn;
            let (info, file) = create_segment(storage.as_ref(), dir, store_id, first, &options)?;
            segments.push(info);
            report.created = true;
            (store_id, file)
        };

        let first_lsn = segments[0].first_lsn;
        let next_lsn = expected.unwrap_or(options.first_lsn);
        report.segments = segments.len();
        report.first_lsn = first_lsn;
        report.next_lsn = next_lsn;
        let records = Records::new(
            Arc::clone(&storage),
            segments.clone(),
            store_id,
            options.max_record_bytes,
            first_lsn,
            next_lsn,
        );
        let wal = Wal {
            storage,
            dir: dir.to_path_buf(),
            options,
            store_id,
            segments,
            active,
            next_lsn,
            synced_lsn: Lsn(next_lsn.0 - 1),
            poisoned: None,
            buf: Vec::new(),
        };
        Ok((wal, records, report))
    }

    pub fn store_id(&self) -> StoreId {
        self.store_id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// LSN of the oldest record still in the log.
    pub fn first_lsn(&self) -> Lsn {
        self.segments[0].first_lsn
    }

    /// LSN the next appended record will get.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// Highest LSN known durable.
    pub fn synced_lsn(&self) -> Lsn {
        self.synced_lsn
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    fn check_poison(&self) -> Result<()> {
        match &self.poisoned {
            Some((op, path)) => Err(WalError::Poisoned {
                op,
                path: path.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Poison the log on an error after which what is on disk is unknown. Never retried: after
    /// a failed fsync the kernel may have dropped the dirty pages and marked them clean.
    fn poison(
        &mut self,
        op: &'static str,
        path: PathBuf,
    ) -> impl FnOnce(std::io::Error) -> WalError + '_ {
        move |source| {
            self.poisoned = Some((op, path.clone()));
            WalError::Io { op, path, source }
        }
    }

    /// Append one record (not yet durable: call [`Wal::sync`]).
    pub fn append(&mut self, payload: &[u8]) -> Result<Lsn> {
        Ok(self.append_batch([payload])?.start)
    }

    /// Append records in order, written together. On error nothing of the batch counts as
    /// appended, and the log is poisoned if any of it may have reached the file.
    pub fn append_batch<I, P>(&mut self, payloads: I) -> Result<Range<Lsn>>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        self.check_poison()?;
        let payloads: Vec<P> = payloads.into_iter().collect();
        for p in &payloads {
            let len = p.as_ref().len();
            if len > self.options.max_record_bytes as usize {
                return Err(WalError::RecordTooLarge {
                    len,
                    max: self.options.max_record_bytes,
                });
            }
        }
        let start = self.next_lsn;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let result = self.write_records(&payloads, &mut buf);
        self.buf = buf;
        if result.is_err() && self.poisoned.is_none() {
            // Part of the batch may be in a segment (even synced, by a rotation): continuing
            // would let a later sync acknowledge half of a batch its caller saw fail.
            self.poisoned = Some(("append", self.dir.clone()));
        }
        result?;
        Ok(start..self.next_lsn)
    }

    fn write_records<P: AsRef<[u8]>>(&mut self, payloads: &[P], buf: &mut Vec<u8>) -> Result<()> {
        let limit = self.options.segment_size_bytes;
        for p in payloads {
            let payload = p.as_ref();
            let active_end = self.active_info().end_offset + buf.len() as u64;
            if active_end + record_span(payload.len()) as u64 > limit {
                self.flush(buf)?;
                self.rotate()?;
            }
            encode_record(buf, self.store_id, self.next_lsn, self.synced_lsn, payload);
            self.next_lsn = self.next_lsn.next();
        }
        self.flush(buf)
    }

    fn active_info(&self) -> &SegmentInfo {
        self.segments
            .last()
            .expect("the log always has an active segment")
    }

    fn flush(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let info = self
            .segments
            .last()
            .expect("the log always has an active segment");
        let (offset, path) = (info.end_offset, info.path.clone());
        let written = self.active.write_all_at(buf, offset);
        written.map_err(self.poison("write segment", path))?;
        let info = self
            .segments
            .last_mut()
            .expect("the log always has an active segment");
        info.end_offset += buf.len() as u64;
        buf.clear();
        Ok(())
    }

    /// Make every appended record durable with one `fdatasync`: the group commit point.
    pub fn sync(&mut self) -> Result<()> {
        self.check_poison()?;
        let last = Lsn(self.next_lsn.0 - 1);
        if self.synced_lsn == last {
            return Ok(());
        }
        let path = self.active_info().path.clone();
        // Invariant: a record is acknowledged only after this returns; earlier segments were
        // synced when they were closed.
        let synced = self.active.sync_data();
        synced.map_err(self.poison("fdatasync segment", path))?;
        self.synced_lsn = last;
        Ok(())
    }

    /// Close the active segment and start the next one.
    fn rotate(&mut self) -> Result<()> {
        // Invariant: only the last segment may hold a torn tail, so a segment is durable
        // whole before its successor exists.
        if self.synced_lsn.0 + 1 < self.next_lsn.0 {
            let path = self.active_info().path.clone();
            let synced = self.active.sync_data();
            synced.map_err(self.poison("fdatasync segment", path))?;
        }
        // The records of the closed segment were synced above, but they stay unacknowledged
        // until `sync`: `synced_lsn` is not advanced here, so the records written next still
        // carry the last acknowledged LSN.
        let first = self.next_lsn;
        let (info, file) = create_segment(
            self.storage.as_ref(),
            &self.dir,
            self.store_id,
            first,
            &self.options,
        )?;
        self.segments.push(info);
        self.active = file;
        Ok(())
    }

    /// Drop whole segments whose every record is below `lsn` (a checkpoint covers them). The
    /// active segment is never dropped. Returns how many segments were removed.
    pub fn truncate_before(&mut self, lsn: Lsn) -> Result<usize> {
        self.check_poison()?;
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[1].first_lsn <= lsn {
            let path = self.segments[0].path.clone();
            self.storage
                .remove_file(&path)
                .map_err(io_err("remove segment", &path))?;
            // Invariant: the segments left after any crash are contiguous, so each removal is
            // durable (oldest first) before the next one starts.
            let dir = self.dir.clone();
            let synced = self.storage.sync_dir(&dir);
            synced.map_err(self.poison("fsync directory", dir))?;
            self.segments.remove(0);
            removed += 1;
        }
        Ok(removed)
    }

    /// Read the records from `from` up to everything appended so far (durable or not).
    pub fn read_from(&self, from: Lsn) -> Result<Records> {
        let first = self.first_lsn();
        if from < first || from > self.next_lsn {
            return Err(WalError::LsnOutOfRange {
                lsn: from,
                first,
                next: self.next_lsn,
            });
        }
        Ok(Records::new(
            Arc::clone(&self.storage),
            self.segments.clone(),
            self.store_id,
            self.options.max_record_bytes,
            from,
            self.next_lsn,
        ))
    }
}

/// Create a segment atomically: built under a temporary name, made durable, then renamed.
fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    store_id: StoreId,
    first_lsn: Lsn,
    options: &WalOptions,
) -> Result<(SegmentInfo, Box<dyn StorageFile>)> {
    let temp = dir.join(temp_name(first_lsn));
    let path = dir.join(segment_name(first_lsn));
    let built = (|| {
        let mut file = storage
            .create(&temp)
            .map_err(io_err("create segment", &temp))?;
        let header = SegmentHeader {
            store_id,
            first_lsn,
        }
        .encode();
        file.write_all_at(&header, 0)
            .map_err(io_err("write segment header", &temp))?;
        if options.preallocate {
            let zeros = vec![0u8; 1 << 20];
            let mut offset = HEADER_BYTES as u64;
            while offset < options.segment_size_bytes {
                let n = (options.segment_size_bytes - offset).min(zeros.len() as u64);
                file.write_all_at(&zeros[..n as usize], offset)
                    .map_err(io_err("preallocate segment", &temp))?;
                offset += n;
            }
        }
        // Invariant: a segment under its final name always has a complete, durable header
        // (and its preallocated blocks), so recovery never sees a half-made segment.
        file.sync_data()
            .map_err(io_err("fdatasync new segment", &temp))?;
        Ok(file)
    })();
    let file = match built {
        Ok(file) => file,
        Err(e) => {
            // Nothing was acknowledged in it; a leftover is removed by the next open anyway.
            let _ = storage.remove_file(&temp);
            return Err(e);
        }
    };
    storage
        .rename(&temp, &path)
        .map_err(io_err("rename segment", &path))?;
    // Invariant: the new segment's name is durable before any record in it can be acknowledged.
    storage
        .sync_dir(dir)
        .map_err(io_err("fsync directory", dir))?;
    Ok((
        SegmentInfo {
            path,
            first_lsn,
            end_offset: HEADER_BYTES as u64,
        },
        file,
    ))
}

/// Overwrite `[from, to)` with zeros and make it durable, so no stale record can ever be read
/// past the new end of the log.
fn zero_range(file: &mut dyn StorageFile, path: &Path, from: u64, to: u64) -> Result<()> {
    let zeros = vec![0u8; 1 << 16];
    let mut offset = from;
    while offset < to {
        let n = (to - offset).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], offset)
            .map_err(io_err("zero torn tail", path))?;
        offset += n;
    }
    // Invariant: the cut is durable before anything is appended over it.
    file.sync_data().map_err(io_err("fdatasync segment", path))
}
