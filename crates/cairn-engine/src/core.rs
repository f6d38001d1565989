//! The engine thread: drain commands, apply them to the state, journal them with one sync,
//! run their effects, reply. Nothing else mutates the log, the state, the index or the driver.

use super::api::{CleanupReport, ImportOptions, Imported, Info, Msg, Reply, Request, Response};
use super::error::EngineError;
use super::index::Index;
use super::lock::RootLock;
use super::workers::{Panicked, Workers};
use super::{checkpoint, journal, EngineOptions};
use cairn_driver::{Driver, DriverError};
use cairn_state::types::{Kind, SnapshotId, TxId, Usage};
use cairn_state::{Applied, Effect, Invalid, Labels, Op, Record, Stage, State, StateError};
use cairn_wal::storage::Storage;
use cairn_wal::{Lsn, StoreId, Wal};
use crossbeam_channel::{select, unbounded, Receiver, Sender, TryRecvError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// A worker's result, back to the engine thread.
#[derive(Debug)]
pub(crate) enum Done {
    Staged {
        txid: TxId,
        result: Result<(), EngineError>,
    },
    Sealed {
        txid: TxId,
        result: Result<Usage, EngineError>,
    },
    Imported {
        txid: TxId,
        result: Result<super::layers::LayerDone, EngineError>,
    },
}

/// What a client waiting on a two-step transaction gets when it completes.
#[derive(Debug)]
enum Waiter {
    Mounts { key: String, reply: Reply },
    Done { reply: Reply },
    Layer { reply: Reply },
}

impl Waiter {
    fn reply(self) -> Reply {
        match self {
            Waiter::Mounts { reply, .. } | Waiter::Done { reply } | Waiter::Layer { reply } => {
                reply
            }
        }
    }
}

/// What a created snapshot's mounts are computed from.
type MountsOf = (SnapshotId, Kind, Vec<SnapshotId>);

/// What a completed waiter is answered with.
#[derive(Debug)]
enum Answer {
    /// Known at completion (an import's result).
    Response(Response),
    /// A created snapshot's mounts, from its id, kind and parents as of its completion.
    Mounts(MountsOf),
    /// Look the key up when answering.
    Lookup,
    Done,
}

/// What travels with an effect: the reply it answers when it is done, or the caller's input
/// an import stages.
enum With {
    Nothing,
    Reply(Reply),
    Import(super::layers::ImportJob),
}

impl With {
    fn reply(r: Option<Reply>) -> With {
        r.map_or(With::Nothing, With::Reply)
    }
}

#[derive(Default)]
struct Batch {
    /// The journal payloads of the batch's records, in order.
    records: Vec<Vec<u8>>,
    effects: Vec<(Effect, With)>,
    touched: Vec<String>,
    replies: Vec<(Reply, Result<Response, EngineError>)>,
    begun: Vec<(TxId, Waiter)>,
    /// Completed waiters and what they are answered with.
    completed: Vec<(Waiter, Result<Answer, EngineError>)>,
    /// How many of `effects` come from completions (they precede the requests' effects).
    done_effects: usize,
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
    /// Snapshots whose trees a worker is deleting right now: cleanup and fsck leave them to it,
    /// so two deletions of one tree never race.
    deleting: Arc<std::sync::Mutex<std::collections::BTreeSet<SnapshotId>>>,
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
            deleting: Arc::default(),
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
            batch.done_effects = batch.effects.len();
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

    /// Check a new record against the state and the journal's record limit; if both accept
    /// it, apply it and add it to the batch. A refusal changes nothing.
    fn accept(&mut self, op: Op, batch: &mut Batch) -> Result<(TxId, Vec<Effect>), StateError> {
        let record = Record {
            txid: self.next_txid(),
            op,
        };
        let plan = self.state.check(&record)?;
        let payload = journal::encode(&record);
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
        // The index follows what the record changed, as the state machine reports it.
        batch.touched.extend(snapshots);
        batch.records.push(payload);
        Ok((record.txid, effects))
    }

    fn handle_request(&mut self, req: Request, reply: Reply, batch: &mut Batch) {
        if let Some(cause) = &self.failed {
            let _ = reply.send(Err(EngineError::Failed {
                cause: cause.clone(),
            }));
            return;
        }
        match req {
            Request::Create {
                key,
                parent,
                kind,
                labels,
            } => {
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
                        batch
                            .effects
                            .extend(effects.into_iter().map(|e| (e, With::Nothing)));
                        batch.begun.push((txid, Waiter::Mounts { key, reply }));
                    }
                    Err(e) => batch.replies.push((reply, Err(e.into()))),
                }
            }
            Request::Commit { name, key, labels } => {
                let op = Op::BeginCommit {
                    key,
                    name,
                    labels,
                    time_ns: now_ns(),
                };
                match self.accept(op, batch) {
                    Ok((txid, effects)) => {
                        batch
                            .effects
                            .extend(effects.into_iter().map(|e| (e, With::Nothing)));
                        batch.begun.push((txid, Waiter::Done { reply }));
                    }
                    Err(e) => batch.replies.push((reply, Err(e.into()))),
                }
            }
            Request::Remove { key } => match self.accept(Op::Remove { key }, batch) {
                Ok((_, effects)) => {
                    let mut reply = Some(reply);
                    for e in effects {
                        batch.effects.push((e, With::reply(reply.take())));
                    }
                    if let Some(reply) = reply {
                        batch.replies.push((reply, Ok(Response::Done)));
                    }
                }
                Err(e) => batch.replies.push((reply, Err(e.into()))),
            },
            Request::Update { info, fieldpaths } => {
                let result = self.update_labels(&info, &fieldpaths).and_then(|labels| {
                    let op = Op::Update {
                        key: info.key.clone(),
                        labels,
                        time_ns: now_ns(),
                    };
                    self.accept(op, batch).map_err(EngineError::from)
                });
                match result {
                    Ok(_) => {
                        let snap = self.state.get(&info.key).expect("just updated");
                        batch
                            .replies
                            .push((reply, Ok(Response::Info(Info::of(&info.key, snap)))));
                    }
                    Err(e) => batch.replies.push((reply, Err(e))),
                }
            }
            Request::Stat { key } => {
                let r = self
                    .state
                    .get(&key)
                    .map(|s| Response::Info(Info::of(&key, s)));
                batch.replies.push((reply, r.map_err(Into::into)));
            }
            Request::Mounts { key } => {
                // containerd's Mounts (storage.GetSnapshot) answers for Active and View only.
                let r = match self.state.get(&key) {
                    Ok(s) if s.kind == Kind::Committed => {
                        Err(EngineError::from(StateError::FailedPrecondition {
                            key: key.clone(),
                            reason: cairn_state::Precondition::NoMounts,
                        }))
                    }
                    _ => self.mounts(&key),
                }
                .map(Response::Mounts);
                batch.replies.push((reply, r));
            }
            Request::Usage { key } => match self.state.get(&key) {
                Ok(snap) => match (snap.kind, snap.usage) {
                    (Kind::Committed, Some(usage)) => {
                        batch.replies.push((reply, Ok(Response::Usage(usage))))
                    }
                    _ => {
                        // Active trees change under the caller: measure now, off this thread.
                        let (driver, id) = (Arc::clone(&self.driver), snap.id);
                        let work = move || {
                            let measured = driver.usage(id);
                            // A remove may have been applied meanwhile. It renames the tree away
                            // before deleting anything, so if the tree is still in place the walk
                            // saw all of it; if not, the remove came first: NotFound, not an I/O
                            // error or a count of a half-deleted tree.
                            if std::fs::symlink_metadata(driver.tree(id)).is_err() {
                                Err(StateError::NotFound { key }.into())
                            } else {
                                measured.map(Response::Usage).map_err(EngineError::from)
                            }
                        };
                        self.workers.run("usage", work, answer(reply));
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
            Request::ImportLayer { input, options } => {
                self.begin_import(input, options, reply, batch)
            }
            Request::ExportLayer { chain_id, mut out } => {
                let found = self.layer_target(&chain_id);
                match found {
                    Ok((id, diff)) => {
                        let driver = Arc::clone(&self.driver);
                        let work = move || {
                            super::layers::export(driver.as_ref(), id, &diff, &mut out.0)
                                .map(|d| Response::Digest(d.to_string()))
                        };
                        self.workers.run("export", work, answer(reply));
                    }
                    Err(e) => batch.replies.push((reply, Err(e))),
                }
            }
            Request::Diff { key, out } => self.begin_diff(&key, out, reply, batch),
            Request::Layers => {
                let r = self
                    .state
                    .layers
                    .keys()
                    .map(|c| super::layers::layer_info(&self.state, c))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Response::Layers);
                batch.replies.push((reply, r));
            }
            Request::RemoveLayer { chain_id } => {
                self.remove_op(Op::RemoveLayer { chain_id }, reply, batch)
            }
            Request::PutImage {
                name,
                top,
                manifest_digest,
                config_digest,
            } => {
                let op = Op::PutImage {
                    name,
                    top,
                    manifest_digest,
                    config_digest,
                    time_ns: now_ns(),
                };
                self.remove_op(op, reply, batch);
            }
            Request::Images => {
                let r = super::layers::image_infos(&self.state).map(Response::Images);
                batch.replies.push((reply, r));
            }
            Request::RemoveImage { name } => self.remove_op(Op::RemoveImage { name }, reply, batch),
            Request::CreateContainer { name, layer, image } => {
                let layer = match (layer, image) {
                    (Some(layer), _) => Ok(layer),
                    (None, Some(image)) => self
                        .state
                        .images
                        .get(&image)
                        .map(|i| i.top.clone())
                        .ok_or(StateError::NotFound { key: image }),
                    (None, None) => Err(StateError::InvalidArgument {
                        reason: cairn_state::Invalid::EmptyKey,
                    }),
                };
                let op = layer.map(|layer| Op::BeginContainer {
                    name: name.clone(),
                    layer,
                    init_id: SnapshotId(self.state.next_id),
                    time_ns: now_ns(),
                });
                match op.and_then(|op| self.accept(op, batch)) {
                    Ok((txid, effects)) => {
                        batch
                            .effects
                            .extend(effects.into_iter().map(|e| (e, With::Nothing)));
                        batch
                            .begun
                            .push((txid, Waiter::Mounts { key: name, reply }));
                    }
                    Err(e) => batch.replies.push((reply, Err(e.into()))),
                }
            }
            Request::RemoveContainer { name } => {
                self.remove_op(Op::RemoveContainer { name }, reply, batch)
            }
            Request::Containers => {
                let list = self
                    .state
                    .containers
                    .iter()
                    .map(|(name, c)| super::api::ContainerInfo {
                        name: name.clone(),
                        layer: c.layer.clone(),
                        init_key: c.init_key.clone(),
                        key: c.key.clone(),
                        ready: c.ready,
                        created_ns: c.created_ns,
                    })
                    .collect();
                batch.replies.push((reply, Ok(Response::Containers(list))));
            }
            Request::Verify { chain_id } => {
                let chains: Vec<String> = match chain_id {
                    Some(c) => vec![c],
                    None => self.state.layers.keys().cloned().collect(),
                };
                let targets = chains
                    .into_iter()
                    .map(|c| self.layer_target(&c).map(|(id, diff)| (c, id, diff)))
                    .collect::<Result<Vec<_>, EngineError>>();
                match targets {
                    Ok(targets) => {
                        let driver = Arc::clone(&self.driver);
                        let work = move || {
                            let results = targets
                                .iter()
                                .map(|(c, id, diff)| {
                                    super::layers::verify(driver.as_ref(), c, *id, diff)
                                })
                                .collect();
                            Ok(Response::Verified(results))
                        };
                        self.workers.run("verify", work, answer(reply));
                    }
                    Err(e) => batch.replies.push((reply, Err(e))),
                }
            }
        }
    }

    /// `snapshot diff`: the trees are resolved here, the walk runs on a worker.
    fn begin_diff(&mut self, key: &str, out: super::api::Output, reply: Reply, batch: &mut Batch) {
        let target = self
            .state
            .get(key)
            .map_err(EngineError::from)
            .and_then(|snap| {
                if snap.kind == Kind::View {
                    return Err(StateError::FailedPrecondition {
                        key: key.to_owned(),
                        reason: cairn_state::Precondition::NotActive,
                    }
                    .into());
                }
                let parents = self.state.parent_ids(key)?;
                Ok((snap.id, parents.first().copied()))
            });
        match target {
            Ok((id, parent)) => {
                let driver = Arc::clone(&self.driver);
                let work = move || {
                    super::layers::diff(driver.as_ref(), id, parent, out.0)
                        .map(|d| Response::Digest(d.to_string()))
                };
                self.workers.run("diff", work, answer(reply));
            }
            Err(e) => batch.replies.push((reply, Err(e))),
        }
    }

    /// A layer's snapshot id and DiffID.
    fn layer_target(
        &self,
        chain_id: &str,
    ) -> Result<(SnapshotId, cairn_layer::Digest), EngineError> {
        let layer = self.state.layer(chain_id)?;
        let diff = super::layers::parse_digest(&layer.diff_id)?;
        Ok((self.state.get(chain_id)?.id, diff))
    }

    /// A one-record command whose effects may delete trees: journal it, then reply once the
    /// deletions are done (the last `Delete` effect carries the reply).
    fn remove_op(&mut self, op: Op, reply: Reply, batch: &mut Batch) {
        match self.accept(op, batch) {
            Ok((_, effects)) => {
                let mut reply = Some(reply);
                let last_delete = effects
                    .iter()
                    .rposition(|e| matches!(e, Effect::Delete { .. }));
                for (i, e) in effects.into_iter().enumerate() {
                    let r = if Some(i) == last_delete {
                        reply.take()
                    } else {
                        None
                    };
                    batch.effects.push((e, With::reply(r)));
                }
                if let Some(reply) = reply {
                    batch.replies.push((reply, Ok(Response::Done)));
                }
            }
            Err(e) => batch.replies.push((reply, Err(e.into()))),
        }
    }

    fn begin_import(
        &mut self,
        input: super::api::Input,
        options: ImportOptions,
        reply: Reply,
        batch: &mut Batch,
    ) {
        let parent = match &options.parent {
            None => Ok(None),
            Some(p) => self
                .layer_target(p)
                .and_then(|(id, _)| Ok(Some((id, super::layers::parse_digest(p)?)))),
        };
        let parent = match parent {
            Ok(p) => p,
            Err(e) => return batch.replies.push((reply, Err(e))),
        };
        // A known DiffID whose layer exists: nothing to read, nothing to write.
        if let Some(expected) = &options.expected_diff_id {
            let chain =
                cairn_layer::chain_id(parent.as_ref().map(|(_, d)| d), expected).to_string();
            if let Ok(layer) = self.state.layer(&chain) {
                if layer.pinned || !options.pin {
                    let imported = Imported {
                        chain_id: chain.clone(),
                        diff_id: layer.diff_id.clone(),
                        size_bytes: layer.size_bytes,
                        existed: true,
                    };
                    return batch
                        .replies
                        .push((reply, Ok(Response::Imported(imported))));
                }
            }
        }
        let op = Op::BeginImport {
            id: SnapshotId(self.state.next_id),
            parent: options.parent.clone(),
            pin: options.pin,
            time_ns: now_ns(),
        };
        match self.accept(op, batch) {
            Ok((txid, effects)) => {
                // The caller's input travels with the import's staging effect.
                let mut job = Some(super::layers::ImportJob {
                    input,
                    expected: options.expected_diff_id,
                    parent,
                });
                for e in effects {
                    let with = match (&e, job.take()) {
                        (
                            Effect::Stage {
                                stage: Stage::Import { .. },
                                ..
                            },
                            Some(job),
                        ) => With::Import(job),
                        (_, taken) => {
                            job = taken;
                            With::Nothing
                        }
                    };
                    batch.effects.push((e, with));
                }
                batch.begun.push((txid, Waiter::Layer { reply }));
            }
            Err(e) => batch.replies.push((reply, Err(e.into()))),
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
                    reason: cairn_state::Invalid::FieldNotUpdatable { path: path.clone() },
                }
                .into());
            }
        }
        Ok(labels)
    }

    pub(crate) fn mounts(&self, key: &str) -> Result<Vec<cairn_state::types::Mount>, EngineError> {
        let snap = self.state.get(key)?;
        let parents = self.state.parent_ids(key)?;
        Ok(self.driver.mounts(snap.id, snap.kind, &parents)?)
    }

    fn handle_done(&mut self, done: Done, batch: &mut Batch) {
        let (txid, result) = match done {
            Done::Staged { txid, result } => (txid, result.map(|()| None)),
            Done::Sealed { txid, result } => (txid, result.map(Some)),
            Done::Imported { txid, result } => return self.handle_imported(txid, result, batch),
        };
        let waiter = self.waiting.remove(&txid);
        if self.failed.is_some() {
            if let Some(w) = waiter {
                let cause = self.failed.clone().unwrap_or_default();
                let _ = w.reply().send(Err(EngineError::Failed { cause }));
            }
            return;
        }
        let (op, outcome) = match result {
            Ok(usage) => (Op::Complete { of: txid, usage }, Ok(None)),
            Err(e) => (Op::Abort { of: txid }, Err(e)),
        };
        let (record_txid, effects) = match self.accept(op, batch) {
            Ok(accepted) => accepted,
            Err(e) => {
                // Only a bug gets here (a completion always follows its pending transaction);
                // the refusal changed nothing, so the engine carries on and the client hears.
                tracing::error!(%txid, error = %e, "bug: a worker's completion was refused");
                if let Some(w) = waiter {
                    let _ = w.reply().send(Err(e.into()));
                }
                return;
            }
        };
        // A completion that begins the next step (a container's read-write snapshot) keeps
        // its client waiting for that step.
        let continues = effects
            .iter()
            .any(|e| matches!(e, Effect::Stage { txid, .. } if *txid == record_txid));
        batch
            .effects
            .extend(effects.into_iter().map(|e| (e, With::Nothing)));
        if let Some(w) = waiter {
            if continues {
                batch.begun.push((record_txid, w));
            } else {
                // Read now: a remove or commit of the same key later in this batch must not
                // turn the acknowledged creation into NotFound.
                let outcome = outcome.map(|known| match (known, &w) {
                    (Some(response), _) => Answer::Response(response),
                    (None, Waiter::Mounts { key, .. }) => match self.state.get(key) {
                        Ok(snap) => match self.state.parent_ids(key) {
                            Ok(parents) => Answer::Mounts((snap.id, snap.kind, parents)),
                            Err(_) => Answer::Lookup,
                        },
                        Err(_) => Answer::Lookup,
                    },
                    (None, _) => Answer::Done,
                });
                batch.completed.push((w, outcome));
            }
        }
    }

    fn handle_imported(
        &mut self,
        txid: TxId,
        result: Result<super::layers::LayerDone, EngineError>,
        batch: &mut Batch,
    ) {
        let waiter = self.waiting.remove(&txid);
        if let Some(cause) = self.failed.clone() {
            if let Some(w) = waiter {
                let _ = w.reply().send(Err(EngineError::Failed { cause }));
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
                let op = Op::CompleteImport {
                    of: txid,
                    diff_id: imported.diff_id.clone(),
                    chain_id: imported.chain_id.clone(),
                    size_bytes: done.size_bytes,
                    usage: done.usage,
                };
                (op, Ok(Answer::Response(Response::Imported(imported))))
            }
            Err(e) => (Op::Abort { of: txid }, Err(e)),
        };
        let (effects, outcome) = match self.accept(op, batch) {
            Ok((_, effects)) => (effects, outcome),
            Err(refused) => {
                // The completion was refused (a snapshot of a root older than the reserved
                // ChainID keys has the layer's key, or the record is over the journal's limit)
                // and changed nothing: the import is still pending, so abort it.
                match self.accept(Op::Abort { of: txid }, batch) {
                    Ok((_, effects)) => (effects, Err(refused.into())),
                    Err(e) => {
                        tracing::error!(%txid, error = %e, "bug: aborting a pending import was refused");
                        (Vec::new(), Err(refused.into()))
                    }
                }
            }
        };
        batch
            .effects
            .extend(effects.into_iter().map(|e| (e, With::Nothing)));
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
            let failed = || {
                Err(EngineError::Failed {
                    cause: cause.clone(),
                })
            };
            for (reply, _) in batch.replies {
                let _ = reply.send(failed());
            }
            for (_, w) in batch.begun {
                let _ = w.reply().send(failed());
            }
            for (w, _) in batch.completed {
                let _ = w.reply().send(failed());
            }
            for (_, with) in batch.effects {
                if let With::Reply(reply) = with {
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
        let mut effects = std::mem::take(&mut batch.effects);
        let later = effects.split_off(batch.done_effects.min(effects.len()));
        self.run_effects(effects);
        // Completed creations are installed now; answer them before the requests' effects
        // (a Delete of the same snapshot later in this batch) run.
        for (waiter, outcome) in batch.completed {
            let response = outcome.and_then(|answer| match (answer, &waiter) {
                (Answer::Response(response), _) => Ok(response),
                (Answer::Mounts((id, kind, parents)), _) => self
                    .driver
                    .mounts(id, kind, &parents)
                    .map(Response::Mounts)
                    .map_err(EngineError::from),
                (Answer::Lookup, Waiter::Mounts { key, .. }) => {
                    self.mounts(key).map(Response::Mounts)
                }
                (_, _) => Ok(Response::Done),
            });
            let _ = waiter.reply().send(response);
        }
        self.run_effects(later);
        self.update_index(!batch.records.is_empty(), &batch.touched);
        for (req, reply) in std::mem::take(&mut batch.deferred) {
            if let Some(cause) = &self.failed {
                let _ = reply.send(Err(EngineError::Failed {
                    cause: cause.clone(),
                }));
                continue;
            }
            let r = match req {
                Request::Fsck { repair } => super::fsck::run(self, repair).map(Response::Fsck),
                _ => self.cleanup().map(Response::Cleanup),
            };
            let _ = reply.send(r);
        }
        for (reply, response) in batch.replies {
            let _ = reply.send(response);
        }
        let due = self.wal.next_lsn().0 - 1 - self.checkpoint_lsn.0
            >= self.options.checkpoint_every_records;
        if due || !batch.checkpoint.is_empty() {
            let r = self.checkpoint();
            for reply in batch.checkpoint {
                let _ = reply.send(match &r {
                    Ok(()) => Ok(Response::Done),
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

    /// Run effects in order; consecutive installs share one pair of directory fsyncs, and any
    /// other effect waits for the installs before it.
    fn run_effects(&mut self, effects: Vec<(Effect, With)>) {
        let mut installs = Vec::new();
        for (effect, with) in effects {
            match effect {
                Effect::Install { txid, id } => installs.push((txid, id)),
                other => {
                    self.install(&mut installs);
                    self.run_effect(other, with);
                }
            }
        }
        self.install(&mut installs);
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
                        move || super::layers::import(driver.as_ref(), txid, job),
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
                        let tree = driver.staged_tree(txid);
                        super::layers::write_init_files(&tree).map_err(|source| {
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
            (Effect::Seal { txid, id }, _) => {
                let deliver = move |r: Result<Result<Usage, DriverError>, Panicked>| {
                    let result = match r {
                        Ok(r) => r.map_err(EngineError::from),
                        Err(p) => Err(p.into()),
                    };
                    let _ = done.send(Done::Sealed { txid, result });
                };
                self.workers
                    .run("seal", move || driver.seal(id, txid), deliver);
            }
            (Effect::Install { txid, id }, _) => self.install(&mut vec![(txid, id)]),
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
                        let _ = reply.send(r.map(|()| Response::Done).map_err(EngineError::from));
                    }
                };
                self.workers.run("delete", work, deliver);
            }
        }
    }

    /// Write a checkpoint of the state and drop the log behind it.
    pub(crate) fn checkpoint(&mut self) -> Result<(), EngineError> {
        let lsn = Lsn(self.wal.next_lsn().0 - 1);
        if lsn == self.checkpoint_lsn {
            return Ok(());
        }
        let cp = checkpoint::Checkpoint {
            lsn,
            state: self.state.clone(),
        };
        checkpoint::store(self.storage.as_ref(), &self.root, self.store_id, &cp)?;
        fail::fail_point!("engine::checkpoint::after_store");
        self.checkpoint_lsn = lsn;
        self.wal.truncate_before(lsn.next())?;
        fail::fail_point!("engine::checkpoint::after_truncate");
        Ok(())
    }

    /// Remove every tree and staging area on disk that the state does not name.
    pub(crate) fn cleanup(&mut self) -> Result<CleanupReport, EngineError> {
        let strays = self.strays()?;
        for id in strays.trees.iter().chain(&strays.trash) {
            self.driver.remove(*id)?;
        }
        for txid in &strays.staging {
            self.driver.discard(*txid)?;
        }
        Ok(CleanupReport {
            snapshots_removed: strays.trees,
            staging_removed: strays.staging,
        })
    }

    /// What the driver holds that the state does not name, leaving out trees a worker is
    /// deleting right now (their removal is journaled; the worker finishes it).
    pub(crate) fn strays(&self) -> Result<Strays, EngineError> {
        let inv = self.driver.inventory()?;
        let deleting = lock(&self.deleting).clone();
        let ids: std::collections::BTreeSet<SnapshotId> =
            self.state.snapshots.values().map(|s| s.id).collect();
        Ok(Strays {
            trees: inv
                .installed
                .keys()
                .filter(|id| !ids.contains(id) && !deleting.contains(id))
                .copied()
                .collect(),
            staging: inv
                .staging
                .iter()
                .filter(|t| !self.state.pending.contains_key(t))
                .copied()
                .collect(),
            trash: inv
                .trash
                .iter()
                .filter(|id| !deleting.contains(id))
                .copied()
                .collect(),
            unexpected: inv.unexpected,
        })
    }
}

/// Trees, staging areas and trash on disk that nothing in the state names.
#[derive(Debug)]
pub(crate) struct Strays {
    pub trees: Vec<SnapshotId>,
    pub staging: Vec<TxId>,
    pub trash: Vec<SnapshotId>,
    pub unexpected: Vec<PathBuf>,
}

/// Delivers a worker's answer to its client; a panicked job becomes an error for it.
fn answer(reply: Reply) -> impl FnOnce(Result<Result<Response, EngineError>, Panicked>) {
    move |r| {
        let _ = reply.send(r.unwrap_or_else(|p| Err(p.into())));
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A worker that panicked holding it has already failed a test; the set stays usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
