//! Worker completions: the result of a two-step transaction's heavy work becomes the record
//! that completes it (or aborts it), and its waiting client is answered or keeps waiting for
//! the next step.

use super::batch::{Batch, Completion, Outgoing, Waiter};
use super::Core;
use crate::api::Imported;
use crate::error::EngineError;
use cairn_state::types::{TxId, Usage};
use cairn_state::{Effect, Op};

/// A worker's result, back to the engine thread.
#[derive(Debug)]
pub(crate) enum Done {
    Staged {
        txid: TxId,
        result: Result<(), EngineError>,
    },
    Sealed {
        txid: TxId,
        /// The committed tree's usage and digest.
        result: Result<(Usage, String), EngineError>,
    },
    Imported {
        txid: TxId,
        result: Result<crate::layers::LayerDone, EngineError>,
    },
    /// The mount(2) of a first reference or the umount(2) of a last release.
    Mounted {
        txid: TxId,
        result: Result<(), EngineError>,
    },
}

impl Core {
    pub(super) fn handle_done(&mut self, done: Done, batch: &mut Batch) {
        let (txid, result) = match done {
            Done::Staged { txid, result } | Done::Mounted { txid, result } => {
                (txid, result.map(|()| (None, None)))
            }
            Done::Sealed { txid, result } => (
                txid,
                result.map(|(usage, digest)| (Some(usage), Some(digest))),
            ),
            Done::Imported { txid, result } => return self.handle_imported(txid, result, batch),
        };
        let waiter = self.waiting.remove(&txid);
        if let Err(e) = &result {
            if matches!(e, EngineError::Driver(d) if d.stops_engine()) {
                // A failed tree sync that could not be recorded: stop before anyone retries it.
                self.fail(e.to_string());
            }
        }
        if let Some(e) = self.failed_error() {
            if let Some(w) = waiter {
                w.fail(e);
            }
            return;
        }
        let (op, outcome) = match result {
            Ok((usage, digest)) => (
                Op::Complete {
                    of: txid,
                    usage,
                    digest,
                },
                Ok(()),
            ),
            Err(e) => (Op::Abort { of: txid }, Err(e)),
        };
        let (record_txid, effects) = match self.accept(op, batch) {
            Ok(accepted) => accepted,
            Err(e) => {
                // Only a bug gets here (a completion always follows its pending transaction);
                // the refusal changed nothing, so the engine carries on and the client hears.
                tracing::error!(%txid, error = %e, "bug: a worker's completion was refused");
                if let Some(w) = waiter {
                    w.fail(e.into());
                }
                return;
            }
        };
        // A completion that begins the next step (a container's read-write snapshot) keeps
        // its client waiting for that step.
        let continues = effects
            .iter()
            .any(|e| matches!(e, Effect::Stage { txid, .. } if *txid == record_txid));
        batch.effects(effects);
        let Some(w) = waiter else { return };
        if continues {
            batch.outbox.push(Outgoing::Begun(record_txid, w));
            return;
        }
        let completion = match (outcome, w) {
            (Err(e), w) => Completion::Failed(w, e),
            // Read now: a remove or commit of the same key later in this batch must not turn
            // the acknowledged creation into NotFound.
            (Ok(()), Waiter::Mounts { key, reply }) => {
                let of = self.state.get(&key).ok().and_then(|snap| {
                    let parents = self.state.parent_ids(&key).ok()?;
                    Some((snap.id, snap.kind, parents))
                });
                Completion::Mounts { key, of, reply }
            }
            (Ok(()), Waiter::Done { reply }) => Completion::Done(reply),
            (Ok(()), Waiter::MountRef { key, target, reply }) => {
                let info = self.mount_info(&key, &target);
                batch.reply(reply, Ok(info));
                return;
            }
            // Imports complete through `handle_imported`; a staging or seal result for one is
            // an engine bug, answered as a failure rather than a made-up layer.
            (Ok(()), w @ (Waiter::Layer { .. } | Waiter::Staged { .. })) => Completion::Failed(
                w,
                EngineError::Failed {
                    cause: format!("{txid} completed without its layer"),
                },
            ),
        };
        batch.outbox.push(Outgoing::Completed(completion));
    }

    fn handle_imported(
        &mut self,
        txid: TxId,
        result: Result<crate::layers::LayerDone, EngineError>,
        batch: &mut Batch,
    ) {
        if let Some(cairn_state::Pending::DetachedImport { .. }) = self.state.pending.get(&txid) {
            return self.handle_staged(txid, result, batch);
        }
        let waiter = self.waiting.remove(&txid);
        if let Some(e) = self.failed_error() {
            if let Some(w) = waiter {
                w.fail(e);
            }
            return;
        }
        let (op, outcome) = match result {
            Ok(done) => {
                let imported = Imported {
                    chain_id: done.chain_id.to_string(),
                    diff_id: done.diff_id.to_string(),
                    size_bytes: done.size_bytes,
                    existed: self.state.layers.contains_key(&done.chain_id.to_string()),
                };
                let op = match done.hold {
                    None => Op::CompleteImport {
                        of: txid,
                        diff_id: imported.diff_id.clone(),
                        chain_id: imported.chain_id.clone(),
                        size_bytes: done.size_bytes,
                        usage: done.usage,
                    },
                    Some(hold) => Op::CompleteImportHeld {
                        of: txid,
                        diff_id: imported.diff_id.clone(),
                        chain_id: imported.chain_id.clone(),
                        size_bytes: done.size_bytes,
                        usage: done.usage,
                        hold,
                        time_ns: super::now_ns(),
                    },
                };
                (op, Ok(imported))
            }
            Err(e) => (Op::Abort { of: txid }, Err(e)),
        };
        let outcome = match self.accept(op, batch) {
            Ok((_, effects)) => {
                batch.effects(effects);
                outcome
            }
            Err(refused) => {
                // The completion was refused (a snapshot of a root older than the reserved
                // ChainID keys has the layer's key, or the record is over the journal's limit)
                // and changed nothing: the import is still pending, so abort it.
                match self.accept(Op::Abort { of: txid }, batch) {
                    Ok((_, effects)) => batch.effects(effects),
                    Err(e) => {
                        tracing::error!(%txid, error = %e, "bug: aborting a pending import was refused");
                    }
                }
                Err(refused.into())
            }
        };
        let Some(w) = waiter else { return };
        let completion = match (outcome, w) {
            (Ok(imported), Waiter::Layer { reply }) => Completion::Imported(reply, imported),
            (Ok(_), w) => Completion::Failed(
                w,
                EngineError::Failed {
                    cause: format!("{txid} is an import but its client waits for another answer"),
                },
            ),
            (Err(e), w) => Completion::Failed(w, e),
        };
        batch.outbox.push(Outgoing::Completed(completion));
    }
}
