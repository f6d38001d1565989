//! The sled index: snapshot metadata by key, and the last transaction it reflects, written in
//! one batch. Derived, never trusted: recovery rebuilds it whenever its transaction id differs
//! from the journal's.
//!
//! sled is not trusted to handle disk errors either: 0.34.7 unwraps some of them (the EROFS of
//! `sync_all` when its log drops, pagecache/logger.rs:467, after an EIO turned the file system
//! read-only). Every call into sled, its drop included, runs under `catch_unwind`; a panic
//! becomes [`EngineError::IndexDamaged`] and sets the index aside: no further call reaches
//! sled, and the next open rebuilds it from the journal (its applied txid lags, rows R24/R28).

use super::error::EngineError;
use cairn_state::types::TxId;
use cairn_state::{Snapshot, State};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const APPLIED_TXID: &[u8] = b"meta/applied_txid";
const SNAP_PREFIX: &[u8] = b"snap/";

#[derive(Debug)]
pub struct Index {
    /// `None` only while it is dropped.
    db: Option<sled::Db>,
    path: PathBuf,
    /// Set once, by the first call into sled that panicked: its panic message.
    damaged: OnceLock<String>,
}

/// What a caught panic said, for the error and the one-line warning.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (
        payload.downcast_ref::<&str>(),
        payload.downcast_ref::<String>(),
    ) {
        (Some(s), _) => (*s).to_owned(),
        (_, Some(s)) => s.clone(),
        _ => "a panic without a message".to_owned(),
    }
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
            let opened = catch_unwind(|| {
                sled::Config::new()
                    .path(path)
                    .mode(sled::Mode::LowSpace)
                    .cache_capacity(16 << 20)
                    .open()
            })
            .unwrap_or_else(|payload| {
                // A panic in sled's open (its recovery) is treated as damaged files.
                Err(sled::Error::ReportableBug(panic_message(payload.as_ref())))
            });
            match opened {
                Ok(db) => {
                    return Ok(Index {
                        db: Some(db),
                        path: path.to_path_buf(),
                        damaged: OnceLock::new(),
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

    /// Whether a call into sled panicked: the index is set aside until the next open.
    pub fn is_damaged(&self) -> bool {
        self.damaged.get().is_some()
    }

    /// Run one call into sled (`op` names it), containing a panic in it: the first one is
    /// logged once and sets the index aside; from then on every call fails without sled.
    fn guard<T>(
        &self,
        op: &'static str,
        call: impl FnOnce(&sled::Db) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let damaged = |panic: &str| EngineError::IndexDamaged {
            path: self.path.clone(),
            panic: panic.to_owned(),
        };
        if let Some(panic) = self.damaged.get() {
            return Err(damaged(panic));
        }
        let Some(db) = self.db.as_ref() else {
            return Err(damaged("the index is being dropped"));
        };
        match catch_unwind(AssertUnwindSafe(|| call(db))) {
            Ok(result) => result,
            Err(payload) => {
                let panic = self.damaged.get_or_init(|| {
                    let panic = panic_message(payload.as_ref());
                    tracing::warn!(path = %self.path.display(), op, %panic, "sled panicked; the index is set aside and rebuilt at the next open");
                    panic
                });
                Err(damaged(panic))
            }
        }
    }

    /// The transaction the index reflects; `None` if it has never been written or is unreadable.
    pub fn applied_txid(&self) -> Option<TxId> {
        let bytes = self
            .guard("get applied txid", |db| {
                Ok(db.get(APPLIED_TXID).ok().flatten())
            })
            .ok()??;
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
        self.guard("apply", |db| db.apply_batch(batch).map_err(self.err()))
    }

    /// Make the index hold exactly the given state. Only what differs is written (after a
    /// crash the index lags by a few batches at most), in one atomic batch with the txid.
    pub fn rebuild(&self, state: &State) -> Result<(), EngineError> {
        self.guard("rebuild", |db| self.rebuild_in(db, state))
    }

    fn rebuild_in(&self, db: &sled::Db, state: &State) -> Result<(), EngineError> {
        let mut batch = sled::Batch::default();
        let mut seen = std::collections::BTreeSet::new();
        for item in db.iter() {
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
        db.apply_batch(batch).map_err(self.err())
    }

    /// Every snapshot the index holds, for fsck.
    pub fn snapshots(&self) -> Result<Vec<(String, Option<Snapshot>)>, EngineError> {
        self.guard("scan", |db| {
            let mut out = Vec::new();
            for item in db.scan_prefix(SNAP_PREFIX) {
                let (k, v) = item.map_err(self.err())?;
                let key = String::from_utf8_lossy(&k[SNAP_PREFIX.len()..]).into_owned();
                out.push((key, postcard::from_bytes(&v).ok()));
            }
            Ok(out)
        })
    }

    pub fn flush(&self) -> Result<(), EngineError> {
        self.guard("flush", |db| db.flush().map(|_| ()).map_err(self.err()))
    }
}

impl Drop for Index {
    /// sled flushes and syncs when its last handle drops, and unwraps that sync's error: the
    /// drop is contained like every other call into sled.
    fn drop(&mut self) {
        let Some(db) = self.db.take() else { return };
        if let Some(panic) = drop_contained(db) {
            if self.damaged.get().is_none() {
                tracing::warn!(path = %self.path.display(), %panic, "sled panicked closing the index; it is rebuilt at the next open");
            }
        }
    }
}

/// Drops `value`, containing a panic in its drop: that panic's message.
fn drop_contained<T>(value: T) -> Option<String> {
    catch_unwind(AssertUnwindSafe(move || drop(value)))
        .err()
        .map(|payload| panic_message(payload.as_ref()))
}

fn encode(snap: &Snapshot) -> Vec<u8> {
    postcard::to_stdvec(snap).expect("a Snapshot always encodes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn damaged_panic(r: Result<(), EngineError>) -> Option<String> {
        match r {
            Err(EngineError::IndexDamaged { panic, .. }) => Some(panic),
            _ => None,
        }
    }

    #[test]
    fn a_panic_in_sled_sets_the_index_aside_until_the_next_open() -> Result<(), EngineError> {
        let dir = tempfile::tempdir().map_err(EngineError::io("tempdir", Path::new("/tmp")))?;
        let path = dir.path().join("index");
        let state = State {
            last_txid: TxId(7),
            ..State::default()
        };
        let index = Index::open(&path)?;
        index.rebuild(&state)?;
        let first = index.guard("test", |_| -> Result<(), EngineError> {
            panic!("injected sled panic")
        });
        assert_eq!(damaged_panic(first).as_deref(), Some("injected sled panic"));
        assert!(index.is_damaged());
        // From now on nothing reaches sled, and every call says why.
        let mut reached = false;
        let again = index.guard("test", |_| {
            reached = true;
            Ok(())
        });
        assert!(!reached, "a damaged index was called into");
        assert_eq!(damaged_panic(again).as_deref(), Some("injected sled panic"));
        assert!(damaged_panic(index.apply(&state, &[])).is_some());
        assert!(damaged_panic(index.rebuild(&state)).is_some());
        assert!(damaged_panic(index.flush()).is_some());
        assert!(matches!(
            index.snapshots(),
            Err(EngineError::IndexDamaged { .. })
        ));
        assert_eq!(index.applied_txid(), None);
        drop(index);
        // The next open uses it again (recovery rebuilds it when its txid lags the journal).
        let index = Index::open(&path)?;
        assert!(!index.is_damaged());
        assert_eq!(index.applied_txid(), Some(TxId(7)));
        Ok(())
    }

    #[test]
    fn a_panic_while_sled_drops_is_contained() {
        // Stands in for sled's drop unwrapping an EROFS (logger.rs:467).
        struct PanicsOnDrop;
        impl Drop for PanicsOnDrop {
            fn drop(&mut self) {
                panic!("injected drop panic");
            }
        }
        assert_eq!(
            drop_contained(PanicsOnDrop).as_deref(),
            Some("injected drop panic")
        );
        assert_eq!(drop_contained(String::from("fine")), None);
    }
}
