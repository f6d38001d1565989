//! The `txid` marker: the last transaction the driver applied to a snapshot directory.
//!
//! Format, 16 bytes, all integers little-endian:
//! ```text
//! offset 0  4 bytes  magic b"CTX1"
//! offset 4  8 bytes  txid (u64)
//! offset 12 4 bytes  crc32 (IEEE, crc32fast) of bytes 0..12
//! ```
//! A fixed binary record rather than decimal text so that a torn or zero-filled file (possible
//! on some filesystems after a crash before the rename's directory sync) is detected, not read
//! as a different number.

use super::error::{DriverError, MarkerFault};
use super::sync::fsync_dir;
use cairn_state::types::TxId;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const MARKER_NAME: &str = "txid";
/// The marker of a snapshot directory made inline (`write_new_unsynced`): the same 16 bytes as
/// an extended attribute of the directory itself, so a creation costs no inode, directory entry
/// or data block of its own (docs/drivers.md, "Marker format"). Used where the file system
/// has user xattrs; elsewhere the creation writes the `txid` file.
pub const MARKER_XATTR: &str = "user.cairn.txid";
pub(crate) const MARKER_TMP: &str = "txid.tmp";
const MAGIC: &[u8; 4] = b"CTX1";
pub const MARKER_LEN: usize = 16;

pub fn encode(txid: TxId) -> [u8; MARKER_LEN] {
    let mut buf = [0u8; MARKER_LEN];
    buf[0..4].copy_from_slice(MAGIC);
    buf[4..12].copy_from_slice(&txid.0.to_le_bytes());
    let crc = crc32fast::hash(&buf[0..12]);
    buf[12..16].copy_from_slice(&crc.to_le_bytes());
    buf
}

pub fn decode(bytes: &[u8]) -> Result<TxId, MarkerFault> {
    let buf: &[u8; MARKER_LEN] = bytes
        .try_into()
        .map_err(|_| MarkerFault::Length(bytes.len()))?;
    if &buf[0..4] != MAGIC {
        return Err(MarkerFault::Magic);
    }
    let mut crc_bytes = [0u8; 4];
    crc_bytes.copy_from_slice(&buf[12..16]);
    let stored = u32::from_le_bytes(crc_bytes);
    let computed = crc32fast::hash(&buf[0..12]);
    if stored != computed {
        return Err(MarkerFault::Checksum { stored, computed });
    }
    let mut tx = [0u8; 8];
    tx.copy_from_slice(&buf[4..12]);
    Ok(TxId(u64::from_le_bytes(tx)))
}

/// Replaces `<dir>/txid` atomically: a reader (after any crash) sees the old marker or the new
/// one, never a mix.
///
/// A write that fails leaves no `txid.tmp` behind (it is removed, and the removal made
/// durable), or fails with [`DriverError::MarkerTmpLeft`], which stops the engine: recovery
/// looks for a temporary only in the snapshots whose seal a crash interrupted (the journal
/// names them, docs/recovery.md row R23), so one left by a failure the engine carried on
/// from would never be found.
pub fn write(dir: &Path, txid: TxId) -> Result<(), DriverError> {
    let tmp = dir.join(MARKER_TMP);
    let dst = dir.join(MARKER_NAME);
    let mut created = false;
    let result = write_steps(dir, &tmp, &dst, txid, &mut created);
    match result {
        Err(cause) if created => match remove_leftover(dir) {
            Ok(_) => Err(cause),
            Err(e) => Err(DriverError::MarkerTmpLeft {
                path: tmp,
                cause: cause.to_string(),
                source: Box::new(e),
            }),
        },
        other => other,
    }
}

fn write_steps(
    dir: &Path,
    tmp: &Path,
    dst: &Path,
    txid: TxId,
    created: &mut bool,
) -> Result<(), DriverError> {
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(tmp)
            .map_err(|e| DriverError::io("create", tmp, e))?;
        *created = true;
        f.write_all(&encode(txid))
            .map_err(|e| DriverError::io("write", tmp, e))?;
        // Invariant: the rename below must never publish a name whose data is not yet on disk
        // (otherwise a crash leaves `txid` empty or torn).
        super::sync::fsync_open(&f, tmp, false)?;
    }
    fail::fail_point!("driver::marker::before_rename");
    // Invariant: `txid` is replaced in one step; readers never see a partial marker.
    fs::rename(tmp, dst).map_err(|e| DriverError::io("rename", tmp, e))?;
    *created = false;
    fail::fail_point!("driver::marker::after_rename");
    // Invariant: once write() returns, the new marker survives a crash (the rename is durable).
    fsync_dir(dir)?;
    fail::fail_point!("driver::marker::after_dir_sync");
    Ok(())
}

