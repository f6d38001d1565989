//! What clients send and get back.

use super::error::EngineError;
use super::fsck::FsckReport;
use cairn_state::types::{Kind, Mount, SnapshotId, TxId, Usage};
use cairn_state::{Labels, Snapshot};
use crossbeam_channel::Sender;
use serde::{Deserialize, Serialize};

/// containerd's `snapshots.Info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// The snapshot's name.
    pub key: String,
    /// The committed snapshot it is based on, if any.
    pub parent: Option<String>,
    /// Active, View or Committed.
    pub kind: Kind,
    /// Its labels (containerd's).
    pub labels: Labels,
    /// When it was created, in nanoseconds since the Unix epoch.
    pub created_ns: i64,
    /// When it was last changed (labels, commit), in nanoseconds since the Unix epoch.
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
    /// The layer's ChainID (`sha256:…`), also the key of its committed snapshot.
    pub chain_id: String,
    /// The DiffID of its uncompressed tar.
    pub diff_id: String,
    /// The ChainID of the layer below, if any.
    pub parent: Option<String>,
    /// Bytes its tree uses on disk.
    pub size_bytes: u64,
    /// How many holds keep it: the user's pin, images, containers and child layers.
    pub refcount: u64,
    /// The user holds it (imported with `pin`) until `remove_layer`.
    pub pinned: bool,
    /// Layers directly on top of it.
    pub children: u64,
    /// Images and containers that hold it.
    pub holders: u64,
    /// The id of its snapshot's directory.
    pub snapshot_id: SnapshotId,
}

/// An image: its name, its top layer and the chain below it (base first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The image's name (`repo:tag`).
    pub name: String,
    /// The ChainID of its top layer.
    pub top: String,
    /// ChainIDs of its layers, base first.
    pub layers: Vec<String>,
    /// Digest of its manifest.
    pub manifest_digest: String,
    /// Digest of its config.
    pub config_digest: String,
    /// When it was recorded, in nanoseconds since the Unix epoch.
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
    /// The layer's ChainID.
    pub chain_id: String,
    /// The DiffID of the tar that was read.
    pub diff_id: String,
    /// Bytes the layer's tree uses on disk.
    pub size_bytes: u64,
    /// The layer was there already; the import changed nothing on disk.
    pub existed: bool,
}

/// One layer re-hashed by `verify`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// The layer that was checked.
    pub chain_id: String,
    /// `None`: the layer re-exports to its DiffID. Otherwise what differs.
    pub problem: Option<String>,
}

/// A container: a read-write snapshot on its init snapshot, on an image layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// The container's name.
    pub name: String,
    /// The ChainID of the layer it runs on.
    pub layer: String,
    /// The key of its init snapshot (`NAME-init`).
    pub init_key: String,
    /// The key of its read-write snapshot.
    pub key: String,
    /// Both snapshots exist: creation finished.
    pub ready: bool,
    /// When it was created, in nanoseconds since the Unix epoch.
    pub created_ns: i64,
}

/// One line of `snapshot changes`: what `docker diff` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// `A` added, `C` changed, `D` deleted.
    pub kind: char,
    /// Absolute within the snapshot: `/etc/hosts`.
    pub path: String,
}

/// `snapshot usage` with aufs' `DiffSize` beside the whole tree's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffUsage {
    /// The snapshot's own tree on disk (what `usage` answers; vfs: a whole copy).
    pub usage: Usage,
    /// aufs' `DiffSize`: bytes of the regular files its changes add or change.
    pub diff_size_bytes: u64,
    /// Bytes of regular files in the whole tree a mount of it shows.
    pub tree_size_bytes: u64,
    /// Entries in that tree.
    pub tree_inodes: u64,
}

/// A reference-counted mount (aufs' `Get`/`Put`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRefInfo {
    /// Where it is mounted (absolute, symlinks resolved).
    pub target: String,
    /// The snapshot mounted there.
    pub key: String,
    /// References held now; 0 after the last release (unmounted).
    pub count: u64,
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
    /// Trees on disk that no snapshot named, removed.
    pub snapshots_removed: Vec<SnapshotId>,
    /// Staging areas no pending transaction named, removed.
    pub staging_removed: Vec<TxId>,
}

/// Where a request is answered: of the request's own result type, so a reply can only be the
/// one its caller waits for. Either a channel a blocking caller waits on, or a callback the
/// engine thread runs with the answer (an async caller's: it completes a future and must not
/// block). Dropped unanswered (only by a panicking engine), the channel disconnects and the
/// callback is dropped without running; both tell the caller the engine is gone.
pub(crate) struct Reply<T>(ReplyTo<T>);

enum ReplyTo<T> {
    Channel(Sender<Result<T, EngineError>>),
    Callback(Box<dyn FnOnce(Result<T, EngineError>) + Send>),
}

impl<T> Reply<T> {
    pub(crate) fn channel(tx: Sender<Result<T, EngineError>>) -> Reply<T> {
        Reply(ReplyTo::Channel(tx))
    }

    pub(crate) fn callback(f: impl FnOnce(Result<T, EngineError>) + Send + 'static) -> Reply<T> {
        Reply(ReplyTo::Callback(Box::new(f)))
    }

    /// Answer. `Err` when the caller has gone away and nothing waits for the answer.
    pub(crate) fn send(self, answer: Result<T, EngineError>) -> Result<(), NobodyWaits> {
        match self.0 {
            ReplyTo::Channel(tx) => tx.send(answer).map_err(|_| NobodyWaits),
            ReplyTo::Callback(f) => {
                f(answer);
                Ok(())
            }
        }
    }
}

impl<T> std::fmt::Debug for Reply<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            ReplyTo::Channel(_) => "Reply::Channel",
            ReplyTo::Callback(_) => "Reply::Callback",
        })
    }
}

