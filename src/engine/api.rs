//! What clients send and get back.

use super::error::EngineError;
use crate::state::{Labels, Snapshot};
use crate::types::{Kind, Mount, SnapshotId, TxId, Usage};
use crossbeam_channel::Sender;
use serde::{Deserialize, Serialize};

/// containerd's `snapshots.Info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub key: String,
    pub parent: Option<String>,
    pub kind: Kind,
    pub labels: Labels,
    pub created_ns: i64,
    pub updated_ns: i64,
}

impl Info {
    pub(crate) fn of(key: &str, snap: &Snapshot) -> Info {
        Info {
            key: key.to_owned(),
            parent: snap.parent.clone(),
            kind: snap.kind,
            labels: snap.labels.clone(),
            created_ns: snap.created_ns,
            updated_ns: snap.updated_ns,
        }
    }
}

/// What `cleanup` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupReport {
    pub snapshots_removed: Vec<SnapshotId>,
    pub staging_removed: Vec<TxId>,
}

#[derive(Debug)]
pub(crate) enum Request {
    Create {
        key: String,
        parent: Option<String>,
        kind: Kind,
        labels: Labels,
    },
    Commit {
        name: String,
        key: String,
        labels: Labels,
    },
    Remove {
        key: String,
    },
    Update {
        info: Info,
        fieldpaths: Vec<String>,
    },
    Stat {
        key: String,
    },
    Usage {
        key: String,
    },
    Mounts {
        key: String,
    },
    Walk {
        filters: Vec<String>,
    },
    Cleanup,
    Fsck {
        repair: bool,
    },
    Checkpoint,
}

#[derive(Debug)]
pub(crate) enum Response {
    Mounts(Vec<Mount>),
    Info(Info),
    Infos(Vec<Info>),
    Usage(Usage),
    Cleanup(CleanupReport),
    Fsck(super::fsck::FsckReport),
    Done,
}

pub(crate) type Reply = Sender<Result<Response, EngineError>>;

pub(crate) enum Msg {
    Request(Request, Reply),
    /// Stop after the work in flight: checkpoint, then exit.
    Shutdown(Sender<()>),
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Request(r, _) => write!(f, "Request({r:?})"),
            Msg::Shutdown(_) => f.write_str("Shutdown"),
        }
    }
}