/// The two halves of a batched `write` (docs/drivers.md, "Batched syncs"): this writes
/// `<dir>/txid.tmp` and returns its path, without any sync. The caller makes it durable (one
/// syncfs for the batch) before [`publish`] renames it, and the rename durable (a second one)
/// before anyone relies on the marker.
pub(crate) fn write_unsynced(dir: &Path, name: &str, txid: TxId) -> Result<PathBuf, DriverError> {
    let path = dir.join(name);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| DriverError::io("create", &path, e))?;
    f.write_all(&encode(txid))
        .map_err(|e| DriverError::io("write", &path, e))?;
    Ok(path)
}

/// `write_unsynced` of the temporary marker (a seal's first half).
pub(crate) fn write_tmp_unsynced(dir: &Path, txid: TxId) -> Result<PathBuf, DriverError> {
    write_unsynced(dir, MARKER_TMP, txid)
}

/// The marker of a directory created by the same batch that nothing names yet (an inline
/// creation: its completion is journaled only after the batch's sync), unsynced: the
/// directory's [`MARKER_XATTR`], which is part of its inode (made durable with it). Where the
/// file system has no user xattrs, the `txid` file, whose path is returned: the caller makes
/// it durable too.
pub(crate) fn write_new_unsynced(dir: &Path, txid: TxId) -> Result<Option<PathBuf>, DriverError> {
    match xattr::set(dir, MARKER_XATTR, &encode(txid)) {
        Ok(()) => Ok(None),
        Err(e) if xattrs_unsupported(&e) => write_unsynced(dir, MARKER_NAME, txid).map(Some),
        Err(e) => Err(DriverError::io("setxattr", dir, e)),
    }
}

/// The file system (or its mount) keeps no user xattrs.
fn xattrs_unsupported(e: &std::io::Error) -> bool {
    // ENOTSUP and EOPNOTSUPP are one errno on Linux.
    e.raw_os_error() == Some(libc::EOPNOTSUPP)
}

/// The directory's [`MARKER_XATTR`]: None when it has none (or the file system keeps none).
fn read_xattr(dir: &Path) -> Result<Option<TxId>, DriverError> {
    // xattr::get sizes its buffer from the attribute, which the file system bounds (64 KiB on
    // Linux); decode refuses anything but the 16-byte record.
    match xattr::get(dir, MARKER_XATTR) {
        Ok(None) => Ok(None),
        Ok(Some(bytes)) => decode(&bytes)
            .map(Some)
            .map_err(|fault| DriverError::MarkerCorrupt {
                path: dir.join(MARKER_XATTR),
                fault,
            }),
        Err(e) if xattrs_unsupported(&e) => Ok(None),
        Err(e) => Err(DriverError::io("getxattr", dir, e)),
    }
}

/// Replaces `<dir>/txid` with the `<dir>/txid.tmp` a batch already made durable (no sync).
pub(crate) fn publish(dir: &Path) -> Result<(), DriverError> {
    let tmp = dir.join(MARKER_TMP);
    // Invariant: `txid` is replaced in one step; readers never see a partial marker.
    fs::rename(&tmp, dir.join(MARKER_NAME)).map_err(|e| DriverError::io("rename", &tmp, e))
}

