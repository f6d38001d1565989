//! Effects: what applied records ask of the disk. This is the only part of the engine that
//! calls the driver's mutating methods (stage, seal, install, discard, remove), inline for
//! renames and on workers for copies, extractions, syncs and deletions.

use super::batch::With;
use super::{lock, Core, Done};
use crate::error::EngineError;
use crate::workers::Panicked;
use cairn_driver::DriverError;
use cairn_state::types::{SnapshotId, TxId, Usage};
use cairn_state::{Effect, Stage};
use std::sync::Arc;

/// A sealed tree's usage and digest, or why the seal failed.
type SealResult = Result<(Usage, String), EngineError>;

/// Seals per worker job, at most: a batch's seals beyond it go to further jobs (and workers).
const MAX_SEALS_PER_JOB: usize = 64;

impl Core {
    /// Run effects in order; consecutive installs share one pair of directory fsyncs, and any
    /// other effect waits for the installs before it.
    pub(super) fn run_effects(&mut self, effects: Vec<(Effect, With)>) {
        let mut installs = Vec::new();
        // Every seal of the batch goes to one worker job with shared syncs: a snapshot being
        // committed cannot be the subject of any other effect of the batch.
        let mut seals = Vec::new();
        for (effect, with) in effects {
            match effect {
                Effect::Install { txid, id } => installs.push((txid, id)),
                Effect::Seal { txid, id } => seals.push((id, txid)),
                other => {
                    self.install(&mut installs);
                    self.run_effect(other, with);
                }
            }
        }
        self.install(&mut installs);
        for chunk in seals.chunks(MAX_SEALS_PER_JOB) {
            self.seal_many(chunk.to_vec());
        }
    }

    /// Seal every (id, txid) on one worker, the trees' syncs shared (`Driver::seal_many`), then
    /// digest each tree just made durable: what its commit acknowledges.
    fn seal_many(&mut self, items: Vec<(SnapshotId, TxId)>) {
        let (driver, done) = (Arc::clone(&self.driver), self.done_tx.clone());
        let txids: Vec<TxId> = items.iter().map(|&(_, txid)| txid).collect();
        let work = move || {
            let sealed = driver.seal_many(&items);
            items
                .iter()
                .zip(sealed)
                .map(|(&(id, txid), r)| {
                    let r = r.and_then(|usage| {
                        let tree = driver.open_tree(id)?;
                        cairn_driver::tree_digest(tree.path()).map(|d| (usage, d))
                    });
                    (txid, r.map_err(EngineError::from))
                })
                .collect::<Vec<_>>()
        };
        let deliver = move |r: Result<Vec<(TxId, SealResult)>, Panicked>| match r {
            Ok(results) => {
                for (txid, result) in results {
                    let _ = done.send(Done::Sealed { txid, result });
                }
            }
            Err(p) => {
                for txid in txids {
                    let _ = done.send(Done::Sealed {
                        txid,
                        result: Err(p.clone().into()),
                    });
                }
            }
        };
        self.workers.run("seal", work, deliver);
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

    fn run_effect(&mut self, effect: Effect, with: With) {
        let (driver, done) = (Arc::clone(&self.driver), self.done_tx.clone());
        match (effect, with) {
            (
                Effect::Stage {
                    txid,
                    stage: Stage::Import { .. },
                },
                with,
            ) => {
                let deliver = move |r: Result<_, Panicked>| {
                    let result = r.unwrap_or_else(|p| Err(p.into()));
                    let _ = done.send(Done::Imported { txid, result });
                };
                match with {
                    With::Import(job) => self.workers.run(
                        "import",
                        move || crate::layers::import(driver.as_ref(), txid, job),
                        deliver,
                    ),
                    // Only a bug stages an import without its input: fail the import.
                    _ => deliver(Err(Panicked {
                        job: "import",
                        message: format!("import {txid} was staged without its input"),
                    })),
                }
            }
            (Effect::Stage { txid, stage }, _) => {
                let (kind, parent) = stage.tree();
                let init = matches!(stage, Stage::ContainerInit { .. });
                let work = move || {
                    driver.stage(txid, kind, parent)?;
                    if init {
                        driver.attach_staged(txid)?;
                        let tree = driver.staged_tree(txid);
                        crate::layers::write_init_files(&tree).map_err(|source| {
                            DriverError::Io {
                                op: "write init files",
                                path: tree.clone(),
                                source,
                            }
                        })?;
                        // Invariant: the init snapshot is durable before its completion is
                        // journaled.
                        driver.sync_staged(txid)?;
                    }
                    Ok(())
                };
                let deliver = move |r: Result<Result<(), DriverError>, Panicked>| {
                    let result = match r {
                        Ok(r) => r.map_err(EngineError::from),
                        Err(p) => Err(p.into()),
                    };
                    let _ = done.send(Done::Staged { txid, result });
                };
                self.workers.run("stage", work, deliver);
            }
            (Effect::Seal { txid, id }, _) => self.seal_many(vec![(id, txid)]),
            (Effect::Install { txid, id }, _) => self.install(&mut vec![(txid, id)]),
            (Effect::Mount { txid, key, target }, _) => self.run_mount(txid, &key, target),
            (Effect::Unmount { txid, target }, _) => self.run_unmount(txid, target),
            (Effect::Discard { txid }, _) => {
                if let Err(e) = self.driver.discard(txid) {
                    tracing::warn!(%txid, error = %e, "discarding staging failed; recovery removes it");
                }
            }
            (Effect::Delete { id }, with) => {
                let reply = match with {
                    With::Reply(reply) => Some(reply),
                    With::Nothing | With::Import(_) => None,
                };
                let deleting = Arc::clone(&self.deleting);
                lock(&deleting).insert(id);
                let work = move || {
                    if let Err(e) = driver.remove(id) {
                        // The removal is durable; cleanup and recovery delete what is left.
                        tracing::warn!(%id, error = %e, "deleting a removed snapshot's tree failed");
                    }
                };
                let deliver = move |r: Result<(), Panicked>| {
                    lock(&deleting).remove(&id);
                    if let Some(reply) = reply {
                        // The removal is journaled either way; a panic while deleting its tree
                        // is still an error for the client (cleanup deletes what is left).
                        let _ = reply.send(r.map_err(EngineError::from));
                    }
                };
                self.workers.run("delete", work, deliver);
            }
        }
    }
}
