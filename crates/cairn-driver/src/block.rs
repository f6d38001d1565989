//! The block driver, after devicemapper's thin pool: every snapshot is one sparse file-system
//! image (ext4, or xfs if the root was created so: `block_options`), cloned from its parent's with a reflink (FICLONE) in constant time. A base
//! image, made once with mkfs when the root is created, is what a snapshot without a parent
//! is cloned from, as devicemapper's base device was.
//!
//! devicemapper kept a `DevInfo` per device with the transaction id that created it, and a
//! pool transaction id to roll back to. Here every image lives inside the snapshot's own
//! directory of the shared layout (`staging/<txid>/image`, `snapshots/<id>/image`,
//! `trash/<id>/image`) beside its `txid` marker: the directory's name is the device id (or
//! the creating transaction while staged), the marker its transaction id. Recovery matches
//! these names against the journal exactly as for vfs and overlay, so an image can only be
//! in a place recovery knows about: a crash leaves no orphaned image (containerd's
//! blockfile leaves `rm-<id>` files and interrupted copies).
//!
//! The images are mounted only while needed: by the user (`cairn mount`: mounts are data,
//! `{type: ext4, source: IMAGE, options: [loop, rw|ro]}`), by a layer import
//! (`attach_staged` .. `sync_staged`), and read-only, privately, to read a tree
//! (`open_tree`). Loop devices auto-clear, so a crash leaves none bound.

use super::block_options::{BlockFs, BlockOptions};
use super::error::DriverError;
use super::layout::{create_tree_root, Inventory, Layout, SYNC_FAILED, TREE};
use super::loopdev::{self, attached, reflink};
use super::marker;
use super::mount::{mount_all, unmount};
use super::sync::{fsync_dir, fsync_open, syncfs};
use super::view::TreeView;
use super::{Driver, WhiteoutStyle};
use cairn_state::types::{DriverKind, Kind, Mount, SnapshotId, TxId, Usage};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A snapshot's image inside its directory.
pub const IMAGE: &str = "image";
/// The base image every parentless snapshot is cloned from, under the driver root.
const BASE: &str = "block.base";
const BASE_TMP: &str = "block.base.tmp";
/// Private read-only mounts made by `open_tree`, and the probe files of `open`.
const VIEWS: &str = "block.views";
const PROBE: &str = "block.probe";
const PROBE_CLONE: &str = "block.probe.clone";

/// At most this many Active images are held open for their commit's fsync (see
/// `BlockDriver::held`); an Active beyond it is fsynced through a descriptor opened at commit,
/// which sees only the write-back errors from then on. Kept well under the common soft limit
/// of 1024 descriptors per process.
pub const MAX_HELD_IMAGES: usize = 256;
#[derive(Debug)]
pub struct BlockDriver {
    layout: Layout,
    /// The file system inside the images, as recorded by the base.
    fs: BlockFs,
    base: PathBuf,
    views: PathBuf,
    /// Staged transactions whose image is mounted on their tree by `attach_staged`, each with
    /// a descriptor of the image opened before the mount (see `sync_staged`).
    attached: Mutex<BTreeMap<TxId, File>>,
    /// Active snapshots' images, each opened when its mounts were first handed out (at its
    /// prepare, or the first `mounts` after an open): the commit fsyncs through this
    /// descriptor, so a write-back error of the user's writes that someone else's sync
    /// consumed first (the unmount's flush, another process's fsync) is still reported to it
    /// (errseq: a descriptor sees the errors since it was opened). At most [`MAX_HELD_IMAGES`].
    held: Mutex<BTreeMap<SnapshotId, File>>,
    next_view: AtomicU64,
}

fn exists(path: &Path) -> Result<bool, DriverError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(DriverError::io("lstat", path, e)),
    }
}

/// Unmounts whatever is mounted on `target` (lazily); nothing mounted is not an error. Used
/// on trees a killed process may have left mounted, before they are deleted.
fn detach(target: &Path) {
    let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
}

