//! The one read-only scan of a log directory: every check recovery makes before it changes
//! anything. [`Wal::open`](crate::Wal::open) runs it and then acts on what it found (cuts the
//! torn tail, removes half-created segments); [`inspect`] runs it for tools that must not
//! change the evidence (`cairn wal dump`), so both call the same bytes corrupt or torn.

use crate::error::{io_err, Damage, Result, WalError};
use crate::lsn::{Lsn, StoreId};
use crate::reader::Records;
use crate::segment::{classify, scan, segment_name, EntryKind, SegmentInfo, Tail};
use crate::storage::Storage;
use crate::wal::TornTail;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the scan of a whole log directory found.
#[derive(Debug)]
pub(crate) struct LogScan {
    /// From the first segment's header (or the caller's, when there are no segments).
    pub store_id: Option<StoreId>,
    /// Oldest first.
    pub segments: Vec<SegmentInfo>,
    /// Half-created segment files (`.wal.tmp`): never hold a record.
    pub temps: Vec<PathBuf>,
    /// The LSN the next record would carry; `None` when there are no segments.
    pub next_lsn: Option<Lsn>,
    /// What follows the last segment's records.
    pub last_tail: Tail,
}

/// Scan the segments named in `names` (the entries of `dir`), checking headers, store ids,
/// LSN continuity and every record, and classify the end of the last one. Changes nothing.
pub(crate) fn scan_log(
    storage: &dyn Storage,
    dir: &Path,
    names: &[OsString],
    store_id: Option<StoreId>,
    max_record_bytes: u32,
) -> Result<LogScan> {
    let mut named: Vec<Lsn> = Vec::new();
    let mut temps = Vec::new();
    for name in names {
        match classify(name) {
            EntryKind::Segment(lsn) => named.push(lsn),
            EntryKind::Temp => temps.push(dir.join(name)),
            EntryKind::Other => {}
        }
    }
    named.sort();

    let mut segments = Vec::with_capacity(named.len());
    let mut store_id = store_id;
    let mut expected: Option<Lsn> = None;
    let mut last_tail = Tail::Clean;
    for (i, &name_lsn) in named.iter().enumerate() {
        let path = dir.join(segment_name(name_lsn));
        let data = read_whole(storage, &path)?;
        let scanned = scan(&data, &path, store_id, max_record_bytes)?;
        store_id = Some(scanned.header.store_id);
        if scanned.header.first_lsn != name_lsn {
            return Err(WalError::MisnamedSegment {
                path,
                named: name_lsn,
                header: scanned.header.first_lsn,
            });
        }
        if let Some(expected) = expected {
            if scanned.header.first_lsn != expected {
                return Err(WalError::MissingSegment {
                    path,
                    expected,
                    found: scanned.header.first_lsn,
                });
            }
        }
        let is_last = i + 1 == named.len();
        if let Tail::Torn { offset, damage, .. } = &scanned.tail {
            if let Some(&successor) = named.get(i + 1) {
                // Invariant: a segment is synced whole before its successor is created, so
                // damage here cannot be a torn write. It is harmless only if every record
                // up to the successor's first LSN is intact: then it lies in unused space.
                if scanned.next_lsn != successor {
                    let damage = match damage {
                        Damage::Frame(e) => Damage::InSealedSegment(*e),
                        other => *other,
                    };
                    return Err(WalError::Corrupt {
                        path,
                        offset: *offset,
                        lsn: scanned.next_lsn,
                        damage,
                    });
                }
                tracing::warn!(
                    segment = %path.display(), offset,
                    "non-zero bytes after the last record of a sealed segment; ignored"
                );
            }
        }
        expected = Some(scanned.next_lsn);
        segments.push(SegmentInfo {
            path,
            first_lsn: scanned.header.first_lsn,
            end_offset: scanned.end_offset,
        });
        if is_last {
            last_tail = scanned.tail;
        }
    }
    Ok(LogScan {
        store_id,
        segments,
        temps,
        next_lsn: expected,
        last_tail,
    })
}

/// What a read-only look at a log found: what [`Wal::open`](crate::Wal::open) would recover,
/// with nothing cut, removed or created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspection {
    pub store_id: StoreId,
    pub segments: usize,
    /// LSN of the first record in the log (equal to `next_lsn` when it is empty).
    pub first_lsn: Lsn,
    pub next_lsn: Lsn,
    /// The torn tail opening the log would cut (`bytes`: how many it would zero).
    pub torn_tail: Option<TornTail>,
    /// Half-created segment files opening the log would remove.
    pub temp_files: Vec<PathBuf>,
}

/// Look at the log in `dir` without changing it: the same scan and the same verdicts as
/// [`Wal::open`](crate::Wal::open) (a torn tail is reported, damage proved durable is
/// [`WalError::Corrupt`]), then a reader over every record the log holds. `store_id`, when
/// given, must match the segments'. A directory without segments is [`WalError::NotFound`].
pub fn inspect(
    storage: Arc<dyn Storage>,
    dir: &Path,
    store_id: Option<StoreId>,
    max_record_bytes: u32,
) -> Result<(Inspection, Records)> {
    let names = match storage.list_dir(dir) {
        Ok(names) => names,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(WalError::NotFound {
                dir: dir.to_path_buf(),
            })
        }
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    let scanned = scan_log(storage.as_ref(), dir, &names, store_id, max_record_bytes)?;
    let (Some(store_id), Some(first), Some(next_lsn)) =
        (scanned.store_id, scanned.segments.first(), scanned.next_lsn)
    else {
        return Err(WalError::NotFound {
            dir: dir.to_path_buf(),
        });
    };
    let first_lsn = first.first_lsn;
    let torn_tail = match (&scanned.last_tail, scanned.segments.last()) {
        (
            Tail::Torn {
                offset,
                damage,
                dirty_end,
            },
            Some(last),
        ) => Some(TornTail {
            path: last.path.clone(),
            offset: *offset,
            lsn: next_lsn,
            bytes: dirty_end - offset,
            damage: *damage,
        }),
        _ => None,
    };
    let inspection = Inspection {
        store_id,
        segments: scanned.segments.len(),
        first_lsn,
        next_lsn,
        torn_tail,
        temp_files: scanned.temps,
    };
    let records = Records::new(
        storage,
        scanned.segments,
        store_id,
        max_record_bytes,
        first_lsn,
        next_lsn,
    );
    Ok((inspection, records))
}

fn read_whole(storage: &dyn Storage, path: &Path) -> Result<Vec<u8>> {
    let file = storage.open(path).map_err(io_err("open segment", path))?;
    let len = file.size_bytes().map_err(io_err("stat segment", path))?;
    if len > crate::options::MAX_SEGMENT_BYTES {
        return Err(WalError::Corrupt {
            path: path.to_path_buf(),
            offset: crate::options::MAX_SEGMENT_BYTES,
            lsn: Lsn::NONE,
            damage: Damage::Frame(crate::format::RecordError::Length { len: u32::MAX }),
        });
    }
    let mut data = vec![0u8; len as usize];
    file.read_exact_at(&mut data, 0)
        .map_err(io_err("read segment", path))?;
    Ok(data)
}
