//! Batched durable steps (docs/drivers.md, "Batched syncs"): the trees of every cheap creation
//! and every seal of one engine batch made durable together, by one syncfs(2) through the
//! root's [`FsWatch`](super::sync::FsWatch) per step instead of ~4 fsyncs per snapshot.
//!
//! The error rule of a shared sync: if the file system reported a write-back error while the
//! batch's pages were being written back (the watch's count moved between the batch's start and
//! the end of its sync), every snapshot the sync covered fails: a creation is removed, a sealed
//! tree is tainted (`sync-failed`), and none is ever synced again over the same pages.

use super::error::DriverError;
use super::layout::{create_tree_root, exists, Layout, TREE, WORK};
use super::marker;
use super::remove::remove_tree;
use super::step::Way;
use super::sync::{collect_tree, fsync_dir, fsync_each};
use super::walk::{fsyncable, walk_small, UsageCounter};
use cairn_state::types::{Kind, SnapshotId, TxId, Usage};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A creation whose tree copies nothing (an empty tree, an overlay upper, a view), made straight
/// in `snapshots/<id>` by [`Driver::create_many`](super::Driver::create_many).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewTree {
    pub txid: TxId,
    pub id: SnapshotId,
    pub kind: Kind,
    pub parent: Option<SnapshotId>,
}

/// What a per-file sync fsyncs: each path, and whether it is a directory.
type FsyncList = Vec<(PathBuf, bool)>;

/// A seal under way: the snapshot's directory, its tree's usage, and what a per-file check of
/// it would fsync (its files and directories, and the temporary marker).
type Sealing = (PathBuf, Usage, FsyncList);

/// An inline seal under way, with the walk its tree was read in (its digest is taken from it).
type SmallSeal = (Sealing, Vec<(PathBuf, std::fs::Metadata)>);

fn batch_sync_failed(path: &Path, errors: u64) -> DriverError {
    DriverError::SyncFailed {
        op: "syncfs",
        path: path.to_path_buf(),
        source: std::io::Error::other(format!(
            "{errors} write-back error(s) reported on the file system during this batch's sync; \
             every snapshot the sync covered fails"
        )),
    }
}

/// A seal of the batch failed after its `txid.tmp` was written: remove it (durably), since
/// recovery looks for a temporary only where the journal names an interrupted seal (row R23);
/// if it cannot be removed, `MarkerTmpLeft` stops the engine.
fn drop_tmp(dir: &Path, cause: DriverError) -> DriverError {
    match marker::remove_leftover(dir) {
        Ok(_) => cause,
        Err(e) => DriverError::MarkerTmpLeft {
            path: dir.join(marker::MARKER_TMP),
            cause: cause.to_string(),
            source: Box::new(e),
        },
    }
}

/// A commit's seal made by [`Driver::durable_many`](super::Driver::durable_many) in the batch
/// that begins it: the sealed tree's usage and digest, or why it failed; `None` when the tree is
/// too big to seal there (then a worker's `seal_many` seals it).
pub type SealedInline = Option<Result<(Usage, String), DriverError>>;

/// A tree with at most this many inodes (its root included) and [`INLINE_SEAL_MAX_BYTES`] is
/// sealed on the engine thread: finding out costs a few readdirs, digesting it a few reads.
pub const INLINE_SEAL_MAX_INODES: u64 = 16;
/// See [`INLINE_SEAL_MAX_INODES`].
pub const INLINE_SEAL_MAX_BYTES: u64 = 64 * 1024;

impl Layout {
    /// Creates each tree in `snapshots/<id>` (fs/, work/ if `work(kind)`, the marker), then
    /// makes all of them durable in one step (per-file fsyncs or one syncfs, as
    /// `durable_many`). Nothing is journaled yet: until the caller
    /// journals their completions, each is an orphan recovery removes (row R40).
    pub fn create_many(
        &self,
        items: &[NewTree],
        work: impl Fn(Kind) -> bool,
    ) -> Vec<Result<(), DriverError>> {
        let make_tree = |_: &NewTree, tree: &Path| create_tree_root(tree);
        self.durable_many_with(items, &[], work, make_tree, false).0
    }

