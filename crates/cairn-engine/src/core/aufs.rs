//! What Docker's aufs driver answered, on every driver: a snapshot's `Changes` and `DiffSize`
//! (walked on a worker), and reference-counted mounts (`Get`/`Put`), journaled as two-step
//! transactions whose mount(2) / umount(2) run on a worker (see `cairn_state`'s mounts.rs).
//!
//! Everything here reads the driver only through the `Driver` trait: its trees and its
//! whiteout style say whether a tree is whole (vfs) or an upper dir over its parents' (overlay),
//! so a new driver gets these for free.

use super::batch::{Batch, Outgoing, Waiter};
use super::{Core, Done};
use crate::api::{Change, DiffUsage, MountRefInfo, Reply};
use crate::error::EngineError;
use crate::workers::Panicked;
use cairn_driver::{Driver, DriverError, TreeView, WhiteoutStyle};
use cairn_layer as layer;
use cairn_state::types::{Kind, SnapshotId, TxId};
use cairn_state::{Op, Pending, StateError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A snapshot's trees, resolved on the engine thread for a walk on a worker, which opens them
/// (`Driver::open_tree`: a directory already on vfs and overlay, a read-only loop mount of the
/// image on block).
struct Trees {
    kind: Kind,
    own_id: SnapshotId,
    /// Where its tree lives, to tell a concurrent remove from an I/O error.
    own_path: PathBuf,
    /// Its committed ancestors, nearest first.
    parent_ids: Vec<SnapshotId>,
    /// Whole trees (`Delete` style) or upper dirs over their parents.
    whole: bool,
    driver: Arc<dyn Driver>,
}

/// `Trees` opened for reading; each view is released (unmounted, on block) when dropped.
struct Opened {
    kind: Kind,
    own: TreeView,
    /// Only the nearest parent for whole trees: nothing below it is read.
    parents: Vec<TreeView>,
    whole: bool,
}

impl Trees {
    fn open(&self) -> Result<Opened, EngineError> {
        let own = self.driver.open_tree(self.own_id)?;
        let wanted = if self.whole { 1 } else { self.parent_ids.len() };
        let parents = self
            .parent_ids
            .iter()
            .take(wanted)
            .map(|id| self.driver.open_tree(*id))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Opened {
            kind: self.kind,
            own,
            parents,
            whole: self.whole,
        })
    }

    /// The walk saw a tree a concurrent remove took away: NotFound, not an I/O error.
    fn gone(&self, key: String) -> Option<EngineError> {
        std::fs::symlink_metadata(&self.own_path)
            .is_err()
            .then(|| StateError::NotFound { key }.into())
    }
}

impl Opened {
    fn changes(&self) -> Result<Vec<layer::PathChange>, EngineError> {
        // A view is read-only: it has no changes of its own.
        if self.kind == Kind::View {
            return Ok(Vec::new());
        }
        let lowers: Vec<PathBuf> = self.parents.iter().map(|v| v.path().to_owned()).collect();
        let source = if self.whole {
            layer::ChangesSource::Trees {
                lower: self.parents.first().map(TreeView::path),
                upper: self.own.path(),
            }
        } else {
            layer::ChangesSource::Overlay {
                upper: self.own.path(),
                lowers: &lowers,
            }
        };
        Ok(layer::changes(source)?)
    }

    /// The layers a mount of it shows, nearest first.
    fn view(&self) -> Vec<PathBuf> {
        if !self.whole {
            let mut layers = vec![self.own.path().to_owned()];
            layers.extend(self.parents.iter().map(|v| v.path().to_owned()));
            return layers;
        }
        match (self.kind, self.parents.first()) {
            // A whole-tree driver's view mounts its parent's tree.
            (Kind::View, Some(parent)) => vec![parent.path().to_owned()],
            _ => vec![self.own.path().to_owned()],
        }
    }
}

