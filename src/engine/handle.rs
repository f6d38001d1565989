//! The client side: a cloneable, `Send` handle whose methods send a command to the engine
//! thread and wait for its reply.

use super::api::{CleanupReport, Info, Msg, Request, Response};
use super::core::Core;
use super::error::EngineError;
use super::fsck::FsckReport;
use crate::state::Labels;
use crate::types::{Kind, Mount, Usage};
use crossbeam_channel::{bounded, select, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

#[derive(Clone, Debug)]
pub struct EngineHandle {
    tx: Sender<Msg>,
    /// Disconnected when the engine thread has exited. A request that reached the queue after
    /// the engine stopped reading it is never answered (the queue keeps it, and its reply
    /// sender, while any handle lives), so waiting for a reply also watches this.
    stopped: Receiver<()>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl EngineHandle {
    pub(crate) fn start(core: Core, queue_capacity: usize) -> EngineHandle {
        let (tx, rx) = bounded(queue_capacity.max(1));
        let (alive, stopped) = bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("cairn-engine".into())
            .spawn(move || {
                // Dropped when run returns: after every reply (workers included) was sent.
                let _alive = alive;
                core.run(rx)
            })
            .expect("spawn the engine thread");
        EngineHandle { tx, stopped, thread: Arc::new(Mutex::new(Some(thread))) }
    }

    /// Waits for `rx`, or for the engine thread to exit; a reply sent before it exited wins.
    fn wait<T>(&self, rx: &Receiver<T>) -> Option<T> {
        select! {
            recv(rx) -> r => r.ok(),
            recv(self.stopped) -> _ => rx.try_recv().ok(),
        }
    }

    fn call(&self, req: Request) -> Result<Response, EngineError> {
        let (reply, rx) = bounded(1);
        self.tx.send(Msg::Request(req, reply)).map_err(|_| EngineError::ShutDown)?;
        self.wait(&rx).ok_or(EngineError::ShutDown)?
    }

    /// Create an Active snapshot on `parent` (a committed snapshot) and return its mounts.
    pub fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>, EngineError> {
        self.create(key, parent, Kind::Active, labels)
    }

    /// Create a read-only View of `parent` and return its mounts.
    pub fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>, EngineError> {
        self.create(key, parent, Kind::View, labels)
    }

    fn create(&self, key: &str, parent: Option<&str>, kind: Kind, labels: Labels) -> Result<Vec<Mount>, EngineError> {
        let req = Request::Create { key: key.to_owned(), parent: parent.map(str::to_owned), kind, labels };
        match self.call(req)? {
            Response::Mounts(m) => Ok(m),
            other => unreachable!("create answered {other:?}"),
        }
    }

    /// Commit Active `key` as `name`; `key` is gone afterwards.
    pub fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<(), EngineError> {
        self.done(Request::Commit { name: name.to_owned(), key: key.to_owned(), labels })
    }

    pub fn remove(&self, key: &str) -> Result<(), EngineError> {
        self.done(Request::Remove { key: key.to_owned() })
    }

    fn done(&self, req: Request) -> Result<(), EngineError> {
        match self.call(req)? {
            Response::Done => Ok(()),
            other => unreachable!("expected Done, got {other:?}"),
        }
    }

    pub fn stat(&self, key: &str) -> Result<Info, EngineError> {
        match self.call(Request::Stat { key: key.to_owned() })? {
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
        match self.call(Request::Usage { key: key.to_owned() })? {
            Response::Usage(u) => Ok(u),
            other => unreachable!("usage answered {other:?}"),
        }
    }

    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>, EngineError> {
        match self.call(Request::Mounts { key: key.to_owned() })? {
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

    /// Finish the work in flight, checkpoint, and stop the engine thread. Other clones of the
    /// handle get `ShutDown` afterwards.
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
            let _ = t.join();
        }
        Ok(())
    }
}
