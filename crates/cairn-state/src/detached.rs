//! Detached imports: a layer extracted before its parent is a layer, its parent named only
//! when it completes (docs/parallel-import.md).
//!
//! The ordering rule lives here: `CompleteDetachedImport` is refused unless its parent is a
//! layer in the state, so a child can never be recorded before its parent's completion, and a
//! child whose parent failed (aborted, never recorded, or removed meanwhile) is refused and
//! then aborted by the engine. Until it completes a detached import holds nothing and nothing
//! depends on it: dropping it (abort, or recovery's R41) leaves no dangling reference.

use super::layers::ImportDone;
use super::{
    Draft, Effect, Invalid, Kind, Pending, Read, Snapshot, Stage, StateError, MAX_LAYER_DEPTH,
};
use crate::types::{SnapshotId, TxId, Usage};

impl Draft<'_> {
    pub(super) fn begin_detached_import(
        &mut self,
        txid: TxId,
        id: SnapshotId,
        pin: bool,
        time_ns: i64,
    ) -> Result<Vec<Effect>, StateError> {
        self.take_id(id);
        let snapshot =
            Snapshot::created(id, Kind::Committed, None, Default::default(), time_ns, txid);
        self.pending
            .insert(txid, Pending::DetachedImport { snapshot, pin });
        // Staged like a base layer: the driver's extraction does not read a parent.
        Ok(vec![Effect::Stage {
            txid,
            stage: Stage::Import { parent: None },
        }])
    }

    pub(super) fn complete_detached_import(
        &mut self,
        of: TxId,
        parent: &Option<String>,
        diff_id: &str,
        chain_id: &str,
        size_bytes: u64,
        usage: Usage,
    ) -> Result<Vec<Effect>, StateError> {
        let Some(Pending::DetachedImport { mut snapshot, pin }) = self.pending.remove(&of) else {
            return Err(StateError::NotPending { txid: of });
        };
        if let Some(p) = parent {
            // The parent must be a layer now (NotFound otherwise): its completion came first.
            let depth = self.layer_chain(p)?.len();
            if depth >= MAX_LAYER_DEPTH {
                return Err(StateError::InvalidArgument {
                    reason: Invalid::LayerChainTooDeep {
                        max: MAX_LAYER_DEPTH,
                    },
                });
            }
        }
        snapshot.parent = parent.clone();
        let done = ImportDone {
            diff_id,
            chain_id,
            size_bytes,
            usage,
        };
        self.record_layer(of, snapshot, parent.clone(), pin, done)
    }
}