    /// `create_many` with the tree made by `make_tree(item, snapshots/<id>/fs)` (a btrfs
    /// subvolume or snapshot), called once `snapshots/<id>` and its marker (unsynced) exist.
    pub(crate) fn create_many_with(
        &self,
        items: &[NewTree],
        work: impl Fn(Kind) -> bool,
        make_tree: impl Fn(&NewTree, &Path) -> Result<(), DriverError>,
    ) -> Vec<Result<(), DriverError>> {
        // A btrfs tree is a subvolume or snapshot: only the transaction commit that syncfs
        // makes carries it, so its creations never take per-file fsyncs.
        self.durable_many_with(items, &[], work, make_tree, true).0
    }

    /// The durable step of one engine batch: each creation's tree made in `snapshots/<id>`
    /// (as `create_many`), each small commit's tree checked (at most
    /// [`INLINE_SEAL_MAX_INODES`] and [`INLINE_SEAL_MAX_BYTES`], else `None`: a worker seals
    /// it), then everything made durable together, by per-file fsyncs or by one syncfs
    /// (whichever the layout's [`DurableStep`](crate::DurableStep) takes for that many
    /// fsyncs); then each sealed tree is digested.
    ///
    /// Nothing is journaled yet. A creation is an orphan until its completion is journaled
    /// (row R40). A seal here does not rewrite the marker: its commit is journaled (begin and
    /// completion together) only after this returns, so a marker naming the commit's txid
    /// could survive a crash that loses the txid; the creation's txid stays, which fsck's
    /// check (`created_txid ≤ marker ≤ last_txid`) accepts for the snapshot's whole life.
    pub fn durable_many(
        &self,
        items: &[NewTree],
        seals: &[(SnapshotId, TxId)],
        work: impl Fn(Kind) -> bool,
    ) -> (Vec<Result<(), DriverError>>, Vec<SealedInline>) {
        self.durable_many_with(items, seals, work, |_, tree| create_tree_root(tree), false)
    }

    /// A sealed tree's outcome after a shared syncfs that moved the write-back error count
    /// from `start` to `errors`: `None` when its bytes are durable, else the error, the tree
    /// tainted when it is a sync failure.
    fn seal_sync_failure(
        &self,
        id: SnapshotId,
        dir: &Path,
        files: &[(PathBuf, bool)],
        start: u64,
        errors: u64,
    ) -> Option<DriverError> {
        let failed = if errors != start {
            // An error reported during this batch's sync: it may be any of the batch's pages,
            // and a new fsync would return 0 over them.
            batch_sync_failed(dir, errors - start)
        } else if start != 0 {
            // An error reported earlier in this driver's life may have been this tree's (it was
            // written through mounts at any time): every file fsyncs cleanly, or it fails (a
            // file's own error stays in its inode until someone fsyncs it).
            tracing::warn!(%id, "write-back error on the file system earlier; checking this tree file by file");
            fsync_each(files).err()?
        } else {
            return None;
        };
        Some(self.taint_sync_failure(id, dir, failed))
    }

    /// `e`, after tainting `id`'s tree (`sync-failed`) when `e` is a failed sync: none is ever
    /// synced again over the same pages.
    fn taint_sync_failure(&self, id: SnapshotId, dir: &Path, e: DriverError) -> DriverError {
        if e.is_sync_failure() {
            self.taint(id, dir, e)
        } else {
            e
        }
    }

