//! Effects: what applied records ask of the disk. This is the only part of the engine that
//! calls the driver's mutating methods (stage, seal, install, discard, remove), inline for
//! renames and on workers for copies, extractions, syncs and deletions.

use super::{lock, Core, Done};
use crate::api::Reply;
use cairn_state::types::{SnapshotId, TxId};
use cairn_state::Effect;
use std::sync::Arc;

impl Core {
    /// Run effects in order; consecutive installs share one pair of directory fsyncs, and any
    /// other effect waits for the installs before it.
    pub(super) fn run_effects(&mut self, effects: Vec<(Effect, Option<Reply<()>>)>) {
        let mut installs = Vec::new();
        for (effect, reply) in effects {
            match effect {
                Effect::Install { txid, id } => installs.push((txid, id)),
                other => {
                    self.install(&mut installs);
                    self.run_effect(other, reply);
                }
            }
        }
        self.install(&mut installs);
    }

    /// Install the staged trees of completed creations (and empty `installs`).
    fn install(&mut self, installs: &mut Vec<(TxId, SnapshotId)>) {
        if installs.is_empty() || self.failed.is_some() {
            installs.clear();
            return;
        }
        fail::fail_point!("engine::effect::before_install");
        if let Err(e) = self.driver.install_many(installs) {
            // The completions are durable; recovery installs them again.
            let which: Vec<String> = installs
                .iter()
                .map(|(txid, id)| format!("{id} ({txid})"))
                .collect();
            self.fail(format!(
                "install of snapshots {} failed: {e}",
                which.join(", ")
            ));
        }
        fail::fail_point!("engine::effect::after_install");
        installs.clear();
    }

    fn run_effect(&mut self, effect: Effect, reply: Option<Reply<()>>) {
        match effect {
            Effect::Stage { txid, .. } if self.imports.contains_key(&txid) => {
                let job = self.imports.remove(&txid).expect("checked");
                let (driver, done) = (Arc::clone(&self.driver), self.done_tx.clone());
                self.workers.spawn(move || {
                    let result = crate::layers::import(driver.as_ref(), txid, job);
                    let _ = done.send(Done::Imported { txid, result });
                });
            }
            Effect::Stage { txid, kind, parent } if self.inits.remove(&txid) => {
                let (driver, done) = (Arc::clone(&self.driver), self.done_tx.clone());
                self.workers.spawn(move || {
                    let result = driver.stage(txid, kind, parent).and_then(|()| {
                        let tree = driver.staged_tree(txid);
                        crate::layers::write_init_files(&tree).map_err(|source| {
                            cairn_driver::DriverError::Io {
                                op: "write init files",
                                path: tree.clone(),
                                source,
                            }
                        })?;
                        // Invariant: the init snapshot is durable before its completion is journaled.
                        driver.sync_staged(txid)
                    });
                    let _ = done.send(Done::Staged { txid, result });
                });
            }
            Effect::Stage { txid, kind, parent } => {
                let (driver, done) = (Arc::clone(&self.driver), self.done_tx.clone());
                self.workers.spawn(move || {
                    let result = driver.stage(txid, kind, parent);
                    let _ = done.send(Done::Staged { txid, result });
                });
            }
            Effect::Seal { txid, id } => {
                let (driver, done) = (Arc::clone(&self.driver), self.done_tx.clone());
                self.workers.spawn(move || {
                    // The digest is of the tree just made durable: what the commit acknowledges.
                    let result = driver.seal(id, txid).and_then(|usage| {
                        cairn_driver::tree_digest(&driver.tree(id)).map(|d| (usage, d))
                    });
                    let _ = done.send(Done::Sealed { txid, result });
                });
            }
            Effect::Install { txid, id } => self.install(&mut vec![(txid, id)]),
            Effect::Discard { txid } => {
                if let Err(e) = self.driver.discard(txid) {
                    tracing::warn!(%txid, error = %e, "discarding staging failed; recovery removes it");
                }
            }
            Effect::Delete { id } => {
                let driver = Arc::clone(&self.driver);
                let deleting = Arc::clone(&self.deleting);
                lock(&deleting).insert(id);
                self.workers.spawn(move || {
                    if let Err(e) = driver.remove(id) {
                        // The removal is durable; cleanup and recovery delete what is left.
                        tracing::warn!(%id, error = %e, "deleting a removed snapshot's tree failed");
                    }
                    lock(&deleting).remove(&id);
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(()));
                    }
                });
            }
        }
    }
}
