//! The engine thread: drain commands, apply them to the state, journal them with one sync,
//! run their effects, reply. Nothing else mutates the log, the state, the index or the driver.
//!
//! The parts, one job each:
//! - this file: the loop that drains a batch of requests and worker completions, and
//!   [`Core::accept`], the one place a record is checked and applied to the state;
//! - [`batch`]: the batch, its one outbox of replies, and finishing it (journal with one sync,
//!   run effects, answer, or fail every reply if the journal could not be written);
//! - [`dispatch`]: requests that change the state, turned into operations;
//! - [`queries`]: requests that only read (answered from the state, or on a worker);
//! - [`completions`]: a worker's result turned into the record that completes or aborts a
//!   two-step transaction;
//! - [`effects`]: running the effects of applied records: the only caller of the driver's
//!   mutating methods;
//! - [`inline`]: creations whose trees copy nothing, made and completed in the batch that
//!   begins them, with one shared sync for all of them;
//! - [`maintenance`]: checkpoint, index bookkeeping, cleanup and strays.

mod aufs;
mod batch;
mod completions;
mod detached;
mod dispatch;
mod effects;
mod inline;
mod maintenance;
mod queries;

pub(crate) use completions::Done;

use super::api::Msg;
use super::index::Index;
use super::lock::RootLock;
use super::workers::Workers;
use super::EngineOptions;
use batch::{Batch, Waiter};
use cairn_driver::Driver;
use cairn_state::types::{SnapshotId, TxId};
use cairn_state::{Applied, Effect, Invalid, Op, Record, State, StateError};
use cairn_wal::storage::Storage;
use cairn_wal::{Lsn, StoreId, Wal};
use crossbeam_channel::{select, unbounded, Receiver, Sender, TryRecvError};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

pub(crate) struct Core {
    pub root: PathBuf,
    pub storage: Arc<dyn Storage>,
    pub store_id: StoreId,
    pub wal: Wal,
    pub state: State,
    pub driver: Arc<dyn Driver>,
    pub index: Index,
    pub options: EngineOptions,
    /// LSN the last checkpoint covers.
    pub checkpoint_lsn: Lsn,
    /// Held for the engine thread's life: released by the kernel if the process dies.
    _lock: RootLock,
    workers: Workers,
    done_tx: Sender<Done>,
    done_rx: Receiver<Done>,
    waiting: BTreeMap<TxId, Waiter>,
    /// Detached imports extracted and durable in staging, waiting for their attach (or abort).
    parked: BTreeMap<TxId, crate::layers::LayerDone>,
    /// Snapshots whose trees a worker is deleting right now: cleanup and fsck leave them to it,
    /// so two deletions of one tree never race.
    deleting: Arc<std::sync::Mutex<BTreeSet<SnapshotId>>>,
    failed: Option<String>,
    /// The last index write failed: the next one rebuilds it whole.
    index_stale: bool,
    /// Keys changed since the index was last written (at most `INDEX_PENDING_MAX`).
    index_pending: BTreeSet<String>,
    /// Batches were journaled since the index was last written (its applied txid lags).
    index_behind: bool,
}

pub(crate) fn now_ns() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl Core {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        root: PathBuf,
        storage: Arc<dyn Storage>,
        store_id: StoreId,
        wal: Wal,
        state: State,
        driver: Arc<dyn Driver>,
        index: Index,
        options: EngineOptions,
        checkpoint_lsn: Lsn,
        lock: RootLock,
    ) -> Core {
        let (done_tx, done_rx) = unbounded();
        let workers = Workers::new(options.workers);
        Core {
            root,
            storage,
            store_id,
            wal,
            state,
            driver,
            index,
            options,
            checkpoint_lsn,
            _lock: lock,
            workers,
            done_tx,
            done_rx,
            waiting: BTreeMap::new(),
            parked: BTreeMap::new(),
            deleting: Arc::default(),
            failed: None,
            index_stale: false,
            index_pending: BTreeSet::new(),
            index_behind: false,
        }
    }

    /// The engine thread's loop. Returns when every handle is gone or `Shutdown` arrives, after
    /// the work in flight has finished.
    pub fn run(mut self, requests: Receiver<Msg>) {
        let mut shutdown: Option<Sender<()>> = None;
        let mut requests_open = true;
        loop {
            if (!requests_open || shutdown.is_some()) && self.waiting.is_empty() {
                break;
            }
            let mut msgs = Vec::new();
            let mut dones = Vec::new();
            if requests_open && shutdown.is_none() {
                select! {
                    recv(requests) -> m => match m {
                        Ok(m) => msgs.push(m),
                        Err(_) => requests_open = false,
                    },
                    recv(self.done_rx) -> d => dones.push(d.expect("the engine holds a sender")),
                }
            } else {
                dones.push(self.done_rx.recv().expect("the engine holds a sender"));
            }
            // Group commit: take whatever else is already waiting, up to the batch limit.
            while msgs.len() + dones.len() < self.options.max_batch {
                match self.done_rx.try_recv() {
                    Ok(d) => {
                        dones.push(d);
                        continue;
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
                }
                if !requests_open || shutdown.is_some() {
                    break;
                }
                match requests.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        requests_open = false;
                        break;
                    }
                }
            }
            let mut batch = Batch::default();
            for done in dones {
                self.handle_done(done, &mut batch);
            }
            batch.done_effects = batch.effects.len();
            for msg in msgs {
                match msg {
                    Msg::Request(req) => self.handle_request(req, &mut batch),
                    Msg::Shutdown(tx) => shutdown = Some(tx),
                }
            }
            self.finish_batch(batch);
        }
        if self.failed.is_none() {
            if let Err(e) = self.checkpoint() {
                tracing::warn!(error = %e, "checkpoint at shutdown failed");
            }
            if let Err(e) = self.index.flush() {
                tracing::warn!(error = %e, "index flush at shutdown failed");
            }
        }
        let Core { workers, .. } = self;
        workers.join();
        if let Some(tx) = shutdown {
            let _ = tx.send(());
        }
    }

    fn next_txid(&self) -> TxId {
        self.state.last_txid.next()
    }

    /// Check a new record against the state and the journal's record limit; if both accept
    /// it, apply it and add it to the batch. A refusal changes nothing.
    fn accept(&mut self, op: Op, batch: &mut Batch) -> Result<(TxId, Vec<Effect>), StateError> {
        let record = Record {
            txid: self.next_txid(),
            op,
        };
        let plan = self.state.check(&record)?;
        let payload = crate::journal::encode(&record);
        // The state machine bounds every record far below the engine's default; a root opened
        // with a smaller WAL record limit refuses here rather than failing the batch's append.
        let max = self.options.wal.max_record_bytes as usize;
        if payload.len() > max {
            return Err(StateError::InvalidArgument {
                reason: Invalid::RecordTooLarge {
                    bytes: payload.len(),
                    max,
                },
            });
        }
        let Applied { effects, snapshots } = self.state.commit(plan);
        let txid = record.txid;
        // The transaction id of each accepted command, for servers' request logs (key in op).
        tracing::debug!(%txid, op = ?record.op, "accepted");
        // The index follows what the record changed, as the state machine reports it.
        batch.touched.extend(snapshots);
        batch.records.push(payload);
        Ok((txid, effects))
    }

    fn fail(&mut self, cause: String) {
        tracing::error!(%cause, "engine stopped: reopen the root to recover");
        self.failed = Some(cause);
    }
}

/// Lock a mutex shared with workers.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A worker that panicked holding it has already failed a test; the set stays usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
