//! The engine thread: drain commands, apply them to the state, journal them with one sync,
//! run their effects, reply. Nothing else mutates the log, the state, the index or the driver.

use super::api::{CleanupReport, Info, Msg, Reply, Request, Response};
use super::error::EngineError;
use super::index::Index;
use super::lock::RootLock;
use super::workers::Workers;
use super::{checkpoint, journal, EngineOptions};
use crate::driver::{Driver, DriverError};
use crate::state::{Effect, Labels, Op, Record, State, StateError};
use crate::types::{Kind, SnapshotId, TxId, Usage};
use cairn_wal::storage::Storage;
use cairn_wal::{Lsn, StoreId, Wal};
use crossbeam_channel::{select, unbounded, Receiver, Sender, TryRecvError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// A worker's result, back to the engine thread.
#[derive(Debug)]
pub(crate) enum Done {
    Staged { txid: TxId, result: Result<(), DriverError> },
    Sealed { txid: TxId, result: Result<Usage, DriverError> },
}

/// What a client waiting on a two-step transaction gets when it completes.
#[derive(Debug)]
enum Waiter {
    Mounts { key: String, reply: Reply },
    Done { reply: Reply },
}

impl Waiter {
    fn reply(self) -> Reply {
        match self {
            Waiter::Mounts { reply, .. } | Waiter::Done { reply } => reply,
        }
    }
}

#[derive(Default)]
struct Batch {
    records: Vec<Record>,
    effects: Vec<(Effect, Option<Reply>)>,
    touched: Vec<String>,
    replies: Vec<(Reply, Result<Response, EngineError>)>,
    begun: Vec<(TxId, Waiter)>,
    completed: Vec<(Waiter, Result<(), EngineError>)>,
    checkpoint: Vec<Reply>,
    /// Cleanup and fsck compare the disk with the state: they run after the batch's records are
    /// journaled and applied on disk, never against a state ahead of the log.
    deferred: Vec<(Request, Reply)>,
}

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
    failed: Option<String>,
    index_stale: bool,
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
            failed: None,
            index_stale: false,
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
            for msg in msgs {
                match msg {
                    Msg::Request(req, reply) => self.handle_request(req, reply, &mut batch),
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

    /// Apply a new record to the state; on success it joins the batch.
    fn accept(&mut self, op: Op, batch: &mut Batch) -> Result<(TxId, Vec<Effect>), StateError> {
        let record = Record { txid: self.next_txid(), op };
        let effects = self.state.apply(&record)?;
        let txid = record.txid;
        batch.records.push(record);
        Ok((txid, effects))
    }

    fn handle_request(&mut self, req: Request, reply: Reply, batch: &mut Batch) {
        if let Some(cause) = &self.failed {
            let _ = reply.send(Err(EngineError::Failed { cause: cause.clone() }));
            return;
        }
        match req {
            Request::Create { key, parent, kind, labels } => {
                let op = Op::BeginCreate {
                    key: key.clone(),
                    parent,
                    kind,
                    id: SnapshotId(self.state.next_id),
                    labels,
                    time_ns: now_ns(),
                };
                match self.accept(op, batch) {
                    Ok((txid, effects)) => {
                        batch.effects.extend(effects.into_iter().map(|e| (e, None)));
                        batch.begun.push((txid, Waiter::Mounts { key, reply }));
                    }
                    Err(e) => batch.replies.push((reply, Err(e.into()))),
                }
            }
            Request::Commit { name, key, labels } => {
                let op = Op::BeginCommit { key, name, labels, time_ns: now_ns() };
                match self.accept(op, batch) {
                    Ok((txid, effects)) => {
                        batch.effects.extend(effects.into_iter().map(|e| (e, None)));
                        batch.begun.push((txid, Waiter::Done { reply }));
                    }
                    Err(e) => batch.replies.push((reply, Err(e.into()))),
                }
            }
            Request::Remove { key } => match self.accept(Op::Remove { key: key.clone() }, batch) {
                Ok((_, effects)) => {
                    batch.touched.push(key);
                    let mut reply = Some(reply);
                    for e in effects {
                        batch.effects.push((e, reply.take()));
                    }
                    if let Some(reply) = reply {
                        batch.replies.push((reply, Ok(Response::Done)));
                    }
                }
                Err(e) => batch.replies.push((reply, Err(e.into()))),
            },
            Request::Update { info, fieldpaths } => {
                let result = self.update_labels(&info, &fieldpaths).and_then(|labels| {
                    let op = Op::Update { key: info.key.clone(), labels, time_ns: now_ns() };
                    self.accept(op, batch).map_err(EngineError::from)
                });
                match result {
                    Ok(_) => {
                        batch.touched.push(info.key.clone());
                        let snap = self.state.get(&info.key).expect("just updated");
                        batch.replies.push((reply, Ok(Response::Info(Info::of(&info.key, snap)))));
                    }
                    Err(e) => batch.replies.push((reply, Err(e))),
                }
            }
            Request::Stat { key } => {
                let r = self.state.get(&key).map(|s| Response::Info(Info::of(&key, s)));
                batch.replies.push((reply, r.map_err(Into::into)));
            }
            Request::Mounts { key } => {
                let r = self.mounts(&key).map(Response::Mounts);
                batch.replies.push((reply, r));
            }
            Request::Usage { key } => match self.state.get(&key) {
                Ok(snap) => match (snap.kind, snap.usage) {
                    (Kind::Committed, Some(usage)) => batch.replies.push((reply, Ok(Response::Usage(usage)))),
                    _ => {
                        // Active trees change under the caller: measure now, off this thread.
                        let (driver, id) = (Arc::clone(&self.driver), snap.id);
                        self.workers.spawn(move || {
                            let r = driver.usage(id).map(Response::Usage).map_err(EngineError::from);
                            let _ = reply.send(r);
                        });
                    }
                },
                Err(e) => batch.replies.push((reply, Err(e.into()))),
            },
            Request::Walk { filters } => {
                let r = super::filter::parse_all(&filters).map(|filters| {
                    let infos = self
                        .state
                        .snapshots
                        .iter()
                        .map(|(k, s)| Info::of(k, s))
                        .filter(|info| super::filter::matches_any(&filters, info))
                        .collect();
                    Response::Infos(infos)
                });
                batch.replies.push((reply, r));
            }
            req @ (Request::Cleanup | Request::Fsck { .. }) => batch.deferred.push((req, reply)),
            Request::Checkpoint => batch.checkpoint.push(reply),
        }
    }

    /// containerd's update: `labels` replaces all labels, `labels.<k>` sets or removes one;
    /// no field paths means all mutable fields (the labels).
    fn update_labels(&self, info: &Info, fieldpaths: &[String]) -> Result<Labels, EngineError> {
        let current = self.state.get(&info.key)?;
        if fieldpaths.is_empty() {
            return Ok(info.labels.clone());
        }
        let mut labels = current.labels.clone();
        for path in fieldpaths {
            if path == "labels" {
                labels = info.labels.clone();
            } else if let Some(k) = path.strip_prefix("labels.") {
                match info.labels.get(k) {
                    Some(v) => labels.insert(k.to_owned(), v.clone()),
                    None => labels.remove(k),
                };
            } else {
                return Err(StateError::InvalidArgument {
                    reason: crate::state::Invalid::FieldNotUpdatable { path: path.clone() },
                }
                .into());
            }
        }
        Ok(labels)
    }

    pub(crate) fn mounts(&self, key: &str) -> Result<Vec<crate::types::Mount>, EngineError> {
        let snap = self.state.get(key)?;
        let parents = self.state.parent_ids(key)?;
        Ok(self.driver.mounts(snap.id, snap.kind, &parents)?)
    }

    fn handle_done(&mut self, done: Done, batch: &mut Batch) {
        let (txid, result) = match done {
            Done::Staged { txid, result } => (txid, result.map(|()| None)),
            Done::Sealed { txid, result } => (txid, result.map(Some)),
        };
        let waiter = self.waiting.remove(&txid);
        if self.failed.is_some() {
            if let Some(w) = waiter {
                let cause = self.failed.clone().unwrap_or_default();
                let _ = w.reply().send(Err(EngineError::Failed { cause }));
            }
            return;
        }
        // The keys this completion changes in the index: the created key, or a commit's key
        // and name. Read before applying, which removes the pending entry.
        match self.state.pending.get(&txid) {
            Some(crate::state::Pending::Create { key, .. }) => batch.touched.push(key.clone()),
            Some(crate::state::Pending::Commit { key, name, .. }) => {
                batch.touched.push(key.clone());
                batch.touched.push(name.clone());
            }
            None => {}
        }
        let (op, outcome) = match result {
            Ok(usage) => (Op::Complete { of: txid, usage }, Ok(())),
            Err(e) => (Op::Abort { of: txid }, Err(EngineError::from(e))),
        };
        let (_, effects) = self
            .accept(op, batch)
            .expect("a completion follows a pending transaction");
        batch.effects.extend(effects.into_iter().map(|e| (e, None)));
        if let Some(w) = waiter {
            batch.completed.push((w, outcome));
        }
    }

    fn fail(&mut self, cause: String) {
        tracing::error!(%cause, "engine stopped: reopen the root to recover");
        self.failed = Some(cause);
    }

    fn finish_batch(&mut self, mut batch: Batch) {
        if !batch.records.is_empty() && self.failed.is_none() {
            let payloads: Vec<Vec<u8>> = batch.records.iter().map(journal::encode).collect();
            fail::fail_point!("engine::batch::before_append");
            let journaled = self.wal.append_batch(&payloads).and_then(|_| {
                fail::fail_point!("engine::batch::after_append");
                self.wal.sync()
            });
            if let Err(e) = journaled {
                self.fail(format!("journal write failed: {e}"));
            }
            fail::fail_point!("engine::batch::after_sync");
        }
        if let Some(cause) = self.failed.clone() {
            let failed = || Err(EngineError::Failed { cause: cause.clone() });
            for (reply, _) in batch.replies {
                let _ = reply.send(failed());
            }
            for (_, w) in batch.begun {
                let _ = w.reply().send(failed());
            }
            for (w, _) in batch.completed {
                let _ = w.reply().send(failed());
            }
            for (_, reply) in batch.effects {
                if let Some(reply) = reply {
                    let _ = reply.send(failed());
                }
            }
            for reply in batch.checkpoint {
                let _ = reply.send(failed());
            }
            for (_, reply) in batch.deferred {
                let _ = reply.send(failed());
            }
            return;
        }
        for (txid, waiter) in batch.begun {
            self.waiting.insert(txid, waiter);
        }
        // Consecutive installs share one pair of directory fsyncs; any other effect waits for
        // the installs before it, so effects still happen in order.
        let mut installs = Vec::new();
        for (effect, reply) in std::mem::take(&mut batch.effects) {
            match effect {
                Effect::Install { txid, id } => installs.push((txid, id)),
                other => {
                    self.install(&mut installs);
                    self.run_effect(other, reply);
                }
            }
        }
        self.install(&mut installs);
        self.update_index(!batch.records.is_empty(), &batch.touched);
        for (req, reply) in std::mem::take(&mut batch.deferred) {
            if let Some(cause) = &self.failed {
                let _ = reply.send(Err(EngineError::Failed { cause: cause.clone() }));
                continue;
            }
            let r = match req {
                Request::Fsck { repair } => super::fsck::run(self, repair).map(Response::Fsck),
                _ => self.cleanup().map(Response::Cleanup),
            };
            let _ = reply.send(r);
        }
        for (waiter, outcome) in batch.completed {
            let response = outcome.and_then(|()| match &waiter {
                Waiter::Mounts { key, .. } => self.mounts(key).map(Response::Mounts),
                Waiter::Done { .. } => Ok(Response::Done),
            });
            let _ = waiter.reply().send(response);
        }
        for (reply, response) in batch.replies {
            let _ = reply.send(response);
        }
        let due = self.wal.next_lsn().0 - 1 - self.checkpoint_lsn.0 >= self.options.checkpoint_every_records;
        if due || !batch.checkpoint.is_empty() {
            let r = self.checkpoint();
            for reply in batch.checkpoint {
                let _ = reply.send(match &r {
                    Ok(()) => Ok(Response::Done),
                    Err(e) => Err(EngineError::Failed { cause: e.to_string() }),
                });
            }
            if let Err(e) = r {
                self.fail(format!("checkpoint failed: {e}"));
            }
        }
    }

    fn update_index(&mut self, journaled: bool, touched: &[String]) {
        if !journaled {
            return;
        }
        // Begun transactions change no indexed snapshot; completions and removals name theirs.
        let mut touched: Vec<String> = touched.to_vec();
        touched.sort();
        touched.dedup();
        let applied = if self.index_stale {
            self.index.rebuild(&self.state)
        } else {
            self.index.apply(&self.state, &touched)
        };
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

    /// Install the staged trees of completed creations (and empty `installs`).
    fn install(&mut self, installs: &mut Vec<(TxId, SnapshotId)>) {
        if installs.is_empty() || self.failed.is_some() {
            installs.clear();
            return;
        }
        fail::fail_point!("engine::effect::before_install");
        if let Err(e) = self.driver.install_many(installs) {
            // The completions are durable; recovery installs them again.
            let which: Vec<String> = installs.iter().map(|(txid, id)| format!("{id} ({txid})")).collect();
            self.fail(format!("install of snapshots {} failed: {e}", which.join(", ")));
        }
        fail::fail_point!("engine::effect::after_install");
        installs.clear();
    }

    fn run_effect(&mut self, effect: Effect, reply: Option<Reply>) {
        match effect {
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
                    let result = driver.seal(id, txid);
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
                self.workers.spawn(move || {
                    if let Err(e) = driver.remove(id) {
                        // The removal is durable; cleanup and recovery delete what is left.
                        tracing::warn!(%id, error = %e, "deleting a removed snapshot's tree failed");
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(Response::Done));
                    }
                });
            }
        }
    }

    /// Write a checkpoint of the state and drop the log behind it.
    pub(crate) fn checkpoint(&mut self) -> Result<(), EngineError> {
        let lsn = Lsn(self.wal.next_lsn().0 - 1);
        if lsn == self.checkpoint_lsn {
            return Ok(());
        }
        let cp = checkpoint::Checkpoint { lsn, state: self.state.clone() };
        checkpoint::store(self.storage.as_ref(), &self.root, self.store_id, &cp)?;
        fail::fail_point!("engine::checkpoint::after_store");
        self.checkpoint_lsn = lsn;
        self.wal.truncate_before(lsn.next())?;
        fail::fail_point!("engine::checkpoint::after_truncate");
        Ok(())
    }

    /// Remove every tree and staging area on disk that the state does not name.
    pub(crate) fn cleanup(&mut self) -> Result<CleanupReport, EngineError> {
        let inv = self.driver.inventory()?;
        let ids: std::collections::BTreeSet<SnapshotId> = self.state.snapshots.values().map(|s| s.id).collect();
        let mut report = CleanupReport::default();
        for id in inv.installed.keys() {
            if !ids.contains(id) {
                self.driver.remove(*id)?;
                report.snapshots_removed.push(*id);
            }
        }
        for txid in &inv.staging {
            if !self.state.pending.contains_key(txid) {
                self.driver.discard(*txid)?;
                report.staging_removed.push(*txid);
            }
        }
        self.driver.purge_trash()?;
        Ok(report)
    }
}
