//! The one error type of the driver module.
//!
//! Every variant names what it was working on (a path, a snapshot id, a transaction id) so a
//! failure in recovery or fsck can be traced to one directory without re-running anything.

use cairn_state::types::{SnapshotId, TxId};
use std::io;
use std::path::PathBuf;

/// Why a marker file could not be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerFault {
    /// Not exactly the fixed record length.
    Length(usize),
    /// The first four bytes are not the marker magic.
    Magic,
    /// The stored CRC32 does not match the bytes it covers.
    Checksum { stored: u32, computed: u32 },
}

impl std::fmt::Display for MarkerFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MarkerFault::Length(n) => write!(f, "length {n}, expected 16"),
            MarkerFault::Magic => f.write_str("bad magic"),
            MarkerFault::Checksum { stored, computed } => {
                write!(f, "crc32 {stored:08x} stored, {computed:08x} computed")
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// A filesystem call failed; `op` is the call ("rename", "fsync", "mknod", ...).
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An fsync or syncfs failed: the data it covered may be lost, and the pages are never
    /// synced again (the kernel may have marked them clean). See docs/drivers.md.
    #[error("{op} {path} failed, data written there may be lost: {source}")]
    SyncFailed {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A sync of this snapshot's tree failed earlier: what is on disk under it is unknown, and a
    /// new fsync could report success over the lost pages. It can only be removed.
    #[error(
        "snapshot {id}: a sync of its tree failed earlier ({path} exists); its contents on disk \
         are unknown, so it cannot be committed: remove it"
    )]
    TreeSyncFailed { id: SnapshotId, path: PathBuf },

    /// The sync of a snapshot's tree failed and the note saying so could not be made durable
    /// either: the engine stops rather than let the commit be retried over lost pages.
    #[error("snapshot {id}: the sync of its tree failed ({cause}) and recording that failed too: {source}")]
    TaintFailed {
        id: SnapshotId,
        cause: String,
        #[source]
        source: Box<DriverError>,
    },

    /// A marker write failed, and removing its temporary failed too: the engine stops, so the
    /// interrupted seal stays pending in the journal and the next open removes the temporary
    /// (docs/recovery.md row R23).
    #[error("marker temporary {path} left behind after a failed marker write ({cause}): {source}")]
    MarkerTmpLeft {
        path: PathBuf,
        cause: String,
        #[source]
        source: Box<DriverError>,
    },

    #[error("install {txid} as snapshot {id}: neither {staging} nor {installed} exists")]
    InstallSourceMissing {
        txid: TxId,
        id: SnapshotId,
        staging: PathBuf,
        installed: PathBuf,
    },

    #[error("install {txid} as snapshot {id}: {installed} already exists")]
    InstallTargetExists {
        txid: TxId,
        id: SnapshotId,
        installed: PathBuf,
    },

    #[error("snapshot {id} is not installed at {path}")]
    SnapshotMissing { id: SnapshotId, path: PathBuf },

    #[error("staged snapshot {txid} is not at {path}")]
    StagingMissing { txid: TxId, path: PathBuf },

    #[error("marker {path} is corrupt: {fault}")]
    MarkerCorrupt { path: PathBuf, fault: MarkerFault },

    /// Device nodes can only be created by root; copying one unprivileged would lose it.
    #[error("{path} is a device node; only root can copy it")]
    DeviceNeedsRoot { path: PathBuf },

    /// An unprivileged copy cannot give a file away; silently changing the owner would be a
    /// fidelity bug, so it is an error unless the ids already match the caller.
    #[error("{path} is owned by {uid}:{gid}; only root can recreate that owner")]
    ForeignOwner { path: PathBuf, uid: u32, gid: u32 },

    #[error("{path}: unsupported file type (mode {mode:o})")]
    UnsupportedFileType { path: PathBuf, mode: u32 },

    #[error("overlay is not usable under {root}: {source}")]
    OverlayUnsupported {
        root: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The btrfs driver was asked for a root that is not on btrfs (statfs magic).
    #[error(
        "the btrfs driver needs its root on a btrfs file system: {path} is on file system type \
         {fs_type:#x}, not btrfs (0x9123683e)"
    )]
    NotBtrfs { path: PathBuf, fs_type: u64 },

    #[error("mount {kind} {source_path} on {target}: {source}")]
    Mount {
        kind: String,
        source_path: PathBuf,
        target: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("mount type {kind} on {target} is not supported")]
    UnsupportedMount { kind: String, target: PathBuf },

    /// The overlay option string stays over one page even with lowerdirs made relative.
    #[error(
        "overlay mount data for {target} is {len} bytes even after shortening (limit {limit})"
    )]
    MountDataTooLong {
        target: PathBuf,
        len: usize,
        limit: usize,
    },

    #[error(
        "block image size {value:?} is not a size of at least {min_bytes} bytes (bytes, or a \
         number with K, M, G or T: 512M, 10GiB)"
    )]
    BadImageSize { value: String, min_bytes: u64 },

    #[error("block image file system {value:?} is not one of ext4, xfs")]
    BadBlockFs { value: String },

    #[error("the block driver's base image {image} holds neither ext4 nor xfs")]
    BadBaseImage { image: PathBuf },

    #[error(
        "the block root {root} was created with {recorded}; it cannot be reopened with {asked} \
         (block options only apply when a root is created)"
    )]
    BlockOptionsMismatch {
        root: PathBuf,
        recorded: String,
        asked: String,
    },

    #[error("attach {image} to a loop device: {source}")]
    LoopAttach {
        image: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("reflink {src} to {dst}: {source}")]
    Reflink {
        src: PathBuf,
        dst: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The block driver clones images with FICLONE; without it every prepare would copy.
    #[error(
        "the block driver needs a file system that can reflink (xfs with reflink=1, btrfs) \
         under {root}: {source}"
    )]
    ReflinkUnsupported {
        root: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("make the base image {image}: {program} failed: {detail}")]
    Mkfs {
        image: PathBuf,
        program: &'static str,
        detail: String,
    },

    /// The image is attached writable (a `cairn mount` of an Active is still up): its file
    /// system's state is in that mount, not in the image, until it is unmounted.
    #[error("snapshot {id}: its image {image} is mounted read-write; unmount it first")]
    ImageInUse { id: SnapshotId, image: PathBuf },

    #[error("unmount {target}: {source}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl DriverError {
    /// An fsync or syncfs failed (the kernel reported lost write-back), as opposed to a failure
    /// to open, read or rename.
    pub fn is_sync_failure(&self) -> bool {
        matches!(self, DriverError::SyncFailed { .. })
    }

    /// After this error the engine must stop: the failure could not be recorded.
    pub fn stops_engine(&self) -> bool {
        matches!(
            self,
            DriverError::TaintFailed { .. } | DriverError::MarkerTmpLeft { .. }
        )
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        DriverError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn nix(
        op: &'static str,
        path: impl Into<PathBuf>,
        errno: nix::errno::Errno,
    ) -> Self {
        DriverError::io(op, path, io::Error::from(errno))
    }
}
