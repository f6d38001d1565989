//! The client side: a cloneable, `Send` handle whose methods send a command to the engine
//! thread and wait for its reply.

use super::api::{
    CleanupReport, ImageInfo, ImportOptions, Imported, Info, Input, LayerInfo, Msg, Output, Reply,
    Request, Verified,
};
use super::core::Core;
use super::error::EngineError;
use super::fsck::FsckReport;
use super::submit::Command;
use cairn_state::types::{Kind, Mount, Usage};
use cairn_state::Labels;
use crossbeam_channel::{bounded, select, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

#[derive(Clone, Debug)]
/// A client of one root's engine thread: cloneable and `Send`; every method sends one command
/// and blocks until it is answered (durably, for a change). Get one from
/// [`Engine::open`](crate::Engine::open); [`close`](Self::close) stops the engine.
pub struct EngineHandle {
    tx: Sender<Msg>,
    /// Disconnected when the engine thread has exited. A request that reached the queue after
    /// the engine stopped reading it is never answered (the queue keeps it, and its reply
    /// sender, while any handle lives), so waiting for a reply also watches this.
    stopped: Receiver<()>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// What the engine thread panicked with, if it did (set before `stopped` disconnects).
    panicked: Arc<OnceLock<String>>,
}

impl EngineHandle {
    pub(crate) fn start(core: Core, queue_capacity: usize) -> EngineHandle {
        let (tx, rx) = bounded(queue_capacity.max(1));
        let (alive, stopped) = bounded::<()>(0);
        let panicked = Arc::new(OnceLock::new());
        let record = Arc::clone(&panicked);
        let thread = std::thread::Builder::new()
            .name("cairn-engine".into())
            .spawn(move || {
                // Dropped when run returns: after every reply (workers included) was sent, and
                // after a panic is recorded.
                let _alive = alive;
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| core.run(rx)));
                if let Err(payload) = run {
                    let message = super::workers::panic_message(payload.as_ref());
                    tracing::error!(%message, "bug: the engine thread panicked; reopen the root");
                    let _ = record.set(message);
                }
            })
            .expect("spawn the engine thread");
        EngineHandle {
            tx,
            stopped,
            thread: Arc::new(Mutex::new(Some(thread))),
            panicked,
        }
    }

    /// Waits for `rx`, or for the engine thread to exit; a reply sent before it exited wins.
    fn wait<T>(&self, rx: &Receiver<T>) -> Option<T> {
        select! {
            recv(rx) -> r => match r {
                Ok(v) => Some(v),
                Err(_) => {
                    // The reply was dropped unanswered: only a panicking engine thread does
                    // that. Give it a moment to finish unwinding (and record why) so the
                    // caller hears the panic, not a plain shutdown.
                    let _ = self.stopped.recv_timeout(std::time::Duration::from_secs(5));
                    None
                }
            },
            recv(self.stopped) -> _ => rx.try_recv().ok(),
        }
    }

    /// Send the request `make` builds around a reply channel of its own type, and wait.
    pub(crate) fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, EngineError> {
        let (reply, rx) = bounded(1);
        self.tx
            .send(Msg::Request(make(Reply::channel(reply))))
            .map_err(|_| self.gone())?;
        self.wait(&rx).ok_or_else(|| self.gone())?
    }

    /// Run `command` and wait for its answer (the blocking form of [`submit`](Self::submit)).
    pub fn run<T: 'static>(&self, command: Command<T>) -> Result<T, EngineError> {
        self.call(|reply| command.into_request(reply))
    }

    pub(crate) fn sender(&self) -> &Sender<Msg> {
        &self.tx
    }

    /// A function that blocks until the engine thread has exited, holding no handle (so it
    /// does not keep the engine open): for a watcher thread.
    pub fn stopped_waiter(&self) -> impl FnOnce() + Send + 'static {
        let stopped = self.stopped.clone();
        move || {
            let _ = stopped.recv();
        }
    }

    /// Why the engine no longer answers: it was shut down, or its thread panicked.
    pub fn gone(&self) -> EngineError {
        match self.panicked.get() {
            Some(message) => EngineError::EnginePanicked {
                message: message.clone(),
            },
            None => EngineError::ShutDown,
        }
    }

    /// Create an Active snapshot on `parent` (a committed snapshot) and return its mounts.
    pub fn prepare(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>, EngineError> {
        self.create(key, parent, Kind::Active, labels)
    }

    /// Create a read-only View of `parent` and return its mounts.
    pub fn view(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>, EngineError> {
        self.create(key, parent, Kind::View, labels)
    }

    fn create(
        &self,
        key: &str,
        parent: Option<&str>,
        kind: Kind,
        labels: Labels,
    ) -> Result<Vec<Mount>, EngineError> {
        self.run(Command::create(
            key.to_owned(),
            parent.map(str::to_owned),
            kind,
            labels,
        ))
    }

    /// Commit Active `key` as `name`; `key` is gone afterwards.
    pub fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<(), EngineError> {
        self.run(Command::commit(name.to_owned(), key.to_owned(), labels))
    }

    /// Remove snapshot `key` (refused while a child or a container holds it); its tree is
    /// deleted before this returns.
    pub fn remove(&self, key: &str) -> Result<(), EngineError> {
        self.run(Command::remove(key.to_owned()))
    }

    /// containerd's Stat: the snapshot's info.
    pub fn stat(&self, key: &str) -> Result<Info, EngineError> {
        self.run(Command::stat(key.to_owned()))
    }

    /// containerd's update: `fieldpaths` are `labels` or `labels.<key>`; none means all labels.
    pub fn update(&self, info: Info, fieldpaths: &[&str]) -> Result<Info, EngineError> {
        let fieldpaths = fieldpaths.iter().map(|s| (*s).to_owned()).collect();
        self.run(Command::update(info, fieldpaths))
    }

    /// Disk usage of snapshot `key`: recorded at commit for a committed one, measured now for
    /// an Active or View one.
    pub fn usage(&self, key: &str) -> Result<Usage, EngineError> {
        self.run(Command::usage(key.to_owned()))
    }

    /// The mounts of Active or View snapshot `key` (a Committed one has none:
    /// `FailedPrecondition`).
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>, EngineError> {
        self.run(Command::mounts(key.to_owned()))
    }

    /// Every snapshot matching any of `filters` (all when empty), ordered by key.
    pub fn walk(&self, filters: &[&str]) -> Result<Vec<Info>, EngineError> {
        let filters = filters.iter().map(|s| (*s).to_owned()).collect();
        self.run(Command::walk(filters))
    }

    /// Remove anything on disk the engine does not own.
    pub fn cleanup(&self) -> Result<CleanupReport, EngineError> {
        self.run(Command::cleanup())
    }

    /// Check the root: journal against state, index, trees and markers, staging, trash. With
    /// `repair`, fix what can be fixed safely (index, strays).
    pub fn fsck(&self, repair: bool) -> Result<FsckReport, EngineError> {
        self.fsck_with(repair, false)
    }

    /// fsck, and with `verify` also the content checks: every layer re-exported against its
    /// DiffID, every committed tree hashed against the digest recorded at its commit.
    pub fn fsck_with(&self, repair: bool, verify: bool) -> Result<FsckReport, EngineError> {
        self.call(|reply| Request::Fsck {
            repair,
            verify,
            reply,
        })
    }

    /// Write a checkpoint now and truncate the log behind it.
    pub fn checkpoint(&self) -> Result<(), EngineError> {
        self.call(|reply| Request::Checkpoint { reply })
    }

    /// Import a layer tar (plain, gzip or zstd), streamed: extracted off the engine thread into
    /// staging, made durable, then journaled. Returns its ChainID.
    pub fn import_layer(
        &self,
        input: Box<dyn std::io::Read + Send>,
        options: ImportOptions,
    ) -> Result<Imported, EngineError> {
        self.call(|reply| Request::ImportLayer {
            input: Input(input),
            options,
            hold: None,
            reply,
        })
    }

    /// [`import_layer`](Self::import_layer), and image `hold` recorded on the new layer (with
    /// no manifest or config digest) in the same journal record as the import's completion, so
    /// no crash leaves the layer unheld for recovery to collect (a registry pull's
    /// `NAME#partial`). The layer is read and journaled even if the store has it already.
    pub fn import_layer_held(
        &self,
        input: Box<dyn std::io::Read + Send>,
        options: ImportOptions,
        hold: &str,
    ) -> Result<Imported, EngineError> {
        self.call(|reply| Request::ImportLayer {
            input: Input(input),
            options,
            hold: Some(hold.to_owned()),
            reply,
        })
    }

    /// Write the original tar of a layer, byte for byte; returns its DiffID (checked).
    pub fn export_layer(
        &self,
        chain_id: &str,
        out: Box<dyn std::io::Write + Send>,
    ) -> Result<String, EngineError> {
        self.call(|reply| Request::ExportLayer {
            chain_id: chain_id.to_owned(),
            out: Output(out),
            reply,
        })
    }

    /// Write the changes of snapshot `key` (Active or Committed) against its parent as an
    /// uncompressed OCI layer tar, with whiteouts for deletions; returns its DiffID. A snapshot
    /// without a parent gives its whole tree. The output is deterministic for a given tree.
    pub fn diff(
        &self,
        key: &str,
        out: Box<dyn std::io::Write + Send>,
    ) -> Result<String, EngineError> {
        self.call(|reply| Request::Diff {
            key: key.to_owned(),
            out: Output(out),
            reply,
        })
    }

    /// Every stored layer, by ChainID.
    pub fn layers(&self) -> Result<Vec<LayerInfo>, EngineError> {
        self.call(|reply| Request::Layers { reply })
    }

    /// One stored layer by ChainID.
    pub fn layer(&self, chain_id: &str) -> Result<LayerInfo, EngineError> {
        let layers = self.layers()?;
        layers
            .into_iter()
            .find(|l| l.chain_id == chain_id)
            .ok_or_else(|| {
                cairn_state::StateError::NotFound {
                    key: chain_id.to_owned(),
                }
                .into()
            })
    }

    /// Release the user's hold on a layer (refused while images, containers or child layers
    /// hold it); it and every ancestor nothing holds any more are deleted in one transaction.
    pub fn remove_layer(&self, chain_id: &str) -> Result<(), EngineError> {
        self.call(|reply| Request::RemoveLayer {
            chain_id: chain_id.to_owned(),
            reply,
        })
    }

    /// Record image `name` on layer `top` (replacing an image of that name).
    pub fn put_image(
        &self,
        name: &str,
        top: &str,
        manifest_digest: &str,
        config_digest: &str,
    ) -> Result<(), EngineError> {
        self.put_image_with(name, top, manifest_digest, config_digest, None)
    }

    /// `put_image` with the image's original config (and manifest) kept byte for byte, in one
    /// journaled record (`PutImageKept`): no crash leaves the image recorded without them.
    /// Refused, with nothing changed, where `put_image` or `put_image_config` would be.
    pub fn put_image_kept(
        &self,
        name: &str,
        top: &str,
        manifest_digest: &str,
        config_digest: &str,
        config: &[u8],
        manifest: Option<&[u8]>,
    ) -> Result<(), EngineError> {
        let kept = cairn_state::Kept {
            config: config.to_vec(),
            manifest: manifest.map(<[u8]>::to_vec),
        };
        self.put_image_with(name, top, manifest_digest, config_digest, Some(kept))
    }

    fn put_image_with(
        &self,
        name: &str,
        top: &str,
        manifest_digest: &str,
        config_digest: &str,
        kept: Option<cairn_state::Kept>,
    ) -> Result<(), EngineError> {
        self.call(|reply| Request::PutImage {
            name: name.to_owned(),
            top: top.to_owned(),
            manifest_digest: manifest_digest.to_owned(),
            config_digest: config_digest.to_owned(),
            kept,
            reply,
        })
    }

    /// Keep image `name`'s original config (and manifest) byte for byte, journaled as
    /// `PutImageConfig`: refused (nothing changed) unless the image exists, their digests are
    /// the image's, the config's `rootfs.diff_ids` are its layers and they are within
    /// `MAX_KEPT_CONFIG_BYTES` / `MAX_KEPT_MANIFEST_BYTES`.
    pub fn put_image_config(
        &self,
        name: &str,
        config: &[u8],
        manifest: Option<&[u8]>,
    ) -> Result<(), EngineError> {
        self.call(|reply| Request::PutImageConfig {
            name: name.to_owned(),
            config: config.to_vec(),
            manifest: manifest.map(<[u8]>::to_vec),
            reply,
        })
    }

    /// Image `name`'s kept config and manifest, `None` if it has none (recorded by
    /// `put_image`, or by a load from before configs were kept).
    pub fn image_kept(&self, name: &str) -> Result<Option<cairn_state::Kept>, EngineError> {
        self.call(|reply| Request::ImageKept {
            name: name.to_owned(),
            reply,
        })
    }

    /// Every image, by name.
    pub fn images(&self) -> Result<Vec<ImageInfo>, EngineError> {
        self.call(|reply| Request::Images { reply })
    }

    /// Remove image `name`; layers nothing else holds are deleted with it.
    pub fn remove_image(&self, name: &str) -> Result<(), EngineError> {
        self.call(|reply| Request::RemoveImage {
            name: name.to_owned(),
            reply,
        })
    }

    /// Re-hash stored layers (one, or all) against their DiffIDs.
    pub fn verify(&self, chain_id: Option<&str>) -> Result<Vec<Verified>, EngineError> {
        self.call(|reply| Request::Verify {
            chain_id: chain_id.map(str::to_owned),
            reply,
        })
    }

    /// Create container `name`: a read-write snapshot on a `NAME-init` snapshot (placeholder
    /// hostname, hosts, resolv.conf) on the image's top layer or the given layer, which the
    /// container holds. Returns the read-write snapshot's mounts.
    pub fn create_container(
        &self,
        name: &str,
        layer: Option<&str>,
        image: Option<&str>,
    ) -> Result<Vec<Mount>, EngineError> {
        self.call(|reply| Request::CreateContainer {
            name: name.to_owned(),
            layer: layer.map(str::to_owned),
            image: image.map(str::to_owned),
            reply,
        })
    }

    /// Remove a container, its two snapshots, and its hold on its layer.
    pub fn remove_container(&self, name: &str) -> Result<(), EngineError> {
        self.call(|reply| Request::RemoveContainer {
            name: name.to_owned(),
            reply,
        })
    }

    /// Every container, by name.
    pub fn containers(&self) -> Result<Vec<super::api::ContainerInfo>, EngineError> {
        self.call(|reply| Request::Containers { reply })
    }

    /// The changes of snapshot `key` against its parent, as `docker diff` lists them: `A`, `C`,
    /// `D` and an absolute path, sorted by path (aufs' `Changes`). A View has none.
    pub fn changes(&self, key: &str) -> Result<Vec<super::api::Change>, EngineError> {
        self.call(|reply| Request::Changes {
            key: key.to_owned(),
            reply,
        })
    }

    /// `usage` with aufs' `DiffSize` (the bytes of the snapshot's own changes) and the size
    /// of the whole tree a mount of it shows.
    pub fn diff_usage(&self, key: &str) -> Result<super::api::DiffUsage, EngineError> {
        self.call(|reply| Request::DiffUsage {
            key: key.to_owned(),
            reply,
        })
    }

    /// Mount Active or View `key` on `target` and take a reference on it (aufs' `Get`): the
    /// first reference mounts, later ones on the same target only count. Journaled; a
    /// snapshot with a mount is refused removal (`Precondition::Mounted`).
    pub fn mount(
        &self,
        key: &str,
        target: &std::path::Path,
    ) -> Result<super::api::MountRefInfo, EngineError> {
        let target = super::mountref::resolve_target(target, true)?;
        self.call(|reply| Request::Mount {
            key: key.to_owned(),
            target,
            reply,
        })
    }

    /// Release a reference on the mount at `target` (aufs' `Put`); the last one unmounts.
    /// Returns the references left.
    pub fn unmount(
        &self,
        target: &std::path::Path,
    ) -> Result<super::api::MountRefInfo, EngineError> {
        let target = super::mountref::resolve_target(target, false)?;
        self.call(|reply| Request::Unmount { target, reply })
    }

    /// Every counted mount, by target.
    pub fn mount_refs(&self) -> Result<Vec<super::api::MountRefInfo>, EngineError> {
        self.call(|reply| Request::MountRefs { reply })
    }

    /// Finish the work in flight, checkpoint, and stop the engine thread. Other clones of the
    /// handle get `ShutDown` afterwards. If the engine thread panicked (a bug), every closer
    /// gets `EnginePanicked`, and so do calls on other clones.
    pub fn close(self) -> Result<(), EngineError> {
        let (tx, rx) = bounded(1);
        if self.tx.send(Msg::Shutdown(tx)).is_ok() {
            let _ = self.wait(&rx);
        }
        // Every closer, not only the one that joins the thread, returns once the engine has
        // let go of the root (lock, log, index): `stopped` disconnects when run() has returned.
        let _ = self.stopped.recv();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            // The thread catches its own panic (recorded in `panicked`); a join error would be
            // a panic while recording it.
            if let Err(payload) = t.join() {
                let _ = self
                    .panicked
                    .set(super::workers::panic_message(payload.as_ref()));
            }
        }
        match self.panicked.get() {
            Some(_) => Err(self.gone()),
            None => Ok(()),
        }
    }
}