fn answer<T: Send + 'static>(
    reply: Reply<T>,
) -> impl FnOnce(Result<Result<T, EngineError>, Panicked>) + Send + 'static {
    move |r| {
        let _ = reply.send(r.unwrap_or_else(|p| Err(p.into())));
    }
}

impl Core {
    fn trees(&self, key: &str) -> Result<Trees, EngineError> {
        let snap = self.state.get(key)?;
        let parents = self.state.parent_ids(key)?;
        Ok(Trees {
            kind: snap.kind,
            own_id: snap.id,
            own_path: self.driver.tree(snap.id),
            parent_ids: parents.to_vec(),
            whole: self.driver.whiteout_style() == WhiteoutStyle::Delete,
            driver: Arc::clone(&self.driver),
        })
    }

    /// `snapshot changes`: resolved here, walked on a worker.
    pub(super) fn changes(&mut self, key: String, reply: Reply<Vec<Change>>, batch: &mut Batch) {
        let trees = match self.trees(&key) {
            Ok(t) => t,
            Err(e) => return batch.reply(reply, Err(e)),
        };
        let work = move || {
            let changes = trees.open().and_then(|opened| opened.changes());
            if let Some(e) = trees.gone(key) {
                return Err(e);
            }
            Ok(changes?
                .into_iter()
                .map(|c| Change {
                    kind: c.kind.letter(),
                    path: c.path,
                })
                .collect())
        };
        self.workers.run("changes", work, answer(reply));
    }

    /// `snapshot usage` with `DiffSize` and the whole tree's size, measured on a worker.
    pub(super) fn diff_usage(&mut self, key: String, reply: Reply<DiffUsage>, batch: &mut Batch) {
        let (trees, id, recorded) = match self.trees(&key).and_then(|t| {
            let snap = self.state.get(&key)?;
            Ok((t, snap.id, snap.usage))
        }) {
            Ok(t) => t,
            Err(e) => return batch.reply(reply, Err(e)),
        };
        let driver = Arc::clone(&self.driver);
        let work = move || {
            let measured = (|| {
                let usage = match recorded {
                    Some(u) => u,
                    None => driver.usage(id)?,
                };
                let opened = trees.open()?;
                let changes = opened.changes()?;
                let diff_size_bytes = layer::changes_size(opened.own.path(), &changes)?;
                let tree = layer::tree_size(&opened.view())?;
                Ok(DiffUsage {
                    usage,
                    diff_size_bytes,
                    tree_size_bytes: tree.size_bytes,
                    tree_inodes: tree.inodes,
                })
            })();
            if let Some(e) = trees.gone(key) {
                return Err(e);
            }
            measured
        };
        self.workers.run("diff usage", work, answer(reply));
    }

    fn target_pending(&self, target: &str) -> bool {
        self.state.pending.values().any(|p| match p {
            Pending::Mount { target: t, .. } | Pending::Unmount { target: t } => t == target,
            _ => false,
        })
    }

    pub(super) fn mount_info(&self, key: &str, target: &str) -> MountRefInfo {
        MountRefInfo {
            target: target.to_owned(),
            key: key.to_owned(),
            count: self.state.mounts.get(target).map_or(0, |m| m.count),
        }
    }

    pub(super) fn mount_infos(&self) -> Vec<MountRefInfo> {
        self.state
            .mounts
            .iter()
            .map(|(target, m)| self.mount_info(&m.key, target))
            .collect()
    }

    /// aufs' `Get`: the first reference mounts (a transaction), later ones count.
    pub(super) fn mount_ref(
        &mut self,
        key: String,
        target: String,
        reply: Reply<MountRefInfo>,
        batch: &mut Batch,
    ) {
        // A target something else is mounted on would read, after a crash, as our mount.
        if !self.state.mounts.contains_key(&target) && !self.target_pending(&target) {
            match cairn_driver::mountinfo::is_mount_point(Path::new(&target)) {
                Ok(false) => {}
                Ok(true) => {
                    let target = PathBuf::from(target);
                    return batch.reply(reply, Err(EngineError::TargetMounted { target }));
                }
                Err(e) => return batch.reply(reply, Err(e.into())),
            }
        }
        let op = Op::Mount {
            key: key.clone(),
            target: target.clone(),
        };
        self.mount_step(op, key, target, reply, batch);
    }

