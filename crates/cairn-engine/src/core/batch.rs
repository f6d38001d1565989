//! One batch: the records it journals, the effects they have, and one outbox of every reply
//! the batch owes. Finishing it journals the records with one sync and then either answers
//! the outbox in order or, if the journal could not be written, fails every reply in it.

use super::Core;
use crate::api::{CleanupReport, Imported, Reply};
use crate::error::EngineError;
use crate::fsck::FsckReport;
use cairn_state::types::{Kind, Mount, SnapshotId, TxId};
use cairn_state::Effect;

/// A reply with its answer already known; sent once the batch is durable, or replaced by
/// the batch's failure. Type-erased so the outbox holds replies of every type in one list.
pub(super) struct Ready(Box<dyn FnOnce(Option<EngineError>) + Send>);

impl Ready {
    pub(super) fn new<T: Send + 'static>(reply: Reply<T>, answer: Result<T, EngineError>) -> Ready {
        Ready(Box::new(move |failed| {
            // The caller may have gone away; nothing is waiting then.
            let _ = reply.send(match failed {
                Some(e) => Err(e),
                None => answer,
            });
        }))
    }

    fn send(self) {
        (self.0)(None)
    }

    fn fail(self, error: EngineError) {
        (self.0)(Some(error))
    }
}

impl std::fmt::Debug for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ready")
    }
}

/// A client waiting on a two-step transaction, answered when it completes.
#[derive(Debug)]
pub(crate) enum Waiter {
    /// A created snapshot (or container): answered with the mounts of `key`.
    Mounts {
        key: String,
        reply: Reply<Vec<Mount>>,
    },
    /// A commit.
    Done { reply: Reply<()> },
    /// A layer import.
    Layer { reply: Reply<Imported> },
    /// A detached import's extraction: answered when it is durable in staging.
    Staged {
        reply: Reply<crate::detached::Staged>,
    },
    /// A mount's first reference or last release: answered with the references left.
    MountRef {
        key: String,
        target: String,
        reply: Reply<crate::api::MountRefInfo>,
    },
}

impl Waiter {
    pub(super) fn fail(self, error: EngineError) {
        match self {
            Waiter::Mounts { reply, .. } => drop(reply.send(Err(error))),
            Waiter::Done { reply } => drop(reply.send(Err(error))),
            Waiter::Layer { reply } => drop(reply.send(Err(error))),
            Waiter::Staged { reply } => drop(reply.send(Err(error))),
            Waiter::MountRef { reply, .. } => drop(reply.send(Err(error))),
        }
    }
}

/// What a created snapshot's mounts are computed from.
pub(super) type MountsOf = (SnapshotId, Kind, Vec<SnapshotId>);

/// A completed two-step transaction's answer, sent once the batch's installs are done.
#[derive(Debug)]
pub(super) enum Completion {
    /// A created snapshot's mounts: from its id, kind and parents as of its completion, or
    /// (`None`) looked up by key when answering.
    Mounts {
        key: String,
        of: Option<MountsOf>,
        reply: Reply<Vec<Mount>>,
    },
    Done(Reply<()>),
    Imported(Reply<Imported>, Imported),
    Failed(Waiter, EngineError),
}

/// Requests that compare the disk with the state: they run after the batch's records are
/// journaled and applied on disk, never against a state ahead of the log.
#[derive(Debug)]
pub(super) enum Deferred {
    Cleanup(Reply<CleanupReport>),
    Fsck {
        repair: bool,
        /// Also the content checks (`fsck --verify`), hashed on a worker.
        verify: bool,
        reply: Reply<FsckReport>,
    },
}

/// Everything a batch owes a client, in the order it is answered.
#[derive(Debug)]
pub(super) enum Outgoing {
    /// A transaction begun in this batch: its client waits for the completion.
    Begun(TxId, Waiter),
    /// A transaction completed in this batch: answered after its install.
    Completed(Completion),
    /// Cleanup or fsck, run once the batch is on disk.
    Deferred(Deferred),
    /// An answer known now.
    Ready(Ready),
    /// An explicit checkpoint, answered once it is written.
    Checkpoint(Reply<()>),
}

impl Outgoing {
    fn fail(self, error: EngineError) {
        match self {
            Outgoing::Begun(_, w) | Outgoing::Completed(Completion::Failed(w, _)) => w.fail(error),
            Outgoing::Completed(Completion::Mounts { reply, .. }) => drop(reply.send(Err(error))),
            Outgoing::Completed(Completion::Done(reply)) => drop(reply.send(Err(error))),
            Outgoing::Completed(Completion::Imported(reply, _)) => drop(reply.send(Err(error))),
            Outgoing::Deferred(Deferred::Cleanup(reply)) => drop(reply.send(Err(error))),
            Outgoing::Deferred(Deferred::Fsck { reply, .. }) => drop(reply.send(Err(error))),
            Outgoing::Ready(r) => r.fail(error),
            Outgoing::Checkpoint(reply) => drop(reply.send(Err(error))),
        }
    }
}

/// What travels with an effect: the reply of the command that removed a snapshot (answered
/// when its tree is gone), or the caller's input an import stages.
pub(super) enum With {
    Nothing,
    Reply(Reply<()>),
    Import(crate::layers::ImportJob),
}

impl With {
    pub(super) fn reply(r: Option<Reply<()>>) -> With {
        r.map_or(With::Nothing, With::Reply)
    }
}

