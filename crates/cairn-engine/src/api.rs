//! What clients send and get back.

use super::error::EngineError;
use cairn_state::types::{Kind, Mount, SnapshotId, TxId, Usage};
use cairn_state::{Labels, Snapshot};
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

/// A layer as `layer ls` / `layer inspect` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    pub chain_id: String,
    pub diff_id: String,
    pub parent: Option<String>,
    pub size_bytes: u64,
    pub refcount: u64,
    pub pinned: bool,
    pub children: u64,
    pub holders: u64,
    pub snapshot_id: SnapshotId,
}

/// An image: its name, its top layer and the chain below it (base first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub name: String,
    pub top: String,
    pub layers: Vec<String>,
    pub manifest_digest: String,
    pub config_digest: String,
    pub created_ns: i64,
}

/// How to import a layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// ChainID of the layer it goes on.
    pub parent: Option<String>,
    /// The user holds the layer until `layer rm` (image loads do not pin: the image holds).
    pub pin: bool,
    /// The DiffID the tar must have (from an image config): checked, and if that layer
    /// exists already, nothing is read at all.
    pub expected_diff_id: Option<cairn_layer::Digest>,
}

/// The result of an import.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Imported {
    pub chain_id: String,
    pub diff_id: String,
    pub size_bytes: u64,
    /// The layer was there already; the import changed nothing on disk.
    pub existed: bool,
}

/// One layer re-hashed by `verify`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub chain_id: String,
    /// `None`: the layer re-exports to its DiffID. Otherwise what differs.
    pub problem: Option<String>,
}

/// A container: a read-write snapshot on its init snapshot, on an image layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub name: String,
    pub layer: String,
    pub init_key: String,
    pub key: String,
    pub ready: bool,
    pub created_ns: i64,
}

/// A layer tar being imported; read on a worker thread.
pub(crate) struct Input(pub Box<dyn std::io::Read + Send>);

/// Where an export is written, on a worker thread.
pub(crate) struct Output(pub Box<dyn std::io::Write + Send>);

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Input")
    }
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Output")
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
    ImportLayer {
        input: Input,
        options: ImportOptions,
    },
    ExportLayer {
        chain_id: String,
        out: Output,
    },
    /// A snapshot's changes against its parent, as a layer tar.
    Diff {
        key: String,
        out: Output,
    },
    Layers,
    RemoveLayer {
        chain_id: String,
    },
    PutImage {
        name: String,
        top: String,
        manifest_digest: String,
        config_digest: String,
    },
    Images,
    RemoveImage {
        name: String,
    },
    Verify {
        chain_id: Option<String>,
    },
    CreateContainer {
        name: String,
        layer: Option<String>,
        image: Option<String>,
    },
    RemoveContainer {
        name: String,
    },
    Containers,
}

#[derive(Debug)]
pub(crate) enum Response {
    Mounts(Vec<Mount>),
    Info(Info),
    Infos(Vec<Info>),
    Usage(Usage),
    Cleanup(CleanupReport),
    Fsck(super::fsck::FsckReport),
    Layers(Vec<LayerInfo>),
    Imported(Imported),
    Digest(String),
    Images(Vec<ImageInfo>),
    Verified(Vec<Verified>),
    Containers(Vec<ContainerInfo>),
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
