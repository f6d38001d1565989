//! Inline creations (docs/engine.md, "Batched durable steps"): a prepare or view whose tree
//! copies nothing (an empty tree, an overlay upper, a vfs view) needs no worker. Its tree is
//! made straight in `snapshots/<id>` while the batch that begins it is being finished, every
//! such tree of the batch made durable by one shared sync, and its `Complete` journaled in the
//! same append as its `BeginCreate`: one journal sync and one tree sync for the whole batch,
//! no staging, no install.
//!
//! The devicemapper rule holds: the client is answered only after the journal sync, which
//! follows the tree sync; a crash before the journal sync leaves a tree nothing names, which
//! recovery removes (row R40).

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

    /// Make the batch's inline trees with one shared sync, then accept each one's `Complete`
    /// (or `Abort`) into the same batch: they are journaled with their beginnings.
    pub(super) fn complete_inline(&mut self, batch: &mut Batch) {
        let inline = std::mem::take(&mut batch.inline);
        if inline.is_empty() {
            return;
        }
        if self.failed.is_some() {
            // The batch fails as a whole; its clients hear it through the outbox.
            for (tree, waiter) in inline {
                batch.outbox.push(Outgoing::Begun(tree.txid, waiter));
            }
            return;
        }
        let trees: Vec<NewTree> = inline.iter().map(|(tree, _)| *tree).collect();
        fail::fail_point!("engine::inline::before_create");
        let results = self.driver.create_many(&trees);
        let first_effect = batch.effects.len();
        for ((tree, waiter), result) in inline.into_iter().zip(results) {
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
    }
}
