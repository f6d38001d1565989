//! The client side: a cloneable, `Send` handle whose methods send a command to the engine
//! thread and wait for its reply.

use super::api::{
    CleanupReport, ImageInfo, ImportOptions, Imported, Info, Input, LayerInfo, Msg, Output,
    Request, Response, Verified,
};
use super::core::Core;
use super::error::EngineError;
use super::fsck::FsckReport;
use cairn_state::types::{Kind, Mount, Usage};
use cairn_state::Labels;
use crossbeam_channel::{bounded, select, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

#[derive(Clone, Debug)]
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

    fn call(&self, req: Request) -> Result<Response, EngineError> {
        let (reply, rx) = bounded(1);
        self.tx
            .send(Msg::Request(req, reply))
            .map_err(|_| self.gone())?;
        self.wait(&rx).ok_or_else(|| self.gone())?
    }

    /// Why the engine no longer answers: it was shut down, or its thread panicked.
    fn gone(&self) -> EngineError {
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
        let req = Request::Create {
            key: key.to_owned(),
            parent: parent.map(str::to_owned),
            kind,
            labels,
        };
        match self.call(req)? {
            Response::Mounts(m) => Ok(m),
            other => unreachable!("create answered {other:?}"),
        }
    }

    /// Commit Active `key` as `name`; `key` is gone afterwards.
    pub fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<(), EngineError> {
        self.done(Request::Commit {
            name: name.to_owned(),
            key: key.to_owned(),
            labels,
        })
    }

    pub fn remove(&self, key: &str) -> Result<(), EngineError> {
        self.done(Request::Remove {
            key: key.to_owned(),
        })
    }

    fn done(&self, req: Request) -> Result<(), EngineError> {
        match self.call(req)? {
            Response::Done => Ok(()),
            other => unreachable!("expected Done, got {other:?}"),
        }
    }

    pub fn stat(&self, key: &str) -> Result<Info, EngineError> {
        match self.call(Request::Stat {
            key: key.to_owned(),
        })? {
            Response::Info(i) => Ok(i),
            other => unreachable!("stat answered {other:?}"),
        }
    }

    /// containerd's update: `fieldpaths` are `labels` or `labels.<key>`; none means all labels.
    pub fn update(&self, info: Info, fieldpaths: &[&str]) -> Result<Info, EngineError> {
        let fieldpaths = fieldpaths.iter().map(|s| (*s).to_owned()).collect();
        match self.call(Request::Update { info, fieldpaths })? {
            Response::Info(i) => Ok(i),
            other => unreachable!("update answered {other:?}"),
        }
    }

    pub fn usage(&self, key: &str) -> Result<Usage, EngineError> {
        match self.call(Request::Usage {
            key: key.to_owned(),
        })? {
            Response::Usage(u) => Ok(u),
            other => unreachable!("usage answered {other:?}"),
        }
    }

    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>, EngineError> {
        match self.call(Request::Mounts {
            key: key.to_owned(),
        })? {
            Response::Mounts(m) => Ok(m),
            other => unreachable!("mounts answered {other:?}"),
        }
    }

    /// Every snapshot matching any of `filters` (all when empty), ordered by key.
    pub fn walk(&self, filters: &[&str]) -> Result<Vec<Info>, EngineError> {
        let filters = filters.iter().map(|s| (*s).to_owned()).collect();
        match self.call(Request::Walk { filters })? {
            Response::Infos(i) => Ok(i),
            other => unreachable!("walk answered {other:?}"),
        }
    }

    /// Remove anything on disk the engine does not own.
    pub fn cleanup(&self) -> Result<CleanupReport, EngineError> {
        match self.call(Request::Cleanup)? {
            Response::Cleanup(r) => Ok(r),
            other => unreachable!("cleanup answered {other:?}"),
        }
    }

    pub fn fsck(&self, repair: bool) -> Result<FsckReport, EngineError> {
        match self.call(Request::Fsck { repair })? {
            Response::Fsck(r) => Ok(r),
            other => unreachable!("fsck answered {other:?}"),
        }
    }

    /// Write a checkpoint now and truncate the log behind it.
    pub fn checkpoint(&self) -> Result<(), EngineError> {
        self.done(Request::Checkpoint)
    }

    /// Import a layer tar (plain, gzip or zstd), streamed: extracted off the engine thread into
    /// staging, made durable, then journaled. Returns its ChainID.
    pub fn import_layer(
        &self,
        input: Box<dyn std::io::Read + Send>,
        options: ImportOptions,
    ) -> Result<Imported, EngineError> {
        match self.call(Request::ImportLayer {
            input: Input(input),
            options,
        })? {
            Response::Imported(i) => Ok(i),
            other => unreachable!("import answered {other:?}"),
        }
    }

    /// Write the original tar of a layer, byte for byte; returns its DiffID (checked).
    pub fn export_layer(
        &self,
        chain_id: &str,
        out: Box<dyn std::io::Write + Send>,
    ) -> Result<String, EngineError> {
        let req = Request::ExportLayer {
            chain_id: chain_id.to_owned(),
            out: Output(out),
        };
        match self.call(req)? {
            Response::Digest(d) => Ok(d),
            other => unreachable!("export answered {other:?}"),
        }
    }

    /// Write the changes of snapshot `key` (Active or Committed) against its parent as an
    /// uncompressed OCI layer tar, with whiteouts for deletions; returns its DiffID. A snapshot
    /// without a parent gives its whole tree. The output is deterministic for a given tree.
    pub fn diff(
        &self,
        key: &str,
        out: Box<dyn std::io::Write + Send>,
    ) -> Result<String, EngineError> {
        let req = Request::Diff {
            key: key.to_owned(),
            out: Output(out),
        };
        match self.call(req)? {
            Response::Digest(d) => Ok(d),
            other => unreachable!("diff answered {other:?}"),
        }
    }

    pub fn layers(&self) -> Result<Vec<LayerInfo>, EngineError> {
        match self.call(Request::Layers)? {
            Response::Layers(l) => Ok(l),
            other => unreachable!("layers answered {other:?}"),
        }
    }

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
        self.done(Request::RemoveLayer {
            chain_id: chain_id.to_owned(),
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
        self.done(Request::PutImage {
            name: name.to_owned(),
            top: top.to_owned(),
            manifest_digest: manifest_digest.to_owned(),
            config_digest: config_digest.to_owned(),
        })
    }

    pub fn images(&self) -> Result<Vec<ImageInfo>, EngineError> {
        match self.call(Request::Images)? {
            Response::Images(i) => Ok(i),
            other => unreachable!("images answered {other:?}"),
        }
    }

    pub fn remove_image(&self, name: &str) -> Result<(), EngineError> {
        self.done(Request::RemoveImage {
            name: name.to_owned(),
        })
    }

    /// Re-hash stored layers (one, or all) against their DiffIDs.
    pub fn verify(&self, chain_id: Option<&str>) -> Result<Vec<Verified>, EngineError> {
        match self.call(Request::Verify {
            chain_id: chain_id.map(str::to_owned),
        })? {
            Response::Verified(v) => Ok(v),
            other => unreachable!("verify answered {other:?}"),
        }
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
        let req = Request::CreateContainer {
            name: name.to_owned(),
            layer: layer.map(str::to_owned),
            image: image.map(str::to_owned),
        };
        match self.call(req)? {
            Response::Mounts(m) => Ok(m),
            other => unreachable!("create container answered {other:?}"),
        }
    }

    /// Remove a container, its two snapshots, and its hold on its layer.
    pub fn remove_container(&self, name: &str) -> Result<(), EngineError> {
        self.done(Request::RemoveContainer {
            name: name.to_owned(),
        })
    }

    pub fn containers(&self) -> Result<Vec<super::api::ContainerInfo>, EngineError> {
        match self.call(Request::Containers)? {
            Response::Containers(c) => Ok(c),
            other => unreachable!("containers answered {other:?}"),
        }
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
