//! Detached layer imports on the engine thread (docs/parallel-import.md): begun without a
//! parent, extracted on a worker like any import, then parked here (durable in staging, not
//! a layer) until the client attaches them to their parent in chain order, or aborts them.

use super::batch::{Batch, Completion, Outgoing, Waiter, With};
use super::{now_ns, Core};
use crate::api::{Imported, Input};
use crate::detached::{
    DetachedRefusal, DetachedRequest, StageOptions, Staged, MAX_DETACHED_IMPORTS,
};
use crate::error::EngineError;
use crate::layers::{parse_digest, ImportJob, LayerDone};
use cairn_state::types::{SnapshotId, TxId};
use cairn_state::{Effect, Op, Pending};

impl Core {
    pub(super) fn handle_detached(&mut self, req: DetachedRequest, batch: &mut Batch) {
        match req {
            DetachedRequest::Supported { reply } => {
                batch.reply(reply, Ok(self.driver.extracts_without_parent()));
            }
            DetachedRequest::Stage {
                input,
                options,
                reply,
            } => match self.begin_detached(input, options, batch) {
                Ok(txid) => batch
                    .outbox
                    .push(Outgoing::Begun(txid, Waiter::Staged { reply })),
                Err(e) => batch.reply(reply, Err(e)),
            },
            DetachedRequest::Attach {
                txid,
                parent,
                reply,
            } => match self.attach(txid, parent, batch) {
                // Answered once the completion is durable and the tree installed.
                Ok(imported) => batch
                    .outbox
                    .push(Outgoing::Completed(Completion::Imported(reply, imported))),
                Err(e) => batch.reply(reply, Err(e)),
            },
            DetachedRequest::Abort { txid, reply } => {
                let result = match self.parked.remove(&txid) {
                    Some(_) => {
                        self.abort_detached(txid, batch);
                        Ok(())
                    }
                    None => Err(DetachedRefusal::NotStaged { txid }.into()),
                };
                batch.reply(reply, result);
            }
        }
    }

    fn begin_detached(
        &mut self,
        input: Input,
        options: StageOptions,
        batch: &mut Batch,
    ) -> Result<TxId, EngineError> {
        if !self.driver.extracts_without_parent() {
            let driver = self.driver.kind();
            return Err(DetachedRefusal::Unsupported { driver }.into());
        }
        let in_flight = self
            .state
            .pending
            .values()
            .filter(|p| matches!(p, Pending::DetachedImport { .. }))
            .count();
        if in_flight >= MAX_DETACHED_IMPORTS {
            let max = MAX_DETACHED_IMPORTS;
            return Err(DetachedRefusal::TooMany { max }.into());
        }
        let op = Op::BeginDetachedImport {
            id: SnapshotId(self.state.next_id),
            pin: options.pin,
            time_ns: now_ns(),
        };
        let (txid, effects) = self.accept(op, batch)?;
        let mut job = Some(ImportJob {
            input,
            expected: options.expected_diff_id,
            parent: None,
            hold: None,
        });
        for e in effects {
            // The one staging effect carries the input to its worker.
            let with = match (&e, job.take()) {
                (Effect::Stage { .. }, Some(job)) => With::Import(job),
                (_, taken) => {
                    job = taken;
                    With::Nothing
                }
            };
            batch.effects.push((e, with));
        }
        Ok(txid)
    }

    /// A worker finished extracting detached import `txid`: park it for its attach, or abort
    /// it (a failed extraction, a DiffID mismatch, nobody waiting).
    pub(super) fn handle_staged(
        &mut self,
        txid: TxId,
        result: Result<LayerDone, EngineError>,
        batch: &mut Batch,
    ) {
        let waiter = self.waiting.remove(&txid);
        if let Some(e) = self.failed_error() {
            if let Some(w) = waiter {
                w.fail(e);
            }
            return;
        }
        match (result, waiter) {
            (Ok(done), Some(Waiter::Staged { reply })) => {
                let staged = Staged {
                    txid,
                    diff_id: done.diff_id.to_string(),
                    size_bytes: done.size_bytes,
                };
                self.parked.insert(txid, done);
                batch.reply(reply, Ok(staged));
            }
            (result, waiter) => {
                self.abort_detached(txid, batch);
                if let Some(w) = waiter {
                    let error = result.err().unwrap_or_else(|| EngineError::Failed {
                        cause: format!(
                            "{txid} is a staged import but its client waits for another answer"
                        ),
                    });
                    batch
                        .outbox
                        .push(Outgoing::Completed(Completion::Failed(w, error)));
                }
            }
        }
    }

    /// Journal the completion of parked import `txid` on `parent`, or abort it.
    fn attach(
        &mut self,
        txid: TxId,
        parent: Option<String>,
        batch: &mut Batch,
    ) -> Result<Imported, EngineError> {
        let done = self
            .parked
            .remove(&txid)
            .ok_or(DetachedRefusal::NotStaged { txid })?;
        let result = self.complete_parked(txid, parent, &done, batch);
        if result.is_err() {
            // Refused (the parent is not a layer: it failed, was aborted or removed) and
            // nothing changed: the import is still pending, so abort it. No child outlives a
            // parent that never became a layer.
            self.abort_detached(txid, batch);
        }
        result
    }

    fn complete_parked(
        &mut self,
        txid: TxId,
        parent: Option<String>,
        done: &LayerDone,
        batch: &mut Batch,
    ) -> Result<Imported, EngineError> {
        let parent_digest = parent.as_deref().map(parse_digest).transpose()?;
        let chain_id = cairn_layer::chain_id(parent_digest.as_ref(), &done.diff_id).to_string();
        let imported = Imported {
            existed: self.state.layers.contains_key(&chain_id),
            chain_id: chain_id.clone(),
            diff_id: done.diff_id.to_string(),
            size_bytes: done.size_bytes,
        };
        let op = Op::CompleteDetachedImport {
            of: txid,
            parent,
            diff_id: imported.diff_id.clone(),
            chain_id,
            size_bytes: done.size_bytes,
            usage: done.usage,
        };
        let (_, effects) = self.accept(op, batch)?;
        batch.effects(effects);
        Ok(imported)
    }

    fn abort_detached(&mut self, txid: TxId, batch: &mut Batch) {
        match self.accept(Op::Abort { of: txid }, batch) {
            Ok((_, effects)) => batch.effects(effects),
            Err(e) => {
                tracing::error!(%txid, error = %e, "bug: aborting a detached import was refused");
            }
        }
    }
}