#[derive(Default)]
pub(super) struct Batch {
    /// The journal payloads of the batch's records, in order.
    pub records: Vec<Vec<u8>>,
    /// Effects of the records, in order, with what travels with each.
    pub effects: Vec<(Effect, With)>,
    /// Keys whose index entries the batch changes.
    pub touched: Vec<String>,
    /// How many of `effects` come from completions (they precede the requests' effects).
    pub done_effects: usize,
    /// Every reply the batch owes, apart from those riding on effects.
    pub outbox: Vec<Outgoing>,
    /// Creations begun in this batch whose trees copy nothing: made and completed before the
    /// batch is journaled (core/inline.rs).
    pub inline: Vec<(cairn_driver::NewTree, Waiter)>,
    /// Commits begun in this batch whose seals the driver may make inline: sealed (if their
    /// trees are small) before the batch is journaled, in the same durable step as `inline`.
    pub inline_seals: Vec<(SnapshotId, TxId, Waiter)>,
}

impl Batch {
    /// Answer `reply` with `answer` once the batch is durable.
    pub(super) fn reply<T: Send + 'static>(
        &mut self,
        reply: Reply<T>,
        answer: Result<T, EngineError>,
    ) {
        self.outbox.push(Outgoing::Ready(Ready::new(reply, answer)));
    }

    /// Effects that carry no reply.
    pub(super) fn effects(&mut self, effects: Vec<Effect>) {
        self.effects
            .extend(effects.into_iter().map(|e| (e, With::Nothing)));
    }
}

impl Core {
    pub(super) fn failed_error(&self) -> Option<EngineError> {
        self.failed.as_ref().map(|cause| EngineError::Failed {
            cause: cause.clone(),
        })
    }

    pub(super) fn finish_batch(&mut self, mut batch: Batch) {
        self.complete_inline(&mut batch);
        if !batch.records.is_empty() && self.failed.is_none() {
            fail::fail_point!("engine::batch::before_append");
            let journaled = self.wal.append_batch(&batch.records).and_then(|_| {
                fail::fail_point!("engine::batch::after_append");
                self.wal.sync()
            });
            if let Err(e) = journaled {
                self.fail(format!("journal write failed: {e}"));
            }
            fail::fail_point!("engine::batch::after_sync");
        }
        if let Some(cause) = self.failed.clone() {
            let failed = || EngineError::Failed {
                cause: cause.clone(),
            };
            for out in batch.outbox {
                out.fail(failed());
            }
            for (_, with) in batch.effects {
                if let With::Reply(reply) = with {
                    let _ = reply.send(Err(failed()));
                }
            }
            return;
        }
        let Batch {
            records,
            mut effects,
            touched,
            done_effects,
            outbox,
            inline: _,
            inline_seals: _,
        } = batch;
        let (mut completed, mut deferred, mut ready, mut checkpoint) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for out in outbox {
            match out {
                Outgoing::Begun(txid, waiter) => {
                    self.waiting.insert(txid, waiter);
                }
                Outgoing::Completed(c) => completed.push(c),
                Outgoing::Deferred(d) => deferred.push(d),
                Outgoing::Ready(r) => ready.push(r),
                Outgoing::Checkpoint(reply) => checkpoint.push(reply),
            }
        }
        let later = effects.split_off(done_effects.min(effects.len()));
        self.run_effects(effects);
        // Completed creations are installed now; answer them before the requests' effects
        // (a Delete of the same snapshot later in this batch) run.
        for c in completed {
            self.answer(c);
        }
        self.run_effects(later);
        self.update_index(!records.is_empty(), touched);
        for d in deferred {
            if let Some(e) = self.failed_error() {
                Outgoing::Deferred(d).fail(e);
                continue;
            }
            match d {
                Deferred::Fsck {
                    repair,
                    verify: true,
                    reply,
                } => match crate::fsck::run(self, repair) {
                    // The hashing reads every tree: on a worker, from targets resolved now.
                    Ok(mut report) => {
                        let targets = crate::verify::Targets::of(&self.state);
                        let driver = std::sync::Arc::clone(&self.driver);
                        let work = move || {
                            crate::verify::run(driver.as_ref(), &targets, &mut report);
                            report
                        };
                        self.workers.run("verify", work, move |r| {
                            let _ = reply.send(r.map_err(EngineError::from));
                        });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Deferred::Fsck { repair, reply, .. } => {
                    let _ = reply.send(crate::fsck::run(self, repair));
                }
                Deferred::Cleanup(reply) => {
                    let _ = reply.send(self.cleanup());
                }
            }
        }
        for r in ready {
            r.send();
        }
        let due = self.wal.next_lsn().0 - 1 - self.checkpoint_lsn.0
            >= self.options.checkpoint_every_records;
        if due || !checkpoint.is_empty() {
            let r = self.checkpoint();
            for reply in checkpoint {
                let _ = reply.send(match &r {
                    Ok(()) => Ok(()),
                    Err(e) => Err(EngineError::Failed {
                        cause: e.to_string(),
                    }),
                });
            }
            if let Err(e) = r {
                self.fail(format!("checkpoint failed: {e}"));
            }
        }
    }

    /// Answer a completed transaction's client.
    fn answer(&self, completion: Completion) {
        match completion {
            Completion::Mounts { key, of, reply } => {
                let mounts = match of {
                    Some((id, kind, parents)) => self
                        .driver
                        .mounts(id, kind, &parents)
                        .map_err(EngineError::from),
                    None => self.mounts(&key),
                };
                let _ = reply.send(mounts);
            }
            Completion::Done(reply) => {
                let _ = reply.send(Ok(()));
            }
            Completion::Imported(reply, imported) => {
                let _ = reply.send(Ok(imported));
            }
            Completion::Failed(waiter, e) => waiter.fail(e),
        }
    }
}