    /// `durable_many` with each creation's tree made by `make_tree` (see `create_many_with`);
    /// with `creations_need_syncfs`, a step with a creation is always made by the syncfs (on
    /// btrfs it also commits the transaction a subvolume or snapshot is made in).
    fn durable_many_with(
        &self,
        items: &[NewTree],
        seals: &[(SnapshotId, TxId)],
        work: impl Fn(Kind) -> bool,
        make_tree: impl Fn(&NewTree, &Path) -> Result<(), DriverError>,
        creations_need_syncfs: bool,
    ) -> (Vec<Result<(), DriverError>>, Vec<SealedInline>) {
        let start = self.watch().errors();
        // Each creation's outcome, and what a per-file sync of it fsyncs (nothing if it failed).
        let (mut results, created): (Vec<Result<(), DriverError>>, Vec<FsyncList>) = items
            .iter()
            .map(
                |item| match self.create_one(item, work(item.kind), &make_tree) {
                    Ok(files) => (Ok(()), files),
                    Err(e) => (Err(e), Vec::new()),
                },
            )
            .unzip();
        // Each small tree is read once: its usage, its fsync list and (after the sync) its
        // digest all come from the same walk.
        let mut walked: Vec<Vec<(PathBuf, std::fs::Metadata)>> = Vec::with_capacity(seals.len());
        let mut sealing: Vec<Option<Result<Sealing, DriverError>>> = seals
            .iter()
            .map(|&(id, _)| {
                let (slot, entries) = match self.small_seal(id) {
                    Some(Ok((sealing, entries))) => (Some(Ok(sealing)), entries),
                    Some(Err(e)) => (Some(Err(e)), Vec::new()),
                    None => (None, Vec::new()),
                };
                walked.push(entries);
                slot
            })
            .collect();
        let any_created = results.iter().any(Result::is_ok);
        let calls = usize::from(any_created)
            + created.iter().map(Vec::len).sum::<usize>()
            + sealing
                .iter()
                .map(|s| match s {
                    Some(Ok((_, _, files))) => files.len(),
                    _ => 0,
                })
                .sum::<usize>();
        if any_created {
            fail::fail_point!("driver::create::before_sync");
        }
        if sealing.iter().any(|s| matches!(s, Some(Ok(_)))) {
            fail::fail_point!("driver::seal::before_sync");
        }
        let forced_syncfs = creations_need_syncfs && any_created;
        let way = match calls {
            0 => None,
            _ if forced_syncfs => Some(Way::Syncfs),
            _ => Some(self.step.choose(calls)),
        };
        let started = Instant::now();
        if way == Some(Way::PerFile) {
            // Invariant (as the syncfs below): every tree, marker and `snapshots/<id>` entry of
            // the batch's creations, and every byte of its sealed trees, is on disk before the
            // batch journals their completions. Each directory's fsync makes its new entries
            // durable, and every one is done before the journal is written, so their order
            // does not matter.
            for (r, files) in results.iter_mut().zip(&created) {
                if r.is_ok() {
                    *r = fsync_each(files);
                }
            }
            if any_created {
                if let Err(e) = fsync_dir(self.snapshots_root()) {
                    // Any creation's entry in snapshots/ may be lost: all of them fail.
                    for r in results.iter_mut().filter(|r| r.is_ok()) {
                        *r = Err(DriverError::SyncFailed {
                            op: "fsync",
                            path: self.snapshots_root().to_path_buf(),
                            source: std::io::Error::other(e.to_string()),
                        });
                    }
                }
            }
            for (&(id, _), slot) in seals.iter().zip(sealing.iter_mut()) {
                if let Some(Ok((dir, _, files))) = slot {
                    if let Err(e) = fsync_each(files) {
                        let dir = dir.clone();
                        *slot = Some(Err(self.taint_sync_failure(id, &dir, e)));
                    }
                }
            }
        } else if way == Some(Way::Syncfs) {
            // Invariant: every tree, its marker and its entry in snapshots/ are on disk before
            // the batch journals the creations complete, and every byte of every sealed tree
            // before its commit is (syncfs commits every metadata change of the file system,
            // the new directories and their entries included, and writes back every page).
            let errors = self.watch().sync_batch();
            if errors != start {
                for (item, r) in items.iter().zip(results.iter_mut()) {
                    if r.is_ok() {
                        *r = Err(batch_sync_failed(
                            &self.snapshot_dir(item.id),
                            errors - start,
                        ));
                    }
                }
            }
            for (&(id, _), slot) in seals.iter().zip(sealing.iter_mut()) {
                let Some(Ok((dir, _, files))) = slot else {
                    continue;
                };
                if let Some(e) = self.seal_sync_failure(id, dir, files, start, errors) {
                    *slot = Some(Err(e));
                }
            }
        }
        // A forced syncfs says nothing of what the chooser would have taken: not measured.
        if let Some(way) = way.filter(|_| !forced_syncfs) {
            self.step.record(way, calls, started.elapsed());
        }
        if any_created {
            fail::fail_point!("driver::create::after_sync");
        }
        if sealing.iter().any(|s| matches!(s, Some(Ok(_)))) {
            fail::fail_point!("driver::seal::after_sync");
        }
        for (item, r) in items.iter().zip(&results) {
            if r.is_err() {
                // Not journaled, so nothing names it: remove it now (recovery or cleanup
                // removes it if this fails or a crash comes first).
                self.drop_created(item);
            }
        }
        let sealed = sealing
            .into_iter()
            .zip(&walked)
            .map(|(slot, entries)| {
                slot.map(|r| {
                    r.and_then(|(dir, usage, _)| {
                        super::digest::entries_digest(&dir.join(TREE), entries).map(|d| (usage, d))
                    })
                })
            })
            .collect();
        (results, sealed)
    }

