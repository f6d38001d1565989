//! The sled index: snapshot metadata by key, and the last transaction it reflects, written in
//! one batch. Derived, never trusted: recovery rebuilds it whenever its transaction id differs
//! from the journal's.

use super::error::EngineError;
use cairn_state::types::TxId;
use cairn_state::{Snapshot, State};
use std::path::{Path, PathBuf};

const APPLIED_TXID: &[u8] = b"meta/applied_txid";
const SNAP_PREFIX: &[u8] = b"snap/";

#[derive(Debug)]
pub struct Index {
    db: sled::Db,
    path: PathBuf,
}

fn snap_key(key: &str) -> Vec<u8> {
    let mut k = SNAP_PREFIX.to_vec();
    k.extend_from_slice(key.as_bytes());
    k
}

impl Index {
    pub fn open(path: &Path) -> Result<Index, EngineError> {
        // The caller holds the root's LOCK, so a held sled lock can only be this process's own
        // index of a root just closed: sled releases its file lock from background threads a
        // moment after the last handle is dropped. Wait for it (bounded) instead of failing a
        // close-then-reopen.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut discarded = false;
        loop {
            let opened = sled::Config::new()
                .path(path)
                .mode(sled::Mode::LowSpace)
                .cache_capacity(16 << 20)
                .open();
            match opened {
                Ok(db) => {
                    return Ok(Index {
                        db,
                        path: path.to_path_buf(),
                    })
                }
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(source) if !discarded => {
                    // The index is derived and this process holds the root: an index sled
                    // cannot open (damaged files) is discarded and rebuilt from the journal
                    // (docs/recovery.md, row R28).
                    tracing::warn!(path = %path.display(), error = %source, "index unreadable; rebuilding it");
                    discarded = true;
                    match std::fs::remove_dir_all(path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(EngineError::io("remove damaged index", path)(e)),
                    }
                }
                Err(source) => {
                    return Err(EngineError::Index {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        }
    }

    fn err(&self) -> impl FnOnce(sled::Error) -> EngineError + '_ {
        |source| EngineError::Index {
            path: self.path.clone(),
            source,
        }
    }

    /// The transaction the index reflects; `None` if it has never been written or is unreadable.
    pub fn applied_txid(&self) -> Option<TxId> {
        let bytes = self.db.get(APPLIED_TXID).ok()??;
        let arr: [u8; 8] = bytes.as_ref().try_into().ok()?;
        Some(TxId(u64::from_le_bytes(arr)))
    }

    /// Write the current value of each touched key (or its removal) and the applied txid, in
    /// one atomic batch.
    pub fn apply(&self, state: &State, touched: &[String]) -> Result<(), EngineError> {
        let mut batch = sled::Batch::default();
        for key in touched {
            match state.snapshots.get(key) {
                Some(snap) => batch.insert(snap_key(key), encode(snap)),
                None => batch.remove(snap_key(key)),
            }
        }
        batch.insert(APPLIED_TXID, &state.last_txid.0.to_le_bytes());
        self.db.apply_batch(batch).map_err(self.err())
    }

    /// Make the index hold exactly the given state. Only what differs is written (after a
    /// crash the index lags by a few batches at most), in one atomic batch with the txid.
    pub fn rebuild(&self, state: &State) -> Result<(), EngineError> {
        let mut batch = sled::Batch::default();
        let mut seen = std::collections::BTreeSet::new();
        for item in self.db.iter() {
            let (k, v) = item.map_err(self.err())?;
            let current = k
                .strip_prefix(SNAP_PREFIX)
                .and_then(|key| std::str::from_utf8(key).ok())
                .and_then(|key| state.snapshots.get_key_value(key));
            match current {
                Some((key, snap)) if v.as_ref() == encode(snap).as_slice() => {
                    seen.insert(key.as_str());
                }
                Some(_) => {}
                // Anything else (removed snapshots, unknown keys) goes; the txid is rewritten.
                None => batch.remove(k),
            }
        }
        for (key, snap) in &state.snapshots {
            if !seen.contains(key.as_str()) {
                batch.insert(snap_key(key), encode(snap));
            }
        }
        batch.insert(APPLIED_TXID, &state.last_txid.0.to_le_bytes());
        self.db.apply_batch(batch).map_err(self.err())
    }

    /// Every snapshot the index holds, for fsck.
    pub fn snapshots(&self) -> Result<Vec<(String, Option<Snapshot>)>, EngineError> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(SNAP_PREFIX) {
            let (k, v) = item.map_err(self.err())?;
            let key = String::from_utf8_lossy(&k[SNAP_PREFIX.len()..]).into_owned();
            out.push((key, postcard::from_bytes(&v).ok()));
        }
        Ok(out)
    }

    pub fn flush(&self) -> Result<(), EngineError> {
        self.db.flush().map(|_| ()).map_err(self.err())
    }
}

fn encode(snap: &Snapshot) -> Vec<u8> {
    postcard::to_stdvec(snap).expect("a Snapshot always encodes")
}