/// A reply's caller went away before the answer came.
#[derive(Debug)]
pub(crate) struct NobodyWaits;

/// One command to the engine thread, with the channel its answer goes back on.
#[derive(Debug)]
pub(crate) enum Request {
    Create {
        key: String,
        parent: Option<String>,
        kind: Kind,
        labels: Labels,
        reply: Reply<Vec<Mount>>,
    },
    Commit {
        name: String,
        key: String,
        labels: Labels,
        reply: Reply<()>,
    },
    Remove {
        key: String,
        reply: Reply<()>,
    },
    Update {
        info: Info,
        fieldpaths: Vec<String>,
        reply: Reply<Info>,
    },
    Stat {
        key: String,
        reply: Reply<Info>,
    },
    Usage {
        key: String,
        reply: Reply<Usage>,
    },
    Mounts {
        key: String,
        reply: Reply<Vec<Mount>>,
    },
    Walk {
        filters: Vec<String>,
        reply: Reply<Vec<Info>>,
    },
    Cleanup {
        reply: Reply<CleanupReport>,
    },
    Fsck {
        repair: bool,
        /// Also hash every layer and committed tree (`fsck --verify`), on a worker.
        verify: bool,
        reply: Reply<FsckReport>,
    },
    Checkpoint {
        reply: Reply<()>,
    },
    ImportLayer {
        input: Input,
        options: ImportOptions,
        /// An image recorded on the new layer in the import's completion record.
        hold: Option<String>,
        reply: Reply<Imported>,
    },
    /// Detached layer imports (crate::detached).
    Detached(crate::detached::DetachedRequest),
    ExportLayer {
        chain_id: String,
        out: Output,
        reply: Reply<String>,
    },
    /// A snapshot's changes against its parent, as a layer tar.
    Diff {
        key: String,
        out: Output,
        reply: Reply<String>,
    },
    Layers {
        reply: Reply<Vec<LayerInfo>>,
    },
    RemoveLayer {
        chain_id: String,
        reply: Reply<()>,
    },
    PutImage {
        name: String,
        top: String,
        manifest_digest: String,
        config_digest: String,
        /// The original config (and manifest), kept in the same record (`PutImageKept`).
        kept: Option<cairn_state::Kept>,
        reply: Reply<()>,
    },
    Images {
        reply: Reply<Vec<ImageInfo>>,
    },
    PutImageConfig {
        name: String,
        config: Vec<u8>,
        manifest: Option<Vec<u8>>,
        reply: Reply<()>,
    },
    ImageKept {
        name: String,
        reply: Reply<Option<cairn_state::Kept>>,
    },
    RemoveImage {
        name: String,
        reply: Reply<()>,
    },
    Verify {
        chain_id: Option<String>,
        reply: Reply<Vec<Verified>>,
    },
    CreateContainer {
        name: String,
        layer: Option<String>,
        image: Option<String>,
        reply: Reply<Vec<Mount>>,
    },
    RemoveContainer {
        name: String,
        reply: Reply<()>,
    },
    Containers {
        reply: Reply<Vec<ContainerInfo>>,
    },
    Changes {
        key: String,
        reply: Reply<Vec<Change>>,
    },
    DiffUsage {
        key: String,
        reply: Reply<DiffUsage>,
    },
    Mount {
        key: String,
        target: String,
        reply: Reply<MountRefInfo>,
    },
    Unmount {
        target: String,
        reply: Reply<MountRefInfo>,
    },
    MountRefs {
        reply: Reply<Vec<MountRefInfo>>,
    },
}

impl Request {
    /// Answer with `error` instead of running the request (the engine has stopped).
    pub(crate) fn refuse(self, error: EngineError) {
        fn send<T>(reply: Reply<T>, error: EngineError) {
            // The caller may have gone away; nothing is waiting then.
            let _ = reply.send(Err(error));
        }
        match self {
            Request::Create { reply, .. }
            | Request::Mounts { reply, .. }
            | Request::CreateContainer { reply, .. } => send(reply, error),
            Request::Commit { reply, .. }
            | Request::Remove { reply, .. }
            | Request::Checkpoint { reply }
            | Request::RemoveLayer { reply, .. }
            | Request::PutImage { reply, .. }
            | Request::PutImageConfig { reply, .. }
            | Request::RemoveImage { reply, .. }
            | Request::RemoveContainer { reply, .. } => send(reply, error),
            Request::Update { reply, .. } | Request::Stat { reply, .. } => send(reply, error),
            Request::Usage { reply, .. } => send(reply, error),
            Request::Walk { reply, .. } => send(reply, error),
            Request::Cleanup { reply } => send(reply, error),
            Request::Fsck { reply, .. } => send(reply, error),
            Request::ImportLayer { reply, .. } => send(reply, error),
            Request::Detached(d) => d.refuse(error),
            Request::ExportLayer { reply, .. } | Request::Diff { reply, .. } => send(reply, error),
            Request::Layers { reply } => send(reply, error),
            Request::Images { reply } => send(reply, error),
            Request::ImageKept { reply, .. } => send(reply, error),
            Request::Verify { reply, .. } => send(reply, error),
            Request::Containers { reply } => send(reply, error),
            Request::Changes { reply, .. } => send(reply, error),
            Request::DiffUsage { reply, .. } => send(reply, error),
            Request::Mount { reply, .. } | Request::Unmount { reply, .. } => send(reply, error),
            Request::MountRefs { reply } => send(reply, error),
        }
    }
}

#[derive(Debug)]
pub(crate) enum Msg {
    Request(Request),
    /// Stop after the work in flight: checkpoint, then exit.
    Shutdown(Sender<()>),
}
