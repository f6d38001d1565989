//! Commands that answer through a callback instead of blocking their caller: for async
//! callers (`cairn serve`), which must not hold a thread per request in flight. The engine
//! thread runs the callback with the answer, exactly when a blocking caller would have been
//! woken, so it must be cheap and must not block (completing a oneshot is the intended use).

use super::api::{CleanupReport, Info, Msg, Reply, Request};
use super::error::EngineError;
use super::handle::EngineHandle;
use cairn_state::types::{Kind, Mount, Usage};
use cairn_state::Labels;
use crossbeam_channel::TrySendError;

/// One engine command answering with a `T`, for [`EngineHandle::submit`] (or, blocking,
/// [`EngineHandle::run`]).
pub struct Command<T> {
    build: Box<dyn FnOnce(Reply<T>) -> Request + Send>,
}

impl<T> std::fmt::Debug for Command<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl<T: 'static> Command<T> {
    fn new(build: impl FnOnce(Reply<T>) -> Request + Send + 'static) -> Command<T> {
        Command {
            build: Box::new(build),
        }
    }

    pub(crate) fn into_request(self, reply: Reply<T>) -> Request {
        (self.build)(reply)
    }
}

impl Command<Vec<Mount>> {
    /// An Active (`Kind::Active`) or View (`Kind::View`) snapshot on `parent`.
    pub fn create(key: String, parent: Option<String>, kind: Kind, labels: Labels) -> Self {
        Command::new(move |reply| Request::Create {
            key,
            parent,
            kind,
            labels,
            reply,
        })
    }

    /// See [`EngineHandle::mounts`].
    pub fn mounts(key: String) -> Self {
        Command::new(move |reply| Request::Mounts { key, reply })
    }
}

impl Command<()> {
    /// See [`EngineHandle::commit`].
    pub fn commit(name: String, key: String, labels: Labels) -> Self {
        Command::new(move |reply| Request::Commit {
            name,
            key,
            labels,
            reply,
        })
    }

    /// See [`EngineHandle::remove`].
    pub fn remove(key: String) -> Self {
        Command::new(move |reply| Request::Remove { key, reply })
    }
}

impl Command<Info> {
    /// See [`EngineHandle::stat`].
    pub fn stat(key: String) -> Self {
        Command::new(move |reply| Request::Stat { key, reply })
    }

    /// See [`EngineHandle::update`].
    pub fn update(info: Info, fieldpaths: Vec<String>) -> Self {
        Command::new(move |reply| Request::Update {
            info,
            fieldpaths,
            reply,
        })
    }
}

impl Command<Usage> {
    /// See [`EngineHandle::usage`].
    pub fn usage(key: String) -> Self {
        Command::new(move |reply| Request::Usage { key, reply })
    }
}

impl Command<Vec<Info>> {
    /// See [`EngineHandle::walk`].
    pub fn walk(filters: Vec<String>) -> Self {
        Command::new(move |reply| Request::Walk { filters, reply })
    }
}

impl Command<CleanupReport> {
    /// See [`EngineHandle::cleanup`].
    pub fn cleanup() -> Self {
        Command::new(|reply| Request::Cleanup { reply })
    }
}

/// A submitted command the engine's bounded queue had no room for, not sent yet:
/// [`EngineHandle::send_blocking`] sends it, waiting (on a thread that may block) for room.
#[derive(Debug)]
pub struct QueueFull(Box<Msg>);

impl EngineHandle {
    /// Queue `command` without waiting for its answer; the engine thread calls `on_reply`
    /// with it. If the engine is gone (or stops before it reads the command), `on_reply` is
    /// dropped without being called: the caller then reports [`EngineHandle::gone`]. Never
    /// blocks: a full queue hands the command back.
    pub fn submit<T: 'static>(
        &self,
        command: Command<T>,
        on_reply: impl FnOnce(Result<T, EngineError>) + Send + 'static,
    ) -> Result<(), QueueFull> {
        let msg = Msg::Request(command.into_request(Reply::callback(on_reply)));
        match self.sender().try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(msg)) => Err(QueueFull(Box::new(msg))),
            // Dropping the message drops `on_reply` unanswered.
            Err(TrySendError::Disconnected(_)) => Ok(()),
        }
    }

    /// Send what [`submit`](Self::submit) found no room for, blocking until there is.
    pub fn send_blocking(&self, full: QueueFull) {
        // A disconnected queue drops the message, and with it its callback, unanswered.
        let _ = self.sender().send(*full.0);
    }
}