    /// A commit's tree checked for an inline seal: `None` if it is too big (a worker seals it),
    /// an error if it cannot be sealed at all (missing, or tainted by an earlier failed sync).
    fn small_seal(&self, id: SnapshotId) -> Option<Result<SmallSeal, DriverError>> {
        let dir = self.snapshot_dir(id);
        let checked = (|| {
            let tainted = dir.join(super::layout::SYNC_FAILED);
            if exists(&tainted)? {
                return Err(DriverError::TreeSyncFailed { id, path: tainted });
            }
            // A missing snapshot shows as a missing tree root: its directory is looked up only
            // then (one lstat fewer for every seal on the engine thread).
            let walked = match walk_small(&dir.join(TREE), INLINE_SEAL_MAX_INODES) {
                Err(DriverError::Io { ref source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && !exists(&dir)? =>
                {
                    return Err(DriverError::SnapshotMissing {
                        id,
                        path: dir.clone(),
                    });
                }
                walked => walked?,
            };
            let Some(entries) = walked else {
                return Ok(None);
            };
            let mut counter = UsageCounter::default();
            let mut files = Vec::new();
            for (path, meta) in &entries {
                counter.add(meta);
                if fsyncable(meta) {
                    files.push((path.clone(), meta.is_dir()));
                }
            }
            let usage = counter.usage();
            if usage.size_bytes > INLINE_SEAL_MAX_BYTES {
                return Ok(None);
            }
            Ok(Some(((dir.clone(), usage, files), entries)))
        })();
        checked.transpose()
    }

    /// Makes one creation's directory, marker and tree (unsynced); returns what a per-file sync
    /// of it fsyncs, parents first: `snapshots/<id>` (its inode holds the xattr marker), `fs/`,
    /// `work/` if any, and the marker file where the marker could not be an xattr. The batch
    /// adds `snapshots/` once.
    fn create_one(
        &self,
        item: &NewTree,
        work: bool,
        make_tree: impl Fn(&NewTree, &Path) -> Result<(), DriverError>,
    ) -> Result<FsyncList, DriverError> {
        if let Some(parent) = item.parent {
            // Nothing is copied, but a missing parent is a caller bug best reported now.
            self.require_installed(parent)?;
        }
        let dir = self.snapshot_dir(item.id);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            // Ids are never reused within a life, and recovery removed every orphan at open:
            // the directory there is not this creation's, so it is left alone.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(DriverError::InstallTargetExists {
                    txid: item.txid,
                    id: item.id,
                    installed: dir,
                });
            }
            Err(e) => return Err(DriverError::io("mkdir", &dir, e)),
        }
        let made = (|| {
            fail::fail_point!("driver::create::after_mkdir");
            // The marker before the tree (nothing is synced yet, and nothing names the
            // directory until the caller journals it): a btrfs snapshot commits the transaction
            // it is made in, and can take the marker with it.
            let marker_file = marker::write_new_unsynced(&dir, item.txid)?;
            let tree = dir.join(TREE);
            make_tree(item, &tree)?;
            let mut files = vec![(dir.clone(), true), (tree, true)];
            if work {
                let work = dir.join(WORK);
                fs::create_dir(&work).map_err(|e| DriverError::io("mkdir", &work, e))?;
                files.push((work, true));
            }
            if let Some(file) = marker_file {
                files.push((file, false));
            }
            Ok(files)
        })();
        if made.is_err() {
            self.drop_created(item);
        }
        made
    }

    fn drop_created(&self, item: &NewTree) {
        let dir = self.snapshot_dir(item.id);
        if let Err(e) = remove_tree(&dir) {
            tracing::warn!(id = %item.id, error = %e, "removing a failed creation's tree failed; recovery removes it");
        }
    }

    /// `seal` of every (id, txid), with the syncs shared: every tree and temporary marker made
    /// durable by one syncfs, then every marker renamed and the renames made durable by a
    /// second. A failure of either sync fails and taints every snapshot it covered.
    pub fn seal_many(&self, items: &[(SnapshotId, TxId)]) -> Vec<Result<Usage, DriverError>> {
        let start = self.watch().errors();
        // Per item: its directory, usage, and what a per-file check would fsync.
        let mut live: Vec<Result<Sealing, DriverError>> = items
            .iter()
            .map(|&(id, txid)| self.seal_prepare(id, txid))
            .collect();
        fail::fail_point!("driver::seal::before_sync");
        let mut after_trees = start;
        if live.iter().any(Result::is_ok) {
            // Invariant: every byte of every tree (and each temporary marker) is on disk before
            // a marker claims the commit's txid and the commit is journaled as complete.
            after_trees = self.watch().sync_batch();
        }
        for (&(id, _), slot) in items.iter().zip(live.iter_mut()) {
            let Ok((dir, _, to_sync)) = slot else {
                continue;
            };
            if let Some(e) = self.seal_sync_failure(id, dir, to_sync, start, after_trees) {
                let dir = dir.clone();
                *slot = Err(drop_tmp(&dir, e));
            }
        }
        fail::fail_point!("driver::seal::after_sync");
        let mut renamed = false;
        for slot in live.iter_mut() {
            let Ok((dir, _, _)) = slot else { continue };
            if let Err(e) = marker::publish(dir) {
                let dir = dir.clone();
                *slot = Err(drop_tmp(&dir, e));
            } else {
                renamed = true;
            }
        }
        fail::fail_point!("driver::seal::after_marker_rename");
        if renamed {
            // Invariant: each new marker survives a crash before its commit is journaled (the
            // renames are metadata: one syncfs commits them all).
            let after_markers = self.watch().sync_batch();
            if after_markers != after_trees {
                for (&(id, _), slot) in items.iter().zip(live.iter_mut()) {
                    let Ok((dir, _, _)) = slot else { continue };
                    let dir = dir.clone();
                    let e = batch_sync_failed(&dir, after_markers - after_trees);
                    *slot = Err(self.taint(id, &dir, e));
                }
            }
        }
        fail::fail_point!("driver::seal::after_marker");
        live.into_iter()
            .map(|r| r.map(|(_, usage, _)| usage))
            .collect()
    }

    fn seal_prepare(&self, id: SnapshotId, txid: TxId) -> Result<Sealing, DriverError> {
        let dir = self.snapshot_dir(id);
        if !exists(&dir)? {
            return Err(DriverError::SnapshotMissing { id, path: dir });
        }
        let tainted = dir.join(super::layout::SYNC_FAILED);
        if exists(&tainted)? {
            return Err(DriverError::TreeSyncFailed { id, path: tainted });
        }
        let (usage, mut to_sync) = collect_tree(&dir.join(TREE))?;
        let tmp = marker::write_tmp_unsynced(&dir, txid).map_err(|e| drop_tmp(&dir, e))?;
        to_sync.push((tmp, false));
        Ok((dir, usage, to_sync))
    }
}
