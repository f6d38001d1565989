//! The overlay driver: a snapshot's tree is only its own diff (the upper dir); its parents are
//! stacked as lowerdirs at mount time. Staging is cheap; mounting needs root and overlayfs.

use super::error::DriverError;
use super::layout::{Inventory, Layout, TREE, WORK};
use super::probe::probe_overlay;
use super::sync::fsync_dir;
use super::vfs::bind;
use super::{Driver, WhiteoutStyle};
use cairn_state::types::{DriverKind, Kind, Mount, SnapshotId, TxId, Usage};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct OverlayDriver {
    layout: Layout,
    /// Pass `index=off` (as containerd does) when the kernel has the index feature: with a
    /// distro default of index=on, an upper dir records its lower's identity and a later mount
    /// with a rebuilt or relocated lower chain fails with ESTALE.
    index_off: bool,
}

const INDEX_PARAM: &str = "/sys/module/overlay/parameters/index";

impl OverlayDriver {
    /// Opens the driver after checking, once, that overlayfs can be mounted with upper and work
    /// dirs on this root's filesystem.
    pub fn open(root: &Path) -> Result<OverlayDriver, DriverError> {
        // ':' separates lowerdirs and ',' separates options; a root containing either would
        // produce mount data the kernel parses differently from what we meant.
        if root
            .as_os_str()
            .as_bytes()
            .iter()
            .any(|b| matches!(b, b':' | b','))
        {
            return Err(DriverError::OverlayUnsupported {
                root: root.to_path_buf(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "root path contains ':' or ',', which overlay mount options cannot carry",
                ),
            });
        }
        let layout = Layout::open(root)?;
        probe_overlay(root).map_err(|source| DriverError::OverlayUnsupported {
            root: root.to_path_buf(),
            source,
        })?;
        Ok(OverlayDriver {
            layout,
            index_off: Path::new(INDEX_PARAM).exists(),
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn option(key: &str, path: &Path) -> String {
        let mut s = OsString::from(key);
        s.push("=");
        s.push(path);
        s.to_string_lossy().into_owned()
    }

    fn lowerdir(&self, parents: &[SnapshotId]) -> String {
        let dirs: Vec<String> = parents
            .iter()
            .map(|p| self.layout.tree(*p).to_string_lossy().into_owned())
            .collect();
        format!("lowerdir={}", dirs.join(":"))
    }

    fn overlay(&self, options: Vec<String>) -> Mount {
        let mut all = Vec::with_capacity(options.len() + 1);
        if self.index_off {
            all.push("index=off".to_string());
        }
        all.extend(options);
        Mount {
            kind: "overlay".to_string(),
            source: PathBuf::from("overlay"),
            options: all,
        }
    }
}

impl Driver for OverlayDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Overlay
    }

    fn stage(&self, txid: TxId, kind: Kind, parent: Option<SnapshotId>) -> Result<(), DriverError> {
        if let Some(parent) = parent {
            // Nothing is copied, but staging a child of a missing parent is a caller bug that
            // would only surface at mount time.
            self.layout.require_installed(parent)?;
        }
        let dir = self.layout.begin_stage(txid)?;
        let tree = dir.join(TREE);
        super::layout::create_tree_root(&tree)?;
        if kind == Kind::Active {
            // Every Active gets a work dir, with or without parents: an Active without parents
            // is bind-mounted today, but its upper must be usable by overlay in every case.
            let work = dir.join(WORK);
            fs::create_dir(&work).map_err(|e| DriverError::io("mkdir", &work, e))?;
        }
        // Invariant: the (empty) tree is on disk before the marker and staging entry are;
        // finish_stage syncs staging/<txid>, which names fs/ and work/.
        fsync_dir(&tree)?;
        fail::fail_point!("driver::stage::after_sync");
        self.layout.finish_stage(txid)
    }

    fn creates_inline(&self, kind: Kind, parent: Option<SnapshotId>) -> bool {
        // Nothing is ever copied: the parents are lowerdirs at mount time.
        let _ = (kind, parent);
        true
    }

    fn extracts_without_parent(&self) -> bool {
        // Staging on a parent only checks it is installed; the tree starts empty either way.
        true
    }

    fn create_many(&self, items: &[super::NewTree]) -> Vec<Result<(), DriverError>> {
        self.layout.create_many(items, |kind| kind == Kind::Active)
    }

    fn seals_inline(&self) -> bool {
        true
    }

    fn set_durable_step(&self, step: super::DurableStep) {
        self.layout.set_durable_step(step);
    }

    fn durable_many(
        &self,
        items: &[super::NewTree],
        seals: &[(SnapshotId, TxId)],
    ) -> (Vec<Result<(), DriverError>>, Vec<super::SealedInline>) {
        self.layout
            .durable_many(items, seals, |kind| kind == Kind::Active)
    }

    fn seal_many(&self, items: &[(SnapshotId, TxId)]) -> Vec<Result<Usage, DriverError>> {
        self.layout.seal_many(items)
    }

    fn staged_tree(&self, txid: TxId) -> PathBuf {
        self.layout.staged_tree(txid)
    }

    fn sync_staged(&self, txid: TxId) -> Result<(), DriverError> {
        self.layout.sync_staged(txid)
    }

    fn install(&self, txid: TxId, id: SnapshotId) -> Result<(), DriverError> {
        self.layout.install(txid, id)
    }

    fn install_many(&self, items: &[(TxId, SnapshotId)]) -> Result<(), DriverError> {
        self.layout.install_many(items)
    }

    fn discard(&self, txid: TxId) -> Result<(), DriverError> {
        self.layout.discard(txid)
    }

    fn seal(&self, id: SnapshotId, txid: TxId) -> Result<Usage, DriverError> {
        self.layout.seal(id, txid)
    }

    fn usage(&self, id: SnapshotId) -> Result<Usage, DriverError> {
        self.layout.usage(id)
    }

    fn mounts(
        &self,
        id: SnapshotId,
        kind: Kind,
        parents: &[SnapshotId],
    ) -> Result<Vec<Mount>, DriverError> {
        let dir = self.layout.require_installed(id)?;
        let own = dir.join(TREE);
        Ok(vec![match (kind, parents) {
            (Kind::Active, []) => bind(own, false),
            (Kind::Active, _) => self.overlay(vec![
                Self::option("workdir", &dir.join(WORK)),
                Self::option("upperdir", &own),
                self.lowerdir(parents),
            ]),
            (Kind::View, []) => bind(own, true),
            (Kind::View, [parent]) => bind(self.layout.tree(*parent), true),
            // Without an upperdir overlay is read-only anyway; "ro" makes the mount flag say so.
            (Kind::View, _) => self.overlay(vec!["ro".to_string(), self.lowerdir(parents)]),
            (Kind::Committed, _) => bind(own, true),
        }])
    }

    fn remove(&self, id: SnapshotId) -> Result<(), DriverError> {
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

    fn whiteout_style(&self) -> WhiteoutStyle {
        WhiteoutStyle::OverlayCharDevice
    }
}