/// Removes a `<dir>/txid.tmp` left by a `write` interrupted before its rename; returns whether
/// there was one. The marker itself is untouched: it is still the old, complete one.
pub fn remove_leftover(dir: &Path) -> Result<bool, DriverError> {
    let tmp = dir.join(MARKER_TMP);
    match fs::remove_file(&tmp) {
        Ok(()) => {
            // Invariant: the temporary stays gone after a power cut; recovery looks for it only
            // while the journal still names the interrupted seal (row R23), so it must not
            // come back once that record is behind a checkpoint.
            fsync_dir(dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(DriverError::io("unlink", tmp, e)),
    }
}

/// Reads the directory's marker: the `txid` file and the [`MARKER_XATTR`], whichever names the
/// later transaction when both are there (an inline creation writes the xattr, a later
/// staged seal or a root from before the xattr the file; txids only grow over a snapshot's
/// life). Neither -> Ok(None); either unreadable or corrupt -> Err.
pub fn read(dir: &Path) -> Result<Option<TxId>, DriverError> {
    let file = read_file(dir)?;
    let xattr = read_xattr(dir)?;
    Ok(file.max(xattr))
}

/// Reads `<dir>/txid`. Missing file -> Ok(None); unreadable or corrupt -> Err.
fn read_file(dir: &Path) -> Result<Option<TxId>, DriverError> {
    let path = dir.join(MARKER_NAME);
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DriverError::io("read", path, e)),
    };
    // Read at most one byte more than a marker: a file of any size off disk costs 17 bytes.
    let mut bytes = Vec::with_capacity(MARKER_LEN + 1);
    std::io::Read::take(file, MARKER_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| DriverError::io("read", &path, e))?;
    decode(&bytes)
        .map(Some)
        .map_err(|fault| DriverError::MarkerCorrupt { path, fault })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_no_temporary() {
        let d = tempfile::tempdir().expect("tempdir");
        // A non-empty directory where the marker goes: the rename fails after the temporary
        // was written and synced.
        std::fs::create_dir_all(d.path().join(MARKER_NAME).join("x")).expect("mkdir");
        assert!(write(d.path(), TxId(3)).is_err());
        assert!(
            !d.path().join(MARKER_TMP).exists(),
            "the temporary is removed"
        );
        assert!(d.path().join(MARKER_NAME).join("x").exists());
        std::fs::remove_dir_all(d.path().join(MARKER_NAME)).expect("rm");
        write(d.path(), TxId(4)).expect("write");
        assert_eq!(read(d.path()).expect("read"), Some(TxId(4)));
        assert!(!d.path().join(MARKER_TMP).exists());
    }

    #[test]
    fn an_inline_marker_is_the_directory_xattr_and_the_later_marker_wins() -> Result<(), DriverError>
    {
        let dir = tempfile::tempdir().map_err(|e| DriverError::io("tempdir", "/tmp", e))?;
        let d = dir.path();
        let file = write_new_unsynced(d, TxId(4))?;
        if file.is_some() {
            // This file system keeps no user xattrs: the creation wrote the file instead.
            println!("skipped: the temp dir's file system has no user xattrs");
            assert_eq!(read(d)?, Some(TxId(4)));
            return Ok(());
        }
        assert!(
            !d.join(MARKER_NAME).exists(),
            "no marker file, no inode of its own"
        );
        assert_eq!(read(d)?, Some(TxId(4)));
        // A staged seal writes the file: it names the later transaction, so it wins.
        write(d, TxId(9))?;
        assert_eq!(read(d)?, Some(TxId(9)));
        // A file older than the xattr (as a root from before the xattr could hold) loses.
        xattr::set(d, MARKER_XATTR, &encode(TxId(12))).map_err(|e| DriverError::io("set", d, e))?;
        assert_eq!(read(d)?, Some(TxId(12)));
        // A torn or foreign xattr is reported, whatever the file says.
        xattr::set(d, MARKER_XATTR, &encode(TxId(12))[..15])
            .map_err(|e| DriverError::io("set", d, e))?;
        assert!(matches!(
            read(d),
            Err(DriverError::MarkerCorrupt {
                fault: MarkerFault::Length(15),
                ..
            })
        ));
        Ok(())
    }

    #[test]
    fn round_trip_and_corruption_detected() {
        for tx in [0u64, 1, 42, u64::MAX] {
            assert_eq!(decode(&encode(TxId(tx))), Ok(TxId(tx)));
        }
        let good = encode(TxId(7));
        assert_eq!(decode(&good[..15]), Err(MarkerFault::Length(15)));
        let mut bad = good;
        bad[0] = b'X';
        assert_eq!(decode(&bad), Err(MarkerFault::Magic));
        let mut flipped = good;
        flipped[5] ^= 1;
        assert!(matches!(
            decode(&flipped),
            Err(MarkerFault::Checksum { .. })
        ));
        assert_eq!(decode(&[0u8; 16]), Err(MarkerFault::Magic));
    }

    #[test]
    fn write_replaces_and_read_reports_missing() -> Result<(), DriverError> {
        let dir = tempfile::tempdir().map_err(|e| DriverError::io("tempdir", "/tmp", e))?;
        assert_eq!(read(dir.path())?, None);
        write(dir.path(), TxId(5))?;
        assert_eq!(read(dir.path())?, Some(TxId(5)));
        write(dir.path(), TxId(9))?;
        assert_eq!(read(dir.path())?, Some(TxId(9)));
        assert!(!dir.path().join(MARKER_TMP).exists());
        fs::write(dir.path().join(MARKER_NAME), b"9\n")
            .map_err(|e| DriverError::io("write", dir.path(), e))?;
        assert!(matches!(
            read(dir.path()),
            Err(DriverError::MarkerCorrupt {
                fault: MarkerFault::Length(2),
                ..
            })
        ));
        // A huge marker is not read whole: at most one byte past the fixed length.
        let huge = fs::File::create(dir.path().join(MARKER_NAME))
            .map_err(|e| DriverError::io("create", dir.path(), e))?;
        huge.set_len(1 << 40)
            .map_err(|e| DriverError::io("truncate", dir.path(), e))?;
        assert!(matches!(
            read(dir.path()),
            Err(DriverError::MarkerCorrupt {
                fault: MarkerFault::Length(17),
                ..
            })
        ));
        Ok(())
    }
}