    /// aufs' `Put`: the last release unmounts (a transaction), earlier ones count down.
    pub(super) fn unmount_ref(
        &mut self,
        target: String,
        reply: Reply<MountRefInfo>,
        batch: &mut Batch,
    ) {
        let key = self
            .state
            .mounts
            .get(&target)
            .map(|m| m.key.clone())
            .unwrap_or_default();
        let op = Op::Unmount {
            target: target.clone(),
        };
        self.mount_step(op, key, target, reply, batch);
    }

    fn mount_step(
        &mut self,
        op: Op,
        key: String,
        target: String,
        reply: Reply<MountRefInfo>,
        batch: &mut Batch,
    ) {
        match self.accept(op, batch) {
            Ok((_, effects)) if effects.is_empty() => {
                let info = self.mount_info(&key, &target);
                batch.reply(reply, Ok(info));
            }
            Ok((txid, effects)) => {
                batch.effects(effects);
                let waiter = Waiter::MountRef { key, target, reply };
                batch.outbox.push(Outgoing::Begun(txid, waiter));
            }
            Err(e) => batch.reply(reply, Err(e.into())),
        }
    }

    /// The mount(2) of a first reference, on a worker; its result completes or aborts `txid`.
    pub(super) fn run_mount(&mut self, txid: TxId, key: &str, target: String) {
        let done = self.done_tx.clone();
        let deliver = move |r: Result<Result<(), EngineError>, Panicked>| {
            let result = r.unwrap_or_else(|p| Err(p.into()));
            let _ = done.send(Done::Mounted { txid, result });
        };
        let mounts = match self.mounts(key) {
            Ok(m) => m,
            Err(e) => return deliver(Ok(Err(e))),
        };
        let work = move || {
            fail::fail_point!("engine::mount::before_mount");
            cairn_driver::mount::mount_all(&mounts, Path::new(&target))?;
            // A crash here leaves the mount with its `Mount` pending: recovery finds it in
            // mountinfo and completes it, so the mount is counted.
            fail::fail_point!("engine::mount::after_mount");
            Ok(())
        };
        self.workers.run("mount", work, deliver);
    }

    /// The umount(2) of a last release, on a worker; its result completes or aborts `txid`.
    pub(super) fn run_unmount(&mut self, txid: TxId, target: String) {
        let done = self.done_tx.clone();
        let deliver = move |r: Result<Result<(), EngineError>, Panicked>| {
            let result = r.unwrap_or_else(|p| Err(p.into()));
            let _ = done.send(Done::Mounted { txid, result });
        };
        // As many mounts as the snapshot's mounts stack there, and no more: whatever someone
        // else mounted over them is not ours to take down.
        let layers = self
            .state
            .mounts
            .get(&target)
            .and_then(|m| self.mounts(&m.key).ok())
            .map_or(1, |m| m.len().max(1));
        let work = move || {
            fail::fail_point!("engine::unmount::before_unmount");
            for _ in 0..layers {
                match cairn_driver::mount::unmount(Path::new(&target)) {
                    Ok(()) => {}
                    // Already gone (unmounted behind cairn's back): the release is done.
                    Err(DriverError::Unmount { source, .. })
                        if source.raw_os_error() == Some(libc::EINVAL) =>
                    {
                        break
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            // A crash here leaves the `Unmount` pending with nothing mounted: recovery
            // completes it.
            fail::fail_point!("engine::unmount::after_unmount");
            Ok(())
        };
        self.workers.run("unmount", work, deliver);
    }
}