/// Allocated bytes of the image and, from its superblock, the inodes in use (as of its last
/// unmount), not counting the file system's own but counting the root directory, as a walk of
/// the tree would.
fn image_usage(image: &Path) -> Result<Usage, DriverError> {
    let mut file = File::open(image).map_err(|e| DriverError::io("open", image, e))?;
    let meta = file
        .metadata()
        .map_err(|e| DriverError::io("stat", image, e))?;
    let mut sb = [0u8; 1024];
    file.seek(SeekFrom::Start(1024))
        .and_then(|_| file.read_exact(&mut sb))
        .map_err(|e| DriverError::io("read superblock", image, e))?;
    let u32_at = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]) as u64;
    let mut xfs = [0u8; 144];
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_exact(&mut xfs))
        .map_err(|e| DriverError::io("read superblock", image, e))?;
    let be64 = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&xfs[o..o + 8]);
        u64::from_be_bytes(b)
    };
    let inodes = if xfs[0..4] == *b"XFSB" {
        // sb_icount - sb_ifree, less the realtime bitmap and summary inodes (xfs's own).
        be64(128).saturating_sub(be64(136)).saturating_sub(2)
    } else if u16::from_le_bytes([sb[56], sb[57]]) == 0xEF53 {
        let used = u32_at(0).saturating_sub(u32_at(16));
        // Inodes 1..first_ino are reserved (counted used); the root (2) is one of them.
        used.saturating_sub(u32_at(84).saturating_sub(1)) + 1
    } else {
        0
    };
    Ok(Usage {
        size_bytes: meta.blocks() * 512,
        inodes,
    })
}

impl BlockDriver {
    /// Opens a block root, creating its base image (`options`: size, sparse, and file system)
    /// if it has none; an existing root keeps the options its base records. Fails with
    /// `ReflinkUnsupported` when the root's file system cannot reflink.
    pub fn open(root: &Path, options: BlockOptions) -> Result<BlockDriver, DriverError> {
        BlockDriver::open_with(root, options, false)
    }

    /// `open`; with `required`, an existing root whose base records other options than
    /// `options` is refused (`BlockOptionsMismatch`) instead of opened with its own.
    pub fn open_with(
        root: &Path,
        options: BlockOptions,
        required: bool,
    ) -> Result<BlockDriver, DriverError> {
        let options = options.validate()?;
        let layout = Layout::open(root)?;
        let mut driver = BlockDriver {
            fs: options.fs,
            base: root.join(BASE),
            views: root.join(VIEWS),
            layout,
            attached: Mutex::default(),
            held: Mutex::default(),
            next_view: AtomicU64::new(0),
        };
        driver.probe_reflink()?;
        driver.clear_views()?;
        if !exists(&driver.base)? {
            driver.make_base(options)?;
        }
        let recorded = BlockOptions::recorded(&driver.base)?;
        if required && recorded != options {
            return Err(DriverError::BlockOptionsMismatch {
                root: root.to_path_buf(),
                recorded: describe(recorded),
                asked: describe(options),
            });
        }
        driver.fs = recorded.fs;
        Ok(driver)
    }

