//! Why the state machine refuses a command: containerd's error classes.

use crate::types::TxId;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    #[error("snapshot {key}: not found")]
    NotFound { key: String },
    #[error("snapshot {key}: already exists")]
    AlreadyExists { key: String },
    #[error("snapshot {key}: failed precondition: {reason}")]
    FailedPrecondition { key: String, reason: Precondition },
    #[error("invalid argument: {reason}")]
    InvalidArgument { reason: Invalid },
    /// A completion or abort names a transaction that is not pending: a journal that does not
    /// follow from the state (a bug, or a record from another history).
    #[error("transaction {txid} is not pending")]
    NotPending { txid: TxId },
    /// An unmount of a target no reference holds (never mounted through cairn, or released).
    #[error("{target}: nothing cairn mounted is counted there")]
    NotMounted { target: String },
}

/// The failed-precondition cases, each a distinct reason a caller can match on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Precondition {
    #[error("it has children")]
    HasChildren,
    #[error("it is not active (only an active snapshot can be committed)")]
    NotActive,
    #[error("an operation on it is still in progress")]
    Busy,
    #[error(
        "it is referenced by {children} child layer(s) and {holders} image(s) or container(s)"
    )]
    Referenced { children: u64, holders: u64 },
    #[error("it belongs to container {name}; remove the container instead")]
    OwnedByContainer { name: String },
    #[error("it is the snapshot of layer {chain_id}; remove the layer instead")]
    OwnedByLayer { chain_id: String },
    #[error("it is committed (only active and view snapshots have mounts)")]
    NoMounts,
    /// Docker's aufs refused to remove a layer with active mounts (`ErrActiveMount`).
    #[error("it is mounted on {target}; unmount it first (`cairn umount {target}`)")]
    Mounted { target: String },
    /// The target holds a mount of another snapshot.
    #[error("snapshot {key} is mounted there")]
    TargetHeld { key: String },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    #[error("the key is empty")]
    EmptyKey,
    #[error("key {key:?} is longer than {max} bytes")]
    KeyTooLong { key: String, max: usize },
    #[error("parent {parent:?} is not a committed snapshot")]
    ParentNotCommitted { parent: String },
    #[error("only Active or View snapshots can be created, not {kind}")]
    BadKind { kind: crate::types::Kind },
    #[error("label {key:?}: key and value together are over {max} bytes")]
    LabelTooLong { key: String, max: usize },
    #[error("field {path:?} cannot be updated (only labels and labels.<key>)")]
    FieldNotUpdatable { path: String },
    #[error("{digest:?} is not a sha256 digest")]
    BadDigest { digest: String },
    #[error("layer chain deeper than {max}")]
    LayerChainTooDeep { max: usize },
    #[error("filter {filter:?} is not understood")]
    BadFilter { filter: String },
    #[error("parent chain of {key:?} is deeper than {max}")]
    ChainTooDeep { key: String, max: usize },
    /// Keys of the form `sha256:<64 hex digits>` are the layer store's (its layers' ChainIDs).
    #[error("key {key:?} has the form of a layer's ChainID, which only the layer store may use")]
    ReservedKey { key: String },
    #[error("{count} labels, more than the {max} a snapshot may have")]
    TooManyLabels { count: usize, max: usize },
    #[error("labels of {bytes} bytes in all, more than {max}")]
    LabelsTooLarge { bytes: usize, max: usize },
    #[error("{field} {value:?}… is {len} bytes, longer than {max}")]
    TooLong {
        field: &'static str,
        value: String,
        len: usize,
        max: usize,
    },
    #[error("more than {max} mount targets counted at once")]
    TooManyMounts { max: usize },
    #[error("mount target {target:?} is not an absolute, normalized path")]
    BadTarget { target: String },
    #[error("{field} of {len} bytes, more than the {max} kept with an image")]
    KeptTooLarge {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("image {image}: the {what} to keep has digest {found}, the image records {expected}")]
    KeptDigest {
        image: String,
        what: &'static str,
        expected: String,
        found: String,
    },
    #[error("image {image}: the config to keep is not an image config: {reason}")]
    BadConfig { image: String, reason: String },
    /// The config's `rootfs.diff_ids` (base first) are not the DiffIDs of the image's layers.
    #[error(
        "image {image}: the config's rootfs.diff_ids {config:?} are not its layers' {layers:?}"
    )]
    ConfigLayers {
        image: String,
        config: Vec<String>,
        layers: Vec<String>,
    },
    #[error("the record would take {bytes} bytes in the journal, more than {max}")]
    RecordTooLarge { bytes: usize, max: usize },
}
