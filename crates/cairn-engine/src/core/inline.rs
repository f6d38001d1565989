//! Inline creations and seals (docs/engine.md, "Batched durable steps"): a prepare or view whose
//! tree copies nothing (an empty tree, an overlay upper, a vfs view), and a commit whose tree is
//! small (at most `cairn_driver::INLINE_SEAL_MAX_INODES` inodes), need no worker. Its tree is
//! made straight in `snapshots/<id>` while the batch that begins it is being finished, every
//! such tree of the batch made durable by one shared sync, and its `Complete` journaled in the
//! same append as its `BeginCreate`: one journal sync and one tree sync for the whole batch,
//! no staging, no install. A small commit's tree is sealed in the same durable step (no marker
//! rewrite: the marker keeps the creation's txid) and its `Complete` journaled in the same
//! append as its `BeginCommit`.
//!
//! The devicemapper rule holds: the client is answered only after the journal sync, which
//! follows the tree sync; a crash before the journal sync leaves a tree nothing names, which
//! recovery removes (row R40); a crash before the journal sync of an inline commit leaves its
//! snapshot active with its tree (nothing journaled, or a `BeginCommit` without completion
//! that recovery aborts, row R17).

use super::batch::{Batch, Outgoing};
use super::{Core, Done};
use crate::error::EngineError;
use cairn_driver::NewTree;
use cairn_state::types::{SnapshotId, TxId};
use cairn_state::{Effect, Stage};

impl Core {
    /// The tree of a `BeginCreate`'s effects when the driver makes it inline.
    pub(super) fn inline_tree(
        &self,
        txid: TxId,
        id: SnapshotId,
        effects: &[Effect],
    ) -> Option<NewTree> {
        let [Effect::Stage {
            txid: staged,
            stage,
        }] = effects
        else {
            return None;
        };
        if *staged != txid || !matches!(stage, Stage::Empty { .. } | Stage::OnParent { .. }) {
            return None;
        }
        let (kind, parent) = stage.tree();
        self.driver.creates_inline(kind, parent).then_some(NewTree {
            txid,
            id,
            kind,
            parent,
        })
    }

    /// The snapshot a `BeginCommit`'s effects seal, when the driver may seal it inline.
    pub(super) fn inline_seal(&self, txid: TxId, effects: &[Effect]) -> Option<SnapshotId> {
        let [Effect::Seal { txid: sealed, id }] = effects else {
            return None;
        };
        (*sealed == txid && self.driver.seals_inline()).then_some(*id)
    }

    /// Make the batch's inline trees and seal its small commits' trees, with shared syncs,
    /// then accept each one's `Complete` (or `Abort`) into the same batch: they are journaled
    /// with their beginnings. A commit whose tree is too big goes to a worker's seal as before
    /// (its `BeginCommit` journaled now, its completion in a later batch).
    pub(super) fn complete_inline(&mut self, batch: &mut Batch) {
        let inline = std::mem::take(&mut batch.inline);
        let seals = std::mem::take(&mut batch.inline_seals);
        if inline.is_empty() && seals.is_empty() {
            return;
        }
        if self.failed.is_some() {
            // The batch fails as a whole; its clients hear it through the outbox.
            for (tree, waiter) in inline {
                batch.outbox.push(Outgoing::Begun(tree.txid, waiter));
            }
            for (_, txid, waiter) in seals {
                batch.outbox.push(Outgoing::Begun(txid, waiter));
            }
            return;
        }
        let trees: Vec<NewTree> = inline.iter().map(|(tree, _)| *tree).collect();
        let sealing: Vec<(SnapshotId, TxId)> =
            seals.iter().map(|&(id, txid, _)| (id, txid)).collect();
        fail::fail_point!("engine::inline::before_create");
        let (created, sealed) = self.driver.durable_many(&trees, &sealing);
        let first_effect = batch.effects.len();
        for ((tree, waiter), result) in inline.into_iter().zip(created) {
            self.waiting.insert(tree.txid, waiter);
            let result = result.map_err(EngineError::from);
            self.handle_done(
                Done::Staged {
                    txid: tree.txid,
                    result,
                },
                batch,
            );
        }
        // The trees are already where an install would put them (and durable): no install.
        let mut i = first_effect;
        while i < batch.effects.len() {
            let inline_install = matches!(
                batch.effects[i].0,
                Effect::Install { txid, .. } if trees.iter().any(|t| t.txid == txid)
            );
            if inline_install {
                batch.effects.remove(i);
            } else {
                i += 1;
            }
        }
        for ((id, txid, waiter), result) in seals.into_iter().zip(sealed) {
            match result {
                Some(result) => {
                    self.waiting.insert(txid, waiter);
                    let result = result.map_err(EngineError::from);
                    self.handle_done(Done::Sealed { txid, result }, batch);
                }
                None => {
                    // Too big for this thread: a worker seals it once the batch is journaled.
                    batch
                        .effects
                        .push((Effect::Seal { txid, id }, super::batch::With::Nothing));
                    batch.outbox.push(Outgoing::Begun(txid, waiter));
                }
            }
        }
    }
}