    /// The file system inside this root's images.
    pub fn fs(&self) -> BlockFs {
        self.fs
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The image of an installed snapshot.
    pub fn image(&self, id: SnapshotId) -> PathBuf {
        self.layout.snapshot_dir(id).join(IMAGE)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<TxId, File>> {
        self.attached.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn held(&self) -> std::sync::MutexGuard<'_, BTreeMap<SnapshotId, File>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds a descriptor of Active `id`'s image from now on (see `held`), unless one is held
    /// already or [`MAX_HELD_IMAGES`] are: then its commit opens its own.
    fn hold(&self, id: SnapshotId, image: &Path) {
        let mut held = self.held();
        if held.contains_key(&id) {
            return;
        }
        if held.len() >= MAX_HELD_IMAGES {
            tracing::warn!(%id, max = MAX_HELD_IMAGES, "too many Active images held open; its commit's fsync sees only the write-back errors from the commit on");
            return;
        }
        match File::open(image) {
            Ok(file) => {
                held.insert(id, file);
            }
            Err(e) => {
                tracing::warn!(%id, image = %image.display(), error = %e, "cannot hold the image open; its commit's fsync sees only the write-back errors from the commit on");
            }
        }
    }

    fn probe_reflink(&self) -> Result<(), DriverError> {
        let root = self.layout.root();
        let probe = root.join(PROBE);
        let clone = root.join(PROBE_CLONE);
        for leftover in [&probe, &clone] {
            match fs::remove_file(leftover) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(DriverError::io("unlink", leftover, e)),
            }
        }
        fs::write(&probe, [0u8; 4096]).map_err(|e| DriverError::io("write", &probe, e))?;
        let result = reflink(&probe, &clone);
        let _ = fs::remove_file(&clone);
        let _ = fs::remove_file(&probe);
        match result {
            Ok(_) => Ok(()),
            Err(DriverError::Reflink { source, .. }) if loopdev::reflink_unsupported(&source) => {
                Err(DriverError::ReflinkUnsupported {
                    root: root.to_path_buf(),
                    source,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Unmounts and removes views a killed process left behind.
    fn clear_views(&self) -> Result<(), DriverError> {
        match fs::read_dir(&self.views) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(|e| DriverError::io("readdir", &self.views, e))?;
                    detach(&entry.path());
                    let _ = fs::remove_dir(entry.path());
                }
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                fs::create_dir(&self.views).map_err(|e| DriverError::io("mkdir", &self.views, e))
            }
            Err(e) => Err(DriverError::io("readdir", &self.views, e)),
        }
    }

    /// mkfs into a temporary file, remove its lost+found (a snapshot starts empty, as on the
    /// other drivers), make it durable, then rename it into place: a crash leaves the base
    /// whole or absent (the temporary file is made again from scratch).
    fn make_base(&self, options: BlockOptions) -> Result<(), DriverError> {
        let root = self.layout.root();
        let tmp = root.join(BASE_TMP);
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(DriverError::io("unlink", &tmp, e)),
        }
        let file = File::create(&tmp).map_err(|e| DriverError::io("create", &tmp, e))?;
        file.set_len(options.size_bytes)
            .map_err(|e| DriverError::io("truncate", &tmp, e))?;
        let (program, out) = match options.fs {
            BlockFs::Ext4 => (
                "mkfs.ext4",
                Command::new("mkfs.ext4")
                    .args(["-q", "-F", "-L", "cairn", "-E"])
                    .arg("nodiscard,lazy_itable_init=1,lazy_journal_init=1")
                    .arg(&tmp)
                    .output(),
            ),
            // -K: no discard of the sparse file. xfs makes no lost+found.
            BlockFs::Xfs => (
                "mkfs.xfs",
                Command::new("mkfs.xfs")
                    .args(["-q", "-f", "-K", "-L", "cairn"])
                    .arg(&tmp)
                    .output(),
            ),
        };
        let out = out.map_err(|e| DriverError::io("run mkfs", &tmp, e))?;
        if !out.status.success() {
            return Err(DriverError::Mkfs {
                image: tmp,
                program,
                detail: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        if options.fs == BlockFs::Ext4 {
            let target = self.views.join("base");
            fs::create_dir_all(&target).map_err(|e| DriverError::io("mkdir", &target, e))?;
            mount_all(&[options.fs.mount(&tmp, false)], &target)?;
            let lost = target.join("lost+found");
            let removed = fs::remove_dir(&lost).map_err(|e| DriverError::io("rmdir", &lost, e));
            // The unmount flushes the file system into the image (the loop device's flush
            // fsyncs its backing file); the fsync below makes sure of it.
            let unmounted = unmount(&target);
            let _ = fs::remove_dir(&target);
            removed?;
            unmounted?;
        }
        // Invariant: the base's contents are on disk before its name says it is complete.
        fsync_open(&file, &tmp, false)?;
        fs::rename(&tmp, &self.base).map_err(|e| DriverError::io("rename", &tmp, e))?;
        // Invariant: the base survives a crash once the root has been opened.
        fsync_dir(root)
    }

    /// Records durably beside the image that its sync failed (see `Layout::seal`).
    fn taint(&self, id: SnapshotId, dir: &Path, cause: DriverError) -> DriverError {
        let path = dir.join(SYNC_FAILED);
        let recorded = (|| {
            let file = File::create(&path).map_err(|e| DriverError::io("create", &path, e))?;
            fsync_open(&file, &path, false)?;
            // Invariant: the note survives a power cut before the failed commit is answered.
            fsync_dir(dir)
        })();
        match recorded {
            Ok(()) => cause,
            Err(e) => DriverError::TaintFailed {
                id,
                cause: cause.to_string(),
                source: Box::new(e),
            },
        }
    }

    fn refuse_if_writable(&self, id: SnapshotId, image: &Path) -> Result<(), DriverError> {
        if attached(image)? == Some(true) {
            return Err(DriverError::ImageInUse {
                id,
                image: image.to_path_buf(),
            });
        }
        Ok(())
    }
}

/// Options as an error names them.
fn describe(o: BlockOptions) -> String {
    format!("{} images of {} bytes", o.fs.name(), o.size_bytes)
}

impl Drop for BlockDriver {
    /// An import the engine never finished (it stopped after a failed sync, or closed in the
    /// middle) leaves its staged image mounted: let go of it, so a closed engine holds nothing
    /// on the root. The staging itself is discarded by the next open's recovery.
    fn drop(&mut self) {
        let attached = std::mem::take(&mut *self.lock());
        for txid in attached.into_keys() {
            detach(&self.layout.staged_tree(txid));
        }
    }
}

impl Driver for BlockDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Block
    }

    fn stage(&self, txid: TxId, kind: Kind, parent: Option<SnapshotId>) -> Result<(), DriverError> {
        let _ = kind; // Active and View both get a clone; only their mounts differ.
        let src = match parent {
            Some(parent) => self.layout.require_installed(parent)?.join(IMAGE),
            None => self.base.clone(),
        };
        // A leftover of this txid may still be mounted by a killed import: unmount it before
        // begin_stage deletes it, or the delete would walk into the mounted image.
        detach(&self.layout.staged_tree(txid));
        self.lock().remove(&txid);
        let dir = self.layout.begin_stage(txid)?;
        let image = dir.join(IMAGE);
        fail::fail_point!("driver::block::before_clone");
        let file = reflink(&src, &image)?;
        // Invariant: the clone's extents and size are on disk before the marker says the
        // stage is complete; a crash before the marker leaves a staging recovery discards.
        fsync_open(&file, &image, false)?;
        fail::fail_point!("driver::block::after_clone");
        create_tree_root(&dir.join(TREE))?;
        fail::fail_point!("driver::stage::after_sync");
        // finish_stage's marker write fsyncs staging/<txid>, which names image and fs/.
        self.layout.finish_stage(txid)
    }

    fn staged_tree(&self, txid: TxId) -> PathBuf {
        self.layout.staged_tree(txid)
    }

    fn attach_staged(&self, txid: TxId) -> Result<(), DriverError> {
        let dir = self.layout.staging_dir(txid);
        let image = dir.join(IMAGE);
        if !exists(&image)? {
            return Err(DriverError::StagingMissing { txid, path: image });
        }
        let mut attached = self.lock();
        if attached.contains_key(&txid) {
            return Ok(());
        }
        // Opened before anything is written through the mount: a write-back error of the
        // image's pages from now on (the loop device's own flushes, at the unmount, consume
        // it for their descriptor) is still reported to this one's fsync in `sync_staged`.
        let file = OpenOptions::new()
            .write(true)
            .open(&image)
            .map_err(|e| DriverError::io("open", &image, e))?;
        mount_all(&[self.fs.mount(&image, false)], &dir.join(TREE))?;
        attached.insert(txid, file);
        Ok(())
    }

    fn sync_staged(&self, txid: TxId) -> Result<(), DriverError> {
        let dir = self.layout.staging_dir(txid);
        let image = dir.join(IMAGE);
        if !exists(&image)? {
            return Err(DriverError::StagingMissing { txid, path: image });
        }
        fail::fail_point!("driver::sync_staged::before_sync");
        let opened_before = self.lock().remove(&txid);
        if opened_before.is_some() {
            let tree = dir.join(TREE);
            // Invariant: everything the import wrote is in the image before install can
            // publish it. Never retried: on failure the engine discards the staging and a new
            // attempt starts from a fresh clone under a new txid.
            let synced = syncfs(&tree);
            // Unmounted either way, so a discard can delete the staging.
            unmount(&tree)?;
            synced?;
        }
        let file = match opened_before {
            Some(file) => file,
            None => OpenOptions::new()
                .write(true)
                .open(&image)
                .map_err(|e| DriverError::io("open", &image, e))?,
        };
        // Invariant: the image's blocks (written through the loop device into its page cache)
        // are on disk before the import's completion is journaled; the descriptor predates
        // the import's writes, so an error their write-back hit is not lost (fsyncgate).
        fsync_open(&file, &image, false)?;
        // Invariant: layer.meta, written beside the image, is durable in staging/<txid>.
        fsync_dir(&dir)?;
        fail::fail_point!("driver::sync_staged::after_sync");
        Ok(())
    }

    fn install(&self, txid: TxId, id: SnapshotId) -> Result<(), DriverError> {
        self.layout.install(txid, id)
    }

    fn install_many(&self, items: &[(TxId, SnapshotId)]) -> Result<(), DriverError> {
        self.layout.install_many(items)
    }

    fn discard(&self, txid: TxId) -> Result<(), DriverError> {
        // A failed import may leave its image mounted on the staged tree.
        detach(&self.layout.staged_tree(txid));
        self.lock().remove(&txid);
        self.layout.discard(txid)
    }

    fn seal(&self, id: SnapshotId, txid: TxId) -> Result<Usage, DriverError> {
        let dir = self.layout.require_installed(id)?;
        let tainted = dir.join(SYNC_FAILED);
        if exists(&tainted)? {
            return Err(DriverError::TreeSyncFailed { id, path: tainted });
        }
        let image = dir.join(IMAGE);
        // A read-write mount holds the file system's state; sealing the image under it would
        // commit a file system that is not clean.
        self.refuse_if_writable(id, &image)?;
        // The descriptor held since the image's mounts were handed out sees every write-back
        // error since then; one opened now, only those from now on.
        let held = self.held().remove(&id);
        let was_held = held.is_some();
        let file = match held {
            Some(file) => file,
            None => OpenOptions::new()
                .write(true)
                .open(&image)
                .map_err(|e| DriverError::io("open", &image, e))?,
        };
        fail::fail_point!("driver::seal::before_sync");
        // Invariant: every block of the image is on disk before the marker claims `txid` and
        // the commit is journaled as complete; an error reported to any other descriptor since
        // `file` was opened is reported to it too (fsyncgate).
        if let Err(e) = fsync_open(&file, &image, false) {
            return Err(self.taint(id, &dir, e));
        }
        fail::fail_point!("driver::seal::after_sync");
        if let Err(e) = marker::write(&dir, txid) {
            // Still Active: its retry fsyncs through the same descriptor.
            if was_held {
                self.held().insert(id, file);
            }
            return Err(e);
        }
        fail::fail_point!("driver::seal::after_marker");
        image_usage(&image)
    }

    fn usage(&self, id: SnapshotId) -> Result<Usage, DriverError> {
        let dir = self.layout.require_installed(id)?;
        image_usage(&dir.join(IMAGE))
    }

    fn mounts(
        &self,
        id: SnapshotId,
        kind: Kind,
        _parents: &[SnapshotId],
    ) -> Result<Vec<Mount>, DriverError> {
        let image = self.layout.require_installed(id)?.join(IMAGE);
        if kind == Kind::Active {
            // Before the user can write through these mounts.
            self.hold(id, &image);
        }
        Ok(vec![self.fs.mount(&image, kind != Kind::Active)])
    }

    fn remove(&self, id: SnapshotId) -> Result<(), DriverError> {
        self.held().remove(&id);
        self.layout.remove(id)
    }

    fn purge_trash(&self) -> Result<(), DriverError> {
        self.layout.purge_trash()
    }

    fn inventory(&self) -> Result<Inventory, DriverError> {
        self.layout.inventory()
    }

    fn inventory_names(&self) -> Result<Inventory, DriverError> {
        self.layout.inventory_names()
    }

    fn tree(&self, id: SnapshotId) -> PathBuf {
        self.layout.tree(id)
    }

    fn open_tree(&self, id: SnapshotId) -> Result<TreeView, DriverError> {
        let image = self.layout.require_installed(id)?.join(IMAGE);
        self.refuse_if_writable(id, &image)?;
        let n = self.next_view.fetch_add(1, Ordering::Relaxed);
        let target = self.views.join(format!("{id}.{n}"));
        fs::create_dir(&target).map_err(|e| DriverError::io("mkdir", &target, e))?;
        if let Err(e) = mount_all(&[self.fs.mount(&image, true)], &target) {
            let _ = fs::remove_dir(&target);
            return Err(e);
        }
        Ok(TreeView::mounted(target))
    }

    fn whiteout_style(&self) -> WhiteoutStyle {
        WhiteoutStyle::Delete
    }
}
