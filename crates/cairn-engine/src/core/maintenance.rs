//! Maintenance: checkpoints and the log truncation behind them, the derived index, and the
//! strays cleanup and fsck look for.

use super::{lock, Core};
use crate::api::CleanupReport;
use crate::checkpoint;
use crate::error::EngineError;
use cairn_state::types::{SnapshotId, TxId};
use cairn_wal::Lsn;
use std::path::PathBuf;

/// Changed keys the index may lag by before they are written (one sled batch), whatever the
/// checkpoint interval.
pub(super) const INDEX_PENDING_MAX: usize = 1024;

impl Core {
    /// Note the keys a batch changed; the index is written once [`INDEX_PENDING_MAX`] keys
    /// wait, at each checkpoint, before fsck reads it and at shutdown (`write_index`). Between
    /// those it lags the journal, as after any crash: it is derived, and recovery rebuilds it
    /// whenever its applied txid is not the journal's (row R24). Written per batch, it cost a
    /// tenth of the engine thread's time and a sled write-out per batch beside the journal's.
    pub(super) fn update_index(&mut self, journaled: bool, touched: Vec<String>) {
        if !journaled {
            return;
        }
        self.index_pending.extend(touched);
        self.index_behind = true;
        if self.index_pending.len() >= INDEX_PENDING_MAX {
            self.write_index();
        }
    }

    /// Bring the index up to the state: every key changed since its last write, and the
    /// applied txid, in one atomic sled batch (or a rebuild after a failed write).
    pub(crate) fn write_index(&mut self) {
        if !self.index_behind {
            return;
        }
        if self.index.is_damaged() {
            // Left alone until the next open rebuilds it whole: nothing noted is needed, and
            // the set stays bounded.
            self.index_pending.clear();
            return;
        }
        let touched: Vec<String> = std::mem::take(&mut self.index_pending)
            .into_iter()
            .collect();
        let applied = if self.index_stale {
            self.index.rebuild(&self.state)
        } else {
            self.index.apply(&self.state, &touched)
        };
        self.index_behind = false;
        match applied {
            Ok(()) => self.index_stale = false,
            Err(e) => {
                // The index is derived: recovery rebuilds it. Keep going.
                tracing::warn!(error = %e, "index update failed; it will be rebuilt");
                self.index_stale = true;
            }
        }
        fail::fail_point!("engine::index::after_apply");
    }

    /// Write a checkpoint of the state and drop the log behind it.
    pub(crate) fn checkpoint(&mut self) -> Result<(), EngineError> {
        self.write_index();
        let lsn = Lsn(self.wal.next_lsn().0 - 1);
        if lsn == self.checkpoint_lsn {
            return Ok(());
        }
        checkpoint::store_state(
            self.storage.as_ref(),
            &self.root,
            self.store_id,
            lsn,
            &self.state,
        )?;
        fail::fail_point!("engine::checkpoint::after_store");
        self.checkpoint_lsn = lsn;
        self.wal.truncate_before(lsn.next())?;
        fail::fail_point!("engine::checkpoint::after_truncate");
        Ok(())
    }

    /// Remove every tree and staging area on disk that the state does not name.
    pub(crate) fn cleanup(&mut self) -> Result<CleanupReport, EngineError> {
        let strays = self.strays()?;
        for id in strays.trees.iter().chain(&strays.trash) {
            self.driver.remove(*id)?;
        }
        for txid in &strays.staging {
            self.driver.discard(*txid)?;
        }
        Ok(CleanupReport {
            snapshots_removed: strays.trees,
            staging_removed: strays.staging,
        })
    }

    /// What the driver holds that the state does not name, leaving out trees a worker is
    /// deleting right now (their removal is journaled; the worker finishes it).
    pub(crate) fn strays(&self) -> Result<Strays, EngineError> {
        let inv = self.driver.inventory()?;
        let deleting = lock(&self.deleting).clone();
        let ids: std::collections::BTreeSet<SnapshotId> =
            self.state.snapshots.values().map(|s| s.id).collect();
        Ok(Strays {
            trees: inv
                .installed
                .keys()
                .filter(|id| !ids.contains(id) && !deleting.contains(id))
                .copied()
                .collect(),
            staging: inv
                .staging
                .iter()
                .filter(|t| !self.state.pending.contains_key(t))
                .copied()
                .collect(),
            trash: inv
                .trash
                .iter()
                .filter(|id| !deleting.contains(id))
                .copied()
                .collect(),
            unexpected: inv.unexpected,
        })
    }
}

/// Trees, staging areas and trash on disk that nothing in the state names.
#[derive(Debug)]
pub(crate) struct Strays {
    pub trees: Vec<SnapshotId>,
    pub staging: Vec<TxId>,
    pub trash: Vec<SnapshotId>,
    pub unexpected: Vec<PathBuf>,
}
