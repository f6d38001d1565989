//! The sled index: snapshot metadata by key, and the last transaction it reflects, written in
//! one batch. Derived, never trusted: recovery rebuilds it whenever its transaction id differs
//! from the journal's.

use super::error::EngineError;
use crate::state::{Snapshot, State};
use crate::types::TxId;
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
        // The caller holds the root lock, so a held sled lock can only be a previous engine of
        // this process whose sled background threads still hold the db for a moment after it
        // was dropped (sled 0.34 releases its file lock when its flusher thread exits, up to
        // flush_every_ms later). Wait for it rather than fail a reopen after a clean close.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let opened = sled::Config::new()
                .path(path)
                .mode(sled::Mode::LowSpace)
                .cache_capacity(16 << 20)
                .open();
            match opened {
                Ok(db) => return Ok(Index { db, path: path.to_path_buf() }),
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(source) => return Err(EngineError::Index { path: path.to_path_buf(), source }),
            }
        }
    }

    fn err(&self) -> impl FnOnce(sled::Error) -> EngineError + '_ {
        |source| EngineError::Index { path: self.path.clone(), source }
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

    /// Replace everything with the given state.
    pub fn rebuild(&self, state: &State) -> Result<(), EngineError> {
        self.db.clear().map_err(self.err())?;
        let keys: Vec<String> = state.snapshots.keys().cloned().collect();
        self.apply(state, &keys)
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
